"""
Queclink @Track: the real four-position GTFRI of the shared vector
queclink-053 (a GL300), with the IMEI, the fix times, the send time and the
count number replaced, each followed by a heartbeat C{+ACK:GTHBD}.

A GL300 in its factory setting (SACK off) gets no reply to a report; the
heartbeat is always answered, and its C{+SACK:GTHBD} leaves only after the
report's records committed (replies go out in frame order), so it is the ack
the closed loop waits for.
"""

from datetime import datetime, timedelta, timezone

from bench.traffic import Traffic

BLOCK = "1,{speed},0,426.7,8.611466,47.681639,{time},0228,0001,077F,4812,25.2"
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
VERSION = "1A0900"


def make(records: int = 4) -> Traffic:
    """
    The traffic with C{records} positions a report (the GL300 sends 1 to 15;
    queclink-053 has four).
    """
    if not 1 <= records <= 15:
        raise ValueError("a GTFRI holds 1 to 15 positions")

    def frame(imei: str, n: int) -> bytes:
        base = START + timedelta(seconds=n * records)
        blocks = [BLOCK.format(speed=f"{i % 100}.{n % 10}",
                               time=(base + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S"))
                  for i in range(records)]
        sent = (base + timedelta(seconds=records)).strftime("%Y%m%d%H%M%S")
        count = f"{n & 0xFFFF:04X}"
        report = f"+RESP:GTFRI,{VERSION},{imei},G3-313,0,0,{records},{','.join(blocks)},83,{sent},{count}$"
        heartbeat = f"+ACK:GTHBD,{VERSION},{imei},G3-313,{sent},{count}$"
        return (report + heartbeat).encode("ascii")

    return Traffic(name="queclink", records_per_frame=records, frame=frame,
                   ack_size=ack_size, split=split, reply=reply)


def ack_size(buffer: bytes) -> int:
    end = buffer.find(b"$")
    return end + 1 if end >= 0 else 0


def split(buffer: bytes):
    # The report and its heartbeat are one unit for the bare server.
    first = buffer.find(b"$")
    end = buffer.find(b"$", first + 1) if first >= 0 else -1
    return (None, 0) if end < 0 else (buffer[:end + 1], end + 1)


def reply(frame: bytes) -> bytes:
    heartbeat = frame[frame.index(b"+ACK:GTHBD,"):-1].split(b",")
    return b"+SACK:GTHBD," + heartbeat[1] + b"," + heartbeat[-1] + b"$"


TRAFFIC = make()
