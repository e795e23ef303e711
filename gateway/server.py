# -*- test-case-name: tests.test_server -*-
"""
The network edge: a TCP factory and a UDP protocol on the same port, both
turning their traffic into L{Session}s.
"""

from __future__ import annotations

from typing import Dict, Tuple

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.session import Session

log = Logger()


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

    def connectionMade(self):
        peer = _peer(self.transport.getPeer())
        log.info("session tcp {peer} opened", peer=peer)
        self.session = Session(self.factory.hub, "tcp", peer,
                               self.transport.write, self.transport.loseConnection)

    def dataReceived(self, data):
        self.session.data_received(data)

    def connectionLost(self, reason):
        if self.session is not None:
            self.session.connection_lost()
            self.session = None


class StreamFactory(Factory):
    protocol = StreamProtocol
    noisy = False

    def __init__(self, hub):
        self.hub = hub


class DatagramEndpoint(DatagramProtocol):
    """
    UDP: one session per peer address, forgotten after C{idle} seconds of
    silence (a NAT mapping does not live much longer).
    """

    noisy = False

    def __init__(self, hub, idle: float = 600.0):
        self.hub = hub
        self.idle = idle
        self.sessions: Dict[Tuple, Session] = {}
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = hub.clock

    def startProtocol(self):
        self._sweeper.start(max(self.idle / 4, 1.0), now=False)

    def stopProtocol(self):
        if self._sweeper.running:
            self._sweeper.stop()
        for session in list(self.sessions.values()):
            session.connection_lost()
        self.sessions.clear()

    def datagramReceived(self, data, addr):
        session = self.sessions.get(addr)
        if session is None:
            session = Session(self.hub, "udp", _peer(addr),
                              lambda payload: self._send(payload, addr), lambda: None)
            self.sessions[addr] = session
        session.datagram_received(data)

    def _send(self, payload: bytes, addr) -> None:
        if self.transport is not None:
            self.transport.write(payload, addr)

    def _sweep(self):
        cutoff = self.hub.clock.seconds() - self.idle
        for addr, session in list(self.sessions.items()):
            if session.last_seen < cutoff:
                del self.sessions[addr]
                session.connection_lost()
