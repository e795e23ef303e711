# -*- test-case-name: tests.test_session -*-
"""
A session: one conversation with one device, over a TCP connection or with one
UDP peer address. Both transports run the same path once bytes arrive:
detect, frame, decode, store, and only then acknowledge.

A session never lets its device cost the others more than their share: the
records it has waiting for the database and the acks it has queued are bounded
(beyond them a TCP connection is not read, a UDP datagram is not acked), its
error lines are rate-limited, and a session that sends mostly garbage is closed.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.context import Context
from gateway.hexdump import hexdump, printable
from gateway.interfaces import DecodeError
from gateway.storable import is_device_id
from gateway.ratelog import Budget

log = Logger()

#: Bytes a TCP session may send before a protocol must be decided (a first
#: frame of buffered history can be several KiB).
DETECT_BYTES = 8192
#: Seconds from accept a TCP session has to send enough bytes for detection.
DETECT_SECONDS = 5.0
#: Bytes a detected TCP session may leave unframed before they are thrown away.
MAX_BUFFER = 256 * 1024
#: Records of one session that may wait for the database; beyond them a TCP
#: connection is not read and a UDP datagram is not acked, so one device's
#: history flush waits on its own socket, not in front of everyone's.
MAX_WAITING = 200
#: Acks (and commands) of one session that may wait for earlier records.
MAX_REPLIES = 256
#: Error lines one session may log every L{ERROR_PERIOD} seconds; the rest are
#: counted in one summary line.
ERRORS_PER_PERIOD = 5
ERROR_PERIOD = 10.0
#: A session is closed when, over L{GARBAGE_SECONDS} or more, it sent at least
#: L{GARBAGE_BYTES} of garbage (skipped, unframeable, undecodable) and that was
#: more than L{GARBAGE_SHARE} of its bytes: a device that lost its way for a
#: moment keeps its session, one that floods garbage does not.
GARBAGE_SECONDS = 10.0
GARBAGE_BYTES = 64 * 1024
GARBAGE_SHARE = 0.75

_serial = itertools.count(1)
_NEVER = float("-inf")


class _Reply:
    """
    An ack waiting for its records to commit, and for earlier acks to go first.
    """

    __slots__ = ("data", "state", "received", "session", "records")

    def __init__(self, session, data: bytes, ready: bool, received: float, records: int = 0):
        self.session = session
        self.data = data
        self.state = "ready" if ready else "waiting"
        self.received = received
        self.records = records

    def stored(self, error: Optional[BaseException] = None) -> None:
        """
        The store's answer: the records committed (C{error} L{None}), or not.
        """
        session = self.session
        session._waiting -= self.records
        if error is None:
            self.state = "ready"
        else:
            self.state = "failed"
            session._error(f"records not stored, no ack sent: {error}", b"", garbage=False)
        session._flush()


class _Callables:
    """
    A session's link to its device made of callables (UDP endpoints, tests,
    C{trackport decode}): what L{Session} calls to write, close and pause.
    """

    __slots__ = ("write", "close", "_flow")

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None], flow=None):
        self.write = write
        self.close = close
        self._flow = flow

    def pause(self) -> None:
        if self._flow is not None:
            self._flow.pauseProducing()

    def resume(self) -> None:
        if self._flow is not None:
            self._flow.resumeProducing()


#: The context a session without state of its own decodes with: most devices'
#: decoders keep nothing per session, and a L{Context} with its state dict
#: would cost every idle session of theirs 150 bytes. Filled in before each
#: use; a session whose decoder leaves state in it takes it over (L{Session._decode}).
_scratch = Context()


class Session:
    """
    The gateway's side of one device conversation.

    @ivar hub: the L{gateway.hub.Hub} that stores records, owns the detector
        and the command queue.
    @ivar transport: C{'tcp'} or C{'udp'}.
    """

    # A gateway holds one per connected device, mostly idle: keep them small.
    __slots__ = ("hub", "transport", "peer", "_serial", "_link", "decoder",
                 "device_id", "_context", "open", "opened", "last_seen", "_buffer", "_replies", "_detect_timer",
                 "_waiting", "_held", "_budget", "_good", "_bad", "_since",
                 "_commands_wait", "touched")

    def __init__(self, hub, transport: str, peer: str,
                 write: Optional[Callable[[bytes], None]] = None, close: Optional[Callable[[], None]] = None,
                 flow=None, link=None):
        """
        @param write: sends bytes to the device (a UDP C{sendto} bound to the
            peer address, say).
        @param close: ends the session from our side.
        @param flow: what stops and starts reading from the device (TCP
            backpressure): its C{pauseProducing} and C{resumeProducing}.
        @param link: instead of those three, one object with the methods
            C{write(data)}, C{close()}, C{pause()} and C{resume()} (the TCP
            protocol, the UDP peer): bound methods kept per session would
            cost every idle one 64 bytes each.
        """
        self.hub = hub
        self.transport = transport
        self.peer = peer
        self._serial = next(_serial)
        self._link = link if link is not None else _Callables(write, close, flow)
        self.decoder = None
        self.device_id: Optional[str] = None
        #: Made when a decoder leaves state or something asks for it (L{context}).
        self._context: Optional[Context] = None
        self.open = True
        self.opened = self.last_seen = hub.clock.seconds()
        self._buffer = b""
        self._replies: Optional[deque] = None
        self._waiting = 0
        self._held = False
        self._budget: Optional[Budget] = None
        self._good = self._bad = 0
        self._since = self.last_seen
        # The detection deadline runs from accept: a connection that never
        # sends a byte must not hold a file descriptor until the idle timeout.
        self._detect_timer = (hub.clock.callLater(DETECT_SECONDS, self._detect_timeout)
                              if transport == "tcp" else None)
        self._commands_wait = False
        #: When the hub last told the store this session's device was seen.
        self.touched = _NEVER

    @property
    def context(self) -> Context:
        """
        The session as its decoder and encoder see it, with the decoder's
        per-session state. Made on first use; kept from then on.
        """
        context = self._context
        if context is None:
            hub = self.hub
            context = self._context = Context(transport=self.transport, peer=self.peer,
                                              device_id=self.device_id, lookup=hub.lookup,
                                              seconds=hub.seconds)
        return context

    def set_peer(self, peer: str) -> None:
        """
        The device's address, learned late (behind a PROXY-protocol balancer).
        """
        self.peer = peer
        if self._context is not None:
            self._context.peer = peer

    @property
    def key(self) -> str:
        """
        Unique among the sessions of every gateway process: a command keeps
        the key of the session it was written on (only a reply there confirms
        it). Made when asked for: an idle session does not hold it.
        """
        return f"{os.getpid()}/{self._serial} {self.transport} {self.peer}"

    @property
    def protocol(self) -> Optional[str]:
        return self.decoder.name if self.decoder is not None else None

    def __repr__(self):
        return f"<Session {self.transport} {self.peer} {self.protocol} {self.device_id}>"

    # -- input ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """
        TCP: bytes from the stream, in any pieces.
        """
        if not self.open:
            return
        self.last_seen = self.hub.clock.seconds()
        self._buffer += data
        if self.decoder is None:
            self._detect(final=len(self._buffer) >= DETECT_BYTES)
            if self.decoder is None:
                return
        self._drain()
        if self._busy():
            self._hold()

    def datagram_received(self, data: bytes, hint=None) -> None:
        """
        UDP: one datagram. Each is detected on its own; the decoder that took
        the last one is asked first, but must still claim it.

        @param hint: for a new peer, the decoder that took the last datagram
            from its host (a device behind a NAT that changes its port): it
            is taken without asking the others if it matches conclusively.
            Failing that, so is the decoder that alone took the last datagram
            beginning with the same bytes (L{Detector.familiar}: a NAT that
            changes the address too).
        """
        self.last_seen = self.hub.clock.seconds()
        if self._busy():
            # The device keeps an unacked datagram and sends it again.
            self._error("too many records wait for the database, datagram not acked", data,
                           garbage=False)
            return
        decoder = self.decoder
        detector = self.hub.detector
        if decoder is None and (hint is None or not detector.conclusive(hint, data, "udp")):
            familiar = detector.familiar(data)
            hint = (familiar if familiar is not None and familiar is not hint
                    and detector.conclusive(familiar, data, "udp") else None)
        if decoder is None and hint is not None:
            self._bind_decoder(hint)
        elif decoder is None or not detector.claims(decoder, data, "udp"):
            detection = detector.detect(data, "udp", final=True)
            if detection.decoder is None:
                self.hub.unknown(self, data)
                return
            if detection.decoder is not decoder:
                self._bind_decoder(detection.decoder)
        self._buffer = data
        self._drain()
        if self._buffer:
            self._error("truncated frame at the end of the datagram", self._buffer)
            self._buffer = b""

    def finish(self) -> None:
        """
        No more bytes will come (end of input for C{trackport decode}): decide
        detection on what there is, and report an unframed remainder.
        """
        if self.decoder is None and self._buffer:
            self._detect(final=True)
        if self.decoder is not None and self._buffer:
            self._drain()
            if self._buffer:
                self._error("incomplete frame at the end of the input", self._buffer)
                self._buffer = b""

    def connection_lost(self) -> None:
        self.open = False
        self._cancel_timer()
        if self._budget is not None:
            self._budget.flush()
        self.hub.session_closed(self)

    # -- detection --------------------------------------------------------

    def _detect(self, final: bool) -> None:
        detection = self.hub.detector.detect(self._buffer, self.transport, final=final)
        if detection.waiting:
            return
        self._cancel_timer()
        if detection.decoder is None:
            self.hub.unknown(self, self._buffer)
            self._buffer = b""
            self.close()
            return
        self._bind_decoder(detection.decoder)

    def _detect_timeout(self) -> None:
        self._detect_timer = None
        if self.decoder is None and self.open:
            if not self._buffer:
                self.hub.unknown(self, b"", f"sent nothing in {DETECT_SECONDS:g} s")
                self.close()
                return
            self._detect(final=True)
            if self.decoder is not None:
                self._drain()

    def _cancel_timer(self) -> None:
        if self._detect_timer is not None and self._detect_timer.active():
            self._detect_timer.cancel()
        self._detect_timer = None

    def _bind_decoder(self, decoder) -> None:
        self.decoder = decoder
        self.touched = _NEVER
        if self._context is not None:
            self._context.state.clear()
        if self.transport != "udp":
            log.info("session {transport} {peer}: protocol {protocol}",
                     transport=self.transport, peer=self.peer, protocol=decoder.name)

    # -- framing and decoding ---------------------------------------------

    def _drain(self) -> None:
        decoder = self.decoder
        while self._buffer and self.open:
            if self.transport == "tcp" and self._busy():
                self._hold()
                return
            try:
                frame, consumed = decoder.frame(self._buffer, self.transport)
            except Exception as e:
                self._error(f"framer failed: {e!r}", self._buffer)
                self._buffer = b""
                return
            if consumed <= 0:
                if len(self._buffer) > MAX_BUFFER:
                    self._error("no frame in the buffered bytes, dropped", self._buffer)
                    self._buffer = b""
                return
            if frame is None:
                self._error("skipped bytes outside any frame", self._buffer[:consumed])
            self._buffer = self._buffer[consumed:]
            if frame:
                self.handle_frame(frame)

    def handle_frame(self, frame: bytes) -> None:
        """
        Decode one frame, store its records, and queue its ack behind them.
        """
        try:
            result = self._decode(frame)
        except DecodeError as e:
            if self.hub.taps:
                self.hub.tap(self, "in", frame)
            self._error(f"bad frame: {e}", frame)
            return
        except Exception as e:
            self._error(f"decoder failed: {e!r}", frame, failure=True)
            return
        self._good += len(frame)
        if result.withheld is not None:
            self._error(result.withheld, frame)
            self.hub.withheld(self, result.records)
            return
        device_id = result.device_id or self.device_id
        if not self.hub.admits(device_id):
            self.hub.refused(self, device_id, frame)
            return
        if result.commands_wait:
            self._commands_wait = True
        if result.device_id and result.device_id != self.device_id:
            if not is_device_id(result.device_id):
                # Not an id: never bound, never a device row; kept raw.
                self._queue_reply(self.hub.not_an_id(self, result.device_id, frame), result.reply)
                return
            self._bind_device(result.device_id)
        if self.hub.taps:
            # Frame by frame, once the frame has named its device.
            self.hub.tap(self, "in", frame)
        if result.settings and device_id:
            self.hub.learned(device_id, result.settings)
        if result.confirmations:
            self.hub.confirmed(self, device_id, result.confirmations)
        if result.records:
            reply = self._queue_reply(None, result.reply, len(result.records))
            self.hub.store(self, device_id, result.records, frame, reply.stored)
        else:
            self._queue_reply(None, result.reply)
        if not result.commands_wait:
            # Commands the device held back go now, behind this frame's reply
            # (frame_done tells the command queue the device is active).
            self._commands_wait = False
        self.hub.frame_done(self, device_id)

    def _decode(self, frame: bytes):
        context = self._context
        if context is not None:
            context.device_id = self.device_id
            return self.decoder.decode(frame, context)
        context = _scratch
        hub = self.hub
        context.transport = self.transport
        context.peer = self.peer
        context.device_id = self.device_id
        context.lookup = hub.lookup
        context.seconds = hub.seconds
        try:
            return self.decoder.decode(frame, context)
        finally:
            if context.state:
                # The decoder keeps something for the session's next frames:
                # from now on it has a context of its own.
                self._context = Context(transport=self.transport, peer=self.peer,
                                        device_id=context.device_id, state=context.state,
                                        lookup=hub.lookup, seconds=hub.seconds)
                context.state = {}

    def _bind_device(self, device_id: str) -> None:
        previous, self.device_id = self.device_id, device_id
        self.touched = _NEVER
        if self._context is not None:
            self._context.device_id = device_id
        # Not per UDP peer: a device behind a NAT may send every frame from a
        # new port, and logging each cost as much as the frame itself.
        if self.transport != "udp":
            log.info("session {transport} {peer}: device {device_id} ({protocol})",
                     transport=self.transport, peer=self.peer, device_id=printable(device_id),
                     protocol=self.protocol)
        self.hub.identified(self, previous)

    # -- replies ----------------------------------------------------------

    def _queue_reply(self, stored: Optional[Deferred], data: bytes, records: int = 0) -> _Reply:
        """
        Queue C{data} behind the replies before it. With C{records}, it waits
        for its L{_Reply.stored}; with C{stored}, for that L{Deferred}.
        """
        reply = _Reply(self, data, not (stored or records), self.last_seen, records)
        if self._replies is None:
            self._replies = deque()
        self._replies.append(reply)
        if records:
            self._waiting += records
            return reply
        if stored is not None:
            stored.addCallbacks(lambda _: reply.stored(None), lambda failure: reply.stored(failure.value))
        self._flush()
        return reply

    def _flush(self) -> None:
        # Acks leave in frame order: a keep-alive echo never overtakes the ack
        # of a report that is still being written.
        replies = self._replies
        while replies and replies[0].state != "waiting":
            reply = replies.popleft()
            if reply.state == "ready" and reply.data and self.open:
                self._link.write(reply.data)
                self.hub.acked(self, self.hub.clock.seconds() - reply.received)
                if self.hub.taps:
                    self.hub.tap(self, "out", reply.data)
        if not replies:
            self._replies = None
        if self._held and not self._busy():
            self._release()

    # -- backpressure -----------------------------------------------------

    def _busy(self) -> bool:
        return self._waiting >= MAX_WAITING or (
            self._replies is not None and len(self._replies) >= MAX_REPLIES)

    def _hold(self) -> None:
        if not self._held:
            self._held = True
            self._link.pause()

    def _release(self) -> None:
        # Bytes read before the pause are framed first; reading resumes only
        # if they did not fill the bound again.
        self._held = False
        self._drain()
        if self._busy():
            self._held = True
        elif self.open:
            self._link.resume()

    # -- misc -------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """
        Write a command to the device, after any ack still waiting for its
        records (a device that has not had its ack is not ready for a
        command). C{False} when the session is gone, or the device reads
        nothing but a reply now (L{gateway.model.DecodeResult.commands_wait}).
        """
        if not self.open or self._commands_wait:
            return False
        self._queue_reply(None, data)
        return True

    @property
    def replying(self) -> bool:
        """
        Whether an ack or reply of this session still waits to be sent (for
        its records to commit, say): closing it now would lose it.
        """
        return self._replies is not None

    def close(self) -> None:
        if self.open:
            self.open = False
            self._cancel_timer()
            if self._budget is not None:
                self._budget.flush()
            self._link.close()

    def _error(self, what: str, data: bytes, garbage: bool = True, failure: bool = False) -> None:
        """
        Report bad input: logged within this session's budget (the rest is
        counted in a summary line), and counted against the session as
        garbage, which closes a session that sends mostly that.
        """
        if self._budget is None:
            self._budget = Budget(self.hub.clock, ERRORS_PER_PERIOD, ERROR_PERIOD,
                                  lambda n: self.hub.suppressed(self, n, ERROR_PERIOD))
        text = f"{what}: {hexdump(data)}" if data else what
        self.hub.error(self, text, log_it=self._budget.allow(), failure=failure)
        if garbage:
            self._bad += len(data)
            now = self.hub.clock.seconds()
            if now - self._since >= GARBAGE_SECONDS:
                bad, total = self._bad, self._bad + self._good
                self._bad = self._good = 0
                self._since = now
                if bad >= GARBAGE_BYTES and bad > GARBAGE_SHARE * total and self.open:
                    self.hub.error(self, f"closed: {bad} of its last {total} bytes were garbage")
                    self.close()
