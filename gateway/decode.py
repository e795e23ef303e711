# -*- test-case-name: tests.test_h02,tests.test_registry -*-
"""
C{trackport decode}: run chunks of one session through the same session, detector,
framers, decoders and reply logic as the server, against a store in memory, and
report what came out as one JSON object.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from twisted.internet.task import Clock

from gateway.hub import Hub, MemoryStore
from gateway.registry import discover
from gateway.session import Session


def replay(session: Session, chunks: Iterable[bytes]) -> None:
    """
    Feed C{chunks} to C{session} as the server would (TCP reads, or UDP
    datagrams), then end its input.
    """
    for chunk in chunks:
        if session.transport == "udp":
            session.datagram_received(chunk)
        else:
            session.data_received(chunk)
    session.finish()


def decode(chunks: Iterable[bytes], transport: str = "tcp",
           settings: Optional[Mapping[str, str]] = None, decoders=None,
           records: Optional[list] = None) -> dict:
    """
    Decode C{chunks} of one session and return the decode command's JSON object.

    @param chunks: successive pieces of a TCP stream, or UDP datagrams.
    @param settings: per-device settings that apply to whatever device the
        session turns out to be.
    @param records: a list to which the decoded records themselves are added.
    """
    store = MemoryStore()
    hub = Hub(decoders if decoders is not None else discover(), store, Clock(),
              settings={None: dict(settings or {})})
    hub.keep_errors = True
    responses = []
    session = Session(hub, transport, "decode", responses.append, lambda: None)
    replay(session, chunks)
    # The device the session spoke for first: a stream that names several
    # devices (each record is stored under its own) is reported by the first.
    device_id = next((d for d, _, _ in store.records if d is not None), session.device_id)
    if records is not None:
        records.extend(record for _, _, record in store.decoded)
    return {
        "protocol": session.protocol,
        "device_id": device_id,
        "records": [record.to_json() for _, _, record in store.decoded],
        "responses_hex": [r.hex() for r in responses],
        "errors": list(hub.errors),
    }
