"""
Teltonika (FMB / FM): the real 14-record Codec 8 history packet of the shared
vector teltonika-019 with the record times replaced. On TCP the device logs
in with its IMEI (answered C{01}) and each packet is acked with its record
count as 4 bytes; on UDP the same records travel in a channel packet with the
IMEI, acked with 7 bytes. C{--records N} sends the packet's first N records.
"""

from datetime import datetime, timezone

from bench.traffic import Traffic
from gateway.checksums import crc16_arc

PACKET = bytes.fromhex(
    "0000000000000401080e0000015d12cc211000fadaf627186742f5000d0048080006000a040100f001500515000342318a430f"
    "e344000003c700000000f1000068b61000001b05000000015d12c6683800fadaf72118673f82000000000000000007030100"
    "f00050040342318a430fe344000001f1000068b6000000015d12bd407800fadaf72118673f82000000000000000007030100"
    "f000500403423179430fe144000001f1000068b6000000015d12b414d000fadaf72118673f82000400900c0000fa120a0100"
    "f00050051502080007010552090e6f4bfa000542316a430fe14400000600006202b203c700002328f1000068b61000001b05"
    "000000015d12b3074800fadaf2821867436a000400890d00170011090100f00150011502081007010553090e6f4d054231fb"
    "430fe14400000603ae6202a003c700002328f1000068b61000001b05000000015d12b2ff7800fadaee89186747c60005009a"
    "0d001d0011090100f00150011502081b07010553090e6f4d05423125430fe144000006050862029e03c700002328f1000068"
    "b61000001b05000000015d12b2e42000fadae8cf18675e0a000300a60d00210011090101f00150011502082407030554090e"
    "6f4d0542310a430fe14400000606cf62029703c700002328f1000068b61000001b05000000015d12b2d48000fadae0581867"
    "6a16000400930c00240011090100f00150011502082207010554090e6f4e05423738430fe144000006066a62029303c70000"
    "2328f1000068b61000001b05000000015d12b2a1b800fadac33e18678e48000600940d00150011090101f001500515000819"
    "07030553090e6f4e054239cc430fe14400000607c662028603c700002328f1000000001000001b05000000015d12b29dd000"
    "fadac19d18678fc8000700820d00110011090100f00150051500081607030553090e6f4e054238c8430fe14400000606d962"
    "028503c700002328f1000000001000001b05000000015d12b299e800fadabfa9186790e3000700670d00110011090101f001"
    "50051500081407030553090e6f4e054231e5430fe144000006060a62028403c700002328f1000000001000001b0500000001"
    "5d12b2960000fadabd4018679104000600510d00120011090101f00150051500081207030553090e6f4e054231ce430fe144"
    "000006057062028303c700002328f1000000001000001b05000000015d12b27aa800fadaa96518678b7c000600470d001200"
    "11090101f00150051500081807030551090e6f4e05423a70430fe144000006074462027c03c700002328f1000000001000001b"
    "05000000015d12b276c000fadaa73f18678ae60006003b0d000e0011090101f00150051500081607030551090e6f4e05423a5a"
    "430fe14400000606b762027b03c700002328f1000000001000001b05000e000007a4")
BODY = PACKET[8:-4]
START_MS = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)


def _record_starts(body: bytes):
    # Codec 8: 24-byte head, event id, total, then four groups of 1/2/4/8-byte values.
    offset, starts = 2, []
    for _ in range(body[1]):
        starts.append(offset)
        offset += 26
        for size in (1, 2, 4, 8):
            offset += 1 + body[offset] * (1 + size)
    return starts + [offset]


BOUNDS = _record_starts(BODY)


def login(imei: str) -> bytes:
    return b"\x00\x0f" + imei.encode("ascii")


def tcp_ack_size(buffer: bytes) -> int:
    # The login's 01, then 4-byte record counts (they start with 00).
    if buffer[:1] == b"\x01":
        return 1
    return 4 if len(buffer) >= 4 else 0


def tcp_split(buffer: bytes):
    if buffer[:2] == b"\x00\x0f":
        return (buffer[:17], 17) if len(buffer) >= 17 else (None, 0)
    if len(buffer) < 8:
        return None, 0
    size = 12 + int.from_bytes(buffer[4:8], "big")
    return (buffer[:size], size) if len(buffer) >= size else (None, 0)


def tcp_reply(frame: bytes) -> bytes:
    return b"\x01" if frame[:2] == b"\x00\x0f" else frame[9].to_bytes(4, "big")


def udp_reply(datagram: bytes) -> bytes:
    return b"\x00\x05" + datagram[2:4] + b"\x01" + datagram[5:6] + datagram[24:25]


def make(records: int = 14) -> Traffic:
    """
    The traffic with the first C{records} records of the packet a frame
    (1 to 14).
    """
    if not 1 <= records < len(BOUNDS):
        raise ValueError(f"1 to {len(BOUNDS) - 1} records a packet")
    starts = BOUNDS[:records]
    template = bytes([BODY[0], records]) + BODY[BOUNDS[0]:BOUNDS[records]] + bytes([records])
    shift = BOUNDS[0] - 2

    def array(n: int) -> bytes:
        # Record times step by a second, newest first as in the original.
        body = bytearray(template)
        base = START_MS + n * records * 1000
        for i, start in enumerate(starts):
            at = start - shift
            body[at:at + 8] = (base + (records - 1 - i) * 1000).to_bytes(8, "big")
        return bytes(body)

    def tcp_frame(imei: str, n: int) -> bytes:
        body = array(n)
        return bytes(4) + len(body).to_bytes(4, "big") + body + crc16_arc(body).to_bytes(4, "big")

    def udp_frame(imei: str, n: int) -> bytes:
        data = (n & 0xFFFF).to_bytes(2, "big") + b"\x01" + bytes([n & 0xFF]) + login(imei) + array(n)
        return len(data).to_bytes(2, "big") + data

    udp = Traffic(name="teltonika", records_per_frame=records, frame=udp_frame,
                  ack_size=lambda buffer: 7 if len(buffer) >= 7 else 0,
                  split=lambda buffer: (buffer, len(buffer)) if buffer else (None, 0), reply=udp_reply)
    return Traffic(name="teltonika", records_per_frame=records, frame=tcp_frame,
                   ack_size=tcp_ack_size, split=tcp_split, reply=tcp_reply, hello=login, udp=udp)


TRAFFIC = make()
