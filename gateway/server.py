# -*- test-case-name: tests.test_server -*-
"""
The network edge: a TCP factory and a UDP protocol on the same port, both
turning their traffic into L{Session}s.
"""

from __future__ import annotations

import socket
from typing import Dict, Tuple

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.session import Session

log = Logger()

#: Bytes asked for the UDP socket's receive buffer.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _peer(address) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StreamProtocol(Protocol):
    """
    One TCP connection: one session.
    """

    session = None
    #: Behind a PROXY-protocol balancer: the device's address is known only
    #: once the header has been read, just before the first bytes arrive.
    proxied = False

    def connectionMade(self):
        peer = _peer(self.transport.getPeer())
        if not self.proxied:
            log.info("session tcp {peer} opened", peer=peer)
        self.session = Session(self.factory.hub, "tcp", peer,
                               self.transport.write, self.transport.loseConnection)
        self.factory.live.add(self)

    def dataReceived(self, data):
        if self.proxied:
            self.proxied = False
            peer = _peer(self.transport.getPeer())
            log.info("session tcp {peer} opened (via {balancer})", peer=peer, balancer=self.session.peer)
            self.session.peer = self.session.context.peer = peer
        self.session.data_received(data)

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        if self.session is not None:
            self.session.connection_lost()
            self.session = None

    def abort(self) -> None:
        # A silent peer is most often a dead one (a vehicle that lost power, a
        # NAT that forgot the mapping): nothing would flush a graceful close.
        self.transport.abortConnection()


class _Sweeper:
    """
    Ends sessions silent for longer than C{idle} seconds, checked every
    C{idle / 4} seconds: one timer for all sessions, not one each (a gateway
    holds many thousands of mostly idle connections).
    """

    def __init__(self, clock, idle: float, sessions, end):
        self.idle = idle
        self._sessions = sessions
        self._end = end
        self._call = LoopingCall(self._sweep)
        self._call.clock = clock
        self._clock = clock

    def start(self) -> None:
        if self.idle > 0 and not self._call.running:
            self._call.start(max(self.idle / 4, 1.0), now=False)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()

    def _sweep(self) -> None:
        cutoff = self._clock.seconds() - self.idle
        for key, session in list(self._sessions()):
            if session.last_seen < cutoff:
                self._end(key, session)


class StreamFactory(Factory):
    """
    @ivar live: the open connections.
    @ivar idle: seconds of silence after which a connection is dropped (0:
        never). A device that reports or sends keep-alives more often than
        this is never affected; a half-open connection stops holding a session
        (and stops attracting commands that could never arrive).
    """

    protocol = StreamProtocol
    noisy = False

    def __init__(self, hub, idle: float = 3600.0, proxy_protocol: bool = False):
        self.hub = hub
        self.live = set()
        self.proxy_protocol = proxy_protocol
        self._sweeper = _Sweeper(hub.clock, idle, self._sessions, self._end)

    def _sessions(self):
        return ((p, p.session) for p in self.live if p.session is not None)

    def _end(self, protocol, session) -> None:
        log.info("session tcp {peer} silent for {idle:.0f} s, closing", peer=session.peer,
                 idle=self._sweeper.idle)
        protocol.abort()

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.proxied = self.proxy_protocol
        return protocol

    def startFactory(self):
        self._sweeper.start()

    def stopFactory(self):
        self._sweeper.stop()


class DatagramEndpoint(DatagramProtocol):
    """
    UDP: one session per peer address, forgotten after C{idle} seconds of
    silence (a NAT mapping does not live much longer).
    """

    noisy = False

    def __init__(self, hub, idle: float = 600.0):
        self.hub = hub
        self.sessions: Dict[Tuple, Session] = {}
        self._sweeper = _Sweeper(hub.clock, idle, self.sessions.items, self._forget)

    def startProtocol(self):
        self._sweeper.start()
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            # Devices that regain coverage flush their buffers at once; the
            # default receive buffer (~200 KB) drops datagrams the reactor
            # cannot read in time. The kernel caps this at net.core.rmem_max.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            except OSError as e:
                log.warn("could not enlarge the UDP receive buffer: {e}", e=e)

    def stopProtocol(self):
        self._sweeper.stop()
        for session in list(self.sessions.values()):
            session.connection_lost()
        self.sessions.clear()

    def datagramReceived(self, data, addr):
        session = self.sessions.get(addr)
        if session is None:
            session = Session(self.hub, "udp", _peer(addr),
                              lambda payload: self._send(payload, addr), lambda: None)
            session.datagram_received(data)
            # Only a peer that spoke a known protocol is remembered: garbage
            # from many (possibly spoofed) addresses costs no memory.
            if session.decoder is not None:
                self.sessions[addr] = session
            return
        session.datagram_received(data)

    def _send(self, payload: bytes, addr) -> None:
        if self.transport is not None:
            self.transport.write(payload, addr)

    def _forget(self, addr, session) -> None:
        del self.sessions[addr]
        session.connection_lost()
