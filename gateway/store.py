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

from gateway import schema
from gateway.model import Position, canonical_json

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


def database_url(given: Optional[str] = None) -> str:
    """
    C{--db}, else C{$TRACKPORT_DB}, else C{sqlite:///trackport.db} in the working
    directory.
    """
    return given or os.environ.get("TRACKPORT_DB") or DEFAULT_DB


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


def engine_for(url: str, busy_timeout: float = 30.0, **options) -> Engine:
    """
    An engine with the settings trackport relies on: WAL and full sync for
    SQLite (a committed record survives a crash), pre-ping for PostgreSQL (a
    restarted server is reconnected to).
    """
    url = driver_url(url)
    if url.get_backend_name() == "sqlite":
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
    settings = dict(pool_pre_ping=True, pool_size=4, max_overflow=4)
    settings.update(options)
    return create_engine(url, json_serializer=_json_serializer, **settings)


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
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7718001)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


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
_PG_STAGE = ("CREATE TEMPORARY TABLE IF NOT EXISTS positions_stage ON COMMIT DELETE ROWS AS "
             f"SELECT {_COLUMN_LIST} FROM positions WITH NO DATA")
_PG_COPY = f"COPY positions_stage ({_COLUMN_LIST}) FROM STDIN"
_PG_MERGE = (f"INSERT INTO positions ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM positions_stage "
             "ON CONFLICT (device_id, fingerprint) DO NOTHING")


class _Submission:
    __slots__ = ("device_id", "protocol", "records", "received", "deferred")

    def __init__(self, device_id, protocol, records, received, deferred):
        self.device_id = device_id
        self.protocol = protocol
        self.records = records
        self.received = received
        self.deferred = deferred


def position_row(device_id, protocol, record: Position, received: datetime) -> tuple:
    """
    A record as a row of L{POSITION_COLUMNS}; JSON columns already serialised.
    """
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


class Store:
    """
    The gateway's database: batched, ordered, single-writer.

    @ivar max_batch: records committed in one transaction at most.
    @ivar max_pending: records held in memory while the database is slow or
        down; beyond that, new frames are refused (not acked).
    """

    retry_delays = (0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, engine: Engine, reactor, max_batch: int = 5000,
                 max_pending: int = 200_000):
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reactor = reactor
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.healthy = True
        self.committed = 0
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._pending = 0
        self._touches: Dict[str, tuple] = {}
        self._learned: List[tuple] = []
        self._unknown: List[dict] = []
        self._stopping = False
        self._conn = None
        self._known: set = set()
        self._seen: Dict[str, tuple] = {}
        self._seen_flushed = 0.0
        self._thread: Optional[threading.Thread] = None
        self._stopped: Optional[Deferred] = None
        self._commit_listeners: List = []
        #: Called on the writer thread with the number of records of each
        #: committed batch (metrics), or L{None}.
        self.observe_batch = None

    def add_commit_listener(self, listener) -> None:
        """
        Call C{listener()} in the reactor thread after each transaction that
        stored records; readers then query what is new themselves.
        """
        self._commit_listeners.append(listener)

    # -- reactor side -----------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trackport-writer", daemon=True)
        self._thread.start()

    def stop(self) -> Deferred:
        """
        Write what is queued, then stop the writer. Fires when it has.
        """
        self._stopped = Deferred()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is None or not self._thread.is_alive():
            self._stopped.callback(None)
        return self._stopped

    def submit(self, device_id: Optional[str], protocol: Optional[str], peer: str,
               records, received: Optional[datetime] = None) -> Deferred:
        """
        Queue records of one frame; the L{Deferred} fires once they are
        committed, or fails with L{Overloaded} / L{StoreStopped}.
        """
        if self._stopping:
            return fail(StoreStopped("the gateway is stopping"))
        records = list(records)
        with self._cond:
            if self._pending + len(records) > self.max_pending:
                return fail(Overloaded(
                    f"{self._pending} records wait for the database (limit {self.max_pending})"))
            d = Deferred()
            self._queue.append(_Submission(device_id, protocol, records, received or now(), d))
            self._pending += len(records)
            self._cond.notify()
        return d

    def touch(self, device_id: str, protocol: Optional[str], transport: str, peer: str) -> None:
        """
        Note that a device spoke (last seen, peer); written with the next batch.
        """
        with self._cond:
            self._touches[device_id] = (protocol, transport, peer, now())
            self._cond.notify()

    def learn(self, device_id: str, settings: Mapping[str, str]) -> None:
        with self._cond:
            self._learned.append((device_id, dict(settings)))
            self._cond.notify()

    def unknown(self, transport: str, peer: str, data: bytes) -> None:
        with self._cond:
            if len(self._unknown) < 1000:
                self._unknown.append({"received_at": now(), "transport": transport, "peer": peer,
                                      "length": len(data), "data": bytes(data[:1024])})
                self._cond.notify()

    @property
    def pending(self) -> int:
        return self._pending

    # -- writer thread ----------------------------------------------------

    def _take(self):
        with self._cond:
            while not (self._queue or self._touches or self._learned or self._unknown):
                if self._stopping and not self._seen:
                    return None
                if self._seen:
                    # Last-seen data waits in the writer: come back to write it.
                    due = self._seen_flushed + SEEN_INTERVAL - _time.monotonic()
                    if due <= 0 or self._stopping:
                        return [], {}, [], []
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
            return items, touches, learned, unknown

    def _put_back(self, items, touches, learned, unknown) -> None:
        # Touches need no putting back: the writer merged them already.
        with self._cond:
            self._queue.extendleft(reversed(items))
            self._learned[:0] = learned
            self._unknown[:0] = unknown

    def _run(self) -> None:
        failures = 0
        while True:
            work = self._take()
            if work is None:
                break
            items, touches, learned, unknown = work
            try:
                self._write(items, touches, learned, unknown)
            except (OperationalError, InterfaceError) as e:
                if self._stopping and failures >= 2:
                    self._finish(items, StoreStopped(f"database unavailable at stop: {e}"))
                    continue
                self._put_back(items, touches, learned, unknown)
                delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
                failures += 1
                if self.healthy or failures % 10 == 1:
                    self.reactor.callFromThread(
                        log.error, "database write failed ({pending} records held, retry in {delay}s): {error}",
                        pending=self._pending, delay=delay, error=str(e).splitlines()[0])
                self.healthy = False
                _time.sleep(delay)
                continue
            except Exception as e:
                # Not an outage but a row the database refuses: write frame by
                # frame so one bad frame cannot hold back the others.
                self.reactor.callFromThread(log.error, "batch refused, retrying frame by frame: {e!r}", e=e)
                self._write_each(items)
                failures = 0
                continue
            if not self.healthy:
                self.reactor.callFromThread(log.info, "database writes resumed")
            self.healthy = True
            failures = 0
            self._finish(items, None)
        self._drop_connection()
        self.reactor.callFromThread(self._stopped_now)

    def _write_each(self, items) -> None:
        for item in items:
            try:
                self._write([item], {}, [], [])
            except Exception as e:
                self._finish([item], e)
            else:
                self._finish([item], None)

    def _finish(self, items, error) -> None:
        count = sum(len(i.records) for i in items)
        with self._cond:
            self._pending -= count
        if error is None:
            self.committed += count
            if count and self.observe_batch is not None:
                self.observe_batch(count)
        self.reactor.callFromThread(self._fire, [i.deferred for i in items], error)
        if error is None and count and self._commit_listeners:
            self.reactor.callFromThread(self._committed)

    def _committed(self) -> None:
        for listener in self._commit_listeners:
            listener()

    @staticmethod
    def _fire(deferreds, error) -> None:
        for d in deferreds:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _stopped_now(self) -> None:
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def _write(self, items, touches, learned, unknown) -> None:
        # Device rows: a device new to this writer gets its row in the batch
        # that carries its first records; afterwards last-seen data is merged
        # in memory and written at most once a second, not once per batch.
        self._seen.update(touches)
        rows = []
        devices: Dict[str, tuple] = {}
        for item in items:
            for record in item.records:
                rows.append(position_row(item.device_id, item.protocol, record, item.received))
            if item.device_id is not None and item.device_id not in self._known:
                devices.setdefault(item.device_id, (item.protocol, None, None, item.received))
        flush_seen = bool(self._seen) and (
            _time.monotonic() - self._seen_flushed >= SEEN_INTERVAL
            or any(d not in self._known for d in self._seen))
        if flush_seen:
            devices.update(self._seen)
        connection = self._connection()
        try:
            with connection.begin():
                if devices:
                    self._upsert_devices(connection, devices)
                if rows:
                    self._insert_positions(connection, rows)
                for device_id, settings in learned:
                    merge_settings(connection, self.dialect, device_id, settings)
                if unknown:
                    connection.execute(schema.unknown_frames.insert(), unknown)
        except (OperationalError, InterfaceError):
            self._drop_connection()
            raise
        self._known.update(devices)
        if flush_seen:
            self._seen = {}
            self._seen_flushed = _time.monotonic()

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

    def _insert_positions(self, connection, rows: List[tuple]) -> None:
        if self.dialect == "postgresql":
            # SQLAlchemy (and psycopg2's executemany) run INSERT ... ON CONFLICT
            # row by row. COPY into a per-connection staging table and one
            # INSERT ... SELECT does the same in two statements, for a small
            # fraction of the CPU; the staging rows vanish at commit.
            text = "".join(map(_copy_line, rows))
            cursor = connection.connection.driver_connection.cursor()
            try:
                cursor.execute(_PG_STAGE)
                cursor.copy_expert(_PG_COPY, io.StringIO(text))
                cursor.execute(_PG_MERGE)
            finally:
                cursor.close()
        else:
            connection.execute(
                insert_ignoring(schema.positions, self.dialect, ("device_id", "fingerprint")),
                [dict(zip(POSITION_COLUMNS, row)) for row in rows])

    def _upsert_devices(self, connection, devices: Dict[str, tuple]) -> None:
        """
        Insert or refresh device rows: C{devices} maps an id to (protocol,
        transport, peer, time); a L{None} transport or peer keeps the stored one.
        """
        rows = [(device_id, protocol, transport, when, when, peer)
                for device_id, (protocol, transport, peer, when) in devices.items()]
        if self.dialect == "postgresql":
            from psycopg2.extras import execute_values

            cursor = connection.connection.driver_connection.cursor()
            try:
                execute_values(cursor, _PG_UPSERT_DEVICES, rows, template=_PG_DEVICE_TEMPLATE,
                               page_size=1000)
            finally:
                cursor.close()
            return
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


def merge_settings(connection, dialect: str, device_id: str, settings: Mapping[str, Optional[str]]) -> dict:
    """
    Merge C{settings} into a device's settings (a value of L{None} removes the
    key), creating the device row if needed. Returns the new settings.
    """
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
                       .values(settings=merged, settings_changed=stamp))
    return merged


def load_settings(connection, since: Optional[datetime] = None) -> Dict[str, dict]:
    """
    Settings of every device (changed after C{since}, when given).
    """
    query = select(schema.devices.c.id, schema.devices.c.settings)
    if since is not None:
        query = query.where(schema.devices.c.settings_changed > since)
    else:
        query = query.where(schema.devices.c.settings_changed.is_not(None))
    return {row.id: dict(row.settings or {}) for row in connection.execute(query)}
