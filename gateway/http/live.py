# -*- test-case-name: tests.test_http -*-
"""
The live feed: WebSocket C{/api/live?token=...&after_id=N[&raw=DEVICE]}.

Every record is pushed once it is committed, in id (commit) order, as
C{{"type": "record", "data": <record JSON>}}; device sessions opening and
closing as C{{"type": "device", ...}}; with C{raw=DEVICE}, that device's bytes
in both directions as C{{"type": "raw", ...}}.

A client that gives C{after_id} first gets every record after it from the
database, page by page, and joins the live stream only once it has caught up
with what the feed has fanned out — so the seam has no gap and no duplicate:
each client remembers the last id it was sent and is never sent one at or
below it. Ids commit in increasing order, so "after the last id" misses
nothing.

A client that does not read is bounded: while its socket's buffer is full
(Twisted pauses it as a producer) messages wait in a queue of at most
L{MAX_QUEUED}; past that the client is dropped, never the gateway's memory.
"""

from __future__ import annotations

import json
from collections import deque

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway import queries
from gateway.http import tokens
from gateway.model import isoformat

log = Logger()

#: Records read from the database per query, fanning out or replaying.
PAGE = 500
#: Messages a client that does not read may have waiting before it is dropped.
MAX_QUEUED = 2000


class Feed:
    """
    Reads committed records after its cursor and hands them to every live
    client. Woken by the store after each commit, and every C{poll} seconds
    for records other gateway processes committed.
    """

    def __init__(self, engine, store, hub, clock, poll: float = 1.0):
        self.engine = engine
        self.hub = hub
        self.clock = clock
        self.cursor = None
        self._behind = False
        self.clients = set()
        #: Every open client, from the moment it opened: device events are
        #: not replayed from the database, so they reach a client even while
        #: it still catches up on records (and before it joined C{clients}).
        self.listeners = set()
        self._busy = False
        self._again = False
        self._loop = LoopingCall(self.wake)
        self._loop.clock = clock
        self.poll = poll
        store.add_commit_listener(self.wake)
        hub.watchers.append(self._device)

    @defer.inlineCallbacks
    def start(self):
        yield self.catch_up()
        self._loop.start(self.poll, now=False)

    @defer.inlineCallbacks
    def catch_up(self):
        """
        Move the cursor to the last committed record: at start, and when the
        first client comes after a time with none (what was committed meanwhile
        reaches a client through its own C{after_id} replay, not the feed).
        """
        self._behind = False
        self.cursor = yield threads.deferToThread(queries.last_position_id, self.engine)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        for client in list(self.listeners | self.clients):
            client.dropConnection(abort=True)

    def wake(self) -> None:
        if self.cursor is None:
            return
        if not self.clients:
            # Nobody listens: read nothing, remember that the cursor lags.
            self._behind = True
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        self._fetch().addErrback(self._failed)

    def _failed(self, failure) -> None:
        self._busy = False
        log.warn("live feed could not read new records: {e}", e=failure.getErrorMessage())

    @defer.inlineCallbacks
    def _fetch(self):
        while True:
            self._again = False
            rows = yield threads.deferToThread(queries.positions_after, self.engine, self.cursor, PAGE)
            if rows:
                self.cursor = rows[-1]["id"]
                # Serialised once, however many clients there are.
                batch = _encoded(rows)
                for client in list(self.clients):
                    client.records(batch)
            if len(rows) < PAGE and not self._again:
                break
        self._busy = False

    def _device(self, event: str, session) -> None:
        if not self.listeners:
            # Told for every new UDP peer of a device behind a NAT: with no
            # client open, nothing to build.
            return
        message = {"type": "device", "data": {
            "device_id": session.device_id, "online": event == "online", "protocol": session.protocol,
            "transport": session.transport, "peer": session.peer,
            "at": isoformat_seconds(self.clock.seconds())}}
        payload = json.dumps(message).encode("utf-8")
        for client in list(self.listeners):
            client.push(payload)


def _encoded(rows):
    """
    C{(id, payload)} of each record message.
    """
    return [(row["id"], json.dumps({"type": "record", "data": row}).encode("utf-8")) for row in rows]


def isoformat_seconds(seconds: float) -> str:
    from datetime import datetime, timezone

    return isoformat(datetime.fromtimestamp(seconds, tz=timezone.utc))


@implementer(IPushProducer)
class LiveProtocol(WebSocketServerProtocol):
    """
    One live-feed client.

    @ivar sent: the id of the last record sent to this client.
    @ivar live: C{False} while it catches up from the database.
    """

    def onConnect(self, request):
        params = {k: v[-1] for k, v in request.params.items()}
        self.after_id = None
        if params.get("after_id") not in (None, ""):
            try:
                self.after_id = int(params["after_id"])
            except ValueError:
                raise ConnectionDeny(400, "after_id must be an integer") from None
            if self.after_id < 0:
                raise ConnectionDeny(400, "after_id must be 0 or more")
        self.raw = params.get("raw") or None
        engine = self.factory.feed.engine
        d = threads.deferToThread(tokens.verify, engine, params.get("token"))

        def checked(grant):
            if grant is None:
                raise ConnectionDeny(401, "a valid token is needed: /api/live?token=...")
            self.grant = grant
            return None

        return d.addCallback(checked)

    def onOpen(self):
        feed = self.factory.feed
        self.queue = deque()
        self.paused = False
        self.live = False
        # Twisted's HTTP channel was this socket's producer until the upgrade.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        if self.raw is not None:
            feed.hub.taps.setdefault(self.raw, []).append(self._raw)
        feed.listeners.add(self)
        self._join().addErrback(self._catch_up_failed)

    @defer.inlineCallbacks
    def _join(self):
        feed = self.factory.feed
        if feed._behind:
            yield feed.catch_up()
            if self.state != self.STATE_OPEN:
                return
        self.sent = self.after_id if self.after_id is not None else feed.cursor
        feed.clients.add(self)
        yield self._catch_up()

    @defer.inlineCallbacks
    def _catch_up(self):
        feed = self.factory.feed
        while not self.live and self.state == self.STATE_OPEN:
            if self.sent >= feed.cursor:
                # Caught up with what the feed fanned out: from here on, the
                # feed's own pages reach this client (in the same reactor turn,
                # so nothing slips between).
                self.live = True
                return
            rows = yield threads.deferToThread(queries.positions_after, feed.engine, self.sent,
                                               min(PAGE, feed.cursor - self.sent))
            page = [r for r in rows if r["id"] <= feed.cursor]
            if not page:
                self.live = True
                return
            self._send_records(_encoded(page))

    def _catch_up_failed(self, failure) -> None:
        log.warn("live feed replay failed: {e}", e=failure.getErrorMessage())
        self.sendClose(1011, "replay failed")

    def records(self, batch) -> None:
        if self.live:
            self._send_records(batch)

    def _send_records(self, batch) -> None:
        for record_id, payload in batch:
            if record_id > self.sent:
                self.sent = record_id
                self.push(payload)

    def _raw(self, direction: str, data: bytes, session) -> None:
        self.push_json({"type": "raw", "data": {
            "device_id": session.device_id, "direction": direction, "transport": session.transport,
            "peer": session.peer, "hex": data[:4096].hex(), "length": len(data),
            "at": isoformat_seconds(self.factory.feed.clock.seconds())}})

    def push_json(self, message: dict) -> None:
        self.push(json.dumps(message).encode("utf-8"))

    def push(self, payload: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return
        if self.paused:
            if len(self.queue) >= MAX_QUEUED:
                log.warn("live feed client {peer} does not read: dropped", peer=self.peer)
                self.dropConnection(abort=True)
                return
            self.queue.append(payload)
        else:
            self.sendMessage(payload)

    # -- IPushProducer: the socket's buffer is full / drained ------------------

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.queue and not self.paused and self.state == self.STATE_OPEN:
            self.sendMessage(self.queue.popleft())

    def stopProducing(self):
        self.queue.clear()

    def onClose(self, wasClean, code, reason):
        feed = self.factory.feed
        feed.clients.discard(self)
        feed.listeners.discard(self)
        if getattr(self, "raw", None) is not None:
            watchers = feed.hub.taps.get(self.raw, [])
            if self._raw in watchers:
                watchers.remove(self._raw)
            if not watchers:
                feed.hub.taps.pop(self.raw, None)


def live_factory(feed: Feed) -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = LiveProtocol
    factory.feed = feed
    # Clients send nothing but pings and closes: keep what they may send small.
    factory.setProtocolOptions(maxFramePayloadSize=65536, maxMessagePayloadSize=65536,
                               autoPingInterval=30, autoPingTimeout=30)
    return factory

