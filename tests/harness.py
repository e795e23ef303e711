"""
Scaffolding the decoder tests share: vectors looked up by id, a hub over a
store in memory, the ways the server feeds it (a L{Session} directly, a TCP
connection on a L{StringTransportWithDisconnection}, a UDP endpoint), tests
that every decoder's test module states (build them with the C{*_test}
functions and assign them to the test's name), and random-input helpers.

Nothing here listens or connects; time is a L{Clock}. C{tests/conftest.py}
has pytest rewrite the assertions here, as in the test modules.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import pytest
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from gateway.context import Context
from gateway.decode import replay
from gateway.hub import Hub, MemoryStore
from gateway.interfaces import DecodeError
from gateway.server import DatagramEndpoint, StreamFactory
from gateway.session import Session
from tests import vectorcheck

# -- vectors and contexts ----------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _every_vector_by_id() -> Mapping[str, dict]:
    by_id: dict = {}
    for vec in vectorcheck.load():
        if by_id.setdefault(vec["id"], vec) is not vec:
            raise ValueError(f"two vectors have the id {vec['id']!r}")
    return by_id


def frame_of(vector_id: str, index: int = 0) -> bytes:
    """
    Frame C{index} (the first by default) of the vector C{vector_id}, of any
    protocol: vector ids are unique across C{tests/vectors}.
    """
    return bytes.fromhex(_every_vector_by_id()[vector_id]["frames_hex"][index])


def each_vector(vectors: Sequence[dict]):
    """
    Parametrize a test with C{vec}, one of C{vectors} each, named by its id.
    """
    return pytest.mark.parametrize("vec", vectors, ids=vectorcheck.ids(vectors))


def other_vectors(protocol: str) -> List[dict]:
    """
    The vectors of every protocol but C{protocol}: what its detector must not
    claim.
    """
    return [v for v in vectorcheck.load() if v["protocol"] != protocol]


def vector_head(vec: dict) -> Tuple[str, bytes]:
    """
    What a session on C{vec}'s own transport (TCP when it names none) detects
    its protocol from: C{(transport, head)}, all its chunks as one TCP head,
    or its first chunk as a UDP datagram.
    """
    transport = vec.get("transport", "any")
    transport = transport if transport in ("tcp", "udp") else "tcp"
    chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
    return transport, b"".join(chunks) if transport == "tcp" else chunks[0]


def device_context(transport: str = "tcp", **device_settings) -> Context:
    """
    A decoding context on C{transport} in which every device has
    C{device_settings}.
    """
    return Context(transport=transport, lookup=lambda device_id: device_settings)


# -- a hub in memory ---------------------------------------------------------------


class RecordingCommands:
    """
    Stands in for the command queue: records the confirmations sessions hand
    it and ignores the rest.

    @ivar confirmed_: one C{(device_id, tuple of confirmations)} per call.
    """

    def __init__(self):
        self.confirmed_ = []

    @property
    def confirmations(self) -> List[tuple]:
        """
        Every confirmation with its device: C{[(device_id, confirmation)]}.
        """
        return [(device_id, c) for device_id, batch in self.confirmed_ for c in batch]

    def confirmed(self, session, device_id, confirmations):
        self.confirmed_.append((device_id, tuple(confirmations)))

    def device_online(self, device_id):
        pass

    def device_active(self, device_id):
        pass

    def conflict(self, device_id, text):
        pass

    def moved(self, device_id, gone, holder):
        pass


def memory_hub(decoder, settings: Optional[Mapping[str, str]] = None, store=None) -> Hub:
    """
    A hub with only C{decoder}, over a L{MemoryStore} and a L{Clock}, that
    keeps its errors in C{hub.errors} and hands confirmations to a
    L{RecordingCommands} in C{hub.commands}.

    @param settings: per-device settings that apply to every device.
    @param store: another store than a fresh L{MemoryStore}.
    """
    hub = Hub({decoder.name: decoder}, store if store is not None else MemoryStore(), Clock(),
              settings={None: dict(settings or {})})
    hub.keep_errors = True
    hub.commands = RecordingCommands()
    return hub


def records(hub: Hub) -> List[Tuple[Optional[str], dict]]:
    """
    What the hub stored: C{(device_id, record as JSON)} in commit order.
    """
    return [(device_id, record.to_json()) for device_id, _, record in hub.store_.records]


# -- feeding it as the server does -------------------------------------------------


def feed(hub: Hub, chunks: Iterable[bytes], transport: str = "tcp") -> List[bytes]:
    """
    Feed C{chunks} (TCP reads, or UDP datagrams) to one new session of C{hub},
    then end the session; return what the session sent, in order.
    """
    sent = []
    replay(Session(hub, transport, "test", sent.append, lambda: None), chunks)
    return sent


def run_session(decoder, chunks: Iterable[bytes], transport: str = "tcp",
                settings: Optional[Mapping[str, str]] = None):
    """
    Feed C{chunks} to one session of a fresh L{memory_hub} of C{decoder};
    return C{(records, sent, hub)} (see L{records}, L{feed}).
    """
    hub = memory_hub(decoder, settings)
    sent = feed(hub, chunks, transport)
    return records(hub), sent, hub


def split_anywhere(run, stream: bytes):
    """
    Feed C{stream} to C{run} (as L{run_session} bound to a decoder) whole, and
    then cut in two at every byte: every split stores the same records and
    sends the same replies as the whole stream, and reports no error. Return
    C{(records, sent)} of the whole stream.
    """
    whole, replies, hub = run([stream])
    assert hub.errors == []
    for cut in range(1, len(stream)):
        records, sent, hub = run([stream[:cut], stream[cut:]])
        assert records == whole, cut
        assert sent == replies and hub.errors == [], cut
    return whole, replies


def tcp_connection(decoder, settings: Optional[Mapping[str, str]] = None):
    """
    A TCP connection to a fresh L{memory_hub} of C{decoder}, as the server
    accepts one: C{(hub, protocol, transport)}. Write with
    C{protocol.dataReceived}; C{transport.value()} is what the gateway sent.
    """
    hub = memory_hub(decoder, settings)
    protocol = StreamFactory(hub).buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return hub, protocol, transport


def udp_endpoint(decoder, settings: Optional[Mapping[str, str]] = None, start: bool = False, store=None,
                 **options):
    """
    The UDP endpoint of a fresh L{memory_hub} of C{decoder}:
    C{(hub, endpoint, sent)}. Write with C{endpoint.datagramReceived(data,
    address)}; C{sent} collects C{(data, address)} pairs.

    @param start: start it as the server does (its sweeper runs on
        C{hub.clock}).
    @param store: for L{memory_hub}.
    @param options: for L{DatagramEndpoint} (C{idle}, C{max_peers}).
    """
    hub = memory_hub(decoder, settings, store)
    endpoint = DatagramEndpoint(hub, **options)
    sent = []

    class Transport:
        def write(self, data, addr):
            sent.append((data, addr))

    if start:
        endpoint.makeConnection(Transport())
    else:
        endpoint.transport = Transport()
    return hub, endpoint, sent


# -- tests every decoder's test module states --------------------------------------


def vector_replay_test(vectors: Sequence[dict], without_errors: bool = False):
    """
    The test every decoder's test module states first, for assigning to its
    C{test_vector}: each of C{vectors}, replayed as C{trackport decode} does,
    gives what the vector expects.

    @param without_errors: the replay must also report no error (no skipped
        bytes, no frame that fails to decode).
    """
    @each_vector(vectors)
    def test_vector(vec):
        assert vectorcheck.check(vec) == []
        if without_errors:
            assert vectorcheck.run(vec)["errors"] == []

    return test_vector


def other_vectors_refused_test(decoder, every_prefix: bool = False):
    """
    A test for assigning to C{test_claims_no_other_vector}: C{decoder} claims
    no other protocol's vector, neither all its chunks as one TCP head nor its
    first chunk as a UDP datagram.

    @param every_prefix: nor any prefix of either (for a decoder that may
        match before a frame is complete).
    """
    @each_vector(other_vectors(decoder.name))
    def test_claims_no_other_vector(vec):
        chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
        for transport, head in (("tcp", b"".join(chunks)), ("udp", chunks[0])):
            lengths = range(1, len(head) + 1) if every_prefix else [len(head)]
            for n in lengths:
                assert not decoder.detect(head[:n], transport).matched, (transport, n)

    return test_claims_no_other_vector


# -- robustness --------------------------------------------------------------------


def truncated(real, longest: int):
    """
    A strategy: one of C{real}'s byte strings cut to at most C{longest} bytes.
    """
    return st.tuples(real, st.integers(0, longest)).map(lambda t: t[0][:t[1]])


def bit_flipped(real):
    """
    A strategy: one of C{real}'s byte strings (never empty) with one bit
    flipped.
    """
    return st.tuples(real, st.integers(0, 10 ** 6), st.integers(0, 7)).map(
        lambda t: t[0][:t[1] % len(t[0])] + bytes([t[0][t[1] % len(t[0])] ^ (1 << t[2])])
        + t[0][t[1] % len(t[0]) + 1:])


def frame_and_decode(decoder, data: bytes, transport: str, context,
                     max_frame: Optional[int] = None) -> List[bytes]:
    """
    Cut all of C{data} into frames with C{decoder} the way a session does and
    decode each; only L{DecodeError} may escape the decoder. Return the frames
    cut, in order. Asserts the framer's contract: it consumes within the
    buffer, a frame no longer than what it consumes, and waits for more with
    no frame (and, given C{max_frame}, only while the buffer is shorter).
    """
    frames = []
    buffer = data
    while buffer:
        frame, consumed = decoder.frame(buffer, transport)
        assert 0 <= consumed <= len(buffer)
        if consumed == 0:
            assert frame is None
            assert max_frame is None or len(buffer) < max_frame
            break
        buffer = buffer[consumed:]
        if frame is not None:
            assert len(frame) <= consumed
            frames.append(frame)
            try:
                result = decoder.decode(frame, context)
            except DecodeError:
                continue
            for record in result.records:
                json.dumps(record.to_json())
    return frames


def mean_decode_seconds(decoder, frames: Sequence[bytes], context, rounds: int) -> float:
    """
    The mean wall-clock time of one C{decoder.decode} of C{frames} in
    C{context}, over C{rounds} passes.
    """
    start = time.perf_counter()
    for _ in range(rounds):
        for frame in frames:
            decoder.decode(frame, context)
    return (time.perf_counter() - start) / (rounds * len(frames))


# -- the Enfora API plugins (skypatrol, enfora) ------------------------------------


def length_prefixed(message: bytes) -> bytes:
    """
    A message behind its 2-byte big-endian length, the length bytes counted:
    how an Enfora API message (C{skypatrol}, C{enfora}) travels on TCP.
    """
    return (len(message) + 2).to_bytes(2, "big") + message


#: TT8850 heads (Queclink-based, another protocol) that share the Enfora API's
#: 00 04 / 00 05 lead bytes (spec.md §3).
TT8850_HEADS = [bytes.fromhex("00042c303031372c") + b"GTNMR,1,2,3",
                bytes.fromhex("0005000301013836323137303031303030303030"),
                bytes.fromhex("0005003f01223836323137303031303030303030")]


def tt8850_refused_test(decoder):
    """
    A test for assigning to C{test_tt8850_is_not_claimed} in the test module
    of an Enfora API plugin: C{decoder} claims none of L{TT8850_HEADS}, neither
    as a UDP datagram nor behind its TCP length.
    """
    @pytest.mark.parametrize("head", TT8850_HEADS)
    def test_tt8850_is_not_claimed(head):
        assert not decoder.detect(head, "udp").matched
        assert not decoder.detect(length_prefixed(head), "tcp").matched

    return test_tt8850_is_not_claimed


def mutated_api_messages(real):
    """
    A strategy for the Enfora API plugins: random bytes, or one of C{real}'s
    messages cut short, with a bit flipped, behind a length that lies, or
    flipped and then put behind its true TCP length.
    """
    flipped = bit_flipped(real)
    lied = st.tuples(real, st.integers(0, 0xFFFF)).map(lambda t: t[1].to_bytes(2, "big") + t[0])
    framed = st.tuples(flipped, st.booleans()).map(lambda t: length_prefixed(t[0]) if t[1] else t[0])
    return st.one_of(st.binary(max_size=300), truncated(real, 200), flipped, lied, framed)
