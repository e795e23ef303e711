"""
One device never costs the others more than their share: a session's records
waiting for the database and its queued acks are bounded (TCP backpressure,
UDP datagrams not acked), its error lines are rate-limited, a session that
sends mostly garbage is closed, a connection that sends nothing is dropped,
file descriptors go to identified devices first, and everything a device sent
is escaped before it is logged. With the toy protocol, a fake clock and
StringTransport; the real-process versions are in L{tests.test_hostile_e2e}.
"""

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import formatEvent, globalLogPublisher

from gateway import session as session_module
from gateway.hexdump import printable
from gateway.hub import UNKNOWN_PER_SECOND, Hub, MemoryStore
from gateway.server import DatagramEndpoint, StreamFactory
from gateway.session import (DETECT_SECONDS, ERROR_PERIOD, ERRORS_PER_PERIOD, GARBAGE_SECONDS,
                             MAX_REPLIES, MAX_WAITING, Session)
from tests.test_session import HeldStore
from tests.toy import toy


@pytest.fixture
def logged():
    """
    The text of every log event emitted during the test.
    """
    lines = []

    def observer(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def connect(factory):
    protocol = factory.buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def tcp(store=None, clock=None):
    clock = clock or Clock()
    hub = Hub({"toy": toy}, store or MemoryStore(), clock)
    hub.keep_errors = True
    factory = StreamFactory(hub)
    return (hub, *connect(factory))


class UdpTransport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


# -- fairness ---------------------------------------------------------------

def test_tcp_reading_stops_while_too_many_records_wait():
    store = HeldStore()
    hub, protocol, transport = tcp(store)
    per_frame = 50  # the toy protocol makes at most 60 records a frame
    frames = MAX_WAITING // per_frame + 5
    protocol.dataReceived(b"".join(b"TOY,big,%d,%d\n" % (per_frame, i) for i in range(frames)))
    # One device's backlog waits on its own socket, not in the store's queue.
    assert transport.producerState == "paused"
    assert sum(len(r) for _, r in store.held) == MAX_WAITING
    assert protocol.session._buffer  # the rest stays unread
    while store.held:
        store.commit()
    assert transport.producerState == "producing"
    assert transport.value() == b"ACK,big\n" * frames
    assert protocol.session._buffer == b""


def test_udp_datagram_beyond_the_bound_is_not_acked():
    store = HeldStore()
    hub = Hub({"toy": toy}, store, Clock())
    endpoint, out = DatagramEndpoint(hub), UdpTransport()
    endpoint.makeConnection(out)
    addr = ("127.0.0.1", 4000)
    frames = MAX_WAITING // 50
    for i in range(frames):
        endpoint.datagramReceived(b"TOY,u,50,%d\n" % i, addr)
    endpoint.datagramReceived(b"TOY,u,1,later\n", addr)
    assert len(store.held) == frames  # the last one was not even decoded
    while store.held:
        store.commit()
    assert out.sent == [(b"ACK,u\n", addr)] * frames
    endpoint.datagramReceived(b"TOY,u,1,later\n", addr)  # the device sends it again
    store.commit()
    assert out.sent == [(b"ACK,u\n", addr)] * (frames + 1)


def test_the_pending_ack_list_is_bounded():
    store = HeldStore()
    hub, protocol, transport = tcp(store)
    # A report waits for the database while keep-alives pile up behind it.
    protocol.dataReceived(b"TOY,p,1\n" + b"PING,p\n" * (MAX_REPLIES * 4))
    assert len(protocol.session._replies) == MAX_REPLIES
    assert transport.producerState == "paused"
    store.commit()
    assert transport.value() == b"ACK,p\n" + b"PING,p\n" * (MAX_REPLIES * 4)
    assert transport.producerState == "producing"


def test_a_flushing_device_does_not_queue_ahead_of_another():
    store = HeldStore()
    clock = Clock()
    hub = Hub({"toy": toy}, store, clock)
    factory = StreamFactory(hub)
    flusher, _ = connect(factory)
    honest, honest_transport = connect(factory)
    flusher.dataReceived(b"".join(b"TOY,flush,50,%d\n" % i for i in range(1000)))
    honest.dataReceived(b"TOY,honest,1\n")
    # What waits for the database: the flusher's bound, then the honest frame.
    waiting = [len(r) for _, r in store.held]
    assert sum(waiting[:-1]) == MAX_WAITING and waiting[-1] == 1


# -- floods -----------------------------------------------------------------

def test_error_lines_of_a_session_are_rate_limited_with_a_summary(logged):
    clock = Clock()
    hub, protocol, transport = tcp(clock=clock)
    protocol.dataReceived(b"TOY,g,1\n" + b"TOY,g,1\n" * 200)  # plenty of good bytes
    for _ in range(100):
        protocol.dataReceived(b"TOY,g,BAD\n")
    errors = [line for line in logged if "bad frame" in line]
    assert len(errors) == ERRORS_PER_PERIOD
    clock.advance(ERROR_PERIOD)  # the summary comes from a timer, not from more traffic
    assert any(f"{100 - ERRORS_PER_PERIOD} more errors in" in line for line in logged)
    assert transport.connected


def test_a_session_sending_mostly_garbage_for_a_while_is_closed(logged):
    clock = Clock()
    hub, protocol, transport = tcp(clock=clock)
    protocol.dataReceived(b"TOY,g,1\n")
    # A burst of garbage is survived...
    protocol.dataReceived(b"\x00garbage" * 64 * 1024)
    assert transport.connected
    # ...a flood that goes on is not: 0.5 MB/s in pieces of 50 KB.
    for _ in range(int(GARBAGE_SECONDS * 10) + 1):
        clock.advance(0.1)
        protocol.dataReceived(b"\x00garbage" * 6 * 1024)
        if not transport.connected:
            break
    assert not transport.connected
    assert clock.seconds() <= GARBAGE_SECONDS + 0.2
    # Two error periods began: at most a budget each.
    assert len([line for line in logged if "skipped" in line]) <= 2 * ERRORS_PER_PERIOD
    assert any("garbage" in line and "closed" in line for line in logged)


def test_some_garbage_among_good_frames_keeps_the_session():
    clock = Clock()
    hub, protocol, transport = tcp(clock=clock)
    for _ in range(300):  # a minute: as much garbage as frames
        clock.advance(0.2)
        protocol.dataReceived(b"TOY,ok,1," + b"x" * 2000 + b"\n" + b"\x00" * 2000)
    assert transport.connected


def test_a_connection_that_sends_nothing_is_dropped_at_the_detection_deadline():
    clock = Clock()
    hub, protocol, transport = tcp(clock=clock)
    clock.advance(DETECT_SECONDS + 0.1)
    assert not transport.connected
    assert hub.store_.unknown_frames == []  # nothing to keep
    assert any("sent nothing" in e for e in hub.errors)


def test_unknown_summary_comes_from_a_timer(logged):
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    endpoint = DatagramEndpoint(hub)
    endpoint.makeConnection(UdpTransport())
    for i in range(UNKNOWN_PER_SECOND + 7):
        endpoint.datagramReceived(b"\x00junk", ("127.0.0.1", 2000 + i))
    clock.advance(1.0)  # and no further packet
    assert any("7 more unrecognised" in line for line in logged)


def test_undetected_connections_are_shed_first_at_the_limit():
    hub = Hub({"toy": toy}, MemoryStore(), Clock())
    factory = StreamFactory(hub, limit=3)
    device, device_transport = connect(factory)
    device.dataReceived(b"PING,d\n")
    idle = [connect(factory) for _ in range(2)]
    newest, newest_transport = connect(factory)
    # Over the limit: the oldest undetected connection goes, not the device.
    assert idle[0][1].disconnecting or not idle[0][1].connected
    assert device_transport.connected and newest_transport.connected
    assert len(factory.live) == 3
    everyone_identified = StreamFactory(hub, limit=1)
    first, first_transport = connect(everyone_identified)
    first.dataReceived(b"PING,e\n")
    second, second_transport = connect(everyone_identified)
    assert first_transport.connected and not second_transport.connected


def test_the_udp_peer_table_is_capped():
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    endpoint, out = DatagramEndpoint(hub, idle=100, max_peers=2), UdpTransport()
    endpoint.makeConnection(out)
    endpoint.doStart()
    for port in (1, 2, 3):
        endpoint.datagramReceived(b"PING,%d\n" % port, ("127.0.0.1", port))
    assert list(endpoint.sessions) == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert [addr[1] for _, addr in out.sent] == [1, 2]  # the third was not acked
    clock.advance(130)  # silent peers forgotten: room again
    endpoint.datagramReceived(b"PING,3\n", ("127.0.0.1", 3))
    assert list(endpoint.sessions) == [("127.0.0.1", 3)]
    endpoint.doStop()


# -- review -----------------------------------------------------------------

def test_bound_decoder_raising_in_detect_goes_to_the_unknown_path():
    class Fragile:
        name, transports, frame, decode = toy.name, toy.transports, toy.frame, toy.decode

        def detect(self, head, transport):
            if b"BOOM" in head:
                raise ValueError("bug in detect")
            return toy.detect(head, transport)

    hub = Hub({"toy": Fragile()}, MemoryStore(), Clock())
    out = []
    session = Session(hub, "udp", "1.2.3.4:5", out.append, lambda: None)
    session.datagram_received(b"PING,1\n")
    session.datagram_received(b"BOOM")
    assert hub.store_.unknown_frames == [("udp", "1.2.3.4:5", b"BOOM")]
    session.datagram_received(b"PING,1\n")
    assert out == [b"PING,1\n"] * 2


# -- hygiene ----------------------------------------------------------------

def test_printable():
    assert printable("ab\x1b[31m\n\x07é") == "ab\\x1b[31m\\x0a\\x07\\xe9"
    assert printable(b"\x00") == "b'\\x00'"
    assert printable("x" * 300, 10) == "x" * 10 + "..."


def test_device_text_is_escaped_in_every_log_line(logged):
    hub, protocol, transport = tcp()
    evil = b"\x1b[2J\x07ev\rl"
    protocol.dataReceived(b"TOY," + evil + b",1\n")
    protocol.dataReceived(b"TOY," + evil + b",BAD\n")
    protocol.transport.loseConnection()
    assert any("device" in line and "ev" in line for line in logged)
    for line in logged:
        assert not any(c in line for c in "\x1b\x07\r"), line
    assert any("\\x1b[2J\\x07ev\\x0dl" in line for line in logged)


def test_error_budget_is_per_session(logged, monkeypatch):
    monkeypatch.setattr(session_module, "GARBAGE_BYTES", 1 << 30)
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    factory = StreamFactory(hub)
    noisy, _ = connect(factory)
    quiet, _ = connect(factory)
    for _ in range(50):
        noisy.dataReceived(b"TOY,n,BAD\n")
    quiet.dataReceived(b"TOY,q,BAD\n")
    assert any("TOY,q,BAD" in line for line in logged)


def test_detect_failures_are_rate_limited_and_escaped(logged):
    class Raising:
        name, transports, frame, decode = toy.name, toy.transports, toy.frame, toy.decode

        def detect(self, head, transport):
            raise ValueError(head.decode("latin-1"))

    clock = Clock()
    hub = Hub({"toy": Raising()}, MemoryStore(), clock)
    endpoint = DatagramEndpoint(hub)
    endpoint.makeConnection(UdpTransport())
    for i in range(50):
        endpoint.datagramReceived(b"\x1b[2J crafted", ("127.0.0.1", 3000 + i))
    failures = [line for line in logged if "raised in detect()" in line]
    assert len(failures) == 5
    assert all("\x1b" not in line for line in logged)
    clock.advance(10)
    assert any("45 more detect() failures" in line for line in logged)


def test_a_connection_whose_first_bytes_wait_unread_is_not_shed():
    import socket

    hub = Hub({"toy": toy}, MemoryStore(), Clock())
    factory = StreamFactory(hub, limit=2)
    pairs = []
    for _ in range(2):
        protocol, transport = connect(factory)
        ours, theirs = socket.socketpair()
        transport.socket = ours  # what the real transport reads from
        pairs.append((protocol, transport, ours, theirs))
    pairs[0][3].sendall(b"TOY,early,1\n")  # the oldest has spoken; not read yet
    try:
        newest, newest_transport = connect(factory)
        assert pairs[0][1].connected
        assert not pairs[1][1].connected and newest_transport.connected
    finally:
        for _, _, ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_accepts_per_reactor_turn_are_capped():
    from gateway.server import ACCEPTS_PER_TURN

    class Port:
        numberAccepts = 1000  # what Twisted grows it to in a connection flood

    hub = Hub({"toy": toy}, MemoryStore(), Clock())
    factory = StreamFactory(hub)
    protocol = factory.buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol, transport.server = protocol, Port()
    protocol.makeConnection(transport)
    assert transport.server.numberAccepts == ACCEPTS_PER_TURN
