# -*- test-case-name: tests.test_commands_e2e -*-
"""
Commands to devices: a durable queue in the C{commands} table, delivered on the
device's live session, matched with the device's confirmation.

Life cycle: C{queued} -> C{sent} -> C{confirmed} | C{failed} | C{expired};
a queued command may also end C{expired}, C{failed} (no encoder, encoder
refused) or C{cancelled} (an C{engine_resume} supersedes a queued
C{engine_stop}). Every transition is timestamped.

A command is claimed (C{queued} -> C{sent}, one atomic UPDATE) before its bytes
are written, so two gateway processes, or one process delivering on two paths,
never send it twice.
"""

from __future__ import annotations

import select
import threading
from datetime import datetime, timedelta, timezone
from typing import Dict, Mapping, Optional

from sqlalchemy import and_, func, or_, select as sql_select, update
from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import schema
from gateway.hexdump import hexdump
from gateway.interfaces import EncodeError
from gateway.model import COMMAND_TYPES, Command
from gateway.registry import encoder_for
from gateway.store import utc

log = Logger()

#: PostgreSQL channel a new command is announced on.
CHANNEL = "trackport_commands"

#: Seconds a command may wait for delivery (and its confirmation) by default.
#: An engine stop that could not be delivered in ten minutes must not cut an
#: engine hours later, when the vehicle may be on a motorway.
DEFAULT_TTL = {
    "engine_stop": 600,
    "engine_resume": 86400,
}
OTHER_TTL = 3600

STATUSES = ("queued", "sent", "confirmed", "failed", "expired", "cancelled")


def _now() -> datetime:
    return datetime.now(timezone.utc)


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
    now = _now()
    ttl = DEFAULT_TTL.get(type_, OTHER_TTL) if ttl is None else ttl
    row = {"device_id": device_id, "type": type_, "params": dict(params), "status": "queued",
           "created_at": now, "expires_at": now + timedelta(seconds=ttl)}
    with engine.begin() as connection:
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
        if type_ == "engine_resume" and row["status"] == "queued":
            connection.execute(
                update(schema.commands)
                .where(schema.commands.c.device_id == device_id,
                       schema.commands.c.type == "engine_stop",
                       schema.commands.c.status == "queued")
                .values(status="cancelled", finished_at=now,
                        error=f"cancelled by engine_resume #{command_id}"))
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"NOTIFY {CHANNEL}")
    return command_id


def list_commands(engine, device_id: Optional[str] = None, limit: int = 1000):
    query = sql_select(schema.commands).order_by(schema.commands.c.id.desc()).limit(limit)
    if device_id:
        query = query.where(schema.commands.c.device_id == device_id)
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
        "reply": row["reply"], "error": row["error"],
        "data_hex": row["data"].hex() if row["data"] else None,
    }


class CommandQueue(Service):
    """
    Delivers queued commands to devices connected to this process.

    New commands are noticed by a cheap poll every C{interval} seconds (the
    highest command id seen so far), and at once on PostgreSQL through
    LISTEN/NOTIFY; queued commands of a device are delivered when it connects
    and identifies itself, and for UDP devices after each datagram.
    """

    def __init__(self, hub, engine, reactor, interval: float = 1.0):
        self.hub = hub
        self.engine = engine
        self.reactor = reactor
        self.interval = interval
        self.waiting: set = set()
        self.last_id = 0
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
        with self.engine.connect() as connection:
            self.last_id = connection.execute(
                sql_select(func.coalesce(func.max(schema.commands.c.id), 0))).scalar_one()
            self.waiting = set(connection.execute(
                sql_select(schema.commands.c.device_id).distinct()
                .where(schema.commands.c.status == "queued")).scalars())
        self._loop.start(self.interval, now=False)
        if self.engine.dialect.name == "postgresql":
            self._listener = threading.Thread(target=self._listen, name="trackport-listen", daemon=True)
            self._listener.start()

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._stop_listening.set()

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

    def device_online(self, session) -> None:
        if session.device_id in self.waiting:
            self.deliver(session.device_id)

    def device_active(self, session) -> None:
        if session.device_id in self.waiting:
            self.deliver(session.device_id)

    def confirmed(self, device_id: str, confirmations) -> None:
        for confirmation in confirmations:
            d = threads.deferToThread(self._confirm, device_id, confirmation)
            d.addErrback(lambda f: log.failure("recording a command reply failed", f))

    # -- polling ----------------------------------------------------------

    @defer.inlineCallbacks
    def poll(self):
        """
        Expire overdue commands and pick up commands queued since the last poll.
        """
        if self._polling:
            return
        self._polling = True
        try:
            rows = yield threads.deferToThread(self._poll_db, self.last_id)
        except Exception as e:
            log.warn("command poll failed: {e}", e=e)
            return
        finally:
            self._polling = False
        for command_id, device_id in rows:
            self.last_id = max(self.last_id, command_id)
            self.waiting.add(device_id)
            if device_id in self.hub.sessions:
                self.deliver(device_id)

    def _poll_db(self, last_id: int):
        now = _now()
        c = schema.commands.c
        with self.engine.begin() as connection:
            connection.execute(
                update(schema.commands)
                .where(c.expires_at < now,
                       or_(c.status == "queued", and_(c.status == "sent", c.finished_at.is_(None))))
                .values(status="expired", finished_at=now))
            return [tuple(r) for r in connection.execute(
                sql_select(c.id, c.device_id).where(c.id > last_id, c.status == "queued")
                .order_by(c.id))]

    # -- delivery ---------------------------------------------------------

    def deliver(self, device_id: str) -> None:
        """
        Send the device's queued commands, oldest first, on its live session.
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
                                           device_id=device_id))
        d.addBoth(done)

    @defer.inlineCallbacks
    def _deliver(self, device_id: str):
        rows = yield threads.deferToThread(self._queued, device_id)
        if not rows:
            self.waiting.discard(device_id)
            return
        for row in rows:
            session = self.hub.sessions.get(device_id)
            if session is None or not session.open:
                return
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
            claimed = yield threads.deferToThread(self._claim, command.id, encoded)
            if not claimed:
                continue
            if session.send(encoded.data):
                log.info("command {id} {type} sent to {device_id} on {transport} {peer}: {hex}",
                         id=command.id, type=command.type, device_id=device_id,
                         transport=session.transport, peer=session.peer, hex=hexdump(encoded.data))
            else:
                yield threads.deferToThread(self._unclaim, command.id)
                return
        remaining = yield threads.deferToThread(self._queued, device_id)
        if not remaining:
            self.waiting.discard(device_id)

    def _queued(self, device_id: str):
        c = schema.commands.c
        with self.engine.connect() as connection:
            return connection.execute(
                sql_select(schema.commands)
                .where(c.device_id == device_id, c.status == "queued", c.expires_at >= _now())
                .order_by(c.id)).mappings().all()

    def _claim(self, command_id: int, encoded) -> bool:
        now = _now()
        c = schema.commands.c
        values = {"status": "sent", "sent_at": now, "data": encoded.data, "token": encoded.token}
        if not encoded.expects_reply:
            values["finished_at"] = now
        with self.engine.begin() as connection:
            result = connection.execute(
                update(schema.commands)
                .where(c.id == command_id, c.status == "queued", c.expires_at >= now)
                .values(**values))
            return result.rowcount == 1

    def _unclaim(self, command_id: int) -> None:
        c = schema.commands.c
        with self.engine.begin() as connection:
            connection.execute(
                update(schema.commands).where(c.id == command_id, c.status == "sent")
                .values(status="queued", sent_at=None, data=None, token=None, finished_at=None))

    @defer.inlineCallbacks
    def _fail(self, command: Command, reason: str):
        log.warn("command {id} {type} for {device_id} failed: {reason}", id=command.id,
                 type=command.type, device_id=command.device_id, reason=reason)
        c = schema.commands.c

        def write():
            with self.engine.begin() as connection:
                connection.execute(
                    update(schema.commands).where(c.id == command.id, c.status == "queued")
                    .values(status="failed", finished_at=_now(), error=reason))

        yield threads.deferToThread(write)

    def _confirm(self, device_id: str, confirmation) -> Optional[int]:
        c = schema.commands.c
        now = _now()
        query = (sql_select(c.id).where(
            c.device_id == device_id, c.sent_at.is_not(None), c.confirmed_at.is_(None),
            or_(and_(c.status == "sent", c.finished_at.is_(None)), c.status == "expired"))
            .order_by(c.sent_at, c.id).limit(1))
        if confirmation.token is not None:
            query = query.where(c.token == confirmation.token)
        if confirmation.command_type is not None:
            # A custom command may be the very same protocol command typed by
            # hand: a typed reply can answer it too.
            query = query.where(c.type.in_([confirmation.command_type, "custom"]))
        with self.engine.begin() as connection:
            command_id = connection.execute(query).scalar_one_or_none()
            if command_id is None:
                self.reactor.callFromThread(
                    log.warn, "reply from {device_id} matches no sent command: {reply!r}",
                    device_id=device_id, reply=confirmation.reply)
                return None
            status = "confirmed" if confirmation.success else "failed"
            connection.execute(
                update(schema.commands).where(c.id == command_id)
                .values(status=status, confirmed_at=now, finished_at=now, reply=confirmation.reply,
                        error=None if confirmation.success else "device reported an error"))
        self.reactor.callFromThread(
            log.info, "command {id} {status} by {device_id}: {reply!r}", id=command_id,
            status=status, device_id=device_id, reply=confirmation.reply)
        return command_id
