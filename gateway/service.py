# -*- test-case-name: tests.test_service -*-
"""
The gateway as a L{twisted.application.service} tree: the store, the command
queue, and TCP + UDP listeners on one port.
"""

from __future__ import annotations

import gc
import socket
from datetime import datetime

from twisted.application.internet import TCPServer, UDPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.hub import Hub
from gateway.registry import discover
from gateway.server import DatagramEndpoint, StreamFactory
from gateway.store import Store, engine_for, load_settings, migrate

log = Logger()

#: Container objects allocated (net) between two collections of the youngest
#: generation (CPython's default is 700): a gateway makes many short-lived
#: objects per frame and almost no cycles, so most of those collections find
#: nothing.
GC_THRESHOLD = 10_000


class SettingsSync(Service):
    """
    Picks up per-device settings changed by C{trackport configure} (or by
    another gateway process) every few seconds.
    """

    def __init__(self, hub: Hub, engine, interval: float = 2.0):
        self.hub = hub
        self.engine = engine
        self.since = None
        self._loop = LoopingCall(self._poll)
        self._loop.clock = hub.clock
        self.interval = interval

    def load_all(self) -> None:
        with self.engine.connect() as connection:
            for device_id, settings in load_settings(connection).items():
                self.hub.set_settings(device_id, settings)
        self.since = datetime.now().astimezone()

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def _poll(self):
        since = self.since
        stamp = datetime.now().astimezone()

        def read():
            with self.engine.connect() as connection:
                return load_settings(connection, since)

        try:
            changed = yield threads.deferToThread(read)
        except Exception as e:
            log.warn("could not read device settings: {e}", e=e)
            return
        self.since = stamp
        for device_id, settings in changed.items():
            self.hub.set_settings(device_id, settings)


class StoreService(Service):
    def __init__(self, store: Store):
        self.store = store

    def startService(self):
        super().startService()
        self.store.start()

    def stopService(self):
        super().stopService()
        return self.store.stop()


class SharedPort(Service):
    """
    TCP and UDP listeners opened with C{SO_REUSEPORT}, so several gateway
    processes on one host share the port and the kernel spreads connections
    (and UDP peers, by address) across them.
    """

    def __init__(self, reactor, port: int, interface: str, factory, datagram):
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.factory = factory
        self.datagram = datagram
        self._ports = []

    def _socket(self, kind):
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.interface, self.port))
        sock.setblocking(False)
        return family, sock

    def startService(self):
        super().startService()
        family, tcp = self._socket(socket.SOCK_STREAM)
        tcp.listen(1024)
        self._ports.append(self.reactor.adoptStreamPort(tcp.fileno(), family, self.factory))
        tcp.close()
        family, udp = self._socket(socket.SOCK_DGRAM)
        self._ports.append(self.reactor.adoptDatagramPort(udp.fileno(), family, self.datagram))
        udp.close()

    def stopService(self):
        super().stopService()
        ports, self._ports = self._ports, []
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])


class GatewayService(MultiService):
    """
    Everything one gateway process runs.

    Options are checked and the schema is brought up to date in L{prepare},
    before anything listens.
    """

    def __init__(self, port: int = 8888, interface: str = "", db: str = None,
                 reactor=None, decoders=None, reuse_port: bool = False,
                 idle_timeout: float = 3600.0):
        super().__init__()
        self.reuse_port = reuse_port
        self.idle_timeout = idle_timeout
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.db = db
        self.decoders = decoders
        self.hub = None
        self.store = None

    def prepare(self) -> None:
        from gateway.commands import CommandQueue

        decoders = self.decoders if self.decoders is not None else discover()
        engine = engine_for(self.db)
        migrate(engine)
        self.store = Store(engine, self.reactor)
        self.hub = Hub(decoders, self.store, self.reactor)
        sync = SettingsSync(self.hub, engine)
        sync.load_all()
        StoreService(self.store).setServiceParent(self)
        sync.setServiceParent(self)
        self.commands = CommandQueue(self.hub, engine, self.reactor)
        self.hub.commands = self.commands
        self.commands.setServiceParent(self)
        factory, datagram = StreamFactory(self.hub, self.idle_timeout), DatagramEndpoint(self.hub)
        if self.reuse_port:
            SharedPort(self.reactor, self.port, self.interface, factory, datagram).setServiceParent(self)
        else:
            TCPServer(self.port, factory, interface=self.interface, backlog=1024).setServiceParent(self)
            UDPServer(self.port, datagram, interface=self.interface).setServiceParent(self)
        self.summary = (f"{self.interface or '*'}:{self.port} (tcp+udp"
                        f"{', shared port' if self.reuse_port else ''}), protocols: {', '.join(decoders)},"
                        f" database: {engine.url.render_as_string(hide_password=True)}")

    def startService(self):
        super().startService()
        tune_gc()
        log.info("trackport ready on {summary}", summary=self.summary)


def tune_gc(threshold: int = GC_THRESHOLD) -> None:
    """
    Make the cyclic garbage collector cheaper for a long-running gateway: what
    start-up made (modules, decoders, database metadata) lives as long as the
    process, so it is frozen out of every later collection, and the youngest
    generation is collected less often (docs/performance.md has the numbers).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *gc.get_threshold()[1:])
