# -*- test-case-name: tests.test_gt06 -*-
"""
GT06: the binary protocol of Concox / Jimi IoT trackers (GT06, GT06N, GT800,
JM-VL01/02/03, Wetrack, X3, AT4, ...) and of a great many clones.

A frame is C{78 78 L(1)} or C{79 79 L(2)}, then protocol number, content,
serial (2), CRC-16/X-25 (2) and C{0D 0A}. There is no escaping: C{0D 0A}
occurs inside contents and CRCs, so frames are cut by their length and
checked by their terminator and CRC, never split on C{0D 0A}.

Reference: trackport's GT06 protocol notes, compiled from Concox documents and public
captures; "spec section N" below cites their numbering, section 0 being the
rules that settle conflicts between sources.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Dict, List, Optional, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc16_x25
from gateway.encoding import custom_command_bytes
from gateway.fields import bcd, bit, bits, check_coordinates, is_bcd, unix_time, utc
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position

SHORT = b"\x78\x78"
LONG = b"\x79\x79"
STOP = b"\r\n"

#: Largest long frame accepted (Traccar's cap); a bigger length is garbage.
MAX_FRAME = 32 * 1024
#: Largest long frame that may open a session (spec §3.2).
MAX_FIRST_LONG = 2048

#: Longest command text a short 0x80 frame holds (L <= 0xFF with a language word).
MAX_COMMAND_TEXT = 0xFF - 1 - 1 - 4 - 2 - 2 - 2

# Protocol numbers.
LOGIN = 0x01
TIME_REQUEST = 0x8A
STRING_REPLY = 0x15
LONG_STRING_REPLY = 0x21
COMMAND = 0x80
MODULAR = 0x70

#: Location frames: date-time, GPS, LBS, trailer (spec §4.4, §4.15).
_LOCATION = frozenset({0x12, 0x22, 0xA0})
#: Alarm frames: date-time, GPS, LBS length + LBS, status (spec §4.7, §4.15).
_ALARM = frozenset({0x16, 0x26, 0x27, 0xA4})
#: GPS + phone number + alarm/language (spec §4.11).
_ADDRESS = frozenset({0x1A, 0x2A})
#: LBS alarms without time or position (spec §4.8).
_LBS_ALARM = frozenset({0x19, 0xA5})
#: Types with the 4G LBS block (4-byte LAC, 8-byte cell id).
_4G = frozenset({0xA0, 0xA4, 0xA5})
#: Types whose time may be the device's local time (spec §5).
_LOCAL_TIME = frozenset({0x10, 0x11, 0x12, 0x16, 0x17, 0x18, 0x1A})
#: Types that get no reply whatever their frame (spec §6.2).
_NO_REPLY = frozenset({0x94, 0x17, 0x2A})

#: Alarm codes (first byte of the alarm/language word), spec table 4.A.
ALARM_CODES = {
    0x01: "sos", 0x02: "power_cut", 0x03: "vibration", 0x04: "geofence_enter",
    0x05: "geofence_exit", 0x06: "overspeed", 0x09: "movement", 0x0E: "low_power",
    0x0F: "low_power", 0x13: "tampering", 0x14: "door", 0x15: "low_power", 0x17: "jamming",
    0x18: "tampering", 0x19: "low_battery", 0x23: "fall_down", 0x29: "harsh_acceleration",
    0x2A: "harsh_cornering", 0x2B: "harsh_cornering", 0x2C: "accident", 0x2D: "accident",
    0x30: "harsh_braking", 0x32: "tampering", 0x3C: "general", 0x3D: "general",
    0x3E: "general", 0x4C: "harsh_cornering", 0x4D: "harsh_cornering", 0x5E: "tampering",
}
#: Terminal-information bits 3-5 (spec §4.0); 5-7 are in no Concox table.
_TERMINAL_ALARMS = {1: "vibration", 2: "power_cut", 3: "low_battery", 4: "sos"}
#: Event codes of the 0x70 event module (spec §4.16).
_MODULE_EVENTS = {
    0x10: "door", 0x12: "removing", 0x14: "geofence_enter", 0x15: "geofence_exit",
    0x16: "temperature", 0x1A: "low_battery", 0x1B: "overspeed", 0x20: "vibration",
    0x21: "power_cut", 0x23: "tampering",
}

#: Engine stop / resume texts by C{gt06.relay_style} (spec §7).
RELAY_STYLES = {
    "relay": ("Relay,1#", "Relay,0#"),
    "relay_upper": ("RELAY,1#", "RELAY,0#"),
    "dyd": ("DYD,{password}#", "HFYD,{password}#"),
    "dyd_nopwd": ("DYD#", "HFYD#"),
}
_LANGUAGES = {"none": b"", "chinese": b"\x00\x01", "english": b"\x00\x02"}

#: Reply texts that say a command was refused (spec §7); "Already in the
#: state" means the wanted state holds.
_FAILURE = re.compile(r"fail|error|invalid|unvalued|speed limit|not support|wrong|denied",
                      re.IGNORECASE)
#: Reply texts that say which command they answer.
_REPLY_KINDS = (
    (re.compile(r"^\s*DYD\b|cut off the fuel|fuel supply cut off", re.I), "engine_stop"),
    (re.compile(r"^\s*HFYD\b|restore fuel|fuel supply to resume", re.I), "engine_resume"),
    (re.compile(r"^\s*DWXX\b|current position", re.I), "position_request"),
)
#: Sent commands remembered per session for naming the replies.
_SENT_KEPT = 64

_ZONE_SETTING = re.compile(r"([+-])(\d{1,2})(?::?(\d{2}))?\Z")


def _u(data: bytes) -> int:
    return int.from_bytes(data, "big")


# -- settings ---------------------------------------------------------------

def _relay_style(text: str) -> str:
    value = text.strip().lower()
    if value not in RELAY_STYLES:
        raise ValueError(f"relay style must be one of {', '.join(sorted(RELAY_STYLES))}")
    return value


def _password(text: str) -> str:
    value = text.strip()
    if not (1 <= len(value) <= 16 and value.isascii() and value.isalnum()):
        raise ValueError("password must be 1-16 ASCII letters or digits")
    return value


def _timezone(text: str) -> str:
    value = text.strip().upper()
    if value in ("UTC", "Z", "0"):
        return "+00:00"
    match = _ZONE_SETTING.match(value)
    if match is None:
        raise ValueError("time zone must look like +08:00, -0400 or UTC")
    hours, minutes = int(match.group(2)), int(match.group(3) or 0)
    if hours > 14 or minutes >= 60:
        raise ValueError("time zone offset out of range")
    return f"{match.group(1)}{hours:02d}:{minutes:02d}"


def _language(text: str) -> str:
    value = text.strip().lower()
    if value not in _LANGUAGES:
        raise ValueError("language must be none, chinese or english")
    return value


def _zone_minutes(setting: str) -> int:
    value = _timezone(setting)
    minutes = int(value[1:3]) * 60 + int(value[4:6])
    return -minutes if value[0] == "-" else minutes


def login_zone_minutes(word: int) -> Optional[int]:
    """
    The offset from UTC, in minutes, of a login's time-zone word (spec §5):
    bits 15-4 the offset as decimal hhmm, bit 3 west. L{None} when the word
    holds no offset or an impossible one.
    """
    value = word >> 4
    hours, minutes = divmod(value, 100)
    if value == 0 or hours > 14 or minutes >= 60:
        return None
    offset = hours * 60 + minutes
    return -offset if bit(word, 3) else offset


# -- frames -----------------------------------------------------------------

def frame_bytes(kind: int, content: bytes, serial: int) -> bytes:
    """
    A short frame (a long one when the content needs it) of protocol number
    C{kind} with C{content} and C{serial}.
    """
    length = len(content) + 5
    if length <= 0xFF:
        head, size = SHORT, bytes([length])
    else:
        head, size = LONG, length.to_bytes(2, "big")
    body = size + bytes([kind]) + content + (serial & 0xFFFF).to_bytes(2, "big")
    return head + body + crc16_x25(body).to_bytes(2, "big") + STOP


def ack(kind: int, serial: int) -> bytes:
    """
    The standard acknowledgement C{78 78 05 <kind> <serial> <crc> 0D 0A}.
    """
    return frame_bytes(kind, b"", serial)


def command_frame(text: bytes, flag: int, serial: int, language: bytes = b"") -> bytes:
    """
    An online command 0x80: command length, server flag, text, optional
    language word (spec §7).
    """
    return frame_bytes(COMMAND, bytes([4 + len(text)]) + flag.to_bytes(4, "big") + text + language,
                       serial)


def _span(buffer: bytes) -> Optional[Tuple[int, int]]:
    """
    C{(total, header)} sizes of the frame C{buffer} starts with, L{None} when
    its length field is not known yet. C{total} is 0 for a length that no
    frame has.
    """
    if buffer[:2] == SHORT:
        if len(buffer) < 3:
            return None
        length = buffer[2]
        return (length + 5 if length >= 5 else 0), 3
    if len(buffer) < 4:
        return None
    length = _u(buffer[2:4])
    return (length + 6 if 5 <= length <= MAX_FRAME else 0), 4


def _crc_ok(frame: bytes) -> bool:
    return crc16_x25(frame[2:-4]) == _u(frame[-4:-2])


def _whole_frame_at(buffer: bytes, start: int) -> bool:
    """
    Whether a complete frame with a good terminator and CRC starts at C{start}.
    """
    span = _span(buffer[start:start + 4])
    if not span or not span[0] or start + span[0] > len(buffer):
        return False
    frame = buffer[start:start + span[0]]
    return frame[-2:] == STOP and _crc_ok(frame)


def _next_start(buffer: bytes, after: int = 1) -> int:
    """
    Where the next possible frame start is at or after C{after}; a last lone
    C{78}/C{79} is kept as a possible start, everything else may go.
    """
    found = [i for i in (buffer.find(SHORT, after), buffer.find(LONG, after)) if i >= 0]
    if found:
        return min(found)
    if len(buffer) > after and buffer[-1] in (0x78, 0x79):
        return len(buffer) - 1
    return len(buffer)


def _good_frame_inside(buffer: bytes, end: int) -> Optional[int]:
    """
    The start of a complete, CRC-valid frame inside C{buffer[1:end]}: proof
    that the frame header at 0 was not real.
    """
    start = _next_start(buffer, 1)
    while start < min(end, len(buffer)):
        if _whole_frame_at(buffer, start):
            return start
        start = _next_start(buffer, start + 1)
    return None


# -- fields -----------------------------------------------------------------

class _Reader:
    """
    Reads fields off a content, refusing to run past its end.
    """

    def __init__(self, data: bytes, offset: int = 0):
        self.data = data
        self.offset = offset

    @property
    def left(self) -> int:
        return len(self.data) - self.offset

    def take(self, size: int) -> bytes:
        if size > self.left:
            raise DecodeError(f"content ends {size - self.left} bytes short")
        out = self.data[self.offset:self.offset + size]
        self.offset += size
        return out

    def int(self, size: int) -> int:
        return _u(self.take(size))


def _date_time(data: bytes):
    if not any(data):
        return None
    return utc(data[0], data[1], data[2], data[3], data[4], data[5])


class _Record:
    """
    One record while its blocks are read.
    """

    def __init__(self):
        self.time = None
        self.latitude = self.longitude = None
        self.valid = False
        self.speed = self.course = self.altitude = None
        self.alarms: List[str] = []
        self.event = None
        self.attributes: Dict[str, object] = {}
        self.ignition_course = None
        self.ignition_terminal = None
        self.ignition_code = None
        self.ignition_acc = None

    def position(self) -> Position:
        for ignition in (self.ignition_acc, self.ignition_code, self.ignition_terminal,
                         self.ignition_course):
            if ignition is not None:
                self.attributes["ignition"] = ignition
                break
        return Position(time=self.time, latitude=self.latitude, longitude=self.longitude,
                        valid=self.valid, speed_kmh=self.speed, course=self.course,
                        altitude_m=self.altitude, alarm=self.alarms, event=self.event,
                        attributes=self.attributes)

    def fix(self, latitude: int, longitude: int, word: int):
        """
        Coordinates in 1/30000 minute and the course/status word (spec §4.0).
        """
        self.valid = bit(word, 12)
        self.course = float(bits(word, 0, 10))
        if bit(word, 14):
            self.ignition_course = bit(word, 15)
        if latitude == 0 and longitude == 0 and not self.valid:
            # "No fix", not a place off Africa (spec §8.7).
            return
        lat = latitude / 1800000.0
        lon = longitude / 1800000.0
        if not bit(word, 10):
            lat = -lat
        if bit(word, 11):
            lon = -lon
        check_coordinates(lat, lon)
        self.latitude, self.longitude = round(lat, 6), round(lon, 6)

    def gps(self, block: bytes):
        """
        The 12-byte GPS block: satellites, latitude, longitude, speed, course/status.
        """
        self.attributes["satellites"] = block[0] & 0x0F
        self.speed = float(block[9])
        self.fix(_u(block[1:5]), _u(block[5:9]), _u(block[10:12]))

    def cell(self, mcc: int, mnc: int, lac: int, cell_id: int):
        if mcc or lac or cell_id:
            self.attributes.update({"mcc": mcc, "mnc": mnc, "lac": lac, "cell_id": cell_id})

    def status(self, terminal: int, voltage: int, gsm: int, code: Optional[int]):
        """
        Terminal information, voltage level, GSM level and alarm code (spec §4.0, §0.10).
        """
        a = self.attributes
        a["gt06.armed"] = bit(terminal, 0)
        self.ignition_terminal = bit(terminal, 1)
        a["gt06.charging"] = bit(terminal, 2)
        a["gt06.gps_tracking"] = bit(terminal, 6)
        a["gt06.relay_cut"] = bit(terminal, 7)
        a["gt06.voltage_level"] = voltage
        a["gt06.gsm_level"] = gsm
        alarm = _TERMINAL_ALARMS.get(bits(terminal, 3, 3))
        if alarm:
            self.alarms.append(alarm)
        if code is not None:
            self.code(code)

    def code(self, code: int):
        if code == 0:
            return
        self.event = f"{code:02X}"
        if code in (0xFE, 0xFF):
            self.ignition_code = code == 0xFE
        elif code in ALARM_CODES:
            self.alarms.append(ALARM_CODES[code])


def _lbs(reader: _Reader, record: _Record, four_g: bool):
    """
    An LBS block: MCC (bit 15 = 2-byte MNC), MNC, LAC, cell id.
    """
    mcc = reader.int(2)
    mnc = reader.int(2 if bit(mcc, 15) else 1)
    mcc &= 0x7FFF
    if four_g:
        lac, cell_id = reader.int(4), reader.int(8)
    else:
        lac, cell_id = reader.int(2), reader.int(3)
    record.cell(mcc, mnc, lac, cell_id)


def _lbs_size(content: bytes, offset: int, four_g: bool) -> int:
    if len(content) < offset + 2:
        return 0
    mnc = 2 if bit(_u(content[offset:offset + 2]), 15) else 1
    return 2 + mnc + (12 if four_g else 5)


def _time_gps(content: bytes, record: _Record) -> _Reader:
    reader = _Reader(content)
    record.time = _date_time(reader.take(6))
    record.gps(reader.take(12))
    return reader


def _location(kind: int, content: bytes) -> Optional[_Record]:
    """
    0x12 / 0x22 / 0xA0: date-time, GPS, LBS, then the trailer only when it fits
    exactly (spec §4.4, §0 rules 2 and 4).
    """
    if len(content) < 18:
        return None
    record = _Record()
    reader = _time_gps(content, record)
    four_g = kind in _4G
    size = _lbs_size(content, 18, four_g)
    if size and reader.left >= size:
        _lbs(reader, record, four_g)
        left = reader.left
        if left in (3, 7):
            acc, mode, again = reader.take(3)
            record.ignition_acc = acc != 0
            record.attributes["gt06.upload_mode"] = mode
            record.attributes["archive"] = again != 0
        if reader.left == 4:
            record.attributes["gt06.mileage"] = reader.int(4)
    return record


def _alarm(kind: int, content: bytes, length: int) -> Optional[_Record]:
    """
    0x16 / 0x26 / 0x27 / 0xA4: date-time, GPS, LBS length byte and LBS,
    status, alarm/language, [fence], [mileage] (spec §4.7, §0 rule 5).
    """
    if len(content) < 18:
        return None
    record = _Record()
    reader = _time_gps(content, record)
    if kind == 0x16 and length in (0x24, 0x2D):
        # VXT01 and RFID layouts: only the GPS part is the standard one.
        return record
    if reader.left < 1:
        return record
    four_g = kind in _4G
    declared = reader.int(1)
    if kind == 0x16 and length == 0x26 and reader.left >= 2 and not bit(_u(content[19:21]), 15):
        # "SeeWorld": MCC, 1-byte MNC, LAC, 4-byte cell id.
        if reader.left < 9 + 5:
            return record
        mcc, mnc, lac, cell_id = reader.int(2), reader.int(1), reader.int(2), reader.int(4)
        record.cell(mcc, mnc, lac, cell_id)
    elif declared:
        size = _lbs_size(content, reader.offset, four_g)
        if not size or reader.left < size + 5:
            return record
        _lbs(reader, record, four_g)
        # The length byte counts itself, or not (0x08): skip only what is
        # beyond both readings.
        extra = declared - (size + 1)
        if extra > 0:
            if reader.left < extra + 5:
                return record
            reader.take(extra)
    if reader.left < 5:
        return record
    terminal, voltage, gsm, code, _language = reader.take(5)
    record.status(terminal, voltage, gsm, code)
    if kind in (0x27, 0xA4) and reader.left >= 1:
        fence = reader.int(1)
        if fence != 0xFF:
            record.attributes["gt06.fence"] = fence
    if reader.left == 4:
        record.attributes["gt06.mileage"] = reader.int(4)
    return record


def _lbs_alarm(kind: int, content: bytes) -> Optional[_Record]:
    """
    0x19 / 0xA5: one LBS block and the 5 status bytes, no time, no position.
    """
    four_g = kind in _4G
    size = _lbs_size(content, 0, four_g)
    if not size or len(content) != size + 5:
        return None
    record = _Record()
    reader = _Reader(content)
    _lbs(reader, record, four_g)
    terminal, voltage, gsm, code, _language = reader.take(5)
    record.status(terminal, voltage, gsm, code)
    return record


def _gps_only(content: bytes) -> Optional[_Record]:
    """
    0x10: date-time and GPS, reserved bytes after.
    """
    if len(content) < 18:
        return None
    record = _Record()
    _time_gps(content, record)
    return record


def _gps_lbs(content: bytes) -> Optional[_Record]:
    """
    0x11: GPS + LBS when the content holds 28 bytes; the LBS-only layout
    (16 bytes) makes no record (spec §4.3).
    """
    if len(content) < 28:
        return None
    record = _Record()
    reader = _time_gps(content, record)
    mcc, mnc, lac, cell_id = reader.int(2), reader.int(2), reader.int(2), reader.int(4)
    record.cell(mcc & 0x7FFF, mnc, lac, cell_id)
    return record


def _address(content: bytes) -> Optional[_Record]:
    """
    0x1A / 0x2A: date-time, GPS, phone number (21), alarm/language word.
    """
    if len(content) < 18:
        return None
    record = _Record()
    reader = _time_gps(content, record)
    if reader.left >= 23:
        reader.take(21)
        record.code(reader.int(1))
    return record


def _modular(content: bytes) -> Optional[_Record]:
    """
    0x70: a run of C{type u16, length u16, data} modules (spec §0 rule 3).
    """
    reader = _Reader(content)
    record = _Record()
    gps = False
    while reader.left:
        if reader.left < 4:
            raise DecodeError("0x70 module header cut short")
        kind, size = reader.int(2), reader.int(2)
        data = reader.take(size)
        if kind == 0x0033 and len(data) >= 18 and not gps:
            gps = True
            seconds = _u(data[0:4])
            record.time = unix_time(seconds) if seconds else None
            record.attributes["satellites"] = data[4]
            record.altitude = float(int.from_bytes(data[5:7], "big", signed=True))
            record.speed = float(data[15])
            record.fix(_u(data[7:11]), _u(data[11:15]), _u(data[16:18]))
        elif kind == 0x0034 and len(data) >= 1:
            code = data[0]
            if code:
                record.event = f"{code:02X}"
                if code in _MODULE_EVENTS:
                    record.alarms.append(_MODULE_EVENTS[code])
        elif kind == 0x0011 and len(data) >= 10:
            record.cell(_u(data[0:2]), _u(data[2:4]), _u(data[4:6]), _u(data[6:9]))
    return record if gps else None


# -- command replies --------------------------------------------------------

def _text(data: bytes, utf16: bool = False) -> str:
    if utf16:
        text = data[:len(data) & ~1].decode("utf-16-be", "replace")
    else:
        text = data.split(b"\x00", 1)[0].decode("ascii", "replace")
    return "".join(c if c.isprintable() else " " for c in text.rstrip("\x00")).strip()


def _confirmation(flag: bytes, text: str, context) -> Optional[Confirmation]:
    """
    The confirmation a reply text makes. The server flag names the command
    (and, in this session, its type); flag 0 is a unit that does not echo, or
    a report nobody asked for (an ICCID), which confirms nothing.
    """
    token = flag.hex() if any(flag) else None
    if token is None and text.startswith("<ICCID:"):
        return None
    kind = context.state.get("sent", {}).get(token)
    if kind is None:
        kind = next((name for pattern, name in _REPLY_KINDS if pattern.search(text)), None)
    success = "already in the state" in text.lower() or not _FAILURE.search(text)
    return Confirmation(token=token, success=success, reply=text, command_type=kind)


def _string_reply(content: bytes, context) -> Optional[Confirmation]:
    """
    0x15: command length, server flag, text, language. Some units send
    length 0 and NUL-pad the text (spec §4.14).
    """
    if len(content) < 5:
        raise DecodeError("0x15 reply shorter than its server flag")
    size = content[0]
    flag = content[1:5]
    if size >= 4 and 1 + size <= len(content):
        text = content[5:1 + size]
    else:
        text = content[5:-2] if len(content) >= 7 else content[5:]
    return _confirmation(flag, _text(text), context)


def _long_string_reply(content: bytes, context) -> Optional[Confirmation]:
    """
    0x21: server flag, encoding (1 ASCII, 2 UTF-16BE), text.
    """
    if len(content) < 5:
        raise DecodeError("0x21 reply shorter than its server flag")
    return _confirmation(content[0:4], _text(content[5:], content[4] == 0x02), context)


# -- the plugin -------------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class Gt06Protocol:
    """
    GT06 frames on TCP (and, the same frame per datagram, UDP).
    """

    name = "gt06"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "reboot", "custom"})
    settings_spec = {
        "gt06.relay_style": _relay_style,
        "gt06.password": _password,
        "gt06.timezone": _timezone,
        "gt06.language": _language,
    }

    def detect(self, head, transport):
        more = Verdict.more() if transport == "tcp" else Verdict.no()
        if not head:
            return more
        if head[0] not in (0x78, 0x79):
            return Verdict.no()
        if len(head) < 2:
            return more
        if head[1] != head[0]:
            return Verdict.no()
        span = _span(head)
        if span is None:
            return more
        total = span[0]
        if not total or (head[:2] == LONG and total > MAX_FIRST_LONG + 6):
            return Verdict.no()
        if len(head) < total:
            return more
        frame = head[:total]
        if frame[-2:] != STOP or not _crc_ok(frame):
            return Verdict.no()
        if frame[:4] in (b"\x78\x78\x0d\x01", b"\x78\x78\x11\x01") and is_bcd(frame[4:12]):
            return Verdict.match(95)
        return Verdict.match(90)

    def frame(self, buffer, transport):
        if buffer[:2] not in (SHORT, LONG):
            if len(buffer) == 1 and buffer[0] in (0x78, 0x79):
                return None, 0
            return None, _next_start(buffer)
        span = _span(buffer)
        if span is None:
            return None, 0
        total = span[0]
        if not total:
            return None, _next_start(buffer)
        if len(buffer) < total:
            # A header that is not one (a stray 78 78 in garbage) would hold
            # the stream for up to its length: not while a whole good frame
            # is already waiting behind it.
            inside = _good_frame_inside(buffer, len(buffer))
            return (None, inside) if inside is not None else (None, 0)
        frame = buffer[:total]
        if frame[-2:] != STOP:
            return None, _next_start(buffer)
        if not _crc_ok(frame):
            inside = _good_frame_inside(buffer, total)
            if inside is not None:
                return None, inside
        return frame, total

    def decode(self, frame, context):
        span = _span(frame)
        if span is None or span[0] != len(frame) or frame[-2:] != STOP:
            raise DecodeError("not a GT06 frame")
        header = span[1]
        length = _u(frame[2:header])
        kind = frame[header]
        content = frame[header + 1:-6]
        serial = _u(frame[-6:-4])
        long_frame = frame[:2] == LONG
        crc_error = not _crc_ok(frame)
        if crc_error and kind in (LOGIN, STRING_REPLY, LONG_STRING_REPLY):
            # A damaged IMEI would bind the session to a device that does not
            # exist, a damaged flag confirm another command: the device
            # repeats a login it gets no ack for.
            raise DecodeError(f"CRC-16/X-25 mismatch in a {kind:#04x} frame")

        device_id = None
        records: List[_Record] = []
        confirmations = []
        if kind == LOGIN:
            device_id = self._login(content, context)
        elif kind in _LOCATION:
            records.append(_location(kind, content))
        elif kind in _ALARM:
            records.append(_alarm(kind, content, length))
        elif kind in _LBS_ALARM:
            records.append(_lbs_alarm(kind, content))
        elif kind in _ADDRESS:
            records.append(_address(content))
        elif kind == 0x10:
            records.append(_gps_only(content))
        elif kind == 0x11:
            records.append(_gps_lbs(content))
        elif kind == MODULAR:
            records.append(_modular(content))
        elif kind == STRING_REPLY:
            confirmations.append(_string_reply(content, context))
        elif kind == LONG_STRING_REPLY and long_frame:
            confirmations.append(_long_string_reply(content, context))
        records = [r for r in records if r is not None]
        confirmations = [c for c in confirmations if c is not None]

        shift = self._zone(kind, context) if records else None
        positions = []
        for record in records:
            if shift is not None and record.time is not None:
                minutes, guessed = shift
                record.time -= timedelta(minutes=minutes)
                if guessed:
                    record.attributes["gt06.guessed"] = ["time_zone_from_login"]
            if crc_error:
                record.attributes["gt06.crc_error"] = True
            positions.append(record.position())
        return DecodeResult(device_id=device_id, records=positions,
                            reply=self._reply(kind, serial, long_frame, context),
                            confirmations=confirmations)

    def _login(self, content: bytes, context) -> str:
        """
        The terminal id (8 bytes BCD, IMEI behind one pad nibble); a 22-byte
        login adds a model code and a time-zone word (spec §4.1, §5).
        """
        if len(content) < 8:
            raise DecodeError("login without a terminal id")
        digits = bcd(content[:8])
        if not is_bcd(content[:8]):
            raise DecodeError(f"terminal id is not BCD: {digits}")
        device_id = digits[1:] if digits[0] == "0" else digits
        if len(content) >= 12:
            context.state["model"] = content[8:10].hex()
            zone = login_zone_minutes(_u(content[10:12]))
            if zone is not None:
                context.state["zone"] = zone
            else:
                context.state.pop("zone", None)
        return device_id

    def _zone(self, kind: int, context) -> Optional[Tuple[int, bool]]:
        """
        C{(minutes east of UTC, guessed)} for a frame whose time may be local:
        the C{gt06.timezone} setting, else the login's zone word (spec §5).
        A setting that is not a zone counts as none (C{settings_spec} refuses
        it at C{configure}; a stored one must not cost the device its records).
        """
        if kind not in _LOCAL_TIME:
            return None
        setting = context.setting("gt06.timezone")
        if setting:
            try:
                return _zone_minutes(setting), False
            except ValueError:
                pass
        zone = context.state.get("zone")
        return (zone, True) if zone else None

    def _reply(self, kind: int, serial: int, long_frame: bool, context) -> bytes:
        """
        What the device gets for a frame (spec §6.2): the time for 0x8A,
        nothing for 0x94 / address queries / long frames but 0x70, else the
        standard ack.
        """
        if kind == TIME_REQUEST:
            now = context.now()
            return frame_bytes(TIME_REQUEST, bytes([now.year % 100, now.month, now.day, now.hour,
                                                    now.minute, now.second]), serial)
        if kind in _NO_REPLY or (long_frame and kind != MODULAR):
            return b""
        return ack(kind, serial)

    def encode(self, command, context):
        try:
            style = _relay_style(context.setting("gt06.relay_style") or "relay")
            password = _password(context.setting("gt06.password") or "000000")
            language = _LANGUAGES[_language(context.setting("gt06.language") or "none")]
        except ValueError as e:
            raise EncodeError(f"bad gt06 setting: {e}") from None
        kind = command.type
        if kind in ("engine_stop", "engine_resume"):
            stop, resume = RELAY_STYLES[style]
            text = (stop if kind == "engine_stop" else resume).format(password=password)
        elif kind == "position_request":
            text = f"DWXX,{password}#" if style == "dyd" else "WHERE#"
        elif kind == "reboot":
            text = "RESET#"
        elif kind == "custom":
            text = _custom_text(command.params)
        else:
            raise EncodeError(f"gt06 has no {kind} command; use custom")
        flag = self._flag(command, context)
        token = f"{flag:08x}"
        sent = context.state.setdefault("sent", {})
        sent[token] = kind
        while len(sent) > _SENT_KEPT:
            del sent[next(iter(sent))]
        return EncodedCommand(command_frame(text.encode("ascii"), flag, flag & 0xFFFF, language),
                              token=token)

    def _flag(self, command, context) -> int:
        """
        The server flag the reply echoes: the command's id (low 32 bits), or a
        per-session counter for commands without one. Never 0, which devices
        that do not echo send.
        """
        if command.id is not None and command.id & 0xFFFFFFFF:
            return command.id & 0xFFFFFFFF
        counter = context.state.get("counter", 0xFFFF0000) + 1
        if counter > 0xFFFFFFFF:
            counter = 0xFFFF0001
        context.state["counter"] = counter
        return counter


def _custom_text(params) -> str:
    """
    One SMS-style command: printable ASCII, at most one C{#} and only at the
    end, short enough for one frame.
    """
    text = custom_command_bytes(params).decode("latin-1")
    if not text:
        raise EncodeError("custom command is empty")
    if not all(" " <= c <= "~" for c in text):
        raise EncodeError("custom command must be printable ASCII on one line")
    if "#" in text[:-1]:
        raise EncodeError("custom command holds '#' before its end: that would be several commands")
    if len(text) > MAX_COMMAND_TEXT:
        raise EncodeError(f"custom command longer than {MAX_COMMAND_TEXT} characters")
    return text


gt06 = Gt06Protocol()
