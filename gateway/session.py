# -*- test-case-name: tests.test_session -*-
"""
A session: one conversation with one device, over a TCP connection or with one
UDP peer address. Both transports run the same path once bytes arrive:
detect, frame, decode, store, and only then acknowledge.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.context import Context
from gateway.hexdump import hexdump
from gateway.interfaces import DecodeError

log = Logger()

#: Bytes a TCP session may send before a protocol must be decided (a first
#: frame of buffered history can be several KiB).
DETECT_BYTES = 8192
#: Seconds a TCP session may take to send enough bytes for detection.
DETECT_SECONDS = 5.0
#: Bytes a detected TCP session may leave unframed before they are thrown away.
MAX_BUFFER = 256 * 1024


class _Reply:
    """
    An ack waiting for its records to commit, and for earlier acks to go first.
    """

    __slots__ = ("data", "state")

    def __init__(self, data: bytes, ready: bool):
        self.data = data
        self.state = "ready" if ready else "waiting"


class Session:
    """
    The gateway's side of one device conversation.

    @ivar hub: the L{gateway.hub.Hub} that stores records, owns the detector
        and the command queue.
    @ivar transport: C{'tcp'} or C{'udp'}.
    @ivar write: sends bytes to the device (the TCP transport, or a UDP
        C{sendto} bound to the peer address).
    @ivar close: ends the session from our side (TCP: drop the connection).
    """

    # A gateway holds one per connected device, mostly idle: keep them small.
    __slots__ = ("hub", "transport", "peer", "write", "_close", "decoder", "device_id", "context",
                 "open", "last_seen", "_buffer", "_replies", "_detect_timer")

    def __init__(self, hub, transport: str, peer: str,
                 write: Callable[[bytes], None], close: Callable[[], None]):
        self.hub = hub
        self.transport = transport
        self.peer = peer
        self.write = write
        self._close = close
        self.decoder = None
        self.device_id: Optional[str] = None
        self.context = Context(transport=transport, peer=peer,
                               lookup=hub.settings, seconds=hub.clock.seconds)
        self.open = True
        self.last_seen = hub.clock.seconds()
        self._buffer = b""
        self._replies: Optional[deque] = None
        self._detect_timer = None

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
            if self._detect_timer is None and self._buffer:
                self._detect_timer = self.hub.clock.callLater(DETECT_SECONDS, self._detect_timeout)
            self._detect(final=len(self._buffer) >= DETECT_BYTES)
            if self.decoder is None:
                return
        self._drain()

    def datagram_received(self, data: bytes) -> None:
        """
        UDP: one datagram. Each is detected on its own; the decoder that took
        the last one is asked first, but must still claim it.
        """
        self.last_seen = self.hub.clock.seconds()
        decoder = self.decoder
        if decoder is None or not decoder.detect(data, "udp").matched:
            detection = self.hub.detector.detect(data, "udp", final=True)
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
            self._detect(final=True)
            if self.decoder is not None:
                self._drain()

    def _cancel_timer(self) -> None:
        if self._detect_timer is not None and self._detect_timer.active():
            self._detect_timer.cancel()
        self._detect_timer = None

    def _bind_decoder(self, decoder) -> None:
        self.decoder = decoder
        self.context.state.clear()
        if self.transport != "udp":
            log.info("session {transport} {peer}: protocol {protocol}",
                     transport=self.transport, peer=self.peer, protocol=decoder.name)

    # -- framing and decoding ---------------------------------------------

    def _drain(self) -> None:
        decoder = self.decoder
        while self._buffer and self.open:
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
        self.context.device_id = self.device_id
        try:
            result = self.decoder.decode(frame, self.context)
        except DecodeError as e:
            self._error(f"bad frame: {e}", frame)
            return
        except Exception as e:
            log.failure("decoder {protocol} failed on a frame from {peer}: {hex}",
                        protocol=self.protocol, peer=self.peer, hex=hexdump(frame))
            self.hub.error(self, f"decoder failed: {e!r}: {hexdump(frame)}", log_it=False)
            return
        if result.device_id and result.device_id != self.device_id:
            self._bind_device(result.device_id)
        device_id = result.device_id or self.device_id
        if result.settings and device_id:
            self.hub.learned(device_id, result.settings)
        if result.confirmations:
            self.hub.confirmed(self, device_id, result.confirmations)
        stored = self.hub.store(self, device_id, result.records) if result.records else None
        self._queue_reply(stored, result.reply)
        self.hub.frame_done(self, device_id)

    def _bind_device(self, device_id: str) -> None:
        previous, self.device_id = self.device_id, device_id
        self.context.device_id = device_id
        # Not per UDP peer: a device behind a NAT may send every frame from a
        # new port, and logging each cost as much as the frame itself.
        if self.transport != "udp":
            log.info("session {transport} {peer}: device {device_id} ({protocol})",
                     transport=self.transport, peer=self.peer, device_id=device_id,
                     protocol=self.protocol)
        self.hub.identified(self, previous)

    # -- replies ----------------------------------------------------------

    def _queue_reply(self, stored: Optional[Deferred], data: bytes) -> None:
        reply = _Reply(data, stored is None)
        if self._replies is None:
            self._replies = deque()
        self._replies.append(reply)
        if stored is not None:
            def ok(_):
                reply.state = "ready"
                self._flush()

            def failed(failure):
                reply.state = "failed"
                self.hub.error(self, f"records not stored, no ack sent: {failure.getErrorMessage()}")
                self._flush()

            stored.addCallbacks(ok, failed)
        self._flush()

    def _flush(self) -> None:
        # Acks leave in frame order: a keep-alive echo never overtakes the ack
        # of a report that is still being written.
        replies = self._replies
        while replies and replies[0].state != "waiting":
            reply = replies.popleft()
            if reply.state == "ready" and reply.data and self.open:
                self.write(reply.data)
        if not replies:
            self._replies = None

    # -- misc -------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """
        Write a command to the device, after any ack still waiting for its
        records (a device that has not had its ack is not ready for a
        command). C{False} when the session is gone.
        """
        if not self.open:
            return False
        self._queue_reply(None, data)
        return True

    def close(self) -> None:
        if self.open:
            self.open = False
            self._cancel_timer()
            self._close()

    def _error(self, what: str, data: bytes) -> None:
        self.hub.error(self, f"{what}: {hexdump(data)}")
