"""
The whole session path (detection across every decoder, framing, decoding,
acks) under random and mutated input: nothing escapes into the reactor, the
buffer stays bounded, and a good frame after garbage still gets through.

Every real decoder bounds its own frames well below the session's caps, so a
patient decoder (one that always wants more bytes) runs among them: with it,
streams of socket-sized reads reach both caps — the detection cap
(L{DETECT_BYTES}) and the unframed-buffer cap (L{MAX_BUFFER}).
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.hub import Hub, MemoryStore
from gateway.interfaces import Verdict
from gateway.model import DecodeResult
from gateway.registry import discover
from gateway.session import DETECT_BYTES, MAX_BUFFER, Session
from tests import vectorcheck


class Patient:
    """
    C{~} starts a session that is never decided until it must be; C{~~} is
    claimed at once, and its frames end at C{!} — which may never come.
    """

    name = "patient"
    transports = frozenset({"tcp", "udp"})

    def detect(self, head, transport):
        if head.startswith(b"~~"):
            return Verdict.match(95)
        if head.startswith(b"~"):
            return Verdict.more()
        return Verdict.no()

    def frame(self, buffer, transport):
        start = buffer.find(b"~")
        if start != 0:
            return None, start if start > 0 else len(buffer)
        end = buffer.find(b"!")
        return (None, 0) if end < 0 else (buffer[:end], end + 1)

    def decode(self, frame, context):
        return DecodeResult(reply=b"!")


READ = 65536  # what one TCP read hands the session at most
DECODERS = {**discover(), "patient": Patient()}
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
#: Socket-sized reads: a few of them fill either cap.
reads = st.lists(st.one_of(
    st.binary(max_size=300), mutated(),
    st.tuples(st.sampled_from([b"~", b"~~", b""]), st.binary(min_size=1, max_size=16),
              st.integers(READ // 2, READ)).map(lambda t: (t[0] + t[1] * (t[2] // len(t[1])))[:READ]),
), min_size=1, max_size=12)


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


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reads)
def test_tcp_socket_reads_of_anything(pieces):
    s, _ = session("tcp")
    for piece in pieces:
        s.data_received(piece)
        assert len(s._buffer) <= max(MAX_BUFFER, DETECT_BYTES) + len(piece)
    s.finish()


def watched(transport="tcp"):
    """
    A session whose detector calls are recorded: (head length, final).
    """
    s, sent = session(transport)
    calls, detect = [], s.hub.detector.detect

    def recording(head, transport, final=False):
        calls.append((len(head), final))
        return detect(head, transport, final=final)

    s.hub.detector.detect = recording
    return s, calls


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=16).filter(lambda b: not b.startswith(b"~")), st.integers(1, 3000))
def test_detection_is_decided_at_the_detection_cap(filler, piece):
    s, calls = watched()
    s.data_received(b"~")
    while s.decoder is None and s.open:
        assert len(s._buffer) < DETECT_BYTES
        s.data_received((filler * (piece // len(filler) + 1))[:piece])
    # Decided on the bytes there were once the cap was reached, not later.
    assert calls[-1][1] and DETECT_BYTES <= calls[-1][0] < DETECT_BYTES + piece
    assert not s.open and s.hub.store_.unknown_frames[-1][2][:1] == b"~"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=16).filter(lambda b: b"!" not in b and b"~" not in b))
def test_unframed_bytes_are_dropped_at_the_buffer_cap(filler):
    s, _ = session("tcp")
    s.data_received(b"~~")
    fed = 2
    while not any("no frame in the buffered bytes" in e for e in s.hub.errors):
        assert fed <= MAX_BUFFER + READ
        piece = (filler * (READ // len(filler) + 1))[:READ]
        s.data_received(piece)
        fed += len(piece)
        assert len(s._buffer) <= MAX_BUFFER + READ
    assert s._buffer == b"" and fed > MAX_BUFFER


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
