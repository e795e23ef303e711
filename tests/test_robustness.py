"""
The whole session path (detection across every decoder, framing, decoding,
acks) under random and mutated input: nothing escapes into the reactor, the
buffer stays bounded, and a good frame after garbage still gets through.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.hub import Hub, MemoryStore
from gateway.registry import discover
from gateway.session import DETECT_BYTES, MAX_BUFFER, Session
from tests import vectorcheck

DECODERS = discover()
FRAMES = [bytes.fromhex(h) for v in vectorcheck.load() for h in v["frames_hex"]]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(FRAMES)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 16))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


chunks = st.lists(st.one_of(st.binary(max_size=300), mutated()), min_size=1, max_size=8)


def session(transport):
    hub = Hub(DECODERS, MemoryStore(), Clock())
    hub.keep_errors = True
    sent = []
    return Session(hub, transport, "fuzz", sent.append, lambda: None), sent


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks)
def test_tcp_stream_of_anything(pieces):
    s, _ = session("tcp")
    for piece in pieces:
        s.data_received(piece)
        assert len(s._buffer) <= max(MAX_BUFFER, DETECT_BYTES) + len(piece)
    s.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks)
def test_udp_datagrams_of_anything(pieces):
    s, _ = session("udp")
    for piece in pieces:
        s.datagram_received(piece)
        assert s._buffer == b""


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([v for v in vectorcheck.load()
                                                 if v["expect"].get("response_hex")
                                                 and v.get("transport") == "udp"]))
def test_a_garbage_datagram_does_not_spoil_the_next_good_one(garbage, vec):
    s, sent = session("udp")
    s.datagram_received(garbage)
    del sent[:]
    for chunk in vec["frames_hex"]:
        s.datagram_received(bytes.fromhex(chunk))
    assert b"".join(sent).hex() == vec["expect"]["response_hex"].lower()
