# -*- test-case-name: tests.test_store -*-
"""
Durable storage: one writer thread that commits records in batches, and the
Deferreds that tell a session its records are safe (so it may ack).

The reactor thread only queues work here; every database call happens on the
writer thread (or, for queries and commands, on threads of their own).
"""

from __future__ import annotations

import io
import json
from hashlib import blake2b
import os
import threading
import time as _time
from collections import deque
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import schema, storable
from gateway.dbguard import DatabaseUnavailable, Guard, connection_class
from gateway.model import Position, canonical_json, isoformat
from gateway.ordering import ID_ORDER_STATEMENT, serialize_ids

log = Logger()

DEFAULT_DB = "sqlite:///trackport.db"


class Overloaded(Exception):
    """
    Too many records wait for the database (it is down or too slow); the frame is
    not acked and the device keeps it.
    """


class StoreStopped(Exception):
    """
    The gateway stopped before these records could be written.
    """


def database_url(given: Optional[str] = None, config: Optional[str] = None) -> str:
    """
    C{--db}, else C{$TRACKPORT_DB}, else C{db} in the configuration file
    (L{gateway.config}), else C{sqlite:///trackport.db} in the working
    directory.
    """
    from gateway.config import read

    return given or os.environ.get("TRACKPORT_DB") or read(config).get("db") or DEFAULT_DB


class BadDatabaseURL(ValueError):
    """
    A database URL trackport cannot use.
    """


def check_url(url: str) -> URL:
    """
    C{url} parsed, refusing what trackport cannot use before anything
    connects or creates a file.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise BadDatabaseURL(f"not a database URL: {url!r} (use sqlite:///PATH or "
                             "postgresql://USER@HOST/NAME)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise BadDatabaseURL(f"unsupported database {backend!r}: trackport stores in SQLite "
                             "(sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/NAME)")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise BadDatabaseURL("a SQLite URL needs a file: sqlite:///PATH")
    return parsed


class RawJson(str):
    """
    A value already serialised as JSON: written to a JSON column as it is, so a
    record's attributes are serialised once (for its fingerprint) not twice.
    """


def _json_serializer(value) -> str:
    return value if isinstance(value, RawJson) else json.dumps(value, default=str)


def driver_url(url: str) -> URL:
    """
    C{url} with the DB-API driver trackport ships with named explicitly.

    SQLAlchemy 2.1 maps a bare C{postgresql://} to psycopg 3, which trackport
    does not install; operators write the bare form, so it means psycopg2 here.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


#: Seconds to open a connection to PostgreSQL (through authentication).
CONNECT_TIMEOUT = 5
#: Seconds a statement, COPY or commit of the gateway may wait for PostgreSQL
#: before the connection counts as dead (L{gateway.dbguard}).
STATEMENT_TIMEOUT = 10.0
#: TCP keepalives on PostgreSQL connections (libpq parameters): a peer that
#: vanished is noticed after about 10 + 3 * 3 s of silence, and data left
#: unacknowledged for 15 s ends the connection.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
              "keepalives_count": 3, "tcp_user_timeout": 15000}
#: Seconds a schema migration may take.
MIGRATION_TIMEOUT = 3600.0


def _private_file(url: URL) -> None:
    """
    Create the SQLite file readable and writable by its owner only (device
    passwords live in it); SQLite gives its -wal and -shm files the same mode.
    An existing file keeps the mode the operator gave it.
    """
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        pass  # a directory that does not exist: SQLite says so in its own words


def engine_for(url: str, busy_timeout: float = 30.0, statement_timeout: Optional[float] = None,
               **options) -> Engine:
    """
    An engine with the settings trackport relies on: WAL and full sync for
    SQLite (a committed record survives a crash), a file only its owner reads;
    for PostgreSQL pre-ping (a restarted server is reconnected to), connect
    timeout, TCP keepalives, and a L{gateway.dbguard.Guard} (as
    C{engine.trackport_guard}) that ends any call waiting longer than
    C{statement_timeout} seconds for an answer.
    """
    url = driver_url(url)
    if url.get_backend_name() == "sqlite":
        _private_file(url)
        engine = create_engine(url, json_serializer=_json_serializer,
                               connect_args={"timeout": busy_timeout, "check_same_thread": False},
                               **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()

        return engine
    guard = Guard(statement_timeout)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT, "connection_factory": connection_class(guard),
                    **KEEPALIVES}
    if statement_timeout is not None:
        # The server ends a statement that runs long (a lock wait) a little
        # before the guard gives the connection up: the connection survives.
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 800)}"
    connect_args.update(options.pop("connect_args", {}))
    settings = dict(pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=connect_args)
    settings.update(options)
    engine = create_engine(url, json_serializer=_json_serializer, **settings)
    engine.trackport_guard = guard
    return engine


def migrate(engine: Engine) -> None:
    """
    Create the schema, or upgrade it to the current version (alembic).

    On PostgreSQL an advisory lock keeps several gateways starting at once from
    racing each other.
    """
    try:
        with engine.connect() as connection:
            current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        if current == schema.REVISION:
            return  # up to date: spare every CLI call the cost of loading alembic
    except (OperationalError, DBAPIError):
        pass
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", os.path.join(os.path.dirname(__file__), "migrations"))
    with engine.begin() as connection:
        raw = None
        if connection.dialect.name == "postgresql":
            # A migration may run long: the statement limits are for the
            # gateway's writes, not for this.
            raw = connection.connection.driver_connection
            raw.timeout = MIGRATION_TIMEOUT
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7718001)")
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            if raw is not None:
                raw.timeout = None


def utc(value: Optional[datetime]) -> Optional[datetime]:
    """
    Times read back from SQLite have no zone; every time trackport stores is UTC.
    """
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def now() -> datetime:
    return datetime.now(timezone.utc)


def insert_ignoring(table, dialect: str, keys):
    """
    An INSERT that skips rows colliding on C{keys}: how a re-sent record is
    stored once.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=list(keys))


POSITION_COLUMNS = ("device_id", "protocol", "time", "server_time", "latitude", "longitude", "valid",
                     "speed_kmh", "course", "altitude_m", "alarm", "event", "attributes", "fingerprint")
_COLUMN_LIST = ", ".join(POSITION_COLUMNS)
_PG_UPSERT_DEVICES = (
    "INSERT INTO devices (id, protocol, transport, first_seen, last_seen, last_peer, settings) VALUES %s "
    "ON CONFLICT (id) DO UPDATE SET protocol = EXCLUDED.protocol, "
    "transport = COALESCE(EXCLUDED.transport, devices.transport), "
    "last_seen = GREATEST(EXCLUDED.last_seen, devices.last_seen), "
    "last_peer = COALESCE(EXCLUDED.last_peer, devices.last_peer)")
_PG_DEVICE_TEMPLATE = "(%s, %s, %s, %s, %s, %s, '{}'::jsonb)"
#: Seconds between writes of devices' last-seen time and peer.
SEEN_INTERVAL = 1.0
#: The id-order lock (L{gateway.ordering}), then a savepoint to return to
#: should the COPY meet a record stored already; one round trip.
_PG_TRY = f"{ID_ORDER_STATEMENT}; SAVEPOINT trackport_copy"
_PG_COPY = f"COPY positions ({_COLUMN_LIST}) FROM STDIN"
_PG_UNDO = "ROLLBACK TO SAVEPOINT trackport_copy"
_PG_STAGE = ("CREATE TEMPORARY TABLE IF NOT EXISTS positions_stage ON COMMIT DELETE ROWS AS "
             f"SELECT {_COLUMN_LIST} FROM positions WITH NO DATA")
_PG_COPY_STAGE = f"COPY positions_stage ({_COLUMN_LIST}) FROM STDIN"
_PG_MERGE = (f"INSERT INTO positions ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM positions_stage "
             "ON CONFLICT (device_id, fingerprint) DO NOTHING")
#: SQLSTATE of a unique violation.
_UNIQUE_VIOLATION = "23505"


class CopyRefused(Exception):
    """
    The server refused a COPY's data (not an outage: the batch is searched
    for what it refuses).
    """


def _refused_copy(error: BaseException, cursor) -> bool:
    """
    Whether a COPY failed because the server refused it, though the driver
    does not say why: psycopg2cffi (PyPy) reports every error of a COPY as an
    C{OperationalError} without its SQLSTATE, but with the server's message;
    with the connection still open and the guard not involved, the server
    answered, with a refusal.
    """
    return (getattr(error, "pgcode", None) is None and not isinstance(error, DatabaseUnavailable)
            and getattr(error, "pgerror", None) is not None and cursor.connection.closed == 0)


class _Submission:
    __slots__ = ("device_id", "protocol", "peer", "transport", "records", "received", "deferred",
                 "frame", "finished", "rows")

    def __init__(self, device_id, protocol, peer, transport, records, received, deferred, frame,
                 rows=None):
        self.rows = rows
        self.device_id = device_id
        self.protocol = protocol
        self.peer = peer
        self.transport = transport
        self.records = records
        self.received = received
        self.deferred = deferred
        self.frame = frame
        self.finished = False


class _Rejection:
    """
    A row of C{rejected_records} and the L{Deferred} that fires once it is
    committed (an ack may then go: the frame's bytes are kept).
    """

    __slots__ = ("row", "deferred", "finished")

    def __init__(self, row: dict, deferred):
        self.row = row
        self.deferred = deferred
        self.finished = False


def rejected_row(kind: str, reason: str, transport=None, peer=None, protocol=None, device_id=None,
                 frame: bytes = b"", detail=None, received=None) -> dict:
    """
    A row of C{rejected_records}, every value storable whatever it came from.
    """
    frame = bytes(frame or b"")
    return {"received_at": received or now(), "kind": kind,
            "transport": storable.text(transport, storable.TRANSPORT_MAX),
            "peer": storable.text(peer, storable.PEER_MAX),
            "protocol": storable.text(protocol, storable.PROTOCOL_MAX),
            "device_id": storable.text(device_id, 1024),
            "reason": storable.text(reason, 4096) or "",
            "detail": storable.text(detail, storable.ATTRIBUTE_TEXT_MAX),
            "length": len(frame), "data": frame[:REJECTED_BYTES]}


#: Device ids and texts (peers, protocol names) remembered as storable.
_MEMO_MAX = 10_000

#: Seconds a source (device, or peer without a device id) whose records the
#: database refused stays suspect: its frames are written apart from others'.
SUSPECT_SECONDS = 600.0
SUSPECTS_MAX = 10000
#: Bytes of a rejected frame kept.
REJECTED_BYTES = 64 * 1024


def outage(error: BaseException) -> bool:
    """
    Whether C{error} means the database is unreachable or not answering (retry
    the same work later), rather than that it refuses this work.
    """
    if isinstance(error, (OperationalError, InterfaceError, DatabaseUnavailable)):
        return True
    if isinstance(error, DBAPIError):
        error = error.orig
    try:
        import psycopg2
    except ImportError:
        return False
    return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))


#: What a PostgreSQL server says when the database URL itself is wrong: waiting
#: for the server would not help, so a gateway refuses to start on it.
_MISCONFIGURED = ("does not exist", "authentication failed", "no password supplied",
                  "could not translate host name", "invalid dsn", "no pg_hba.conf entry")


def misconfigured(error: BaseException) -> bool:
    """
    Whether C{error}, met while connecting, names a mistake in the database
    URL (unknown database, role or host, refused credentials) rather than a
    server that is down or does not answer.
    """
    text = str(getattr(error, "orig", None) or error).lower()
    return any(marker in text for marker in _MISCONFIGURED)


def position_row(device_id, protocol, record: Position, received: datetime,
                 attributes_json: Optional[str] = None) -> tuple:
    """
    A record as a row of L{POSITION_COLUMNS}; JSON columns already serialised.

    @param attributes_json: L{canonical_json} of the attributes, when the
        caller has it (L{storable.prepared}).
    """
    if attributes_json is None:
        attributes_json = canonical_json(record.attributes)
    return (device_id, protocol, record.time, received, record.latitude, record.longitude,
            bool(record.valid), record.speed_kmh, record.course, record.altitude_m,
            RawJson(json.dumps(list(record.alarm)) if record.alarm else "[]"), record.event,
            RawJson(attributes_json), record.fingerprint(attributes_json))


def _copy_text(value) -> str:
    """
    One value in PostgreSQL's COPY text format.
    """
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = (text.replace("\\", "\\\\").replace("\t", "\\t")
                .replace("\n", "\\n").replace("\r", "\\r"))
    return text


def _copy_line(row: tuple) -> str:
    """
    A row of L{POSITION_COLUMNS} as one line of COPY text.

    The writer thread is the gateway's bottleneck under load, so the columns
    whose types are fixed skip L{_copy_text}'s dispatch: times are datetimes,
    C{valid} a bool, and the JSON columns need only their backslashes doubled
    (JSON escapes every control character itself).
    """
    (device_id, protocol, time, server_time, latitude, longitude, valid, speed, course, altitude,
     alarm, event, attributes, fingerprint) = row
    return "\t".join((
        _copy_text(device_id), _copy_text(protocol),
        "\\N" if time is None else time.isoformat(), server_time.isoformat(),
        _copy_text(latitude), _copy_text(longitude), "t" if valid else "f",
        _copy_text(speed), _copy_text(course), _copy_text(altitude),
        alarm.replace("\\", "\\\\"), _copy_text(event), attributes.replace("\\", "\\\\"),
        fingerprint)) + "\n"


_NULL = "\\N"


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\") if "\\" in text else text


def copy_lines(device_id, protocol, prepared, received: datetime) -> List[str]:
    """
    The records of one frame as lines of COPY text, as L{_copy_line} of
    L{position_row} writes them, for a fraction of the cost: what is the same
    for every record of a frame is formatted once, and each number once for
    both its column and the fingerprint (L{Position.fingerprint}'s text).

    @param prepared: C{(record, attributes JSON)} pairs (L{storable.prepared}).
    """
    head = f"{_copy_text(device_id)}\t{_copy_text(protocol)}\t"
    server_time = received.isoformat()
    lines = []
    for record, attributes_json in prepared:
        time, alarm, event = record.time, record.alarm, record.event
        latitude, longitude, speed, course, altitude = (
            repr(record.latitude), repr(record.longitude), repr(record.speed_kmh), repr(record.course),
            repr(record.altitude_m))
        if time is None:
            time_text, stamp = _NULL, ""
        else:
            time_text = time.isoformat()
            # Position times are UTC: isoformat() is model.isoformat()'s text
            # with the offset and all six digits of the fraction.
            stamp = (isoformat(time) if time.tzinfo is not timezone.utc
                     else f"{time_text[:19]}.{time.microsecond // 1000:03d}Z" if time.microsecond
                     else f"{time_text[:19]}Z")
        digest = blake2b(
            f"{stamp}|{latitude}|{longitude}|{record.valid!r}|{speed}|{course}|{altitude}"
            f"|{','.join(alarm)}|{event or ''}|{attributes_json}".encode(), digest_size=16).hexdigest()
        # repr(None) is the fingerprint's text for a missing number; COPY's is \N.
        lines.append(
            f"{head}{time_text}\t{server_time}\t{_NULL if latitude == 'None' else latitude}\t"
            f"{_NULL if longitude == 'None' else longitude}\t{'t' if record.valid else 'f'}\t"
            f"{_NULL if speed == 'None' else speed}\t{_NULL if course == 'None' else course}\t"
            f"{_NULL if altitude == 'None' else altitude}\t"
            f"{_escaped(json.dumps(list(alarm))) if alarm else '[]'}\t{_copy_text(event)}\t"
            f"{_escaped(attributes_json)}\t{digest}\n")
    return lines


class _Work:
    """
    What the writer took from its queues for one transaction.
    """

    __slots__ = ("items", "touches", "learned", "unknown", "rejections")

    def __init__(self, items, touches, learned, unknown, rejections):
        self.items = items
        self.touches = touches
        self.learned = learned
        self.unknown = unknown
        self.rejections = rejections


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _record_json(record) -> str:
    try:
        return json.dumps(record.to_json(), default=repr, sort_keys=True)
    except Exception:
        return repr(record)


class Store:
    """
    The gateway's database: batched, ordered, single-writer.

    What the database refuses never blocks anyone else: a refused batch is split
    until the refused rows are alone; each is kept raw in C{rejected_records}
    with the reason, its frame counts as stored (it may be acked: its bytes are
    kept), and every other row is written.

    @ivar max_batch: records committed in one transaction at most.
    @ivar max_pending: records held in memory while the database is slow or
        down; beyond that, new frames are refused (not acked).
    @ivar prepare: called on the writer thread before anything is written (the
        schema migration), again and again until it succeeds: a gateway started
        while its database is down holds its devices (no acks) until then.
    @ivar ready: fires once L{prepare} succeeded, with its result.
    @ivar stop_grace: seconds L{stop} lets queued work be written; then every
        database call is ended and what is left fails (was never acked).
    """

    retry_delays = (0.2, 0.5, 1.0, 2.0, 5.0)
    wait_interval = 2.0
    stop_grace = 3.0

    def __init__(self, engine: Engine, reactor, max_batch: int = 5000,
                 max_pending: int = 200_000, prepare=None):
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reactor = reactor
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.prepare = prepare
        self.ready = Deferred()
        self.healthy = True
        self.committed = 0
        self.rejected = 0
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._pending = 0
        self._touches: Dict[str, tuple] = {}
        self._learned: List[tuple] = []
        self._unknown: List[dict] = []
        self._rejections: List[_Rejection] = []
        self._stopping = False
        self._giving_up = False
        self._conn = None
        self._known: set = set()
        self._ids: set = set()
        self._texts: Dict[Optional[str], tuple] = {}
        self._seen: Dict[str, tuple] = {}
        self._seen_flushed = 0.0
        self._down_since: Optional[float] = None
        self._suspects: Dict[tuple, float] = {}
        self._thread: Optional[threading.Thread] = None
        self._stopped: Optional[Deferred] = None
        self._stop_fired = False
        self._commit_listeners: List = []
        #: Called on the writer thread with the number of records of each
        #: committed batch (metrics), or L{None}.
        self.observe_batch = None

    # -- reactor side -----------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trackport-writer", daemon=True)
        self._thread.start()

    def stop(self) -> Deferred:
        """
        Write what is queued, for L{stop_grace} seconds at most, then stop the
        writer. Fires when it has.
        """
        with self._cond:
            self._stopped, self._stop_fired = Deferred(), False
            self._stopping = True
            self._cond.notify()
        guard = getattr(self.engine, "trackport_guard", None)
        if guard is not None:
            guard.close(self.stop_grace)
        if self._thread is None or not self._thread.is_alive():
            # The writer may have ended (and fired this) since it was told.
            self._abandon_queued()
            self._stopped_now()
        return self._stopped

    def submit(self, device_id: Optional[str], protocol: Optional[str], peer: str,
               records, received: Optional[datetime] = None, frame: bytes = b"",
               transport: Optional[str] = None, done=None) -> Optional[Deferred]:
        """
        Queue records of one frame, made storable (L{gateway.storable}); the
        L{Deferred} fires once they are committed (or, refused by the database,
        kept raw with C{frame}), or fails with L{Overloaded} / L{StoreStopped}.

        @param done: instead of a L{Deferred} (which a session pays for on
            every frame), called with L{None} or the exception, in the reactor
            thread; L{None} is returned.
        """
        error = None
        if self._stopping:
            error = StoreStopped("the gateway is stopping")
        elif device_id is not None and not (type(device_id) is str and device_id in self._ids) \
                and not self._is_id(device_id):
            error = ValueError(f"not a device id: {storable.text(device_id, 80)!r}")
        elif self._pending + len(records) > self.max_pending:
            error = Overloaded(f"{self._pending} records wait for the database (limit {self.max_pending})")
        if error is not None:
            if done is None:
                return fail(error)
            done(error)
            return None
        protocol = self._text(protocol, storable.PROTOCOL_MAX)
        received = received or now()
        # Rows are built here, on the reactor thread, so the writer thread
        # holds the interpreter lock for little more than the database call.
        prepared = [storable.prepared(r) for r in records]
        records = [r for r, _ in prepared]
        try:
            if self.dialect == "postgresql":
                rows = copy_lines(device_id, protocol, prepared, received)
            else:
                rows = [position_row(device_id, protocol, r, received, attributes_json)
                        for r, attributes_json in prepared]
        except Exception:
            rows = None  # the writer tries again record by record, and keeps what fails
        d = Deferred() if done is None else done
        with self._cond:
            self._queue.append(_Submission(
                device_id, protocol, self._text(peer, storable.PEER_MAX),
                transport, records, received, d, bytes(frame or b""), rows))
            self._pending += len(records)
            self._cond.notify()
        return d if done is None else None

    def _is_id(self, device_id) -> bool:
        # Ids found good are remembered: one set lookup a frame, not a match.
        if not storable.is_device_id(device_id):
            return False
        if len(self._ids) >= _MEMO_MAX:
            self._ids.clear()
        self._ids.add(device_id)
        return True

    def _text(self, value: Optional[str], limit: int) -> Optional[str]:
        # Peers and protocol names repeat frame after frame: made storable once.
        made = self._texts.get(value)
        if made is None:
            if len(self._texts) >= _MEMO_MAX:
                self._texts.clear()
            made = self._texts[value] = (limit, storable.text(value, limit))
        return made[1] if made[0] == limit else storable.text(value, limit)

    def reject(self, kind: str, reason: str, transport=None, peer=None, protocol=None,
               device_id=None, frame: bytes = b"", detail=None) -> Deferred:
        """
        Keep C{frame} raw in C{rejected_records} with the reason; the
        L{Deferred} fires once it is committed.
        """
        if self._stopping:
            return fail(StoreStopped("the gateway is stopping"))
        row = rejected_row(kind, reason, transport, peer, protocol, device_id, frame, detail)
        with self._cond:
            if self._pending + 1 > self.max_pending:
                return fail(Overloaded(
                    f"{self._pending} records wait for the database (limit {self.max_pending})"))
            d = Deferred()
            self._rejections.append(_Rejection(row, d))
            self._pending += 1
            self._cond.notify()
        return d

    def touch(self, device_id: str, protocol: Optional[str], transport: str, peer: str) -> None:
        """
        Note that a device spoke (last seen, peer); written with the next batch.
        """
        if not storable.is_device_id(device_id):
            return
        with self._cond:
            self._touches[device_id] = (storable.text(protocol, storable.PROTOCOL_MAX),
                                        storable.text(transport, storable.TRANSPORT_MAX),
                                        storable.text(peer, storable.PEER_MAX), now())
            self._cond.notify()

    def learn(self, device_id: str, settings: Mapping[str, str]) -> None:
        if not storable.is_device_id(device_id):
            return
        settings = {storable.text(k, storable.ATTRIBUTE_KEY_MAX): storable.text(v, storable.ATTRIBUTE_TEXT_MAX)
                    for k, v in settings.items()}
        with self._cond:
            self._learned.append((device_id, settings))
            self._cond.notify()

    def unknown(self, transport: str, peer: str, data: bytes, reason: Optional[str] = None) -> None:
        with self._cond:
            if len(self._unknown) < 1000:
                self._unknown.append({"received_at": now(),
                                      "transport": storable.text(transport, storable.TRANSPORT_MAX),
                                      "peer": storable.text(peer, storable.PEER_MAX),
                                      "length": len(data), "data": bytes(data[:1024]),
                                      "reason": reason})
                self._cond.notify()

    def add_commit_listener(self, fn) -> None:
        """
        Call C{fn()} in the reactor thread after each transaction that stored
        positions, so readers by cursor (forwarding, live feeds) need not poll.
        """
        self._commit_listeners.append(fn)

    @property
    def pending(self) -> int:
        return self._pending

    # -- writer thread ----------------------------------------------------

    def _log(self, level, text, **kw) -> None:
        self.reactor.callFromThread(getattr(log, level), text, **kw)

    def _take(self) -> Optional[_Work]:
        with self._cond:
            while not (self._queue or self._touches or self._learned or self._unknown or self._rejections):
                if self._stopping and (not self._seen or self._giving_up):
                    return None
                if self._seen:
                    # Last-seen data waits in the writer: come back to write it.
                    due = self._seen_flushed + SEEN_INTERVAL - _time.monotonic()
                    if due <= 0 or self._stopping:
                        return _Work([], {}, [], [], [])
                    self._cond.wait(due)
                else:
                    self._cond.wait()
            items, count = [], 0
            while self._queue and (count < self.max_batch or not items):
                item = self._queue.popleft()
                items.append(item)
                count += len(item.records)
            touches, self._touches = self._touches, {}
            learned, self._learned = self._learned, []
            unknown, self._unknown = self._unknown, []
            rejections, self._rejections = self._rejections, []
            return _Work(items, touches, learned, unknown, rejections)

    def _put_back(self, work: _Work) -> None:
        # Touches need no putting back: the writer merged them already.
        with self._cond:
            self._queue.extendleft(reversed([i for i in work.items if not i.finished]))
            self._learned[:0] = work.learned
            self._unknown[:0] = work.unknown
            self._rejections[:0] = [r for r in work.rejections if not r.finished]

    def _wait_ready(self) -> bool:
        """
        Run L{prepare} until it succeeds; L{False} if the gateway stopped first.
        """
        waiting = None
        while True:
            with self._cond:
                if self._stopping:
                    return False
            try:
                result = self.prepare()
            except Exception as e:
                error = storable.text(_first_line(e), 500)
                if waiting is None:
                    self._log("error", "waiting for the database ({error}); devices are held (no acks)"
                              " until it answers", error=error)
                    waiting = _time.monotonic()
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(self.wait_interval)
                continue
            if waiting is not None:
                self._log("info", "database answering after {seconds:.1f}s of waiting: storing begins",
                          seconds=_time.monotonic() - waiting)
            self.reactor.callFromThread(self.ready.callback, result)
            return True

    def _run(self) -> None:
        try:
            if self.prepare is None:
                self.reactor.callFromThread(self.ready.callback, None)
            elif not self._wait_ready():
                self._giving_up = True
            self._loop()
        finally:
            self._drop_connection()
            self._abandon_queued()
            self.reactor.callFromThread(self._stopped_now)

    def _loop(self) -> None:
        failures = 0
        while True:
            work = self._take()
            if work is None:
                return
            if self._giving_up:
                self._abandon(work, StoreStopped("the database did not answer at stop"))
                continue
            try:
                self._write_all(work)
            except Exception as e:
                if not outage(e):
                    # A bug, not the database: fail this work (no acks) and
                    # keep the writer alive for everyone else.
                    self._log("failure", "the writer failed on a batch; its frames are not acked",
                              failure=Failure(e))
                    self._abandon(work, e)
                    continue
                if self._stopping:
                    # Stopping is bounded whatever the database does: what
                    # is not written now was never acked, and fails.
                    self._giving_up = True
                    self._abandon(work, StoreStopped(f"database unavailable at stop: {_first_line(e)}"))
                    continue
                self._put_back(work)
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                failures += 1
                if self.healthy:
                    self._down_since = _time.monotonic()
                    self._log("error", "database not answering ({error}): {pending} records held,"
                              " no acks until it answers; retrying",
                              pending=self._pending, error=storable.text(_first_line(e), 500))
                self.healthy = False
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay)
                continue
            if not self.healthy:
                self._log("info", "database answering again after {seconds:.1f}s: writes resumed",
                          seconds=_time.monotonic() - (self._down_since or _time.monotonic()))
            self.healthy = True
            failures = 0

    def _abandon(self, work: _Work, error) -> None:
        self._finish([i for i in work.items if not i.finished], error)
        self._finish_rejections([r for r in work.rejections if not r.finished], error)

    def _abandon_queued(self) -> None:
        with self._cond:
            items, self._queue = list(self._queue), deque()
            rejections, self._rejections = self._rejections, []
        if items or rejections:
            self._abandon(_Work(items, {}, [], [], rejections), StoreStopped("the gateway stopped"))

    def _finish(self, items, error) -> None:
        items = [i for i in items if not i.finished]
        if not items:
            return
        for i in items:
            i.finished = True
        count = sum(len(i.records) for i in items)
        with self._cond:
            self._pending -= count
        if error is None:
            self.committed += count
            if count and self.observe_batch is not None:
                self.observe_batch(count)
        self.reactor.callFromThread(self._fire, [i.deferred for i in items], error)

    def _finish_rejections(self, rejections, error) -> None:
        rejections = [r for r in rejections if not r.finished]
        if not rejections:
            return
        for r in rejections:
            r.finished = True
        with self._cond:
            self._pending -= len(rejections)
        if error is None:
            self.rejected += len(rejections)
        self.reactor.callFromThread(self._fire, [r.deferred for r in rejections], error)

    @staticmethod
    def _fire(deferreds, error) -> None:
        for d in deferreds:
            if type(d) is not Deferred:
                try:
                    d(error)
                except Exception:
                    # One session's failure must not keep the others' acks.
                    log.failure("a session failed on its stored records")
            elif error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _stopped_now(self) -> None:
        # Called by stop() and by the ending writer; whichever comes second
        # (a test reactor runs the writer's call in its own thread) does nothing.
        with self._cond:
            stopped, fire = self._stopped, self._stopped is not None and not self._stop_fired
            self._stop_fired = self._stop_fired or fire
        if fire:
            stopped.callback(None)

    # -- writing ----------------------------------------------------------

    def _transaction(self, body, driver: bool = False) -> None:
        """
        Run C{body} in a transaction of the writer's connection and commit it;
        an outage drops the connection.

        @param driver: give C{body} the driver's connection (PostgreSQL's),
            and commit or roll back on it directly. The common batch is a
            COPY and a commit: SQLAlchemy's transaction bookkeeping around
            them is not needed, and costs the writer thread, the gateway's
            bottleneck, CPU on every batch. The guard watches the driver's
            calls either way.
        """
        guard = getattr(self.engine, "trackport_guard", None)
        if guard is not None:
            guard.take_trip()
        try:
            connection = self._connection()
            if driver:
                raw = connection.connection.driver_connection
                try:
                    body(raw)
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
            else:
                with connection.begin():
                    body(connection)
        except Exception as e:
            trip = guard.take_trip() if guard is not None else None
            if trip is not None:
                self._drop_connection()
                raise DatabaseUnavailable(trip) from e
            if outage(e):
                self._drop_connection()
            raise

    def _rows(self, items):
        rows = []
        devices: Dict[str, tuple] = {}
        for item in items:
            if item.rows is not None:
                rows.extend(item.rows)
            else:
                for record in item.records:
                    rows.append(position_row(item.device_id, item.protocol, record, item.received))
            if item.device_id is not None and item.device_id not in self._known:
                devices.setdefault(item.device_id, (item.protocol, None, None, item.received))
        return rows, devices

    def _write_all(self, work: _Work) -> None:
        self._seen.update(work.touches)
        work.touches = {}
        if self._suspects and any(self._suspect(i) for i in work.items):
            # A source whose records were refused lately: its frames go in
            # parts of their own from the start, not after a failed batch.
            self._isolate(work, known=False)
            return
        try:
            self._write(work)
        except Exception as e:
            if outage(e):
                raise
            # Not an outage but something the database refuses: find it, keep
            # it raw, write everything else.
            self._log("error", "the database refused a batch ({error}); isolating what it refuses",
                      error=storable.text(_first_line(e), 500))
            self._isolate(work, known=True)

    @staticmethod
    def _source(item: _Submission) -> tuple:
        return (item.device_id, None if item.device_id is not None else item.peer)

    def _suspect(self, item: _Submission) -> bool:
        since = self._suspects.get(self._source(item))
        if since is None:
            return False
        if _time.monotonic() - since > SUSPECT_SECONDS:
            del self._suspects[self._source(item)]
            return False
        return True

    def _suspected(self, item: _Submission) -> None:
        if len(self._suspects) >= SUSPECTS_MAX:
            self._suspects.clear()
        self._suspects[self._source(item)] = _time.monotonic()

    def _write(self, work: _Work) -> None:
        # Device rows: a device new to this writer gets its row in the batch
        # that carries its first records; afterwards last-seen data is merged
        # in memory and written at most once a second, not once per batch.
        rows, devices = self._rows(work.items)
        # Every device seen in the last second is looked up on every batch:
        # in C (issuperset), not in a Python loop.
        flush_seen = bool(self._seen) and (
            _time.monotonic() - self._seen_flushed >= SEEN_INTERVAL
            or not self._known.issuperset(self._seen))
        if flush_seen:
            devices.update(self._seen)

        def batch(raw):
            # What most batches are, on the driver's connection: what body()
            # below does when there is nothing to learn, keep or reject.
            cursor = raw.cursor()
            try:
                if rows and devices:
                    cursor.execute(ID_ORDER_STATEMENT)
                if devices:
                    _pg_upsert_devices(cursor, devices)
                if rows:
                    _pg_copy_positions(cursor, rows)
            finally:
                cursor.close()

        def body(connection):
            if (rows and devices) or work.learned:
                # Position ids and settings versions are drawn under this
                # lock, so they commit in order (gateway.ordering); first,
                # before any row lock: a writer that waits here holds nothing
                # another writer needs. (A batch of positions alone takes it
                # with its first statement: one round trip less.)
                serialize_ids(connection)
            if devices:
                self._upsert_devices(connection, devices)
            if rows:
                self._insert_positions(connection, rows)
            for device_id, settings in work.learned:
                merge_settings(connection, self.dialect, device_id, settings)
            if work.unknown:
                connection.execute(schema.unknown_frames.insert(), work.unknown)
            if work.rejections:
                connection.execute(schema.rejected_records.insert(), [r.row for r in work.rejections])

        if self.dialect == "postgresql" and not (work.learned or work.unknown or work.rejections):
            self._transaction(batch, driver=True)
        else:
            self._transaction(body)
        self._known.update(devices)
        if rows:
            for fn in self._commit_listeners:
                self.reactor.callFromThread(fn)
        if flush_seen:
            self._seen = {}
            self._seen_flushed = _time.monotonic()
        self._finish(work.items, None)
        self._finish_rejections(work.rejections, None)
        work.learned, work.unknown = [], []

    def _isolate(self, work: _Work, known: bool) -> None:
        """
        Write what the database accepts of C{work}, keep what it refuses.

        On PostgreSQL the search runs in one transaction, each attempt in a
        savepoint: a refused part costs a rollback to its savepoint, not a
        commit. SQLite (whose driver mishandles savepoints) commits each part.
        """
        if self.dialect != "postgresql":
            self._isolate_in(None, work, lambda action: action(), known)
            return
        actions = []

        def body(connection):
            del actions[:]
            self._isolate_in(connection, work, actions.append, known)

        try:
            self._transaction(body)
        except Exception as e:
            if outage(e):
                raise
            # Refused at commit (a deferred constraint): one transaction a part.
            self._log("error", "the database refused the commit ({error}); isolating part by part",
                      error=storable.text(_first_line(e), 500))
            self._isolate_in(None, work, lambda action: action(), known)
            return
        for action in actions:
            action()

    def _part(self, connection, write, part) -> None:
        """
        Write C{part}: in a savepoint of C{connection}, or (L{None}) in a
        transaction of its own.
        """
        if connection is None:
            self._transaction(lambda c: write(c, part))
        else:
            with connection.begin_nested():
                write(connection, part)

    def _bisect(self, connection, units, write, done, refused, after, parts=None) -> None:
        """
        Write C{units} in as few parts as the database allows: a part it
        refuses is halved until each refused unit is alone, and handed to
        C{refused(unit, error)}; C{after(lambda: done(part))} follows each
        part written. An outage is raised at once.
        """
        parts = deque(parts if parts is not None else [list(units)] if units else [])
        while parts:
            part = parts.popleft()
            try:
                self._part(connection, write, part)
            except Exception as e:
                if outage(e):
                    raise
                if len(part) > 1:
                    middle = len(part) // 2
                    parts.appendleft(part[middle:])
                    parts.appendleft(part[:middle])
                else:
                    refused(part[0], e)
                continue
            after(lambda part=part: done(part))

    def _isolate_in(self, connection, work: _Work, after, known: bool) -> None:
        """
        @param known: the whole batch was refused already: start from its
            halves. Frames of suspect sources start in parts of their own.
        """
        def write_items(c, items):
            rows, devices = self._rows(items)
            if devices:
                self._upsert_devices(c, devices)
            if rows:
                self._insert_positions(c, rows, nested=connection is not None)

        def items_done(items):
            self._known.update(i.device_id for i in items if i.device_id is not None)
            self._finish(items, None)

        items = [i for i in work.items if not i.finished]
        suspects = [i for i in items if self._suspects and self._suspect(i)]
        rest = [i for i in items if not (self._suspects and self._suspect(i))]
        if suspects:
            parts = ([rest] if rest else []) + [[i] for i in suspects]
        elif known and len(items) > 1:
            parts = [items[:len(items) // 2], items[len(items) // 2:]]
        else:
            parts = [items] if items else []
        self._bisect(connection, items, write_items, items_done,
                     lambda item, e: self._isolate_records(connection, item, e, after), after, parts)

        seen = list(self._seen.items())

        def seen_refused(entry, error):
            device_id, (protocol, transport, peer, when) = entry
            self._keep(connection, [rejected_row("last_seen", _first_line(error), transport, peer, protocol,
                                                 device_id, detail=json.dumps(entry, default=str))], after)

        self._bisect(connection, seen, lambda c, entries: self._upsert_devices(c, dict(entries)),
                     lambda entries: self._known.update(d for d, _ in entries), seen_refused, after)

        def write_learned(c, entries):
            for device_id, settings in entries:
                merge_settings(c, self.dialect, device_id, settings)

        def learned_refused(entry, error):
            device_id, settings = entry
            self._keep(connection, [rejected_row("settings", _first_line(error), device_id=device_id,
                                                 detail=json.dumps(settings, default=str))], after)

        self._bisect(connection, work.learned, write_learned, lambda part: None, learned_refused, after)

        def unknown_refused(row, error):
            self._log("error", "an unrecognised frame from {peer} could not be kept: {error}",
                      peer=row["peer"], error=storable.text(_first_line(error), 500))

        self._bisect(connection, work.unknown,
                     lambda c, rows: c.execute(schema.unknown_frames.insert(), rows),
                     lambda part: None, unknown_refused, after)

        self._bisect(connection, [r for r in work.rejections if not r.finished],
                     lambda c, rs: c.execute(schema.rejected_records.insert(), [r.row for r in rs]),
                     lambda rs: self._finish_rejections(rs, None),
                     lambda r, error: after(lambda: self._finish_rejections([r], error)), after)

        def cleared():
            self._seen = {}
            self._seen_flushed = _time.monotonic()
            work.learned, work.unknown = [], []

        after(cleared)

    def _isolate_records(self, connection, item: _Submission, error, after) -> None:
        """
        A frame the database refuses: write each of its records it accepts,
        keep the others raw with the reason; the frame then counts as stored.
        """
        refused = []
        pairs = []
        for record in item.records:
            try:
                pairs.append((record, position_row(item.device_id, item.protocol, record, item.received)))
            except Exception as e:
                refused.append((record, e))
        device = ({item.device_id: (item.protocol, None, None, item.received)}
                  if item.device_id is not None else {})

        def write(c, part):
            if device:
                self._upsert_devices(c, device)
            self._insert_positions(c, [row for _, row in part], nested=connection is not None)

        self._bisect(connection, pairs, write, lambda part: None,
                     lambda pair, e: refused.append((pair[0], e)), lambda action: None)
        if not refused:
            # Refused in a batch, accepted alone (a conflict with another row).
            after(lambda: self._finish([item], None))
            return
        self._suspected(item)

        def kept_or_not(kept):
            for record, e in refused:
                self._log("error", "{protocol} record of device {device_id} from {peer} refused by the"
                          " database ({reason}); {what}",
                          protocol=item.protocol, device_id=item.device_id, peer=item.peer,
                          reason=storable.text(_first_line(e), 500),
                          what="kept raw in rejected_records" if kept else "it could not be kept either: no ack")
            self._finish([item], None if kept else error)

        kept = self._keep(connection, [
            rejected_row("record", _first_line(e), item.transport, item.peer, item.protocol, item.device_id,
                         item.frame, _record_json(record), item.received)
            for record, e in refused], after)
        after(lambda: kept_or_not(kept))

    def _keep(self, connection, rows, after) -> bool:
        """
        Write rows of C{rejected_records} (in a part of their own).
        """
        def write(c, part):
            c.execute(schema.rejected_records.insert(), part)

        try:
            self._part(connection, write, rows)
        except Exception as e:
            if outage(e):
                raise
            self._log("error", "rejected rows could not be kept: {error}",
                      error=storable.text(_first_line(e), 500))
            return False

        def counted():
            self.rejected += len(rows)

        after(counted)
        return True

    def _connection(self):
        # The writer keeps one connection: no pool checkout (and pre-ping
        # round trip) per batch. A failed one is dropped and reopened.
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _insert_positions(self, connection, rows: list, nested: bool = False) -> None:
        """
        @param nested: in a savepoint, where the staging rows of an earlier
            part of the same transaction must not be merged again.
        """
        if self.dialect == "postgresql":
            cursor = connection.connection.driver_connection.cursor()
            try:
                _pg_copy_positions(cursor, rows, nested)
            finally:
                cursor.close()
        else:
            serialize_ids(connection)
            connection.execute(
                insert_ignoring(schema.positions, self.dialect, ("device_id", "fingerprint")),
                [dict(zip(POSITION_COLUMNS, row)) for row in rows])

    def _upsert_devices(self, connection, devices: Dict[str, tuple]) -> None:
        """
        Insert or refresh device rows: C{devices} maps an id to (protocol,
        transport, peer, time); a L{None} transport or peer keeps the stored one.
        """
        if self.dialect == "postgresql":
            cursor = connection.connection.driver_connection.cursor()
            try:
                _pg_upsert_devices(cursor, devices)
            finally:
                cursor.close()
            return
        rows = [(device_id, protocol, transport, when, when, peer)
                for device_id, (protocol, transport, peer, when) in devices.items()]
        from sqlalchemy.dialects.sqlite import insert

        d = schema.devices.c
        statement = insert(schema.devices)
        statement = statement.on_conflict_do_update(index_elements=["id"], set_={
            "protocol": statement.excluded.protocol,
            "transport": func.coalesce(statement.excluded.transport, d.transport),
            "last_seen": func.max(statement.excluded.last_seen, d.last_seen),
            "last_peer": func.coalesce(statement.excluded.last_peer, d.last_peer),
        })
        connection.execute(statement, [
            {"id": r[0], "protocol": r[1], "transport": r[2], "first_seen": r[3], "last_seen": r[4],
             "last_peer": r[5], "settings": {}} for r in rows])


def _pg_copy_positions(cursor, rows: list, nested: bool = False) -> None:
    """
    L{Store._insert_positions} on PostgreSQL, with a cursor of the driver.
    """
    # Every path that draws position ids holds the order lock (held once
    # already, it is taken again at little cost until the transaction ends).
    # A batch almost never holds a record stored already (one is sent
    # again only when its ack was lost), so it is COPYed straight into
    # positions: a bulk insert, half the backend's CPU of staging it
    # and merging with INSERT ... ON CONFLICT. A batch that does hold
    # one fails as a whole on the unique (device, fingerprint) index,
    # and is merged from a staging table instead. The savepoint is
    # left for the transaction's end to release (a round trip less);
    # the lock, taken before it, stays held if it is rolled back.
    # Rows of frames are COPY lines already (L{copy_lines}); rows
    # written record by record are tuples.
    text = "".join([row if type(row) is str else _copy_line(row) for row in rows])
    cursor.execute(_PG_TRY)
    try:
        cursor.copy_expert(_PG_COPY, io.StringIO(text))
    except Exception as e:
        if getattr(e, "pgcode", None) != _UNIQUE_VIOLATION and not _refused_copy(e, cursor):
            raise
        cursor.execute(_PG_UNDO)
        cursor.execute(_PG_STAGE)
        try:
            cursor.copy_expert(_PG_COPY_STAGE, io.StringIO(text))
        except Exception as e:
            if _refused_copy(e, cursor):
                raise CopyRefused(_first_line(e)) from e
            raise
        cursor.execute(_PG_MERGE)
        if nested:
            cursor.execute("DELETE FROM positions_stage")


def _pg_upsert_devices(cursor, devices: Dict[str, tuple]) -> None:
    """
    L{Store._upsert_devices} on PostgreSQL, with a cursor of the driver.
    """
    from psycopg2.extras import execute_values

    rows = [(device_id, protocol, transport, when, when, peer)
            for device_id, (protocol, transport, peer, when) in devices.items()]
    execute_values(cursor, _PG_UPSERT_DEVICES, rows, template=_PG_DEVICE_TEMPLATE, page_size=1000)


def merge_settings(connection, dialect: str, device_id: str, settings: Mapping[str, Optional[str]]) -> dict:
    """
    Merge C{settings} into a device's settings (a value of L{None} removes the
    key), creating the device row if needed. Returns the new settings.
    """
    serialize_ids(connection)
    current = connection.execute(
        select(schema.devices.c.settings).where(schema.devices.c.id == device_id)).scalar_one_or_none()
    merged = dict(current or {})
    for key, value in settings.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    stamp = now()
    if current is None:
        connection.execute(
            insert_ignoring(schema.devices, dialect, ("id",)),
            [{"id": device_id, "settings": merged, "settings_changed": stamp}])
    connection.execute(update(schema.devices).where(schema.devices.c.id == device_id)
                       .values(settings=merged, settings_changed=stamp,
                               settings_seq=next_settings_seq(connection)))
    return merged


def next_settings_seq(connection) -> int:
    """
    The next settings version, drawn under L{serialize_ids}: versions commit in
    the order they are drawn, so a reader's cursor (C{settings_seq > last})
    never skips a change that commits late.
    """
    serialize_ids(connection)
    return connection.execute(
        select(func.coalesce(func.max(schema.devices.c.settings_seq), 0) + 1)).scalar_one()


def load_settings(connection) -> Dict[str, dict]:
    """
    Settings of every device that has some.
    """
    query = select(schema.devices.c.id, schema.devices.c.settings).where(
        schema.devices.c.settings_changed.is_not(None))
    return {row.id: dict(row.settings or {}) for row in connection.execute(query)}


def settings_after(connection, after: int):
    """
    Devices whose settings or known flag changed after version C{after}:
    C{({id: (settings, known)}, last version)}.
    """
    d = schema.devices.c
    rows = connection.execute(select(d.id, d.settings, d.known, d.settings_seq)
                              .where(d.settings_seq > after).order_by(d.settings_seq)).all()
    last = max((r.settings_seq for r in rows), default=after)
    return {r.id: (dict(r.settings or {}), bool(r.known)) for r in rows}, last


def add_known(connection, dialect: str, device_id: str, protocol: Optional[str]) -> None:
    """
    Mark a device as added by an operator (C{--devices known} admits it).
    """
    serialize_ids(connection)
    connection.execute(insert_ignoring(schema.devices, dialect, ("id",)),
                       [{"id": device_id, "settings": {}, "protocol": protocol}])
    values = {"known": True, "settings_seq": next_settings_seq(connection)}
    if protocol:
        values["protocol"] = protocol
    connection.execute(update(schema.devices).where(schema.devices.c.id == device_id).values(**values))
