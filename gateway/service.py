# -*- test-case-name: tests.test_e2e,tests.test_cli -*-
"""
The gateway as a L{twisted.application.service} tree: the store, the command
queue, and TCP + UDP listeners on one port.
"""

from __future__ import annotations

import gc
import os
import socket
from twisted.application.internet import StreamServerEndpointService, TCPServer, UDPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.protocols.haproxy import proxyEndpoint
from twisted.logger import Logger

from gateway.hub import Hub
from gateway.identity import WINDOW
from gateway.registry import discover
from gateway.server import MAX_PEERS, DatagramEndpoint, StreamFactory
from gateway.store import (STATEMENT_TIMEOUT, Store, engine_for, load_settings, migrate, misconfigured,
                           outage, settings_after)

log = Logger()

#: Container objects allocated (net) between two collections of the youngest
#: generation (CPython's default is 700): a gateway makes many short-lived
#: objects per frame and almost no cycles, so most of those collections find
#: nothing.
GC_THRESHOLD = 10_000


def _sqlite_files(url: str):
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return []
    return [parsed.database + suffix for suffix in ("", "-wal", "-shm", "-journal")]


class SettingsSync(Service):
    """
    Picks up per-device settings and known flags changed by C{trackport
    configure} / C{trackport devices add} (or by another gateway process)
    every few seconds.

    Changes are read by their settings version (C{devices.settings_seq}),
    which commits in the order it is drawn (L{gateway.ordering}): a cursor on
    it cannot skip a change whose transaction commits late, as a comparison of
    clocks could.
    """

    def __init__(self, hub: Hub, engine, interval: float = 2.0):
        self.hub = hub
        self.engine = engine
        self.after = 0
        self.failing = False
        self._loop = LoopingCall(self._poll)
        self._loop.clock = hub.clock
        self.interval = interval

    def load_all(self) -> None:
        self.apply(self.read_all())

    def read_all(self) -> dict:
        """
        Every device's settings and known flag (any thread).
        """
        with self.engine.connect() as connection:
            changed, after = settings_after(connection, 0)
            return {"settings": load_settings(connection), "changed": changed, "after": after}

    def apply(self, loaded: dict) -> None:
        for device_id, settings in loaded["settings"].items():
            self.hub.set_settings(device_id, settings)
        self.after = loaded["after"]
        self._apply(loaded["changed"])

    def _apply(self, changed) -> None:
        for device_id, (settings, known) in changed.items():
            self.hub.set_settings(device_id, settings)
            if known:
                self.hub.known.add(device_id)
            else:
                self.hub.known.discard(device_id)

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def _poll(self):
        after = self.after

        def read():
            with self.engine.connect() as connection:
                return settings_after(connection, after)

        try:
            changed, last = yield threads.deferToThread(read)
        except Exception as e:
            if not self.failing:
                # Once per outage: the store says the database is down.
                log.warn("could not read device settings: {e}", e=str(e).splitlines()[0])
            self.failing = True
            return
        self.failing = False
        self.after = max(self.after, last)
        self._apply(changed)


class StoreService(Service):
    """
    Runs the store's writer; stopping waits for it L{limit} seconds at most
    (the store ends its database calls before that, L{Store.stop_grace}), so
    SIGTERM ends the process whatever the database does. Records not written
    by then were never acked.
    """

    limit = 6.0

    def __init__(self, store: Store, clock=None):
        self.store = store
        self.clock = clock if clock is not None else store.reactor

    def startService(self):
        super().startService()
        self.store.start()

    def stopService(self):
        super().stopService()
        stopped = self.store.stop()
        done = defer.Deferred()

        def give_up():
            if not done.called:
                log.warn("the writer did not stop in {limit}s; records it holds were not acked",
                         limit=self.limit)
                done.callback(None)

        timer = self.clock.callLater(self.limit, give_up)

        def finished(result):
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        stopped.addBoth(finished)
        return done


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
                 idle_timeout: float = 3600.0, devices: str = "any", claim_window: float = WINDOW,
                 forwards=None, http=None, map_tiles: str = "", proxy_protocol: bool = False,
                 udp_peers: int = MAX_PEERS):
        super().__init__()
        self.udp_peers = udp_peers
        self.proxy_protocol = proxy_protocol
        self.http = http
        self.map_tiles = map_tiles
        self.devices = devices
        self.claim_window = claim_window
        self.forwards = dict(forwards or {})
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
        self._fresh = [path for path in _sqlite_files(self.db) if not os.path.exists(path)]
        engine = engine_for(self.db, statement_timeout=STATEMENT_TIMEOUT)
        self.store = Store(engine, self.reactor)
        self.hub = Hub(decoders, self.store, self.reactor, claim_window=self.claim_window,
                       known_only=self.devices == "known")
        sync = SettingsSync(self.hub, engine)
        self.commands = CommandQueue(self.hub, engine, self.reactor)
        self.hub.commands = self.commands
        StoreService(self.store).setServiceParent(self)
        try:
            migrate(engine)
            sync.load_all()
            self._register_sinks(engine)
        except Exception as e:
            if engine.dialect.name == "sqlite" or not outage(e) or misconfigured(e):
                raise
            # The database is down: listen anyway, hold devices (their records
            # wait, unacked), and start what needs the schema once it answers.
            def prepare():
                migrate(engine)
                self._register_sinks(engine)
                return sync.read_all()

            def ready(loaded):
                sync.apply(loaded)
                sync.setServiceParent(self)
                self.commands.setServiceParent(self)
                # Devices that identified while the database was away.
                for device_id in list(self.hub.sessions):
                    self.commands.device_online(device_id)

            self.store.prepare = prepare
            self.store.ready.addCallback(ready)
            self.store.ready.addErrback(lambda f: log.failure("starting after the database came", f))
        else:
            sync.setServiceParent(self)
            self.commands.setServiceParent(self)
        if self.forwards:
            from gateway.forward.outbox import Forwarder

            Forwarder(self.forwards, self.db, self.reactor, self.store).setServiceParent(self)
        factory = StreamFactory(self.hub, self.idle_timeout, proxy_protocol=self.proxy_protocol)
        datagram = DatagramEndpoint(self.hub, max_peers=self.udp_peers)
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
        if self.http is not None:
            from gateway.http.service import HttpService
            HttpService(self.hub, engine, self.store, self.commands, self.reactor, *self.http,
                        tile_url=self.map_tiles).setServiceParent(self)
        self.summary = (f"{self.interface or '*'}:{self.port} (tcp+udp"
                        f"{', shared port' if self.reuse_port else ''}), protocols: {', '.join(decoders)},"
                        f" devices: {self.devices}, database: {engine.url.render_as_string(hide_password=True)}"
                        f"{', forwarding to: ' + ', '.join(self.forwards) if self.forwards else ''}"
                        f"{f', http: {self.http[0]}:{self.http[1]}' if self.http else ''}")

    def _register_sinks(self, engine) -> None:
        # Before anything is stored (the writer runs this first when the
        # database was away at start): see register_all.
        if self.forwards:
            from gateway.forward.outbox import register_all
            register_all(engine, self.forwards)

    def discard_new_database(self) -> None:
        """
        After a failed start: remove the SQLite files this start created, so a
        mistake leaves no empty database behind.
        """
        for path in getattr(self, "_fresh", ()):
            if os.path.exists(path):
                os.remove(path)

    def privilegedStartService(self):
        # twistd opens the ports here: a port in use or an address the machine
        # does not have is one line, not a traceback.
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.discard_new_database()
            raise SystemExit(f"twistd trackport: cannot start: {e}") from None

    def stopService(self):
        # Sessions closing at shutdown keep their commands where they are.
        if self.hub is not None:
            self.hub.stopping = True
        return super().stopService()

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
    PyPy's collector offers neither knob (no freeze, no thresholds): there,
    nothing changes.
    """
    if not hasattr(gc, "freeze"):
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *gc.get_threshold()[1:])
