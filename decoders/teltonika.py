# -*- test-case-name: tests.test_teltonika -*-
"""
Teltonika "data sending protocol": FMB, FMC, FMM, FMT trackers and the older
FM1xxx / FM4xxx / FM6xxx / GH30xx units that use the same envelope.

On TCP a session is an IMEI login (C{00 0F} + 15 digits, answered C{01}),
then AVL packets (C{00000000}, data length N, codec id, records, the record
count again, CRC-16/ARC), each answered with the record count as 4 bytes once
its records are stored. A lone C{FF} is a keep-alive and gets nothing. On UDP
every datagram is a channel packet carrying the IMEI, answered C{00 05},
packet id, C{01}, AVL packet id, record count.

AVL codecs: 8, 8 Extended (2-byte ids and counts, a variable-length group),
16 (2-byte ids, generation type) and 7 (GH3000 bit masks). A non-standard
Codec 8 with a sixth, 16-byte IO group exists in the wild: a packet whose
records do not end exactly at its closing count is parsed again with that
group. Commands go out as Codec 12 (or Codec 14) text; the device's Codec 12
/ 14 reply confirms the oldest command sent, and gets no ack: a stray byte on
this socket shifts every later ack.

Every IO element is kept raw as C{io<id>}; the FMB/FMC dictionary adds named
attributes and alarms only for devices of those families (per-device setting
C{teltonika.model}, default FMB), only for values of the documented size,
and never for Codec 7 records.
"""

from __future__ import annotations

import math
import re
import struct

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc16_arc
from gateway.encoding import custom_command_bytes
from gateway.fields import digits, unix_time
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position

#: Largest TCP packet (12 + N bytes) accepted, as Traccar; the vendor's own
#: limits (512 / 1280 bytes) are exceeded by real devices.
MAX_PACKET = 32 * 1024

#: Sent for a login frame: accepted, rejected.
LOGIN_ACCEPTED = b"\x01"
LOGIN_REJECTED = b"\x00"

#: Longest command payload we send; SMS/GPRS command texts are short, serial
#: pass-through payloads may be longer.
MAX_COMMAND = 1024

_PREAMBLE = b"\x00\x00\x00\x00"
_KEEP_ALIVE = 0xFF
_LOGIN_LENGTH = 15
_MAX_LOGIN = 64

_CODEC7, _CODEC8, _CODEC8E, _CODEC16 = 0x07, 0x08, 0x8E, 0x10
_CODEC12, _CODEC13, _CODEC14, _CODEC15 = 0x0C, 0x0D, 0x0E, 0x0F
_AVL_CODECS = frozenset({_CODEC7, _CODEC8, _CODEC8E, _CODEC16})
_MESSAGE_CODECS = frozenset({_CODEC12, _CODEC13, _CODEC14})
#: Codec ids a packet may carry; Codec 15 is framed (so the stream stays in
#: step) but not decoded: no real frame of it is known.
_FRAMED_CODECS = _AVL_CODECS | _MESSAGE_CODECS | {_CODEC15}

_COMMAND_TYPE, _REPLY_TYPE, _NACK_TYPE = 0x05, 0x06, 0x11

#: Seconds from 1970 to the GH3000 epoch, 2007-01-01T00:00:00Z.
_GH3000_EPOCH = 1167609600

#: Model families the FMB IO dictionary belongs to.
_FMB_FAMILIES = ("FMB", "FMC", "FMM", "FMT", "FMU")

_DIGIT = frozenset(b"0123456789")


def _u(data: bytes) -> int:
    return int.from_bytes(data, "big")


class _Misfit(Exception):
    """
    A layout guess that does not fit the packet (a field past its end,
    a value that cannot be converted): try the next one.
    """


class _Reader:
    """
    Reads big-endian fields from C{data[pos:end]}; running past C{end} is a
    L{_Misfit}.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def take(self, size: int) -> bytes:
        start = self.pos
        if start + size > self.end:
            raise _Misfit(f"{size} bytes at {start} run past {self.end}")
        self.pos = start + size
        return self.data[start:start + size]

    def uint(self, size: int) -> int:
        return _u(self.take(size))


# -- IO elements --------------------------------------------------------------------

class _RawRecord:
    """
    One AVL record of Codec 8 / 8E / 16 cut out of a packet, values not yet
    converted.

    @ivar ios: C{(id, size, value bytes)} in wire order; C{size} is the
        fixed group size (1, 2, 4, 8, 16) or L{None} for a variable-length one.
    """

    __slots__ = ("head", "event", "generation", "total", "ios")

    def __init__(self, head, event, generation, total, ios):
        self.head, self.event, self.generation, self.total, self.ios = \
            head, event, generation, total, ios


#: Per codec: size of the event id, whether a generation type follows it, size
#: of the counts, size of the ids, whether a variable-length group ends it.
_IO_LAYOUT = {
    _CODEC8: (1, False, 1, 1, False),
    _CODEC8E: (2, False, 2, 2, True),
    _CODEC16: (2, True, 1, 2, False),
}


def _cut_records(data: bytes, start: int, end: int, codec: int, count: int,
                 sixteen: bool):
    """
    Cut C{count} records of C{codec} out of C{data[start:end]}; they must
    fill it exactly. With C{sixteen}, every record has a sixth IO group of
    16-byte values after the 8-byte one.
    """
    event_size, generation, count_size, id_size, variable = _IO_LAYOUT[codec]
    sizes = (1, 2, 4, 8, 16) if sixteen else (1, 2, 4, 8)
    fixed = 24 + event_size + (1 if generation else 0) + count_size
    pos = start
    out = []
    # Every read is bounds-checked against end before it is made: a count
    # read from a wrong guess never drives a long loop.
    for _ in range(count):
        if pos + fixed > end:
            raise _Misfit(f"record head past {end}")
        head = data[pos:pos + 24]
        pos += 24
        # Event ids, counts and IO ids are one or two bytes, read in place.
        event = data[pos] if event_size == 1 else (data[pos] << 8) | data[pos + 1]
        pos += event_size
        gen = None
        if generation:
            gen = data[pos]
            pos += 1
        total = data[pos] if count_size == 1 else (data[pos] << 8) | data[pos + 1]
        pos += count_size
        ios = []
        for size in sizes:
            if pos + count_size > end:
                raise _Misfit(f"IO count past {end}")
            n = data[pos] if count_size == 1 else (data[pos] << 8) | data[pos + 1]
            pos += count_size
            step = id_size + size
            stop = pos + n * step
            if stop > end:
                raise _Misfit(f"{n} IOs of {size} bytes past {end}")
            if id_size == 1:
                ios += [(data[at], size, data[at + 1:at + step]) for at in range(pos, stop, step)]
            else:
                ios += [((data[at] << 8) | data[at + 1], size, data[at + 2:at + step])
                        for at in range(pos, stop, step)]
            pos = stop
        if variable:
            if pos + 2 > end:
                raise _Misfit(f"variable-length IO count past {end}")
            n = _u(data[pos:pos + 2])
            pos += 2
            for _ in range(n):
                if pos + 4 > end:
                    raise _Misfit(f"variable-length IO past {end}")
                ident, length = _u(data[pos:pos + 2]), _u(data[pos + 2:pos + 4])
                pos += 4
                if pos + length > end:
                    raise _Misfit(f"variable-length IO of {length} bytes past {end}")
                ios.append((ident, None, data[pos:pos + length]))
                pos += length
        out.append(_RawRecord(head, event, gen, total, ios))
    if pos != end:
        raise _Misfit(f"records end at {pos}, the packet's at {end}")
    return out


def _signed(number: int, size: int) -> int:
    # The unsigned value of C{size} bytes read as two's complement.
    return number - (1 << (size << 3)) if number >> ((size << 3) - 1) else number


def _flag(number: int) -> bool:
    return number != 0


def _volts(number: int) -> float:
    return number / 1000


def _same(number: int) -> int:
    return number


def _signed16(number: int) -> int:
    return _signed(number, 2)


#: The FMB/FMC dictionary: IO id -> (value size, attribute, conversion of the
#: unsigned value).
_NAMED = {
    239: (1, "ignition", _flag),
    240: (1, "motion", _flag),
    21: (1, "rssi", _same),
    66: (2, "power_v", _volts),
    67: (2, "battery_v", _volts),
    68: (2, "teltonika.battery_current_ma", _same),
    113: (1, "battery_level_pct", _same),
    16: (4, "odometer_m", _same),
    199: (4, "trip_odometer_m", _same),
    1: (1, "din1", _flag),
    2: (1, "din2", _flag),
    3: (1, "din3", _flag),
    4: (1, "din4", _flag),
    179: (1, "dout1", _flag),
    180: (1, "dout2", _flag),
    9: (2, "adc1_v", _volts),
    10: (2, "adc2_v", _volts),
    181: (2, "pdop", lambda v: v / 10),
    182: (2, "hdop", lambda v: v / 10),
    69: (1, "teltonika.gnss_status", _same),
    24: (2, "teltonika.gnss_speed_kmh", _same),
    200: (1, "teltonika.sleep_mode", _same),
    80: (1, "teltonika.data_mode", _same),
    205: (2, "cell_id", _same),
    206: (2, "lac", _same),
    241: (4, "teltonika.operator", _same),
    17: (2, "teltonika.accel_x", _signed16),
    18: (2, "teltonika.accel_y", _signed16),
    19: (2, "teltonika.accel_z", _signed16),
}

#: Dallas temperature IOs -> sensor number.
_TEMPERATURES = {72: 1, 73: 2, 74: 3, 75: 4}
_IBUTTON = 78

#: 1-byte FMB IOs whose exact value raises an alarm, whatever the event.
_VALUE_ALARMS = {
    (252, 1): "power_cut",
    (247, 1): "accident",
    (249, 1): "jamming",
    (251, 1): "idle",
    (253, 1): "harsh_acceleration",
    (253, 2): "harsh_braking",
    (253, 3): "harsh_cornering",
    (246, 1): "general",
    (236, 1): "general",
}
#: 1-byte FMB IOs that raise an alarm only on the record they triggered.
_GEOFENCES = frozenset({175, 155, 156, 157, 158, 159})
_OVERSPEED = 255


#: The IOs L{_fmb_io} reads beyond L{_NAMED}'s; it leaves every other one as
#: it is. None of them is named.
_FMB_IDS = frozenset([*_TEMPERATURES, _IBUTTON, *(i for i, _ in _VALUE_ALARMS), *_GEOFENCES,
                      _OVERSPEED])
assert not _FMB_IDS & _NAMED.keys()

#: The raw attribute names of one-byte IO ids, made once.
_IO_NAMES = tuple(f"io{ident}" for ident in range(256))


def _fmb_io(ident: int, size: int, value: bytes, number: int, event: int, attributes: dict,
            alarms: list) -> None:
    """
    The FMB dictionary's reading of one fixed-size IO (up to 8 bytes) of
    L{_FMB_IDS}, whose unsigned value is C{number}, into C{attributes} and
    C{alarms}. L{_record} converts the L{_NAMED} ones itself.
    """
    if ident in _TEMPERATURES:
        tenths = _signed(number, size)
        # Anything outside the sensor's range is a status code (3000: no sensor).
        if -550 <= tenths <= 1150:
            attributes[f"temp{_TEMPERATURES[ident]}_c"] = tenths / 10
        return
    if ident == _IBUTTON and size == 8 and number:
        # The iButton id comes least significant byte first.
        attributes["driver_id"] = value[::-1].hex().upper()
    if size != 1:
        return
    alarm = _VALUE_ALARMS.get((ident, number))
    if alarm is not None:
        alarms.append(alarm)
    elif ident == event and ident in _GEOFENCES and number in (0, 1):
        alarms.append("geofence_enter" if number else "geofence_exit")
    elif ident == event == _OVERSPEED:
        alarms.append("overspeed")


def _coordinates(latitude: float, longitude: float, raw: bytes, attributes: dict):
    """
    The pair as a record holds it: L{None} for a missing fix, and for values
    off the globe (kept raw in C{teltonika.raw_coordinates}).
    """
    if not (math.isfinite(latitude) and math.isfinite(longitude)
            and -90 <= latitude <= 90 and -180 <= longitude <= 180):
        attributes["teltonika.raw_coordinates"] = raw.hex()
        return None, None
    return latitude, longitude


#: A record's head: time, priority, longitude, latitude, altitude, angle,
#: satellites, speed.
_HEAD = struct.Struct(">QBiihHBH")


def _record(raw: _RawRecord, fmb: bool, marks: dict) -> Position:
    """
    A Codec 8 / 8E / 16 record; raises L{_Misfit} for values that cannot be.
    """
    stamp, priority, lon, lat, altitude, angle, satellites, speed = _HEAD.unpack(raw.head)
    try:
        time = unix_time(stamp / 1000)
    except DecodeError as e:
        raise _Misfit(str(e)) from None
    attributes = {"satellites": satellites, "teltonika.priority": priority, **marks}
    if raw.generation is not None:
        attributes["teltonika.generation_type"] = raw.generation
    latitude = longitude = None
    if lat or lon:
        latitude, longitude = _coordinates(lat / 1e7, lon / 1e7, raw.head[9:17], attributes)
    alarms = []
    event = raw.event
    from_bytes = int.from_bytes
    for ident, size, value in raw.ios:
        name = _IO_NAMES[ident] if ident < 256 else f"io{ident}"
        if size is not None and size <= 8:
            # Fixed sizes up to 8 bytes are unsigned integers; the rest lowercase hex.
            number = attributes[name] = value[0] if size == 1 else from_bytes(value, "big")
            if fmb:
                named = _NAMED.get(ident)
                if named is not None:
                    if named[0] == size:
                        attributes[named[1]] = named[2](number)
                elif ident in _FMB_IDS:
                    _fmb_io(ident, size, value, number, event, attributes, alarms)
        else:
            attributes[name] = value.hex()
    return Position(time, latitude, longitude, satellites > 0 and latitude is not None,
                    float(speed), float(angle), float(altitude), alarms, str(event), attributes)


def _standard_records(data: bytes, start: int, end: int, codec: int, count: int, fmb: bool,
                      marks: dict):
    """
    The records of a Codec 8 / 8E / 16 array: the standard layout, else the
    one with a 16-byte group, whichever fits the packet's bytes exactly and
    converts; a layout whose IO totals match its groups goes first.
    """
    fits = []
    for sixteen in (False, True):
        try:
            raws = _cut_records(data, start, end, codec, count, sixteen)
        except _Misfit:
            continue
        balanced = all(r.total == len(r.ios) for r in raws)
        if balanced and not sixteen:
            # The usual case, first in the order below: no need to try more.
            try:
                return [_record(r, fmb, marks) for r in raws]
            except _Misfit:
                continue
        fits.append((not balanced, sixteen, raws))
    fits.sort(key=lambda f: (f[0], f[1]))
    for _, sixteen, raws in fits:
        # The 16-byte group is inferred from the byte count, not announced.
        layout = {**marks, "teltonika.guessed": ["io16_group"]} if sixteen else marks
        try:
            return [_record(r, fmb, layout) for r in raws]
        except _Misfit:
            continue
    raise DecodeError(f"no record layout of codec 0x{codec:02x} fits the packet")


# -- Codec 7 (GH3000) -----------------------------------------------------------------

def _gh3000_record(r: _Reader, marks: dict) -> Position:
    stamp = r.uint(4) & 0x3FFFFFFF
    mask = r.uint(1)
    attributes = dict(marks)
    latitude = longitude = speed = course = altitude = None
    valid = False
    if mask & 0x01:
        location = r.uint(1)
        if location & 0x01:
            raw = r.take(8)
            lat, lon = struct.unpack(">ff", raw)
            latitude, longitude = _coordinates(lat, lon, raw, attributes)
        if location & 0x02:
            altitude = float(r.uint(2))
        if location & 0x04:
            course = r.uint(1) * 360 / 256
        if location & 0x08:
            speed = float(r.uint(1))
        satellites = None
        if location & 0x10:
            satellites = r.uint(1)
            attributes["satellites"] = satellites
        if location & 0x20:
            attributes["lac"] = r.uint(2)
            attributes["cell_id"] = r.uint(2)
        if location & 0x40:
            attributes["rssi"] = r.uint(1)
        if location & 0x80:
            attributes["teltonika.operator"] = r.uint(4)
        valid = latitude is not None and (satellites is None or satellites > 0)
    for bit, size in ((1, 1), (2, 2), (3, 4)):
        if mask >> bit & 1:
            for _ in range(r.uint(1)):
                ident = r.uint(1)
                attributes[f"io{ident}"] = r.uint(size)
    return Position(
        time=unix_time(stamp + _GH3000_EPOCH),
        latitude=latitude,
        longitude=longitude,
        valid=valid,
        speed_kmh=speed,
        course=course,
        altitude_m=altitude,
        attributes=attributes,
    )


def _gh3000_records(data: bytes, start: int, end: int, count: int, marks: dict):
    r = _Reader(data, start, end)
    try:
        records = [_gh3000_record(r, marks) for _ in range(count)]
    except _Misfit as e:
        raise DecodeError(f"codec 7 records do not fit the packet: {e}") from None
    if r.pos != end:
        raise DecodeError(f"codec 7 records end at {r.pos}, the packet's at {end}")
    return records


# -- Codec 12 / 13 / 14 messages --------------------------------------------------------

def _text(payload: bytes) -> str:
    """
    A reply payload as text when it is printable, else as hex (serial
    peripherals answer in binary).
    """
    if all(0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D) for b in payload):
        return payload.decode("ascii").strip()
    return payload.hex()


_DOUT_STATE = re.compile(r"DOUT(\d):(\d)\b")
_NEW_VALUE = re.compile(r"New value (\d+):")


def _reply_type(text: str, context, device_id) -> str | None:
    """
    The command type a reply text answers, when the text says it.
    """
    output = context.setting("teltonika.output", "1", device_id=device_id)
    for number, state in _DOUT_STATE.findall(text):
        if number == output:
            return "engine_stop" if state == "1" else "engine_resume"
    if text.startswith("GPS:") and "Lat:" in text:
        return "position_request"
    parameter = context.setting("teltonika.interval_parameter", device_id=device_id)
    found = _NEW_VALUE.search(text)
    if parameter and found and found.group(1) == parameter:
        return "set_interval"
    return None


def _messages(body: bytes, context, device_id):
    """
    The confirmations in a Codec 12 / 13 / 14 array C{body} (codec id to the
    closing count). Codec 13 is one-way serial data: nothing comes of it.
    """
    codec, count = body[0], body[1]
    end = len(body) - 1
    r = _Reader(body, 2, end)
    confirmations = []
    try:
        for _ in range(count):
            kind = r.uint(1)
            size = r.uint(4)
            if codec == _CODEC13:
                # The size counts the timestamp, 8 bytes of milliseconds when
                # it starts 00 00, else 4 of seconds; the payload runs to the
                # closing count whatever the size says.
                r.take(8 if body[r.pos:r.pos + 2] == b"\x00\x00" else 4)
                r.pos = end
                continue
            if codec == _CODEC14:
                imei = r.take(8).hex().lstrip("0")
                payload = r.take(size - 8) if size >= 8 else b""
                if kind == _NACK_TYPE:
                    confirmations.append(Confirmation(
                        success=False, reply=f"IMEI mismatch: the device is not {imei}"))
                    continue
            else:
                payload = r.take(min(size, end - r.pos))
            if kind == _REPLY_TYPE:
                text = _text(payload)
                confirmations.append(Confirmation(
                    reply=text, command_type=_reply_type(text, context, device_id)))
    except _Misfit as e:
        raise DecodeError(f"codec 0x{codec:02x} message does not fit the packet: {e}") from None
    return confirmations


# -- the AVL data array, on either transport ----------------------------------------------

def _fmb(context, device_id) -> bool:
    model = context.setting("teltonika.model", "FMB", device_id=device_id)
    return model.upper().startswith(_FMB_FAMILIES)


def _array(body: bytes, context, device_id, marks: dict):
    """
    Decode an AVL data array C{body} (codec id to the closing count):
    C{(records, confirmations)}; records is L{None} for a message packet.

    @param marks: attributes every record gets.
    """
    if len(body) < 3:
        raise DecodeError("data array shorter than its codec and counts")
    codec, count = body[0], body[1]
    if body[-1] != count:
        raise DecodeError(f"record counts differ: {count} and {body[-1]}")
    if codec in _MESSAGE_CODECS:
        return None, _messages(body, context, device_id)
    if count == 0:
        raise DecodeError("AVL packet without records")
    if codec == _CODEC7:
        return _gh3000_records(body, 2, len(body) - 1, count, marks), []
    if codec in _IO_LAYOUT:
        fmb = _fmb(context, device_id)
        return _standard_records(body, 2, len(body) - 1, codec, count, fmb, marks), []
    raise DecodeError(f"codec 0x{codec:02x} is not decoded")


# -- detection and framing ---------------------------------------------------------------

def _login_prefix(data: bytes) -> bool:
    # 00 0F then digits, as far as the bytes go.
    return data[:2] == b"\x00\x0f"[:len(data)] and all(b in _DIGIT for b in data[2:2 + _LOGIN_LENGTH])


def _packet_prefix(data: bytes) -> bool:
    """
    Whether C{data} can be the start of a TCP packet: preamble, a length
    within the cap, a known codec, at least one record.
    """
    if data[:4] != _PREAMBLE[:len(data)]:
        return False
    if len(data) >= 8 and not 3 <= _u(data[4:8]) <= MAX_PACKET - 12:
        return False
    if len(data) >= 9 and data[8] not in _FRAMED_CODECS:
        return False
    return len(data) < 10 or data[9] >= 1


def _packet_checks(packet: bytes) -> bool:
    # A whole TCP packet: CRC over codec..count, and the two counts agree.
    n = _u(packet[4:8])
    body = packet[8:8 + n]
    return crc16_arc(body) == _u(packet[8 + n:12 + n]) & 0xFFFF and body[-1] == body[1]


def _detect_tcp(head: bytes) -> Verdict:
    rest = head.lstrip(b"\xff")
    if not rest:
        return Verdict.more()
    if rest[0] != 0:
        return Verdict.no()
    if len(rest) < 2:
        return Verdict.more()
    if rest[1] == _LOGIN_LENGTH:
        if not _login_prefix(rest[:2 + _LOGIN_LENGTH]):
            return Verdict.no()
        return Verdict.match(90) if len(rest) >= 2 + _LOGIN_LENGTH else Verdict.more()
    if rest[1] == 0:
        if not _packet_prefix(rest[:10]) or (len(rest) >= 9 and rest[8] == _CODEC15):
            return Verdict.no()
        if len(rest) < 10:
            return Verdict.more()
        size = 12 + _u(rest[4:8])
        if len(rest) < size:
            # A packet without its login: structure so far, the CRC to come.
            return Verdict.match(50)
        return Verdict.match(90) if _packet_checks(rest[:size]) else Verdict.no()
    return Verdict.no()


def _channel_header(data: bytes) -> bool:
    # A UDP channel packet: a length within the data, 00 0F and 15 digits.
    return (len(data) >= 25 and _u(data[:2]) <= len(data) - 2 and data[6:8] == b"\x00\x0f"
            and all(b in _DIGIT for b in data[8:23]))


def _detect_udp(head: bytes) -> Verdict:
    if not _channel_header(head):
        return Verdict.no()
    last = _u(head[:2]) + 1
    if head[23] not in _AVL_CODECS | _MESSAGE_CODECS or head[24] < 1 or head[last] != head[24]:
        return Verdict.no()
    return Verdict.match(90)


def _resync(buffer: bytes) -> int:
    """
    Where the next frame may start after bytes that fit none: a keep-alive,
    a login, a packet preamble (or the start of one at the end of the buffer).
    """
    for i in range(1, len(buffer)):
        b = buffer[i]
        if b == _KEEP_ALIVE:
            return i
        if b == 0:
            rest = buffer[i:i + 10]
            if _login_prefix(rest[:2 + _LOGIN_LENGTH]) or _packet_prefix(rest):
                return i
    return len(buffer)


def _frame_tcp(buffer: bytes):
    first = buffer[0]
    if first == _KEEP_ALIVE:
        # "Network ping": nothing to answer.
        return b"", 1
    if first != 0:
        return None, _resync(buffer)
    if len(buffer) < 2:
        return None, 0
    length = buffer[1]
    if length:
        if length > _MAX_LOGIN or buffer[2:3] and buffer[2] not in _DIGIT:
            return None, _resync(buffer)
        if len(buffer) < 2 + length:
            return None, 0
        return buffer[:2 + length], 2 + length
    if not _packet_prefix(buffer[:10]):
        return None, _resync(buffer)
    if len(buffer) < 10:
        return None, 0
    size = 12 + _u(buffer[4:8])
    if len(buffer) < size:
        return None, 0
    return buffer[:size], size


def _frame_udp(buffer: bytes):
    # One channel packet; what is left when none fits is dropped (logged).
    if not _channel_header(buffer):
        return None, len(buffer)
    size = 2 + _u(buffer[:2])
    return buffer[:size], size


# -- commands -------------------------------------------------------------------------------

def _one_to_four(text: str) -> str:
    text = text.strip()
    if text not in ("1", "2", "3", "4"):
        raise ValueError("must be 1, 2, 3 or 4")
    return text


def _model(text: str) -> str:
    text = text.strip().upper()
    if not (text.isascii() and text.isalnum() and len(text) <= 32):
        raise ValueError("a model name such as FMB920, FMC130, FM6320 or GH3000")
    return text


def _parameter(text: str) -> str:
    text = text.strip()
    if not (digits(text) and len(text) <= 6):
        raise ValueError("a parameter id (digits)")
    return str(int(text))


def _command_codec(text: str) -> str:
    text = text.strip()
    if text not in ("12", "14"):
        raise ValueError("12 or 14")
    return text


def _setting(context, key: str, default: str | None = None) -> str | None:
    # A device setting through its validator, whatever stored it.
    value = context.setting(key, default)
    if value is None:
        return None
    try:
        return TeltonikaProtocol.settings_spec[key](value)
    except ValueError as e:
        raise EncodeError(f"{key} {value!r}: {e}") from None


def _setdigout(state: str, context) -> str:
    """
    C{setdigout} for the immobilizer output, the device's other outputs
    left unchanged with C{?}.
    """
    output = int(_setting(context, "teltonika.output", "1"))
    outputs = int(_setting(context, "teltonika.outputs", "1"))
    if output > outputs:
        raise EncodeError(f"teltonika.output {output} is beyond teltonika.outputs {outputs}")
    pattern = ["?"] * outputs
    pattern[output - 1] = state
    return "setdigout " + "".join(pattern)


def _custom_payload(params) -> bytes:
    payload = custom_command_bytes(params)
    if not payload:
        raise EncodeError("custom needs a non-empty text or hex parameter")
    if "hex" not in params and not all(0x20 <= b < 0x7F for b in payload):
        # One command per packet: no line breaks or control bytes in a text.
        raise EncodeError("custom text must be printable ASCII on one line")
    return payload


def command_packet(payload: bytes, imei: str | None = None) -> bytes:
    """
    A Codec 12 command packet holding C{payload}, or Codec 14 addressed to
    C{imei} (the device answers only when the IMEI is its own).
    """
    if len(payload) > MAX_COMMAND:
        raise EncodeError(f"command of {len(payload)} bytes, at most {MAX_COMMAND}")
    if imei is None:
        codec, data = _CODEC12, payload
    else:
        if not (digits(imei) and len(imei) <= 16):
            raise EncodeError(f"Codec 14 needs a numeric IMEI, not {imei!r}")
        codec, data = _CODEC14, bytes.fromhex(imei.rjust(16, "0")) + payload
    body = bytes([codec, 1, _COMMAND_TYPE]) + len(data).to_bytes(4, "big") + data + b"\x01"
    return _PREAMBLE + len(body).to_bytes(4, "big") + body + crc16_arc(body).to_bytes(4, "big")


# -- the plugin -------------------------------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class TeltonikaProtocol:
    """
    Teltonika AVL packets over TCP and UDP, Codec 12/14 commands over TCP.
    """

    name = "teltonika"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "reboot",
                          "set_interval", "custom"})
    settings_spec = {
        # The DOUT that drives the immobilizer relay, and how many the model has
        # (FMB920: 1, FMB120/FMB130/FMC130: 2, FMB640: 4).
        "teltonika.output": _one_to_four,
        "teltonika.outputs": _one_to_four,
        # FMB/FMC/FMM/FMT/FMU models get the FMB IO dictionary; others raw IOs.
        "teltonika.model": _model,
        # The data-acquisition period parameter set_interval writes (per model and mode).
        "teltonika.interval_parameter": _parameter,
        # 14: commands carry the device's IMEI (FMB firmware 03.25.04 and newer).
        "teltonika.command_codec": _command_codec,
    }

    def detect(self, head, transport):
        return _detect_tcp(head) if transport == "tcp" else _detect_udp(head)

    def frame(self, buffer, transport):
        return _frame_tcp(buffer) if transport == "tcp" else _frame_udp(buffer)

    def decode(self, frame, context):
        if context.transport == "udp":
            return self._channel_packet(frame, context)
        if frame[:4] == _PREAMBLE:
            return self._packet(frame, context)
        return self._login(frame)

    def _login(self, frame):
        imei = frame[2:]
        if len(frame) < 3 or frame[1] != len(imei):
            raise DecodeError("login length does not match its IMEI")
        if not all(b in _DIGIT for b in imei):
            return DecodeResult(reply=LOGIN_REJECTED)
        # The device sends its records next and reads only their ack: a
        # command written now would be read as that ack.
        return DecodeResult(device_id=imei.decode("ascii"), reply=LOGIN_ACCEPTED, commands_wait=True)

    def _packet(self, frame, context):
        n = _u(frame[4:8])
        if len(frame) != 12 + n or n < 3:
            raise DecodeError("packet length does not match its data length")
        body = frame[8:8 + n]
        if crc16_arc(body) != _u(frame[8 + n:]) & 0xFFFF:
            raise DecodeError(f"CRC {_u(frame[8 + n:]):08x} is not {crc16_arc(body):08x}")
        device_id = context.device_id
        marks = {} if device_id else {"teltonika.unattributed": True}
        records, confirmations = _array(body, context, device_id, marks)
        if records is None:
            # Command replies and serial data are never acknowledged.
            return DecodeResult(confirmations=confirmations)
        if device_id is None:
            # Nobody to store them for, and an ack would confirm what nobody kept.
            return DecodeResult(records=records,
                                withheld="AVL packet before login: not attributed, not acked")
        return DecodeResult(records=records, reply=body[1].to_bytes(4, "big"))

    def _channel_packet(self, frame, context):
        imei_length = _u(frame[6:8])
        array = 8 + imei_length
        if len(frame) != 2 + _u(frame[:2]) or imei_length > _MAX_LOGIN or array > len(frame):
            raise DecodeError("UDP channel packet shorter than its header")
        imei = frame[8:array]
        if not all(b in _DIGIT for b in imei):
            raise DecodeError("UDP channel packet without a numeric IMEI")
        device_id = imei.decode("ascii")
        body = frame[array:]
        records, confirmations = _array(body, context, device_id, {})
        if records is None:
            return DecodeResult(device_id=device_id, confirmations=confirmations)
        # Packet id and AVL packet id echoed: the device checks the latter.
        reply = b"\x00\x05" + frame[2:4] + b"\x01" + frame[5:6] + body[1:2]
        return DecodeResult(device_id=device_id, records=records, reply=reply)

    def encode(self, command, context):
        if context.transport != "tcp":
            raise EncodeError("Teltonika devices take GPRS commands over TCP only "
                              "(set the server protocol to TCP, or use SMS)")
        kind = command.type
        expects_reply = True
        if kind == "engine_stop":
            payload = _setdigout("1", context).encode("ascii")
        elif kind == "engine_resume":
            payload = _setdigout("0", context).encode("ascii")
        elif kind == "position_request":
            payload = b"getgps"
        elif kind == "reboot":
            # The device restarts at once and answers nothing.
            payload, expects_reply = b"cpureset", False
        elif kind == "set_interval":
            parameter = _setting(context, "teltonika.interval_parameter")
            if not parameter:
                raise EncodeError("set_interval needs the device's teltonika.interval_parameter "
                                  "(its data-acquisition period parameter id)")
            seconds = command.params.get("seconds", "")
            if not digits(seconds) or not 0 < int(seconds) <= 2592000:
                raise EncodeError(f"seconds must be a whole number of seconds, not {seconds!r}")
            payload = f"setparam {parameter}:{int(seconds)}".encode("ascii")
        elif kind == "custom":
            payload = _custom_payload(command.params)
        else:
            raise EncodeError(f"teltonika has no {kind} command")
        codec = str(command.params.get("codec") or _setting(context, "teltonika.command_codec", "12"))
        if codec not in ("12", "14"):
            raise EncodeError(f"codec must be 12 or 14, not {codec!r}")
        imei = command.device_id if codec == "14" else None
        return EncodedCommand(command_packet(payload, imei), expects_reply=expects_reply)


teltonika = TeltonikaProtocol()
