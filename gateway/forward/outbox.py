# -*- test-case-name: tests.test_forward -*-
"""
The outbox: each sink reads what was committed after its cursor, hands it to
its target, and moves the cursor only once the target confirmed.

There is no queue in memory: the backlog of a sink that cannot deliver is the
C{positions} (and C{command_events}) rows after its cursor, however long the
outage. A restart, a kill -9 or a takeover by another process starts again
from the stored cursor, so a batch that was sent but not confirmed is sent
again (at least once). Ids commit in the order they are drawn
(L{gateway.ordering}), so reading C{id > cursor} in id order is commit order
and never skips a row.
"""

from __future__ import annotations

import time as _time
from typing import Dict, List, Optional

import attr
from sqlalchemy import func, select, update
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from gateway import schema
from gateway.forward.lease import holder_name, lease_for
from gateway.forward.sinks import Message, make_sink, redact
from gateway.model import isoformat
from gateway.queries import position_json
from gateway.store import engine_for, insert_ignoring, now, utc

log = Logger()


class LeaseLost(Exception):
    """
    Another process delivers this sink now.
    """


def event_json(row) -> dict:
    """
    A C{command_events} row as the JSON object forwarded for it.
    """
    return {"kind": "command_status", "id": row["id"], "command_id": row["command_id"],
            "device_id": row["device_id"], "type": row["type"], "status": row["status"],
            "at": isoformat(utc(row["at"])), "detail": row["detail"]}


@attr.s(slots=True)
class Batch:
    """
    What one round delivers: messages, and the cursors they move to.
    """

    generation: int = attr.ib()
    position_from: int = attr.ib()
    position_id: int = attr.ib()
    event_id: int = attr.ib()
    messages: List[Message] = attr.ib()


def register(connection, name: str, url: str) -> None:
    """
    Give a sink its row; a new sink starts after what is stored now
    (C{forward replay} sends older records).
    """
    s = schema.forward_sinks
    exists = connection.execute(select(s.c.name).where(s.c.name == name)).first()
    if exists:
        connection.execute(update(s).where(s.c.name == name).values(url=url))
        return
    last = connection.execute(select(func.max(schema.positions.c.id))).scalar() or 0
    last_event = connection.execute(select(func.max(schema.command_events.c.id))).scalar() or 0
    # Another process may register it at the same moment: the first one wins.
    connection.execute(insert_ignoring(s, connection.dialect.name, ("name",)),
                       [{"name": name, "url": url, "position_id": last, "event_id": last_event,
                         "generation": 0}])


def register_all(engine, forwards: Dict[str, str]) -> None:
    """
    Give every sink of C{forwards} its row before the gateway stores anything:
    a sink new to the database starts after what was stored before this start,
    never after records its own gateway took in while it was connecting.
    """
    with engine.begin() as connection:
        for name, url in forwards.items():
            register(connection, name, url)


def read_batch(connection, name: str, limit: int) -> Batch:
    """
    The sink's cursors and what was committed after them, in id order.
    """
    s = schema.forward_sinks.c
    row = connection.execute(select(schema.forward_sinks).where(s.name == name)).mappings().one()
    p = schema.positions.c
    positions = connection.execute(
        select(schema.positions).where(p.id > row["position_id"]).order_by(p.id).limit(limit)
    ).mappings().all()
    e = schema.command_events.c
    events = connection.execute(
        select(schema.command_events, schema.devices.c.protocol)
        .select_from(schema.command_events.outerjoin(schema.devices, schema.devices.c.id == e.device_id))
        .where(e.id > row["event_id"]).order_by(e.id).limit(limit)
    ).mappings().all()
    messages = [Message("position", r["device_id"], r["protocol"], position_json(r)) for r in positions]
    messages += [Message("command_status", r["device_id"], r["protocol"], event_json(r)) for r in events]
    return Batch(generation=row["generation"], position_from=row["position_id"],
                 position_id=positions[-1]["id"] if positions else row["position_id"],
                 event_id=events[-1]["id"] if events else row["event_id"], messages=messages)


def advance(connection, name: str, holder: str, batch: Batch) -> bool:
    """
    Move the cursors past a confirmed batch, unless a replay reset them (or
    another process holds the sink) meanwhile.
    """
    s = schema.forward_sinks.c
    return bool(connection.execute(
        update(schema.forward_sinks)
        .where((s.name == name) & (s.generation == batch.generation) & (s.holder == holder))
        .values(position_id=batch.position_id, event_id=batch.event_id, delivered_at=now())
    ).rowcount)


def note_error(connection, name: str, error: Optional[str]) -> None:
    connection.execute(update(schema.forward_sinks).where(schema.forward_sinks.c.name == name)
                       .values(last_error=error, error_at=now() if error else None))


class SinkRunner(Service):
    """
    Delivers one sink while this process holds its lease.

    Logs once when the sink stops delivering and once when it starts again,
    not at every retry.
    """

    #: Seconds between looks for new rows when no commit of this process woke us.
    poll_interval = 0.5
    #: Seconds between attempts to take the lease, or to reach the database.
    lease_interval = 2.0
    #: Seconds between delivery attempts while the target fails.
    retry_delays = (0.5, 1.0, 2.0, 5.0)

    def __init__(self, name: str, url: str, sink, engine, reactor, holder: Optional[str] = None):
        self.name = name
        self.url = redact(url)
        self.sink = sink
        self.engine = engine
        self.reactor = reactor
        self.holder = holder or holder_name()
        self.lease = lease_for(engine.dialect.name, name, self.holder)
        self.holding = False
        self._connection = None
        self._running = False
        self._wakeup: Optional[defer.Deferred] = None
        self._current: Optional[defer.Deferred] = None
        self._loop_done: Optional[defer.Deferred] = None
        self._failing_since: Optional[float] = None
        self._failures = 0
        self._standing_by = False
        self._idle = False
        self._error_stored = False
        self._db_down = False

    # -- database, on a thread; one call at a time per runner ---------------

    def _db(self, f, *args):
        def run():
            if self._connection is None:
                self._connection = self.engine.connect()
            connection = self._connection
            try:
                with connection.begin():
                    return f(connection, *args)
            except Exception:
                self._connection = None
                try:
                    connection.invalidate()
                    connection.close()
                except Exception:
                    pass
                raise
        return threads.deferToThread(run)

    def _acquire(self, connection) -> Optional[int]:
        register(connection, self.name, self.url)
        if not self.lease.acquire(connection):
            return None
        s = schema.forward_sinks.c
        return connection.execute(
            select(s.position_id, s.last_error).where(s.name == self.name)).one()

    def _read(self, connection) -> Batch:
        if not self.lease.renew(connection):
            raise LeaseLost()
        return read_batch(connection, self.name, self.sink.batch_size)

    def _advance(self, connection, batch: Batch) -> bool:
        return advance(connection, self.name, self.holder, batch)

    def _release(self, connection) -> None:
        self.lease.release(connection)

    # -- reactor side -----------------------------------------------------

    def wake(self) -> None:
        """
        Something was committed: look now rather than at the next poll (a
        pause between retries to a failing target is not cut short).
        """
        if self._idle:
            self._end_pause()

    def _end_pause(self) -> None:
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    def _pause(self, seconds: float, idle: bool = False) -> defer.Deferred:
        self._idle = idle
        self._wakeup = d = defer.Deferred()
        call = self.reactor.callLater(seconds, self._end_pause)

        def ended(result):
            self._idle = False
            if call.active():
                call.cancel()

        d.addBoth(ended)
        return d

    def startService(self):
        super().startService()
        self._running = True
        self._loop_done = self._loop()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        self._running = False
        if self._current is not None:
            self._current.cancel()
        self._end_pause()
        yield self._loop_done
        if self.holding:
            try:
                yield self._db(self._release)
            except Exception:
                pass  # the lock goes with the connection anyway
            self.holding = False
        if self._connection is not None:
            connection, self._connection = self._connection, None
            yield threads.deferToThread(connection.close)
        yield defer.maybeDeferred(self.sink.close)

    def _lost_lease(self, why: str) -> None:
        if self.holding:
            log.warn("forward {name}: this process stops delivering it ({why})", name=self.name, why=why)
        elif not self._db_down:
            log.warn("forward {name}: cannot start delivering ({why})", name=self.name, why=why)
        self._db_down = True
        self.holding = False

    @defer.inlineCallbacks
    def _loop(self):
        while self._running:
            try:
                if not self.holding:
                    got = yield self._db(self._acquire)
                    if got is None:
                        self._db_down = False
                        if not self._standing_by:
                            log.info("forward {name}: another gateway process delivers it; standing by",
                                     name=self.name)
                            self._standing_by = True
                        yield self._pause(self.lease_interval)
                        continue
                    self.holding, self._standing_by, self._db_down = True, False, False
                    self._error_stored = got.last_error is not None
                    log.info("forward {name}: delivering to {url} after record id {cursor}",
                             name=self.name, url=self.url, cursor=got.position_id)
                batch = yield self._db(self._read)
            except LeaseLost:
                self._lost_lease("another process took the lease over")
                continue
            except Exception as e:
                self._lost_lease(f"database unreachable: {_line(e)}")
                yield self._pause(self.lease_interval)
                continue
            if not batch.messages:
                yield self._pause(self.poll_interval, idle=True)
                continue
            self._current = defer.maybeDeferred(self.sink.deliver, batch.messages)
            try:
                yield self._current
            except Exception as e:
                self._current = None
                if not self._running:
                    break
                yield self._failed(batch, e)
                continue
            self._current = None
            yield self._succeeded()
            try:
                moved = yield self._db(self._advance, batch)
            except Exception as e:
                self._lost_lease(f"database unreachable: {_line(e)}")
                continue
            if not moved:
                # A replay reset the cursor (the next read starts there), or
                # the lease was lost (the next renewal notices).
                log.info("forward {name}: cursor not moved: reset by a replay, or taken over",
                         name=self.name)

    @defer.inlineCallbacks
    def _failed(self, batch: Batch, error: Exception):
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = _time.monotonic()
            log.warn("forward {name}: stopped delivering ({error}); records wait in the database "
                     "after id {cursor}", name=self.name, error=_line(error), cursor=batch.position_from)
            try:
                yield self._db(note_error, self.name, _line(error))
                self._error_stored = True
            except Exception:
                pass
        delay = self.retry_delays[min(self._failures - 1, len(self.retry_delays) - 1)]
        yield self._pause(delay)

    @defer.inlineCallbacks
    def _succeeded(self):
        if self._failing_since is not None:
            log.info("forward {name}: delivering again, after {failures} failed attempts over {seconds:.0f}s",
                     name=self.name, failures=self._failures,
                     seconds=_time.monotonic() - self._failing_since)
            self._failing_since, self._failures = None, 0
        if self._error_stored:
            try:
                yield self._db(note_error, self.name, None)
                self._error_stored = False
            except Exception:
                pass


def _line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def runner_engine(db: str):
    """
    The engine a runner keeps its connection from: its own, so a PostgreSQL
    lease lives on a connection nothing else uses.
    """
    if db.startswith(("postgresql", "postgres")):
        return engine_for(db, pool_size=1, max_overflow=0)
    return engine_for(db)


class Forwarder(MultiService):
    """
    Every C{--forward} sink of this process; the store wakes them on commit.
    """

    def __init__(self, forwards: Dict[str, str], db: str, reactor, store=None):
        super().__init__()
        self.runners: Dict[str, SinkRunner] = {}
        for name, url in forwards.items():
            runner = SinkRunner(name, url, make_sink(name, url, reactor), runner_engine(db), reactor)
            runner.setServiceParent(self)
            self.runners[name] = runner
        if store is not None:
            store.add_commit_listener(self.wake)

    def wake(self) -> None:
        for runner in self.runners.values():
            runner.wake()

