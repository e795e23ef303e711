# -*- test-case-name: tests.test_http -*-
"""
C{--http [HOST:]PORT}: the HTTP API, live feed and metrics, served by
twisted.web in the gateway process.
"""

from __future__ import annotations

from typing import Tuple

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Site

from gateway.http.api import Api
from gateway.http.live import Feed, live_factory
from gateway.http.metrics import Metrics

log = Logger()


def http_address(text: str) -> Tuple[str, int]:
    """
    C{PORT}, C{HOST:PORT} or C{[IPv6]:PORT}; the host defaults to 127.0.0.1,
    so the API is not on a public address unless asked for.

    @raise ValueError: with the reason.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: expected [HOST:]PORT") from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, number


class _QuietSite(Site):
    """
    No access log line per request: a console polling every few seconds
    would drown the devices' lines.
    """

    def log(self, request):
        pass


class HttpService(Service):
    """
    Listens for HTTP, keeps the live feed and the command-state gauge fresh.
    """

    def __init__(self, hub, engine, store, commands, reactor, host: str, port: int, tile_url: str = ""):
        self.hub = hub
        self.engine = engine
        self.reactor = reactor
        self.host, self.port = host, port
        self.metrics = Metrics(hub, store)
        hub.metrics = self.metrics
        self.feed = Feed(engine, store, hub, reactor)
        self.api = Api(hub, engine, self.metrics, WebSocketResource(live_factory(self.feed)), tile_url)
        self._listening = None
        self._states = LoopingCall(self._command_states)
        self._states.clock = reactor

    def startService(self):
        super().startService()
        site = _QuietSite(self.api.resource())
        site.displayTracebacks = False
        self._listening = self.reactor.listenTCP(self.port, site, interface=self.host)
        self.feed.start().addErrback(lambda f: log.failure("live feed did not start", f))
        self._states.start(5.0)
        log.info("HTTP API on http://{host}:{port}/api/, console on /console/, metrics on /metrics",
                 host=self.host, port=self.port)

    def stopService(self):
        super().stopService()
        if self._states.running:
            self._states.stop()
        self.feed.stop()
        listening, self._listening = self._listening, None
        return listening.stopListening() if listening is not None else None

    def _command_states(self):
        from sqlalchemy import func, select

        from gateway import schema

        def read():
            c = schema.commands.c
            with self.engine.connect() as connection:
                return dict(connection.execute(select(c.status, func.count()).group_by(c.status)).all())

        def done(states):
            self.metrics.command_states = states

        return threads.deferToThread(read).addCallbacks(done, lambda f: None)
