"""
GT06 (Concox / Jimi IoT): a login with the device's IMEI, then the real 0x22
location frame of the shared vector gt06-066 (a Traccar test frame, 2G cell and
the ACC / upload-mode / re-upload trailer) with its time and serial replaced;
every frame is acked with the 10-byte C{78 78 05 <type> <serial> <crc> 0D 0A}.
"""

from datetime import datetime, timedelta, timezone

from bench.traffic import Traffic
from gateway.checksums import crc16_x25

#: gt06-066 after its date-time, up to (not including) its serial.
AFTER_TIME = bytes.fromhex("c5050cc8c801a819d600152400e8011dbf003332000000")
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
ACK_SIZE = 10


def _frame(kind: int, content: bytes, serial: int) -> bytes:
    body = bytes([len(content) + 5, kind]) + content + (serial & 0xFFFF).to_bytes(2, "big")
    return b"\x78\x78" + body + crc16_x25(body).to_bytes(2, "big") + b"\r\n"


def hello(imei: str) -> bytes:
    return _frame(0x01, bytes.fromhex(imei.rjust(16, "0")), 0)


def frame(imei: str, n: int) -> bytes:
    t = START + timedelta(seconds=n)
    stamp = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second])
    return _frame(0x22, stamp + AFTER_TIME, n + 1)


def split(buffer: bytes):
    if len(buffer) < 3:
        return None, 0
    end = buffer[2] + 5
    return (None, 0) if len(buffer) < end else (buffer[:end], end)


def reply(data: bytes) -> bytes:
    return _frame(data[3], b"", int.from_bytes(data[-6:-4], "big"))


TRAFFIC = Traffic(name="gt06", records_per_frame=1, frame=frame,
                  ack_size=lambda buffer: ACK_SIZE if len(buffer) >= ACK_SIZE else 0,
                  split=split, reply=reply, hello=hello)
