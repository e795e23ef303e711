# -*- test-case-name: tests.test_detection_all -*-
"""
Telling which protocol a session speaks from its first bytes.
"""

from __future__ import annotations

from typing import Iterable, Optional

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.hexdump import printable
from gateway.interfaces import Outcome
from gateway.ratelog import Budget

log = Logger()

#: A match this specific is decided at once, even while other decoders still
#: want more bytes (a checksum or a full grammar with an identifier).
CONCLUSIVE = 90
#: Leading bytes of a UDP datagram by which the detector remembers which
#: decoder alone took the last datagram that began with them (see
#: L{Detector.familiar}).
HEAD_KEY = 4
#: Such beginnings remembered at most (beyond, all are forgotten at once: a
#: flood of varied datagrams costs bounded memory).
MAX_HEADS = 1024


@attrs.frozen
class Detection:
    """
    The detector's answer.

    @ivar decoder: the winning decoder, or L{None}.
    @ivar waiting: C{True} when no decision can be made yet (TCP, more bytes
        may settle it).
    """

    decoder: Optional[object] = None
    waiting: bool = False


class Detector:
    """
    Runs every decoder's C{detect} over a session's head and picks the most
    specific match.
    """

    def __init__(self, decoders: Iterable[object], clock=None):
        """
        @param clock: when given, decoder failures are logged at most 5 every
            10 s (crafted input may make a buggy C{detect()} fail on every
            datagram).
        """
        self._failures = None if clock is None else Budget(clock, 5, 10.0, lambda n: log.warn(
            "{n} more detect() failures in 10 s not logged", n=n))
        self.decoders = tuple(decoders)
        self._by_transport = {
            t: tuple(d for d in self.decoders if t in d.transports) for t in ("tcp", "udp")
        }
        #: Per beginning of a UDP datagram (L{HEAD_KEY} bytes), the decoder
        #: that alone matched, conclusively, the last one detected.
        self._heads = {}

    def detect(self, head: bytes, transport: str, final: bool = False) -> Detection:
        """
        Decide which decoder C{head} belongs to.

        @param final: no more bytes will come before a decision is needed (byte
            or time cap reached, UDP datagram, end of input): decide on the
            matches there are.
        """
        best = None
        best_score = -1
        tied = []
        more = False
        matches = 0
        for decoder in self._by_transport.get(transport, ()):
            try:
                verdict = decoder.detect(head, transport)
            except Exception:
                self._failed(decoder)
                continue
            if verdict.outcome is Outcome.MORE:
                more = True
            elif verdict.outcome is Outcome.MATCH:
                matches += 1
                if verdict.score > best_score:
                    best, best_score, tied = decoder, verdict.score, [decoder]
                elif verdict.score == best_score:
                    tied.append(decoder)
        if more and not final and (best is None or best_score < CONCLUSIVE):
            return Detection(waiting=True)
        if best is None:
            return Detection()
        if matches == 1 and best_score >= CONCLUSIVE and transport == "udp":
            heads = self._heads
            if len(heads) >= MAX_HEADS:
                heads.clear()
            heads[head[:HEAD_KEY]] = best
        if len(tied) > 1:
            # Equal evidence: pick deterministically, and say so.
            tied.sort(key=lambda d: d.name)
            best = tied[0]
            log.warn("ambiguous detection between {names}, chose {name}",
                     names=[d.name for d in tied], name=best.name)
        return Detection(decoder=best)

    def familiar(self, datagram: bytes):
        """
        The decoder that alone matched, conclusively, the last UDP datagram
        detected that began with the same L{HEAD_KEY} bytes (most often the
        same protocol from another device, or the same device from a new
        address), or L{None}. A hint, nothing more: to be taken only if it
        matches C{datagram} conclusively too (L{conclusive}).
        """
        return self._heads.get(datagram[:HEAD_KEY])

    def claims(self, decoder, head: bytes, transport: str) -> bool:
        """
        Whether C{decoder} matches C{head}; a decoder that raises does not
        (its bug is logged, the data goes on to full detection).
        """
        try:
            return decoder.detect(head, transport).matched
        except Exception:
            self._failed(decoder)
            return False

    def conclusive(self, decoder, head: bytes, transport: str) -> bool:
        """
        Whether C{decoder} matches C{head} so specifically that detection
        would decide for it at once (L{CONCLUSIVE}); a decoder that raises
        does not.
        """
        try:
            verdict = decoder.detect(head, transport)
        except Exception:
            self._failed(decoder)
            return False
        return verdict.outcome is Outcome.MATCH and verdict.score >= CONCLUSIVE

    def _failed(self, decoder) -> None:
        if self._failures is None or self._failures.allow():
            # The exception may quote the device's bytes: escaped, line by line.
            trace = "\n".join(printable(t, 500) for t in Failure().getTraceback().splitlines())
            log.error("decoder {name} raised in detect():\n{trace}", name=decoder.name, trace=trace)
