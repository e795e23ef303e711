"""
The session path with a toy protocol: framing, detection, ack ordering and
error handling, without sockets (StringTransport) and with a fake clock — but
for the one test that checks the real UDP socket's receive buffer.
"""

import socket

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from gateway.hub import UNKNOWN_PER_SECOND, Hub, MemoryStore
from gateway.model import DecodeResult
from gateway.server import DatagramEndpoint, StreamFactory
from gateway.session import DETECT_SECONDS, MAX_BUFFER, Session
from tests.harness import udp_endpoint
from tests.toy import toy


class HeldStore(MemoryStore):
    """
    A store whose commits the test releases by hand.
    """

    def __init__(self):
        super().__init__()
        self.held = []

    def submit(self, device_id, protocol, peer, records, **kw):
        d = Deferred()
        self.held.append((d, list(records)))
        return d

    def commit(self, index=0):
        d, records = self.held.pop(index)
        self.records.extend((None, None, r) for r in records)
        d.callback(None)


def connect(store=None, clock=None):
    clock = clock or Clock()
    hub = Hub({"toy": toy}, store or MemoryStore(), clock)
    hub.keep_errors = True
    factory = StreamFactory(hub)
    protocol = factory.buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return hub, protocol, transport


def session_of(decoder):
    """
    A TCP session over C{decoder} alone: C{(hub, session, written)}.
    """
    hub = Hub({"toy": decoder}, MemoryStore(), Clock())
    hub.keep_errors = True
    out = []
    return hub, Session(hub, "tcp", "peer", out.append, lambda: None), out


def test_frame_split_across_reads():
    hub, protocol, transport = connect()
    data = b"TOY,42,2,a\n"
    for i in range(len(data)):
        protocol.dataReceived(data[i:i + 1])
    assert transport.value() == b"ACK,42\n"
    assert len(hub.store_.records) == 2
    assert protocol.session.device_id == "42"


def test_several_frames_in_one_read():
    hub, protocol, transport = connect()
    protocol.dataReceived(b"TOY,1,1\nPING,1\nTOY,1,3\n")
    assert transport.value() == b"ACK,1\nPING,1\nACK,1\n"
    assert len(hub.store_.records) == 4


def test_garbage_before_a_frame_is_skipped_and_logged():
    hub, protocol, transport = connect()
    protocol.dataReceived(b"TOY,1,1\n")
    protocol.dataReceived(b"\x00\xffjunkTOY,1,1,x\n")
    assert transport.value() == b"ACK,1\nACK,1\n"
    assert any("skipped" in e and "00ff6a756e6b" in e for e in hub.errors)


def test_bad_frame_is_skipped_and_the_session_goes_on():
    hub, protocol, transport = connect()
    protocol.dataReceived(b"TOY,1,BAD\nTOY,1,1\n")
    assert transport.value() == b"ACK,1\n"
    assert transport.connected
    assert any("bad frame" in e and b"TOY,1,BAD".hex() in e for e in hub.errors)


def test_oversized_input_is_dropped_not_buffered():
    hub, protocol, transport = connect()
    protocol.dataReceived(b"TOY,1,1\n")
    protocol.dataReceived(b"TOY,1,1," + b"x" * (MAX_BUFFER + 10))
    assert protocol.session._buffer == b""
    assert any("dropped" in e for e in hub.errors)
    protocol.dataReceived(b"TOY,1,1\n")
    assert transport.value() == b"ACK,1\nACK,1\n"


def test_unknown_protocol_is_recorded_and_closed():
    hub, protocol, transport = connect()
    peer = protocol.session.peer
    protocol.dataReceived(b"\x01\x02\x03 hello there")
    assert not transport.connected
    assert hub.store_.unknown_frames == [("tcp", peer, b"\x01\x02\x03 hello there")]
    assert any("no decoder recognises" in e for e in hub.errors)


def test_need_more_waits_then_times_out():
    clock = Clock()
    hub, protocol, transport = connect(clock=clock)
    protocol.dataReceived(b"TO")
    assert transport.connected and protocol.session.decoder is None
    clock.advance(DETECT_SECONDS + 0.1)
    assert not transport.connected
    assert hub.store_.unknown_frames[0][2] == b"TO"


def test_detection_once_then_frames_go_straight_to_the_decoder():
    calls = []
    original = toy.detect

    class Counting:
        name, transports, frame, decode = toy.name, toy.transports, toy.frame, toy.decode

        def detect(self, head, transport):
            calls.append(head)
            return original(head, transport)

    hub = Hub({"toy": Counting()}, MemoryStore(), Clock())
    out = []
    session = Session(hub, "tcp", "peer", out.append, lambda: None)
    session.data_received(b"TOY,1,1\n")
    session.data_received(b"TOY,1,1\nTOY,1,1\n")
    assert len(calls) == 1
    assert out == [b"ACK,1\n"] * 3


def test_ack_only_after_commit_and_in_frame_order():
    store = HeldStore()
    hub, protocol, transport = connect(store=store)
    protocol.dataReceived(b"TOY,7,1\nPING,7\nTOY,7,2\n")
    # Nothing committed yet: not even the keep-alive echo may overtake the
    # first report's ack.
    assert transport.value() == b""
    store.commit(1)  # the second report commits first
    assert transport.value() == b""
    store.commit(0)
    assert transport.value() == b"ACK,7\nPING,7\nACK,7\n"


def test_failed_store_means_no_ack():
    class Down(MemoryStore):
        def submit(self, *args, **kw):
            return fail(RuntimeError("database down"))

    hub, protocol, transport = connect(store=Down())
    protocol.dataReceived(b"TOY,7,1\nPING,7\n")
    assert transport.value() == b"PING,7\n"
    assert any("no ack" in e for e in hub.errors)


def test_udp_datagram_batch_and_truncated_tail():
    hub = Hub({"toy": toy}, MemoryStore(), Clock())
    hub.keep_errors = True
    out = []
    session = Session(hub, "udp", "1.2.3.4:5", out.append, lambda: None)
    session.datagram_received(b"TOY,9,1\nTOY,9,1\nTOY,9")
    assert out == [b"ACK,9\n", b"ACK,9\n"]
    assert any("truncated" in e for e in hub.errors)
    session.datagram_received(b"garbage that is no protocol")
    assert hub.store_.unknown_frames[-1][2] == b"garbage that is no protocol"
    session.datagram_received(b"PING,9\n")
    assert out[-1] == b"PING,9\n"


def test_decoder_bug_does_not_kill_the_session():
    class Buggy:
        name, transports, detect, frame = toy.name, toy.transports, toy.detect, toy.frame

        def decode(self, frame, context):
            if b"BOOM" in frame:
                raise ZeroDivisionError("bug")
            return toy.decode(frame, context)

    hub, session, out = session_of(Buggy())
    session.data_received(b"TOY,1,BOOM\nTOY,1,1\n")
    assert out == [b"ACK,1\n"]
    assert any("decoder failed" in e for e in hub.errors)


def test_a_command_waits_behind_pending_acks():
    store = HeldStore()
    hub, protocol, transport = connect(store=store)
    protocol.dataReceived(b"TOY,7,1\n")
    assert protocol.session.send(b"RELAY,1\n")
    assert transport.value() == b""
    store.commit()
    assert transport.value() == b"ACK,7\nRELAY,1\n"


def test_framer_may_consume_line_ends_quietly():
    class Lines:
        name, transports, detect, decode = toy.name, toy.transports, toy.detect, toy.decode

        def frame(self, buffer, transport):
            if buffer[:1] in (b"\r", b"\n"):
                return b"", 1
            return toy.frame(buffer, transport)

    hub, session, out = session_of(Lines())
    session.data_received(b"TOY,1,1\n\r\n")
    session.data_received(b"\r\nTOY,1,1\n")
    assert out == [b"ACK,1\n"] * 2
    assert hub.errors == []



def test_learned_settings_add_to_the_base_settings():
    hub = Hub({"toy": toy}, MemoryStore(), Clock(), settings={None: {"toy.a": "1", "toy.b": "2"}})
    hub.learned("dev", {"toy.b": "learned", "toy.c": "3"})
    assert hub.settings("dev") == {"toy.a": "1", "toy.b": "learned", "toy.c": "3"}
    assert hub.settings("other") == {"toy.a": "1", "toy.b": "2"}
    assert hub.store_.learned == {"dev": {"toy.b": "learned", "toy.c": "3"}}


def test_silent_tcp_connection_is_dropped_after_the_idle_timeout():
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    factory = StreamFactory(hub, idle=100)
    factory.doStart()
    pairs = []
    for device in (b"1", b"2"):
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"PING," + device + b"\n")
        pairs.append((protocol, transport))
    (quiet, quiet_transport), (chatty, chatty_transport) = pairs
    for _ in range(14):  # past the idle time and the next sweep
        clock.advance(10)
        chatty.dataReceived(b"PING,2\n")
    assert not quiet_transport.connected and quiet.session is None
    assert chatty_transport.connected and chatty.session is not None
    assert "1" not in hub.sessions and "2" in hub.sessions
    factory.doStop()


def test_udp_peer_is_forgotten_after_its_idle_time():
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    endpoint = DatagramEndpoint(hub, idle=100)
    sent = []

    class Transport:
        def write(self, data, addr):
            sent.append((data, addr))

    endpoint.makeConnection(Transport())
    endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5000))
    assert hub.sessions["7"].transport == "udp"
    clock.advance(130)
    assert sent == [(b"PING,7\n", ("127.0.0.1", 5000))]
    assert endpoint.sessions == {} and "7" not in hub.sessions
    endpoint.doStop()


def test_udp_garbage_from_many_peers_is_bounded():
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    hub.keep_errors = True
    endpoint = DatagramEndpoint(hub)
    for i in range(500):
        endpoint.datagramReceived(b"\x00garbage %d" % i, ("127.0.0.1", 1000 + i))
    assert endpoint.sessions == {}
    assert len(hub.store_.unknown_frames) == UNKNOWN_PER_SECOND
    clock.advance(1)
    endpoint.datagramReceived(b"\x00more garbage", ("127.0.0.1", 999))
    assert hub.store_.unknown_frames[-1][2] == b"\x00more garbage"
    endpoint.datagramReceived(b"PING,8\n", ("127.0.0.1", 999))
    assert list(endpoint.sessions) == [("127.0.0.1", 999)]


def test_udp_receive_buffer_is_enlarged():
    from twisted.internet import reactor

    from gateway.server import UDP_RECEIVE_BUFFER

    endpoint = DatagramEndpoint(Hub({"toy": toy}, MemoryStore(), Clock()))
    port = reactor.listenUDP(0, endpoint, interface="127.0.0.1")
    try:
        size = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        port.stopReading()
        port.connectionLost()  # closes the socket now; the reactor is not running
    with open("/proc/sys/net/core/rmem_max") as f:
        cap = int(f.read())
    # Linux doubles what it grants (bookkeeping overhead) and caps it at rmem_max.
    assert size >= min(UDP_RECEIVE_BUFFER, cap) * 2 > 212992


def test_withheld_records_are_shown_not_stored_not_acked():
    class Anonymous:
        name, transports, detect, frame = toy.name, toy.transports, toy.detect, toy.frame

        def decode(self, frame, context):
            result = toy.decode(frame, context)
            if b",anon," not in frame:
                return result
            return DecodeResult(records=result.records, reply=result.reply, withheld="nobody's")

    hub, session, out = session_of(Anonymous())
    session.data_received(b"TOY,anon,2\nTOY,7,1\n")
    assert out == [b"ACK,7\n"]
    assert [d for d, _, _ in hub.store_.records] == ["7"]
    assert [d for d, _, _ in hub.store_.decoded] == [None, None, "7"]
    assert any(e.startswith("nobody's") for e in hub.errors)


def test_commands_wait_while_a_decoder_says_so():
    class Busy:
        name, transports, detect, frame = toy.name, toy.transports, toy.detect, toy.frame

        def decode(self, frame, context):
            result = toy.decode(frame, context)
            return DecodeResult(device_id=result.device_id, records=result.records,
                                reply=result.reply, commands_wait=frame.startswith(b"PING"))

    hub, session, out = session_of(Busy())
    session.data_received(b"PING,7\n")
    assert session.send(b"RELAY,1\n") is False
    session.data_received(b"TOY,7,1\n")
    assert session.send(b"RELAY,1\n")
    assert out == [b"PING,7\n", b"ACK,7\n", b"RELAY,1\n"]


class _Counting:
    """
    A registered decoder that notes in C{asked} each time it is asked to detect.
    """

    def __init__(self, decoder, asked: list):
        self._decoder = decoder
        self._asked = asked

    def __getattr__(self, name):
        return getattr(self._decoder, name)

    def detect(self, head, transport):
        self._asked.append(self._decoder.name)
        return self._decoder.detect(head, transport)


def _counting_decoders(asked: list) -> dict:
    from gateway.registry import discover

    return {name: _Counting(d, asked) for name, d in discover().items()}


def test_a_new_udp_port_of_a_known_host_asks_its_last_decoder_first():
    """
    A device behind a NAT that sends every datagram from a new port is not
    run through every decoder each time; another device behind the same
    address that speaks another protocol is still recognised.
    """
    from tests.harness import frame_of

    asked = []
    decoders = _counting_decoders(asked)
    hub = Hub(decoders, MemoryStore(), Clock())
    endpoint = DatagramEndpoint(hub)
    sent = []
    endpoint.transport = type("T", (), {"write": lambda self, data, addr: sent.append((data, addr))})()
    gosafe = frame_of("gosafe-036")
    endpoint.datagramReceived(gosafe, ("10.0.0.1", 1000))
    assert len(asked) == len([d for d in decoders.values() if "udp" in d.transports])
    del asked[:]
    endpoint.datagramReceived(gosafe, ("10.0.0.1", 1001))
    assert asked == ["gosafe"]
    assert endpoint.sessions[("10.0.0.1", 1001)].protocol == "gosafe"
    assert [addr for _, addr in sent] == [("10.0.0.1", 1000), ("10.0.0.1", 1001)]
    del asked[:]
    endpoint.datagramReceived(frame_of("h02-094"), ("10.0.0.1", 1002))
    assert asked[0] == "gosafe" and len(asked) > 1
    assert endpoint.sessions[("10.0.0.1", 1002)].protocol == "h02"


def test_decoder_state_is_per_session_and_lasts_from_the_first_frame_it_is_kept():
    """
    Sessions whose decoder keeps no state share one context, filled in for
    each frame; state a decoder leaves (a failed frame's too) stays with its
    session for its next frames, and no other session sees it.
    """
    seen = []

    class Counting:
        name, transports, detect, frame = toy.name, toy.transports, toy.detect, toy.frame

        def decode(self, frame, context):
            # Only device 2 keeps state; a frame ending in BAD fails after
            # counting itself.
            seen.append((context.peer, context.device_id, dict(context.state)))
            if b",2," in frame:
                context.state["frames"] = context.state.get("frames", 0) + 1
            return toy.decode(frame, context)

    hub = Hub({"toy": Counting()}, MemoryStore(), Clock())
    hub.keep_errors = True
    one = Session(hub, "tcp", "peer-1", [].append, lambda: None)
    two = Session(hub, "tcp", "peer-2", [].append, lambda: None)
    one.data_received(b"TOY,1,1\n")
    two.data_received(b"TOY,2,BAD\n")
    one.data_received(b"TOY,1,1\n")
    two.data_received(b"TOY,2,1\n")
    one.data_received(b"TOY,1,1\n")
    assert seen == [("peer-1", None, {}), ("peer-2", None, {}), ("peer-1", "1", {}),
                    ("peer-2", None, {"frames": 1}), ("peer-1", "1", {})]
    assert one._context is None
    assert two.context.state == {"frames": 2} and two.context.device_id == "2"
    assert one.context.state == {} and one.context.peer == "peer-1" and one.context.device_id == "1"


def test_an_idle_tcp_session_keeps_no_context_nor_bound_methods():
    hub, protocol, transport = connect()
    protocol.dataReceived(b"TOY,7,1\n")
    session = protocol.session
    assert session.device_id == "7" and transport.value() == b"ACK,7\n"
    assert session._context is None
    assert session._link is protocol
    # Asked for (a command to encode), the context is made and kept.
    assert session.context is session.context
    assert (session.context.transport, session.context.device_id) == ("tcp", "7")


def test_a_new_udp_address_asks_the_decoder_that_alone_took_the_same_beginning():
    """
    A device behind a NAT that changes its address too: the decoder that
    alone and conclusively took the last datagram beginning with the same
    bytes is asked first (and only), but must match conclusively; what it
    does not match goes through full detection. The memory is bounded.
    """
    from unittest import mock

    from gateway import detector
    from tests.harness import frame_of

    asked = []
    decoders = _counting_decoders(asked)
    udp = len([d for d in decoders.values() if "udp" in d.transports])
    hub = Hub(decoders, MemoryStore(), Clock())
    endpoint = DatagramEndpoint(hub)
    endpoint.transport = type("T", (), {"write": lambda self, data, addr: None})()
    gosafe = frame_of("gosafe-036")
    endpoint.datagramReceived(gosafe, ("10.0.0.1", 1000))
    assert len(asked) == udp
    del asked[:]
    endpoint.datagramReceived(gosafe, ("10.0.0.2", 1000))
    assert asked == ["gosafe"]
    assert endpoint.sessions[("10.0.0.2", 1000)].protocol == "gosafe"
    # The same beginning, but not GoSafe's: the hint does not match, the
    # others are asked.
    del asked[:]
    endpoint.datagramReceived(gosafe[:4] + b"\x00 not a frame", ("10.0.0.3", 1000))
    assert asked[0] == "gosafe" and len(asked) == 1 + udp
    assert ("10.0.0.3", 1000) not in endpoint.sessions
    # Another protocol from a new address: nothing remembered, full detection.
    del asked[:]
    endpoint.datagramReceived(frame_of("h02-094"), ("10.0.0.4", 1000))
    assert len(asked) == udp and endpoint.sessions[("10.0.0.4", 1000)].protocol == "h02"
    with mock.patch.object(detector, "MAX_HEADS", 3):
        for i in range(10):
            hub.detector.detect(b"%03d" % i + gosafe[3:], "udp", final=True)
            assert len(hub.detector._heads) <= 3


def test_a_forgotten_udp_peer_no_command_was_written_on_costs_no_database_round_trip(monkeypatch):
    """
    A device behind a NAT that changes its port leaves a session behind with
    every datagram; when one is forgotten, its unanswered commands move to
    the device's new session (a database round trip), but only a session a
    command was written on can have any.
    """
    from gateway import commands

    threaded = []
    monkeypatch.setattr(commands.threads, "deferToThread",
                        lambda f, *args: threaded.append((f.__name__, args)) or Deferred())
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    queue = hub.commands = commands.CommandQueue(hub, engine=None, reactor=None)
    endpoint = DatagramEndpoint(hub, idle=100)
    endpoint.transport = type("T", (), {"write": lambda self, data, addr: None})()
    for port in (5000, 5001, 5002):
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", port))
        clock.advance(1)
    first, second, third = (endpoint.sessions[("127.0.0.1", p)] for p in (5000, 5001, 5002))
    queue._written[second] = None  # a command was claimed for it
    endpoint._forget(("127.0.0.1", 5000), first)
    assert threaded == []
    endpoint._forget(("127.0.0.1", 5001), second)
    assert [name for name, _ in threaded] == ["_requeue"] and threaded[0][1][0] == second.key
    assert second not in queue._written and hub.sessions["7"] is third


def test_a_nat_device_s_superseded_udp_peers_are_forgotten_once_they_no_longer_count():
    """
    A device behind a NAT that gives it a new port every report leaves a peer
    behind each time. One whose claim is older than the claim window, while
    a newer peer holds the device, changes no identity answer: it goes at
    the next sweep (a quarter of the window), not after the idle time. A
    device on one port, silent for longer than the window, stays.
    """
    hub, endpoint, _ = udp_endpoint(toy, start=True, idle=600)
    clock = hub.clock
    endpoint.datagramReceived(b"PING,8\n", ("127.0.0.2", 4000))
    for n in range(60):  # a report every 10 s for 10 minutes
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5000 + n))
        # Within the window a superseded peer still counts (settling: engine
        # stop waits), so it is kept.
        kept = {port for _, port in endpoint.sessions} - {4000}
        assert set(range(5000 + max(0, n - 12), 5000 + n + 1)) <= kept
        assert len(kept) <= 12 + 3 + 1  # the window, the sweep's period, the newest
        clock.advance(10)
    assert hub.sessions["7"] is endpoint.sessions[("127.0.0.1", 5059)]
    assert hub.claims.route("7").session is hub.sessions["7"]
    # The device on one port, silent 600 s less one sweep, holds its device.
    assert ("127.0.0.2", 4000) in endpoint.sessions and hub.sessions["8"].peer == "127.0.0.2:4000"
    endpoint.doStop()


def test_claims_forgotten_beyond_the_claimants_cap_make_their_peers_superseded_at_once():
    from gateway.identity import MAX_CLAIMANTS

    hub, endpoint, _ = udp_endpoint(toy, start=True)
    clock = hub.clock
    for n in range(MAX_CLAIMANTS + 5):
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5000 + n))
        clock.advance(0.5)
    # The five oldest claims were forgotten to bound the work per frame: their
    # peers count nowhere, window or not.
    assert endpoint._sweeper.sweep() == 5
    assert sorted(p for _, p in endpoint.sessions) == list(range(5005, 5000 + MAX_CLAIMANTS + 5))
    assert hub.claims.holder("7") is endpoint.sessions[("127.0.0.1", 5000 + MAX_CLAIMANTS + 4)]


def test_a_superseded_udp_peer_stays_until_its_ack_is_sent():
    """
    A peer whose claim no longer counts while its records are still being
    stored is kept until they commit and its ack has left (a device flushing
    history from more new ports than it has claimants, faster than a commit):
    forgotten, the ack would be lost. The sweep takes it after.
    """
    from gateway.identity import MAX_CLAIMANTS

    store = HeldStore()
    hub, endpoint, sent = udp_endpoint(toy, start=True, store=store)
    endpoint.datagramReceived(b"TOY,7,1\n", ("127.0.0.1", 5000))
    for n in range(1, MAX_CLAIMANTS + 1):
        hub.clock.advance(0.1)
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5000 + n))
    assert hub.claims.superseded(endpoint.sessions[("127.0.0.1", 5000)], "7")
    assert endpoint._sweeper.sweep() == 0 and ("127.0.0.1", 5000) in endpoint.sessions
    store.commit()
    assert sent[-1] == (b"ACK,7\n", ("127.0.0.1", 5000))
    assert endpoint._sweeper.sweep() == 1 and ("127.0.0.1", 5000) not in endpoint.sessions
    endpoint.doStop()


def test_a_full_udp_peer_table_makes_room_from_superseded_peers_at_once():
    """
    At the peer limit, a new peer is not refused while superseded peers hold
    places: the table is swept there and then (once a second at most). Peers
    that still count (each holds its own device) are never swept for room.
    """
    hub, endpoint, sent = udp_endpoint(toy, start=True, idle=600, max_peers=4)
    clock = hub.clock
    endpoint.datagramReceived(b"PING,8\n", ("127.0.0.2", 4000))
    for n in range(3):
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5000 + n))
        clock.advance(1)
    endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5003))  # full; the others still count
    assert len(endpoint.sessions) == 4 and ("127.0.0.1", 5003) not in endpoint.sessions
    for _ in range(122):  # the sweeper's last turn (at 120 s) found nothing past the window yet
        clock.advance(1)
    assert len(endpoint.sessions) == 4
    endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", 5004))
    assert sorted(endpoint.sessions) == [("127.0.0.1", 5002), ("127.0.0.1", 5004), ("127.0.0.2", 4000)]
    assert sent[-1] == (b"PING,7\n", ("127.0.0.1", 5004))
    # Distinct devices, each holding its own: nothing to forget, the new one waits.
    for n in range(2):
        endpoint.datagramReceived(b"PING,%d\n" % (20 + n), ("127.0.0.3", 6000 + n))
    assert len(endpoint.sessions) == 4 and ("127.0.0.3", 6001) not in endpoint.sessions
    assert sent[-1] == (b"PING,20\n", ("127.0.0.3", 6000))
    endpoint.doStop()


def test_forgetting_a_peer_that_did_not_hold_its_device_tells_no_one_it_came_online():
    hub, endpoint, _ = udp_endpoint(toy, start=True)
    clock = hub.clock
    events = []
    hub.watchers.append(lambda event, session: events.append((event, session.peer)))
    for port in (5000, 5001):
        endpoint.datagramReceived(b"PING,7\n", ("127.0.0.1", port))
        clock.advance(1)
    assert events == [("online", "127.0.0.1:5000"), ("online", "127.0.0.1:5001")]
    endpoint._forget(("127.0.0.1", 5000), endpoint.sessions[("127.0.0.1", 5000)])
    assert events[2:] == []
    endpoint._forget(("127.0.0.1", 5001), endpoint.sessions[("127.0.0.1", 5001)])
    assert events[2:] == [("offline", "127.0.0.1:5001")]
