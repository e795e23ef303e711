# -*- test-case-name: tests.test_commands_e2e -*-
"""
Commands to devices: a durable queue in the C{commands} table, delivered on the
device's live session, matched with the device's confirmation.

Life cycle: C{queued} -> C{sent} -> C{confirmed} | C{failed} | C{expired};
a queued command may also end C{expired}, C{failed} (no encoder, encoder
refused) or C{cancelled} (by the operator, or an C{engine_resume} superseding
it), or wait (C{waiting}, the reason in C{error}) while the device's identity
is in doubt (L{gateway.identity}). Every transition is timestamped and writes
a C{command_events} row in the same transaction.

A command is claimed (C{queued} -> C{sent}, one atomic UPDATE) before its bytes
are written, so two gateway processes, or one process delivering on two paths,
never send it twice. It records the session it was written on: only a reply on
that session confirms it. Two commands of one device waiting for a reply never
share a matching token: the second waits until the first is answered (or
expires), and is encoded again then.
"""

from __future__ import annotations

import select
import threading
from datetime import datetime, timedelta, timezone
from typing import Mapping, Optional

from sqlalchemy import and_, or_, select as sql_select, update
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import schema
from gateway.hexdump import hexdump, printable
from gateway.interfaces import EncodeError
from gateway.model import COMMAND_STATUSES, COMMAND_TYPES, Command
from gateway.ordering import serialize_ids
from gateway.registry import encoder_for
from gateway.store import insert_ignoring, utc

log = Logger()

#: PostgreSQL channel a new command is announced on.
CHANNEL = "trackport_commands"

#: Seconds a command may wait for delivery (and its confirmation) by default.
#: An engine stop that could not be delivered in ten minutes must not cut an
#: engine hours later, when the vehicle may be on a motorway; a custom command
#: may be an engine stop (the gateway does not guess), so it gets the same.
DEFAULT_TTL = {
    "engine_stop": 600,
    "engine_resume": 86400,
    "custom": 600,
}
OTHER_TTL = 3600

#: What an C{engine_resume} cancels while still queued or waiting: whatever
#: could stop the engine after it.
STOPPING = ("engine_stop", "custom")

#: Seconds a command waiting for its reply holds back the next command with
#: the same matching token: a device that never answers must not block its
#: queue until the command expires.
REPLY_WAIT = 60

STATUSES = COMMAND_STATUSES
#: Not yet written to any session.
UNSENT = ("queued", "waiting")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def transition(connection, where, status: str, detail: Optional[str] = None,
               at: Optional[datetime] = None, **values):
    """
    Move the commands matching C{where} to C{status} and record one
    C{command_events} row per command moved, in the caller's transaction.
    Returns the moved rows (C{id}, C{device_id}, C{type}).
    """
    serialize_ids(connection)
    c = schema.commands.c
    at = at or _now()
    rows = connection.execute(
        update(schema.commands).where(*where).values(status=status, **values)
        .returning(c.id, c.device_id, c.type)).all()
    if rows:
        connection.execute(schema.command_events.insert(), [
            {"command_id": r.id, "device_id": r.device_id, "type": r.type, "status": status,
             "at": at, "detail": detail} for r in rows])
    return rows


def enqueue(engine, device_id: str, type_: str, params: Mapping[str, str],
            ttl: Optional[float] = None, supported=None) -> int:
    """
    Queue a command; return its id.

    @param supported: a callable C{protocol -> frozenset of command types or
        None} telling what the device's protocol can encode; when the device is
        known and its protocol cannot encode C{type_}, the command is stored as
        C{failed} at once, with the reason.
    """
    if type_ not in COMMAND_TYPES:
        raise ValueError(f"unknown command {type_!r}; one of: {', '.join(sorted(COMMAND_TYPES))}")
    if type_ == "custom" and not ({"text", "hex"} & set(params)):
        raise ValueError("custom needs --param text=... or --param hex=...")
    if type_ == "set_interval" and "seconds" not in params:
        raise ValueError("set_interval needs --param seconds=N")
    if ttl is not None and not ttl > 0:
        raise ValueError(f"--ttl must be a positive number of seconds, not {ttl}")
    now = _now()
    ttl = DEFAULT_TTL.get(type_, OTHER_TTL) if ttl is None else ttl
    row = {"device_id": device_id, "type": type_, "params": dict(params), "status": "queued",
           "created_at": now, "expires_at": now + timedelta(seconds=ttl)}
    c = schema.commands.c
    with engine.begin() as connection:
        serialize_ids(connection)
        protocol = connection.execute(
            sql_select(schema.devices.c.protocol).where(schema.devices.c.id == device_id)
        ).scalar_one_or_none()
        if protocol and supported is not None:
            types = supported(protocol)
            if types is None or type_ not in types:
                row.update(status="failed", finished_at=now,
                           error=f"protocol {protocol} has no encoder for {type_}"
                           + ("" if types is None else f" (it supports: {', '.join(sorted(types)) or 'none'})"))
        command_id = connection.execute(schema.commands.insert().values(**row)).inserted_primary_key[0]
        connection.execute(schema.command_events.insert().values(
            command_id=command_id, device_id=device_id, type=type_, status=row["status"], at=now,
            detail=row.get("error")))
        if type_ == "engine_resume" and row["status"] == "queued":
            reason = f"cancelled by engine_resume #{command_id}"
            transition(connection, (c.device_id == device_id, c.type.in_(STOPPING),
                                    c.status.in_(UNSENT), c.id != command_id),
                       "cancelled", reason, now, finished_at=now, error=reason)
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"NOTIFY {CHANNEL}")
    return command_id


def cancel(engine, command_id: int) -> Optional[str]:
    """
    Cancel a command not yet sent. Returns L{None} when it was cancelled, else
    why not.
    """
    c = schema.commands.c
    now = _now()
    with engine.begin() as connection:
        moved = transition(connection, (c.id == command_id, c.status.in_(UNSENT)), "cancelled",
                           "cancelled by the operator", now, finished_at=now,
                           error="cancelled by the operator")
        if moved:
            return None
        status = connection.execute(sql_select(c.status).where(c.id == command_id)).scalar_one_or_none()
    if status is None:
        return f"no command {command_id}"
    return f"command {command_id} is {status}: only a queued or waiting command can be cancelled"


def list_commands(engine, device_id: Optional[str] = None, limit: int = 1000,
                  status: Optional[str] = None):
    query = sql_select(schema.commands).order_by(schema.commands.c.id.desc()).limit(limit)
    if device_id:
        query = query.where(schema.commands.c.device_id == device_id)
    if status:
        query = query.where(schema.commands.c.status == status)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [command_json(r) for r in reversed(rows)]


def command_json(row) -> dict:
    from gateway.model import isoformat

    return {
        "id": row["id"], "device_id": row["device_id"], "type": row["type"],
        "params": row["params"], "status": row["status"],
        "created_at": isoformat(utc(row["created_at"])),
        "expires_at": isoformat(utc(row["expires_at"])),
        "sent_at": isoformat(utc(row["sent_at"])),
        "confirmed_at": isoformat(utc(row["confirmed_at"])),
        "finished_at": isoformat(utc(row["finished_at"])),
        "reply": row["reply"], "error": row["error"], "session": row["session"],
        "data_hex": row["data"].hex() if row["data"] else None,
    }


class CommandQueue(Service):
    """
    Delivers queued commands to devices connected to this process.

    Every C{interval} seconds (and at once on PostgreSQL, through
    LISTEN/NOTIFY) it reads which devices have commands not yet sent: a
    query of the current state, not a cursor, so a command whose transaction
    commits late is never skipped. Queued commands of a device are also
    delivered when it identifies itself and after each of its frames.

    @ivar pending: ids of devices with commands queued or waiting.
    """

    def __init__(self, hub, engine, reactor, interval: float = 1.0):
        self.hub = hub
        self.engine = engine
        self.reactor = reactor
        self.interval = interval
        self.pending: set = set()
        #: Open sessions a command was written on (or is being claimed for):
        #: only theirs can hold commands sent and unanswered (see L{moved}).
        self._written: dict = {}
        self._busy: set = set()
        self._again: set = set()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = hub.clock
        self._listener: Optional[threading.Thread] = None
        self._stop_listening = threading.Event()
        self._polling = False

    # -- service ----------------------------------------------------------

    def startService(self):
        super().startService()
        self.pending = self._pending_devices()
        self._loop.start(self.interval, now=False)
        if self.engine.dialect.name == "postgresql":
            self._listener = threading.Thread(target=self._listen, name="trackport-listen", daemon=True)
            self._listener.start()

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._stop_listening.set()
        # The conflicts this process saw end with its sessions.
        return defer.DeferredList([threads.deferToThread(self._set_conflict, device_id, None)
                                   for device_id in list(self.hub.conflicts)], consumeErrors=True)

    def _listen(self) -> None:
        # LISTEN on a dedicated connection; each NOTIFY wakes the poll at once.
        while not self._stop_listening.is_set():
            try:
                raw = self.engine.raw_connection()
                try:
                    dbapi = raw.driver_connection
                    dbapi.set_isolation_level(0)
                    with dbapi.cursor() as cursor:
                        cursor.execute(f"LISTEN {CHANNEL}")
                    while not self._stop_listening.is_set():
                        if select.select([dbapi], [], [], 1.0)[0]:
                            dbapi.poll()
                            if dbapi.notifies:
                                dbapi.notifies.clear()
                                self.reactor.callFromThread(self.poll)
                finally:
                    raw.invalidate()
            except Exception as e:
                self.reactor.callFromThread(log.warn, "LISTEN connection lost: {e}", e=e)
                self._stop_listening.wait(2.0)

    # -- what the hub calls -----------------------------------------------

    def device_online(self, device_id: str) -> None:
        if device_id in self.pending:
            self.deliver(device_id)

    device_active = device_online

    def confirmed(self, session, device_id: str, confirmations) -> None:
        for confirmation in confirmations:
            d = threads.deferToThread(self._confirm, session.key, device_id, confirmation)
            d.addErrback(lambda f: log.failure("recording a command reply failed", f))

    def conflict(self, device_id: str, text: Optional[str]) -> None:
        """
        Record (or clear, with C{text} L{None}) an identity conflict on the
        device's row, and show its commands' new state.
        """
        d = threads.deferToThread(self._set_conflict, device_id, text)
        d.addErrback(lambda f: log.failure("recording an identity conflict failed", f))
        d.addCallback(lambda _: self.deliver(device_id) if device_id in self.pending else None)

    def moved(self, device_id: str, gone, holder) -> None:
        """
        The session holding C{device_id} closed (or speaks for another device):
        its commands sent but unanswered go again, on C{holder}.
        """
        if gone not in self._written:
            # No command was ever written on it (a UDP peer forgotten after
            # its device moved on to a new port, most often): none to move,
            # and no database round trip to find that out.
            if device_id in self.pending:
                self.deliver(device_id)
            return
        if not gone.open:
            del self._written[gone]
        detail = (f"moved: session {gone.transport} {gone.peer} closed before a reply;"
                  f" to {holder.transport} {holder.peer}")
        d = threads.deferToThread(self._requeue, gone.key, detail)

        def done(count):
            if count:
                log.info("{count} unanswered commands of {device_id} moved to {peer}",
                         count=count, device_id=printable(device_id), peer=holder.peer)
                self.pending.add(device_id)
            if device_id in self.pending:
                self.deliver(device_id)

        d.addCallback(done)
        d.addErrback(lambda f: log.failure("moving commands of {device_id} failed", f,
                                           device_id=printable(device_id)))

    # -- polling ----------------------------------------------------------

    @defer.inlineCallbacks
    def poll(self):
        """
        Expire overdue commands and deliver those of connected devices.
        """
        self.hub.review()
        for session in [s for s in self._written if not s.open]:
            # Closed with nobody left to move its commands to (they expire).
            del self._written[session]
        if self._polling:
            return
        self._polling = True
        try:
            yield threads.deferToThread(self._expire)
            self.pending = yield threads.deferToThread(self._pending_devices)
        except Exception as e:
            log.warn("command poll failed: {e}", e=e)
            return
        finally:
            self._polling = False
        for device_id in self.pending:
            if self.hub.sessions.get(device_id) is not None:
                self.deliver(device_id)

    def _expire(self) -> None:
        now = _now()
        c = schema.commands.c
        with self.engine.begin() as connection:
            transition(connection, (c.expires_at < now, or_(
                c.status.in_(UNSENT), and_(c.status == "sent", c.finished_at.is_(None)))),
                "expired", "its TTL passed", now, finished_at=now)

    def _pending_devices(self) -> set:
        c = schema.commands.c
        with self.engine.connect() as connection:
            return set(connection.execute(
                sql_select(c.device_id).distinct().where(c.status.in_(UNSENT))).scalars())

    # -- delivery ---------------------------------------------------------

    def deliver(self, device_id: str) -> None:
        """
        Send the device's queued commands, oldest first, on the session that
        holds it, unless its identity is in doubt.
        """
        if device_id in self._busy:
            self._again.add(device_id)
            return
        self._busy.add(device_id)
        d = self._deliver(device_id)

        def done(_):
            self._busy.discard(device_id)
            if device_id in self._again:
                self._again.discard(device_id)
                self.deliver(device_id)

        d.addErrback(lambda f: log.failure("delivering commands to {device_id} failed", f,
                                           device_id=printable(device_id)))
        d.addBoth(done)

    @defer.inlineCallbacks
    def _deliver(self, device_id: str):
        rows = yield threads.deferToThread(self._queued, device_id)
        if not rows:
            self.pending.discard(device_id)
            return
        for row in rows:
            route = self.hub.claims.route(device_id)
            session = route.session
            if session is None or not session.open:
                return
            reason = route.reason(row["type"])
            if reason is not None:
                if row["status"] != "waiting" or row["error"] != reason:
                    yield threads.deferToThread(self._hold, row["id"], reason)
                continue
            command = Command(row["id"], device_id, row["type"], row["params"] or {})
            encoder = encoder_for(session.decoder)
            if encoder is None:
                yield self._fail(command, f"protocol {session.protocol} has no command encoder")
                continue
            if command.type not in encoder.commands:
                yield self._fail(command, f"protocol {session.protocol} has no encoder for {command.type}"
                                 f" (it supports: {', '.join(sorted(encoder.commands))})")
                continue
            session.context.device_id = device_id
            try:
                encoded = encoder.encode(command, session.context)
            except EncodeError as e:
                yield self._fail(command, f"encoder refused: {e}")
                continue
            except Exception as e:
                log.failure("encoder {protocol} failed on command {id}", protocol=session.protocol,
                            id=command.id)
                yield self._fail(command, f"encoder failed: {e!r}")
                continue
            self._written[session] = None
            claimed = yield threads.deferToThread(self._claim, command, encoded, session)
            if not claimed:
                # Its token is in flight (or another process took it): the
                # rest keeps its order and goes with it on a later poll.
                return
            if session.send(encoded.data):
                log.info("command {id} {type} sent to {device_id} on {transport} {peer}: {hex}",
                         id=command.id, type=command.type, device_id=printable(device_id),
                         transport=session.transport, peer=session.peer, hex=hexdump(encoded.data))
            else:
                yield threads.deferToThread(self._unclaim, command.id)
                return

    def _queued(self, device_id: str):
        c = schema.commands.c
        with self.engine.connect() as connection:
            return connection.execute(
                sql_select(schema.commands)
                .where(c.device_id == device_id, c.status.in_(UNSENT), c.expires_at >= _now())
                .order_by(c.id)).mappings().all()

    def _hold(self, command_id: int, reason: str) -> None:
        c = schema.commands.c
        with self.engine.begin() as connection:
            transition(connection, (c.id == command_id, c.status.in_(UNSENT)), "waiting", reason,
                       error=reason)

    def _claim(self, command: Command, encoded, session) -> bool:
        now = _now()
        c = schema.commands.c
        values = {"sent_at": now, "data": encoded.data, "token": encoded.token,
                  "session": session.key, "error": None}
        if not encoded.expects_reply:
            values["finished_at"] = now
        with self.engine.begin() as connection:
            serialize_ids(connection)
            if encoded.expects_reply:
                # A reply is matched by its token (or, with none, by being the
                # oldest unanswered): two commands in flight with one token
                # could each take the other's reply. Try again next poll.
                same = c.token.is_(None) if encoded.token is None else c.token == encoded.token
                busy = connection.execute(sql_select(c.id).where(
                    c.device_id == command.device_id, c.status == "sent", c.finished_at.is_(None),
                    c.expires_at >= now, c.sent_at >= now - timedelta(seconds=REPLY_WAIT),
                    same).limit(1)).scalar_one_or_none()
                if busy is not None:
                    return False
            return bool(transition(
                connection, (c.id == command.id, c.status.in_(UNSENT), c.expires_at >= now),
                "sent", f"on {session.transport} {session.peer}", now, **values))

    def _unclaim(self, command_id: int) -> None:
        c = schema.commands.c
        with self.engine.begin() as connection:
            transition(connection, (c.id == command_id, c.status == "sent"), "queued",
                       "the session closed before the bytes were written",
                       sent_at=None, data=None, token=None, finished_at=None, session=None)

    def _requeue(self, session_key: str, detail: str) -> int:
        c = schema.commands.c
        now = _now()
        with self.engine.begin() as connection:
            return len(transition(
                connection, (c.session == session_key, c.status == "sent", c.finished_at.is_(None),
                             c.expires_at >= now),
                "queued", detail, now, sent_at=None, data=None, token=None, session=None))

    @defer.inlineCallbacks
    def _fail(self, command: Command, reason: str):
        log.warn("command {id} {type} for {device_id} failed: {reason}", id=command.id,
                 type=command.type, device_id=printable(command.device_id), reason=reason)
        c = schema.commands.c

        def write():
            now = _now()
            with self.engine.begin() as connection:
                transition(connection, (c.id == command.id, c.status.in_(UNSENT)), "failed", reason,
                           now, finished_at=now, error=reason)

        yield threads.deferToThread(write)

    def _set_conflict(self, device_id: str, text: Optional[str]) -> None:
        d = schema.devices.c
        with self.engine.begin() as connection:
            if text is not None:
                connection.execute(insert_ignoring(schema.devices, connection.dialect.name, ("id",)),
                                   [{"id": device_id, "settings": {}}])
            connection.execute(update(schema.devices).where(d.id == device_id).values(
                conflict=text, conflict_at=_now() if text is not None else None))

    def _confirm(self, session_key: str, device_id: str, confirmation) -> Optional[int]:
        c = schema.commands.c
        now = _now()
        query = (sql_select(c.id).where(
            c.device_id == device_id, c.session == session_key, c.sent_at.is_not(None),
            c.confirmed_at.is_(None),
            or_(and_(c.status == "sent", c.finished_at.is_(None)), c.status == "expired"))
            .order_by(c.sent_at, c.id).limit(1))
        if confirmation.token is not None:
            query = query.where(c.token == confirmation.token)
        kinds = confirmation.command_type
        if kinds is not None:
            # A custom command may be the very same protocol command typed by
            # hand: a typed reply can answer it too.
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            query = query.where(c.type.in_(kinds + ["custom"]))
        status = "confirmed" if confirmation.success else "failed"
        with self.engine.begin() as connection:
            serialize_ids(connection)
            command_id = connection.execute(query).scalar_one_or_none()
            if command_id is None:
                self.reactor.callFromThread(
                    log.warn, "reply from {device_id} matches no command sent on its session: {reply}",
                    device_id=printable(device_id), reply=printable(confirmation.reply))
                return None
            transition(connection, (c.id == command_id,), status, printable(confirmation.reply), now,
                       confirmed_at=now, finished_at=now, reply=confirmation.reply,
                       error=None if confirmation.success else "device reported an error")
        self.reactor.callFromThread(
            log.info, "command {id} {status} by {device_id}: {reply}", id=command_id,
            status=status, device_id=printable(device_id), reply=printable(confirmation.reply))
        return command_id
