"""
GoSafe (SkyPatrol SP7600): the real multi-record frame of the shared vector
gosafe-036 (three buffered records, SP7600/G3SC firmware) with the IMEI and the
record times replaced; acked with the four bytes C{1234}.
"""

from datetime import datetime, timedelta, timezone

from bench.traffic import Traffic

RECORD = ("{time},,SYS:G3SC;V3.37;V1.1.8,GPS:A;10;N3.009522;E101.512320;5;137;31;0.69,"
          "COT:27376703,ADC:25.81;4.28;2.60,DTT:5004;E1;0;0;0;3")
ACK = b"1234"
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make(records: int = 3) -> Traffic:
    """
    The traffic with C{records} records a frame (gosafe-036 has three).
    """

    def frame(imei: str, n: int) -> bytes:
        base = START + timedelta(seconds=n * records)
        body = [RECORD.format(time=(base + timedelta(seconds=i)).strftime("%H%M%S%d%m%y"))
                for i in range(records)]
        return f"*GS06,{imei},".encode() + "$".join(body).encode() + b"#"

    return Traffic(name="gosafe", records_per_frame=records, frame=frame,
                   ack_size=lambda buffer: len(ACK) if len(buffer) >= len(ACK) else 0,
                   split=split, reply=lambda frame: ACK)


def split(buffer: bytes):
    end = buffer.find(b"#")
    return (None, 0) if end < 0 else (buffer[:end + 1], end + 1)


TRAFFIC = make()
