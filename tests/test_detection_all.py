"""
Every vector of every protocol in the project lands on its own protocol, and
on no other: the detector's cross-protocol guarantee.
"""

import pytest

from gateway.detector import Detector
from gateway.registry import discover
from tests import vectorcheck

VECTORS = vectorcheck.load()
DECODERS = discover()


@pytest.mark.parametrize("vec", VECTORS, ids=vectorcheck.ids(VECTORS))
def test_detected_as_own_protocol(vec):
    if vec["protocol"] not in DECODERS:
        pytest.fail(f"no decoder for {vec['protocol']}")
    transport = vec.get("transport", "any")
    transport = transport if transport in ("tcp", "udp") else "tcp"
    chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
    # A TCP head may arrive in pieces (the session keeps reading); a UDP
    # datagram stands alone.
    head = b"".join(chunks) if transport == "tcp" else chunks[0]
    detection = Detector(DECODERS.values()).detect(head, transport, final=True)
    assert detection.decoder is not None, "no decoder claimed the first chunk"
    assert detection.decoder.name == vec["protocol"]
