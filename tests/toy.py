"""
A toy line protocol for testing the core without any vendor decoder.

Frames are C{TOY,<id>,<n>[,...]\\n}; C{n} records are emitted, and the ack is
C{ACK,<id>\\n}. C{PING,<id>\\n} is a keep-alive echoed at once. Bytes before a
C{T}/C{P} are garbage to skip. C{TOY,<id>,BAD\\n} is a frame that fails to
decode.
"""

from datetime import datetime, timezone

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position


@implementer(IPlugin, IDecoder, ICommandEncoder)
class Toy:
    name = "toy"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "custom"})

    def detect(self, head, transport):
        for magic in (b"TOY,", b"PING,", b"RE,"):
            if head.startswith(magic):
                return Verdict.match(50)
            if magic.startswith(head):
                return Verdict.more() if transport == "tcp" else Verdict.no()
        return Verdict.no()

    def frame(self, buffer, transport):
        start = min((i for i in (buffer.find(b"TOY,"), buffer.find(b"PING,"), buffer.find(b"RE,"))
                     if i >= 0), default=-1)
        if start < 0:
            return None, max(0, len(buffer) - 4)
        if start > 0:
            return None, start
        end = buffer.find(b"\n")
        if end < 0:
            return None, 0
        return buffer[:end], end + 1

    def decode(self, frame, context):
        parts = frame.decode("ascii", "replace").split(",")
        if parts[0] == "PING":
            return DecodeResult(device_id=parts[1], reply=frame + b"\n")
        if parts[0] == "RE":
            return DecodeResult(device_id=parts[1], confirmations=[
                Confirmation(token=parts[2] or None, success=parts[3] == "OK", reply=frame.decode())])
        if len(parts) < 3 or not parts[2].isdigit():
            raise DecodeError(f"bad toy frame {frame!r}")
        records = [Position(time=datetime(2024, 1, 1, 0, 0, i, tzinfo=timezone.utc),
                            latitude=1.0 + i, longitude=2.0, valid=True,
                            attributes={"index": i, "extra": parts[3:]})
                   for i in range(int(parts[2]))]
        return DecodeResult(device_id=parts[1], records=records,
                            reply=b"ACK," + parts[1].encode() + b"\n")

    def encode(self, command, context):
        if command.type == "custom":
            if "text" not in command.params:
                raise EncodeError("toy custom needs text")
            return EncodedCommand(command.params["text"].encode() + b"\n", token=None)
        state = 1 if command.type == "engine_stop" else 0
        token = f"{command.id}"
        return EncodedCommand(f"RELAY,{state},{token}\n".encode(), token=token)


toy = Toy()
