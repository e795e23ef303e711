"""
JT/T 808: the real 0x0704 blind-area batch of the shared vector jt808-088
(three positions, a unit in Casablanca) with the terminal number and the
record times replaced, after a 0x0102 authentication as every connection
starts; each frame is acked with one 0x8001.
"""

import struct
from datetime import datetime, timedelta, timezone

from bench.traffic import Traffic
from gateway.checksums import xor8

#: The first item of jt808-088 (a 0x0200 body: basic block and items).
ITEM = bytes.fromhex(
    "000000000000000b020057d40072fb9c0064017200f220090215230301040000092930011f31010ceb1c000c00b2"
    "8921200272401241734f00060089ffffffef000400ce1d46")
AUTH = b"authentication"
BEIJING = timedelta(hours=8)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
_FLAG = b"\x7e"


def _wire(message_id: int, number: bytes, serial: int, body: bytes) -> bytes:
    content = struct.pack(">HH", message_id, len(body)) + number + struct.pack(">H", serial) + body
    content += bytes([xor8(content)])
    return _FLAG + content.replace(b"\x7d", b"\x7d\x01").replace(_FLAG, b"\x7d\x02") + _FLAG


def _number(imei: str) -> bytes:
    # BCD[6] holds 12 digits: the IMEI's last twelve, as many units do.
    return bytes.fromhex(imei[-12:])


def make(records: int = 3) -> Traffic:
    """
    The traffic with C{records} positions a batch (jt808-088 has three).
    """

    def frame(imei: str, n: int) -> bytes:
        base = START + timedelta(seconds=n * records)
        items = b""
        for i in range(records):
            stamp = bytes.fromhex(f"{base + BEIJING + timedelta(seconds=i):%y%m%d%H%M%S}")
            item = ITEM[:22] + stamp + ITEM[28:]
            items += struct.pack(">H", len(item)) + item
        return _wire(0x0704, _number(imei), n & 0xFFFF, struct.pack(">HB", records, 1) + items)

    return Traffic(name="jt808", records_per_frame=records, frame=frame, ack_size=ack_size,
                   split=split, reply=reply,
                   hello=lambda imei: _wire(0x0102, _number(imei), 0xFFFF, AUTH))


def ack_size(buffer: bytes) -> int:
    end = buffer.find(_FLAG, 1) if buffer[:1] == _FLAG else -1
    return end + 1 if end > 0 else 0


def split(buffer: bytes):
    start = buffer.find(_FLAG)
    end = buffer.find(_FLAG, start + 1) if start >= 0 else -1
    return (None, 0) if end < 0 else (buffer[start:end + 1], end + 1)


def reply(frame: bytes) -> bytes:
    content = frame[1:-1].replace(b"\x7d\x02", _FLAG).replace(b"\x7d\x01", b"\x7d")
    message_id, number, serial = content[:2], content[4:10], content[10:12]
    return _wire(0x8001, number, 0, serial + message_id + b"\x00")


TRAFFIC = make()
