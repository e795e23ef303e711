# -*- test-case-name: tests.test_service -*-
"""
The gateway as a L{twisted.application.service} tree: the store, the command
queue, and TCP + UDP listeners on one port.
"""

from __future__ import annotations

import socket
from datetime import datetime

from twisted.application.internet import StreamServerEndpointService, TCPServer, UDPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.protocols.haproxy import proxyEndpoint
from twisted.logger import Logger

from gateway.hub import Hub
from gateway.registry import discover
from gateway.server import DatagramEndpoint, StreamFactory
from gateway.store import Store, engine_for, load_settings, migrate

log = Logger()


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

    def __init__(self, reactor, port: int, interface: str, factory, datagram, proxy_protocol: bool = False):
        self.proxy_protocol = proxy_protocol
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
        if self.proxy_protocol:
            # The endpoint adopts the descriptor and closes it itself.
            endpoint = proxyEndpoint(AdoptedStreamServerEndpoint(self.reactor, tcp.detach(), family))
            endpoint.listen(self.factory).addCallback(self._ports.append)
        else:
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
                 idle_timeout: float = 3600.0, proxy_protocol: bool = False):
        super().__init__()
        self.proxy_protocol = proxy_protocol
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
        factory = StreamFactory(self.hub, self.idle_timeout, self.proxy_protocol)
        datagram = DatagramEndpoint(self.hub)
        if self.reuse_port:
            SharedPort(self.reactor, self.port, self.interface, factory, datagram,
                       self.proxy_protocol).setServiceParent(self)
        elif self.proxy_protocol:
            # Twisted's PROXY v1/v2 parser in front of the factory: a
            # connection that does not open with a valid header is refused.
            kind = TCP6ServerEndpoint if ":" in self.interface else TCP4ServerEndpoint
            endpoint = proxyEndpoint(kind(self.reactor, self.port, backlog=1024, interface=self.interface))
            StreamServerEndpointService(endpoint, factory).setServiceParent(self)
            UDPServer(self.port, datagram, interface=self.interface).setServiceParent(self)
        else:
            TCPServer(self.port, factory, interface=self.interface, backlog=1024).setServiceParent(self)
            UDPServer(self.port, datagram, interface=self.interface).setServiceParent(self)
        self.summary = (f"{self.interface or '*'}:{self.port} (tcp+udp"
                        f"{', shared port' if self.reuse_port else ''}"
                        f"{', PROXY protocol on tcp' if self.proxy_protocol else ''}), protocols: {', '.join(decoders)},"
                        f" database: {engine.url.render_as_string(hide_password=True)}")

    def startService(self):
        super().startService()
        log.info("trackport ready on {summary}", summary=self.summary)
