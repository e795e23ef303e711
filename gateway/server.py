# -*- test-case-name: tests.test_session -*-
"""
The network edge: a TCP factory and a UDP protocol on the same port, both
turning their traffic into L{Session}s.
"""

from __future__ import annotations

import resource
import socket
from typing import Dict, Optional, Tuple

from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.ratelog import Budget
from gateway.session import Session

log = Logger()

#: Bytes asked for the UDP socket's receive buffer.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
#: File descriptors kept free of TCP sessions for the database connections,
#: the log, the listening sockets and commands.
FD_RESERVE = 64
#: UDP peers remembered at most (about 0.9 KB of Python heap each); beyond
#: that a new peer's datagrams are not acked until silent or superseded peers
#: are forgotten (L{DatagramEndpoint._make_room}).
MAX_PEERS = 100_000
#: Connections accepted at most in one turn of the reactor.
ACCEPTS_PER_TURN = 64


def connection_limit(reserve: int = FD_RESERVE) -> int:
    """
    TCP sessions this process can hold: its open-file limit less C{reserve}.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return 1 << 30
    return max(16, soft - reserve)


def _peer(address) -> str:
    if type(address) is tuple:
        host, port = address[0], address[1]
    else:
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if host is None:
            host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StreamProtocol(Protocol):
    """
    One TCP connection: one session.
    """

    session = None
    #: Behind a PROXY-protocol balancer (C{--proxy-protocol}): the device's
    #: address is known only once the header has been read, just before the
    #: first bytes arrive.
    proxied = False

    @property
    def tcp(self):
        """
        The TCP transport: behind the PROXY parser, the one under Twisted's
        wrapper (flow control, aborts and the socket are its).
        """
        return self.transport.transport if self.factory.proxy_protocol else self.transport

    def connectionMade(self):
        # No line per connection here: a connection flood must not become a
        # log flood. The session logs once its protocol is known.
        tcp = self.tcp
        # Each set only when true (the class says false): an attribute fewer
        # on every connection.
        if self.factory.proxy_protocol:
            self.proxied = True
        elif hasattr(tcp, "_tempDataLen") and hasattr(tcp, "socket"):
            self.direct = True
        # The protocol is the session's link (L{write}, L{close}, L{pause},
        # L{resume}): no bound methods kept per session.
        self.session = Session(self.factory.hub, "tcp", _peer(self.transport.getPeer()), link=self)
        self.factory.opened(self)

    #: Whether acks may go straight to the socket (L{write}): not behind the
    #: PROXY parser's wrapper, nor on a test's transport.
    direct = False

    def write(self, data: bytes) -> None:
        """
        C{transport.write}, but when L{direct}, bytes that find nothing
        queued before them are sent at once: an ack is one C{send}, where
        Twisted's write would register the socket for writability and send on
        the reactor's next turn (two C{epoll_ctl} calls and a turn per ack).
        What the socket does not take goes to Twisted's buffer, which handles
        it as usual.
        """
        tcp = self.transport
        if not self.direct:
            tcp.write(data)
            return
        if (not tcp._tempDataLen and not tcp.dataBuffer and tcp.connected
                and not tcp.disconnecting and not tcp._writeDisconnected):
            try:
                sent = tcp.socket.send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error Twisted meets on its own write
            if sent == len(data):
                return
            data = data[sent:]
        tcp.write(data)

    def close(self) -> None:
        """
        The session ends the connection (gracefully: queued acks go first).
        """
        self.transport.loseConnection()

    def pause(self) -> None:
        # TCP backpressure: the session has too much waiting; stop reading.
        self.tcp.pauseProducing()

    def resume(self) -> None:
        self.tcp.resumeProducing()

    def dataReceived(self, data):
        session = self.session
        if self.proxied:
            self.proxied = False
            peer = _peer(self.transport.getPeer())
            log.info("session tcp {peer} opened (via {balancer})", peer=peer, balancer=session.peer)
            session.set_peer(peer)
        session.data_received(data)
        if session.decoder is not None:
            self.factory.detected(self)

    def connectionLost(self, reason):
        self.factory.closed(self)
        if self.session is not None:
            self.session.connection_lost()
            self.session = None

    def abort(self) -> None:
        # A silent peer is most often a dead one (a vehicle that lost power, a
        # NAT that forgot the mapping): nothing would flush a graceful close.
        self.tcp.abortConnection()

    def talking(self) -> bool:
        """
        Whether the peer sent bytes not read yet (in a flood of accepts, a
        device's first frame may wait in the kernel while it is the oldest
        undetected connection).
        """
        sock = getattr(self.tcp, "socket", None)
        try:
            return sock is not None and bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:
            return False

    def shed(self) -> None:
        # Close the socket now, not at the reactor's next turn: its file
        # descriptor is wanted for the connection being accepted (one accept
        # loop may take hundreds).
        self.abort()
        lost = getattr(self.tcp, "connectionLost", None)
        if lost is not None:
            lost(Failure(ConnectionAborted()))


class _Sweeper:
    """
    Ends sessions silent for longer than C{idle} seconds, and those for which
    C{also(session, now)} is true, checked every C{period} seconds (C{idle /
    4} by default): one timer for all sessions, not one each (a gateway holds
    many thousands of mostly idle connections).
    """

    def __init__(self, clock, idle: float, sessions, end, also=None, period: Optional[float] = None):
        self.idle = idle
        self.also = also
        self.period = max(idle / 4 if period is None else period, 1.0)
        self._sessions = sessions
        self._end = end
        self._call = LoopingCall(self.sweep)
        self._call.clock = clock
        self._clock = clock

    def start(self) -> None:
        if self.idle > 0 and not self._call.running:
            self._call.start(self.period, now=False)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()

    def sweep(self) -> int:
        now = self._clock.seconds()
        cutoff, also, ended = now - self.idle, self.also, 0
        for key, session in list(self._sessions()):
            if session.last_seen < cutoff or (also is not None and also(session, now)):
                self._end(key, session)
                ended += 1
        return ended


class StreamFactory(Factory):
    """
    @ivar live: the open connections.
    @ivar undetected: open connections whose protocol is not known yet, oldest
        first: the first to go when the process runs short of file
        descriptors.
    @ivar limit: connections held at most (L{connection_limit} at start).
    @ivar idle: seconds of silence after which a connection is dropped (0:
        never). A device that reports or sends keep-alives more often than
        this is never affected; a half-open connection stops holding a session
        (and stops attracting commands that could never arrive).
    """

    protocol = StreamProtocol
    noisy = False

    def __init__(self, hub, idle: float = 3600.0, limit: Optional[int] = None,
                 proxy_protocol: bool = False):
        self.hub = hub
        self.proxy_protocol = proxy_protocol
        self.live = set()
        self.undetected: Dict[StreamProtocol, None] = {}
        self.limit = limit
        self._sweeper = _Sweeper(hub.clock, idle, self._sessions, self._end)
        self._shed = Budget(hub.clock, 1, 10.0, lambda n: log.warn(
            "{n} more connections shed at the file descriptor limit", n=n))

    def opened(self, protocol) -> None:
        port = getattr(protocol.tcp, "server", None)
        if getattr(port, "numberAccepts", 0) > ACCEPTS_PER_TURN:
            # Twisted accepts ever more connections per reactor turn while
            # they keep coming; in a connection flood that starves the
            # devices already connected.
            port.numberAccepts = ACCEPTS_PER_TURN
        self.live.add(protocol)
        self.undetected[protocol] = None
        if self.limit is not None and len(self.live) > self.limit:
            # Shed the oldest connection that has not said what it is (it may
            # be the new one): the process keeps accepting, and devices that
            # did identify keep their sessions. One whose bytes wait unread
            # goes to the back of the line instead, a few times at most.
            for _ in range(8):
                victim = next(iter(self.undetected))
                if victim is protocol or not victim.talking():
                    break
                del self.undetected[victim]
                self.undetected[victim] = None
            if self._shed.allow():
                log.warn("{n} connections, limit {limit} (open files): shedding undetected {peer}",
                         n=len(self.live), limit=self.limit, peer=victim.session.peer)
            self.closed(victim)
            victim.shed()

    def detected(self, protocol) -> None:
        self.undetected.pop(protocol, None)

    def closed(self, protocol) -> None:
        self.live.discard(protocol)
        self.undetected.pop(protocol, None)

    def _sessions(self):
        return ((p, p.session) for p in self.live if p.session is not None)

    def _end(self, protocol, session) -> None:
        log.info("session tcp {peer} silent for {idle:.0f} s, closing", peer=session.peer,
                 idle=self._sweeper.idle)
        protocol.abort()

    def startFactory(self):
        if self.limit is None:
            self.limit = connection_limit()
        self._sweeper.start()

    def stopFactory(self):
        self._sweeper.stop()


class _Peer:
    """
    A UDP session's link to its device: one small object, where two closures
    cost each remembered peer about 500 bytes.
    """

    __slots__ = ("endpoint", "addr")

    def __init__(self, endpoint: "DatagramEndpoint", addr):
        self.endpoint = endpoint
        self.addr = addr

    def write(self, data: bytes) -> None:
        transport = self.endpoint.transport
        if transport is not None:
            transport.write(data, self.addr)

    def close(self) -> None:
        self.endpoint._drop(self.addr)

    def pause(self) -> None:
        pass  # UDP has no flow control: the session does not ack instead

    def resume(self) -> None:
        pass


class DatagramEndpoint(DatagramProtocol):
    """
    UDP: one session per peer address, forgotten after C{idle} seconds of
    silence (a NAT mapping does not live much longer), or sooner once it is
    superseded (L{_superseded}).
    """

    noisy = False

    def __init__(self, hub, idle: float = 600.0, max_peers: int = MAX_PEERS):
        self.hub = hub
        self.max_peers = max_peers
        self.sessions: Dict[Tuple, Session] = {}
        #: The decoder that took the last datagram from each host (see
        #: L{Session.datagram_received}'s hint).
        self.decoders: Dict[str, object] = {}
        self._sweeper = _Sweeper(hub.clock, idle, self.sessions.items, self._forget, self._superseded,
                                 min(idle, hub.claims.window) / 4)
        #: When the table, full, may be swept again (L{_make_room}).
        self._room_at = float("-inf")
        self._full = Budget(hub.clock, 1, 10.0, lambda n: log.warn(
            "{n} more datagrams from new peers not acked: peer table full", n=n))

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
            if len(self.sessions) >= self.max_peers and not self._make_room():
                # Not read, not acked: the device keeps the data and sends it
                # again once silent peers have been forgotten.
                if self._full.allow():
                    log.warn("{n} UDP peers remembered (the limit): datagram from {peer} not acked",
                             n=len(self.sessions), peer=_peer(addr))
                return
            session = Session(self.hub, "udp", _peer(addr), link=_Peer(self, addr))
            host = addr[0]
            session.datagram_received(data, self.decoders.get(host))
            # Only a peer that spoke a known protocol is remembered: garbage
            # from many (possibly spoofed) addresses costs no memory.
            if session.decoder is not None and session.open:
                self.sessions[addr] = session
                if len(self.decoders) >= self.max_peers:
                    self.decoders.clear()
                self.decoders[host] = session.decoder
            return
        session.datagram_received(data)

    def _superseded(self, session, now: float) -> bool:
        # A peer whose device has spoken from another peer since (a NAT gave
        # it a new port), and whose claim no longer counts: no command goes
        # to it and no identity answer depends on it. Kept for the idle time,
        # every new port of such a device would hold a place in the table
        # for ten minutes. One whose ack still waits for its records to
        # commit is kept until the ack has left (forgotten, it would be lost).
        device_id = session.device_id
        hub = self.hub
        return (device_id is not None and hub.sessions.get(device_id) is not session
                and not session.replying and hub.claims.superseded(session, device_id))

    def _make_room(self) -> bool:
        """
        The table is full: sweep it now rather than at the next turn of the
        sweeper, at most once a second (when every peer still counts, as in a
        flood of spoofed sources naming distinct devices, a sweep frees
        nothing and costs a pass over the whole table). Whether there is room.
        """
        now = self.hub.clock.seconds()
        if now >= self._room_at:
            self._room_at = now + 1.0
            self._sweeper.sweep()
        return len(self.sessions) < self.max_peers

    def _forget(self, addr, session) -> None:
        del self.sessions[addr]
        session.connection_lost()

    def _drop(self, addr) -> None:
        # The session closed itself (it sent mostly garbage).
        session = self.sessions.pop(addr, None)
        if session is not None:
            session.connection_lost()
