# -*- test-case-name: tests.test_queclink -*-
"""
Queclink @Track (GV / GL / GMT / GB / CV series; Traccar calls it C{gl200}).

One port carries three encodings, told apart frame by frame:

 - ASCII @Track, the default of every model:
   C{+RESP:GT<type>,<version>,<unique id>,...,<send time>,<count>$}; C{+BUFF:}
   is buffered history, C{+ACK:} a command reply or a heartbeat. No length,
   no checksum: a frame ends at the first C{$}.
 - HEX @Track (C{AT+GTHRM}): C{+RSP}/C{+EVT}/C{+INF}/C{+ACK}/C{+HBD}/... then
   a binary body, a CRC-16/CCITT-FALSE and C{0D 0A}; the length field exists
   only when the mask says so, so the CRC in front of a C{0D 0A} also
   delimits a frame.
 - new-generation frames C{2B 00 <length>} (reports) and C{2B 10 18}
   (heartbeats) ending with a CRC-8 and C{$}.

Positions in ASCII reports are found by the shape of their 12-field block,
never by field number: the fields around it differ per model and firmware.
The heartbeat C{+ACK:GTHBD} is always answered with C{+SACK:GTHBD,<version>,
<count>$}; other ASCII messages get C{+SACK:<count>$} only when the device is
configured for server acks (setting C{queclink.sack}). HEX and new-generation
frames get nothing: no reply to them is documented.
"""

from __future__ import annotations

import re
import struct
from datetime import timedelta
from typing import List, Optional, Sequence, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc8_nrsc5, crc16_ccitt_false
from gateway.encoding import custom_command_bytes
from gateway.fields import bits, check_coordinates, digits, unix_time, utc
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position

#: Longest frame of any variant; longer "frames" are garbage.
MAX_FRAME = 4096
#: Smallest HEX frame: header, a few fields, CRC and CR LF.
MIN_HEX = 24
#: New-generation reports are split by the device above this size.
MAX_NEWGEN = 1440
NEWGEN_HEARTBEAT = 24
#: Recent (device, type, count, send time) keys kept to drop resends.
RECENT = 256

_TEXT_HEADS = (b"+RESP:", b"+BUFF:", b"+ACK:", b"+QRY:")
_GT_HEADS = (b"+RESP:GT", b"+BUFF:GT", b"+ACK:GT")
#: HEX headers and where their length field is (offset, size).
_HEX_LENGTH = {
    b"+RSP": (9, 2), b"+BSP": (9, 2), b"+EVT": (9, 2), b"+BVT": (9, 2),
    b"+INF": (7, 2), b"+BNF": (7, 2), b"+ACK": (6, 1), b"+HBD": (5, 1),
    b"+CRD": (6, 2), b"+BRD": (6, 2), b"+LGN": (6, 2),
}
#: Where a frame of any variant may start inside garbage.
_START = re.compile(rb"\+(?:RESP:|BUFF:|ACK|QRY:|RSP|BSP|EVT|BVT|INF|BNF|HBD|CRD|BRD|LGN)"
                    rb"|[+\x2d]\x00|\+\x10\x18")
#: An ASCII header inside a binary frame still arriving: the binary frame was
#: cut off (binary fields never spell it out).
_TEXT_AHEAD = re.compile(rb"\+(?:RESP:GT|BUFF:GT|ACK:GT)")
#: A new frame header inside an unterminated text frame: the text was cut off.
_TEXT_RESTART = re.compile(rb"\+(?:RESP:GT|BUFF:GT|ACK:GT"
                           rb"|(?:RSP|BSP|EVT|BVT|INF|BNF|HBD)[\x00-\x1f\x7f-\xff])")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")

_VERSION = re.compile(r"(?:[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{4})?)?")
_UNIQUE_ID = re.compile(r"[0-9]{15}|[0-9A-Fa-f]{14}")
_LOOSE_ID = re.compile(r"[0-9A-Za-z]{6,20}")
_COUNT = re.compile(r"[0-9A-Fa-f]{4}")
_TIME14 = re.compile(r"[0-9]{14}")
_LONGITUDE = re.compile(r"-?[0-9]{1,3}\.[0-9]+")
_LATITUDE = re.compile(r"-?[0-9]{1,2}\.[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_TYPE = re.compile(r"GT[A-Z0-9]{3}")
_MILEAGE = re.compile(r"[0-9]{1,7}\.[0-9]")
_HOURS = re.compile(r"([0-9]{1,6}):([0-5][0-9]):([0-5][0-9])")
#: Motion state (16 tow, 1A fake tow, 11/12 ignition off rest/motion, 21/22
#: ignition on, 41/42 without an ignition signal), inputs, outputs.
_DEVICE_STATUS = re.compile(r"(1[126A]|2[12]|4[12])([0-9A-Fa-f]{2})([0-9A-Fa-f]{2})")
_NEWGEN_ACK = re.compile(r"\+(?:ACK|QRY):[A-Z]{2,5}")
_PASSWORD = re.compile(r"[0-9A-Za-z]{4,6}")
_CUSTOM = re.compile(r"AT[+@][A-Z0-9]{2,8}=[\x20-\x23\x25-\x7e]*\$?")

#: Alarms that depend only on the message type (spec section 8).
_ALARMS = {
    "GTSOS": "sos", "GTBPL": "low_battery", "GTMPF": "power_cut", "GTEPF": "power_cut",
    "GTMPN": "power_restored", "GTEPN": "power_restored", "GTJDR": "jamming",
    "GTCRA": "accident", "GTTEM": "temperature", "GTTMP": "temperature", "GTIDN": "idle",
    "GTTOW": "movement",
}
_HARSH = {"0": "harsh_braking", "1": "harsh_acceleration", "2": "harsh_cornering"}
_IGNITION = {"GTIGN": True, "GTVGN": True, "GTIGF": False, "GTVGF": False}
#: GTRTO sub-command names in acks, and the command they answer.
_RTO_TYPES = {"RTL": "position_request", "REBOOT": "reboot"}

#: HEX +RSP message types (spec 6.1) and +EVT types (6.2) as ASCII names.
_RSP_TYPES = {0x03: "LBC", 0x07: "FRI", 0x08: "GEO", 0x64: "FRI"}
_EVT_TYPES = {6: "BPL", 15: "UPD", 17: "IDF", 21: "GSS", 23: "CRA", 26: "GES", 31: "GPJ",
              33: "JDS", 34: "UPC", 35: "RMD", 45: "VGN", 46: "VGF"}
#: Bytes between the satellites byte and Number in +EVT frames (Traccar).
_EVT_EXTRA = {"BPL": 2, "VGN": 7, "VGF": 7, "UPD": 3, "IDF": 4, "GSS": 5, "GES": 12, "GPJ": 2,
              "RMD": 1, "JDS": 1, "CRA": 1, "UPC": 3}
#: The +RSP/+EVT mask of the only layout known byte for byte (bit 6, "unique
#: id is the device name", may differ).
_KNOWN_MASK = 0x00FC1FFF
_NAME_BIT = 0x40
_HEX_POSITION = struct.Struct(">B3sHhiiHBBBBBHHHHB")


def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


# -- framing -------------------------------------------------------------------

def _hex_crc_ok(buf: bytes, end: int) -> bool:
    return end >= MIN_HEX and buf[end - 2:end] == b"\r\n" and \
        crc16_ccitt_false(buf[4:end - 4]) == _u16(buf, end - 4)


def _hex_has_length(buf: bytes) -> Optional[bool]:
    """
    Whether the mask of the HEX frame at the start of C{buf} announces a length
    field; L{None} while the mask has not arrived.
    """
    head = buf[:4]
    if head in (b"+RSP", b"+BSP", b"+EVT", b"+BVT"):
        return None if len(buf) < 9 else bool(buf[8] & 0x80)
    if head in (b"+INF", b"+BNF"):
        return None if len(buf) < 7 else bool(buf[6] & 0x01)
    if head == b"+HBD":
        return None if len(buf) < 5 else bool(buf[4] & 0x01)
    return True


def _hex_size(buf: bytes, final: bool) -> int:
    """
    Size of the HEX frame at the start of C{buf}: C{> 0}; C{0} when more bytes
    are needed; C{-1} when no frame starts there.

    A length field is believed when the CRC in front of the C{0D 0A} it points
    at holds; otherwise, and when there is no length field, the first C{0D 0A}
    with a matching CRC in front ends the frame (binary fields may hold
    C{0D 0A}).
    """
    has_length = _hex_has_length(buf)
    if has_length is None:
        return -1 if final else 0
    certain = None
    if has_length:
        at, size = _HEX_LENGTH[buf[:4]]
        if len(buf) < at + size:
            return -1 if final else 0
        length = int.from_bytes(buf[at:at + size], "big")
        if MIN_HEX <= length <= MAX_FRAME:
            if len(buf) < length and not final:
                return -1 if _TEXT_AHEAD.search(buf, 1) else 0
            if _hex_crc_ok(buf, length):
                return length
            certain = len(buf) >= length
    end = buf.find(b"\r\n", MIN_HEX - 2, MAX_FRAME)
    while end >= 0:
        if _hex_crc_ok(buf, end + 2):
            return end + 2
        end = buf.find(b"\r\n", end + 1, MAX_FRAME)
    if certain or final or len(buf) >= MAX_FRAME or _TEXT_AHEAD.search(buf, 1):
        return -1
    return 0


def _newgen_size(buf: bytes, final: bool) -> int:
    """
    Size of the new-generation frame at the start of C{buf}, as L{_hex_size}.
    """
    if len(buf) < 4:
        return -1 if final else 0
    if buf[1] == 0x10:
        if buf[2] != NEWGEN_HEARTBEAT:
            return -1
        size = NEWGEN_HEARTBEAT
    else:
        size = _u16(buf, 2)
        if not NEWGEN_HEARTBEAT <= size <= MAX_NEWGEN:
            return -1
    if len(buf) < size:
        return -1 if final or _TEXT_AHEAD.search(buf, 1) else 0
    if buf[size - 1] != 0x24 or crc8_nrsc5(buf[:size - 2]) != buf[size - 2]:
        return -1
    return size


def _text_size(buf: bytes, final: bool) -> int:
    """
    Size of the ASCII frame at the start of C{buf}, as L{_hex_size}. A UDP
    datagram (C{final}) without its C{$} is taken whole.
    """
    end = buf.find(b"$", 1, MAX_FRAME)
    body = buf[:end] if end >= 0 else buf[:MAX_FRAME]
    printable = _PRINTABLE.match(body).end()
    restart = _TEXT_RESTART.search(body, 1)
    if restart is not None and restart.start() <= printable:
        return -1
    if printable < len(body):
        return -1
    if end >= 0:
        return end + 1
    if final:
        return len(body) if len(body) > 8 else -1
    return -1 if len(buf) >= MAX_FRAME else 0


def _kind(buf: bytes) -> Optional[str]:
    """
    Which variant a frame starting at C{buf} is: C{'text'}, C{'hex'},
    C{'newgen'}, C{''} when too few bytes tell, L{None} for none.
    """
    if buf[:1] not in (b"+", b"-"):
        return None
    if len(buf) >= 2 and buf[1] == 0x00:
        return "newgen"
    if buf[:1] == b"-":
        return None if len(buf) >= 2 else ""
    if len(buf) >= 2 and buf[1] == 0x10:
        return "newgen" if len(buf) < 3 or buf[2] == NEWGEN_HEARTBEAT else None
    for head in _TEXT_HEADS:
        if buf.startswith(head):
            return "text"
    head = buf[:4]
    if head in _HEX_LENGTH:
        if head == b"+ACK":
            if len(buf) < 5:
                return ""
            return "text" if buf[4] == 0x3A else "hex"
        return "hex"
    prefixes = _TEXT_HEADS + tuple(_HEX_LENGTH)
    if any(p.startswith(buf) for p in prefixes):
        return ""
    return None


def _frame_size(buf: bytes, final: bool) -> int:
    kind = _kind(buf)
    if kind is None:
        return -1
    if kind == "":
        return -1 if final else 0
    if kind == "text":
        return _text_size(buf, final)
    if kind == "hex":
        return _hex_size(buf, final)
    return _newgen_size(buf, final)


# -- shared field readers ------------------------------------------------------

def _number(text: str) -> Optional[float]:
    """
    A number from a text field; L{None} when empty or not a number (C{nan}
    appears in real frames).
    """
    return float(text) if _NUMBER.fullmatch(text) else None


def _time14(text: str):
    # YYYYMMDDhhmmss, fourteen ASCII digits (_TIME14 matched them): one
    # number cut by divmod rather than six slices.
    rest, second = divmod(int(text), 100)
    rest, minute = divmod(rest, 100)
    rest, hour = divmod(rest, 100)
    rest, day = divmod(rest, 100)
    year, month = divmod(rest, 100)
    return utc(year, month, day, hour, minute, second)


def _hex_unique_id(data: bytes, is_name: Optional[bool]) -> str:
    """
    A HEX unique id: the IMEI as decimal digit pairs, or the device name
    (spec section 4 and section 0 rule 8). C{is_name} is the mask's say, or
    L{None} when no mask bit tells.
    """
    if is_name is None:
        is_name = any(b > 99 for b in data[:7]) or data[7] > 9
    if not is_name:
        if any(b > 99 for b in data[:7]) or data[7] > 9:
            raise DecodeError(f"unique id {data.hex()} is not an IMEI in digit pairs")
        return "".join("%02d" % b for b in data[:7]) + str(data[7])
    name = data.split(b"\0", 1)[0]
    if not name or _PRINTABLE.fullmatch(name) is None or b" " in name:
        raise DecodeError(f"unique id {data.hex()} is not a device name")
    return name.decode("ascii")


def _decimal_hex(value: int, guessed: List[str], name: str) -> int:
    """
    MCC / MNC written as decimal digits in hex nibbles (C{04 60} is 460); a
    nibble above 9 keeps the plain value and says so (spec section 0 rule 6).
    """
    text = "%04x" % value
    if text.isdigit():
        return int(text)
    guessed.append(name)
    return value


def _sack(context, device_id: str, count: str) -> bytes:
    """
    C{+SACK:<count>$} when the device is configured to wait for server acks.
    """
    try:
        wanted = _flag(context.setting("queclink.sack", "0", device_id=device_id) or "0") == "1"
    except ValueError:
        wanted = False
    return f"+SACK:{count}$".encode("ascii") if wanted and _COUNT.fullmatch(count) else b""


class _Recent:
    """
    The (device, type, count, send time) keys seen lately in a session: a
    device that did not get its server ack sends the same message again.
    """

    def __init__(self):
        self.keys = {}

    def seen(self, key) -> bool:
        if key in self.keys:
            return True
        self.keys[key] = None
        if len(self.keys) > RECENT:
            del self.keys[next(iter(self.keys))]
        return False


# -- ASCII ---------------------------------------------------------------------

def _is_block(fields: Sequence[str], i: int) -> bool:
    # GTOBD may end the block after the UTC time (its mask drops the cell).
    return (i + 6 < len(fields) and _LONGITUDE.fullmatch(fields[i + 4]) is not None
            and _LATITUDE.fullmatch(fields[i + 5]) is not None
            and _TIME14.fullmatch(fields[i + 6]) is not None)


def _is_empty_block(fields: Sequence[str], i: int) -> bool:
    # A block the device filled without ever having had a fix.
    return (not fields[i + 4] and not fields[i + 5]
            and (not fields[i + 6] or _TIME14.fullmatch(fields[i + 6]) is not None))


def _blocks(fields: Sequence[str], end: int) -> Tuple[int, List[int]]:
    """
    Where the position blocks are among C{fields[:end]}: the index of the
    first block (or -1) and the indexes of the blocks holding coordinates.

    Block 1 is the first place the longitude, latitude and UTC time fields
    look right; more follow every 12 fields while they do, or while the
    C{<Number>} field before block 1 says more are there.
    """
    fields = fields[:end]
    for first in range(4, len(fields) - 6):
        if _is_block(fields, first):
            break
    else:
        return -1, []
    number = fields[first - 1]
    # <Number> is 1-15; any other field there announces nothing.
    announced = int(number) if digits(number) and int(number) <= 15 else 1
    found = []
    at = first
    while at + 6 < len(fields):
        if _is_block(fields, at):
            found.append(at)
        elif not ((at - first) // 12 < announced and at + 11 < len(fields)
                  and _is_empty_block(fields, at)):
            break
        at += 12
    return first, found


def _ascii_alarm(kind: str, fields: Sequence[str], first: int) -> List[str]:
    alarms = []
    if kind in _ALARMS:
        alarms.append(_ALARMS[kind])
    report = fields[first - 2] if first >= 6 else ""
    if kind == "GTSPD" and report[-1:] == "0":
        alarms.append("overspeed")
    elif kind == "GTHBM" and report[-1:] in _HARSH:
        alarms.append(_HARSH[report[-1:]])
    elif kind == "GTGEO" and report[-1:] in ("0", "1"):
        alarms.append("geofence_enter" if report[-1:] == "1" else "geofence_exit")
    elif kind == "GTJDS" and first >= 5 and fields[first - 1] == "2":
        alarms.append("jamming")
    return alarms


def _ascii_block(fields: Sequence[str], at: int, kind: str, alarms, attributes) -> Optional[Position]:
    accuracy = _number(fields[at])
    longitude, latitude = float(fields[at + 4]), float(fields[at + 5])
    try:
        check_coordinates(latitude, longitude)
        time = _time14(fields[at + 6])
    except DecodeError:
        return None
    attributes = dict(attributes)
    if accuracy:
        attributes["hdop"] = accuracy
    mcc, mnc, lac, cell = (list(fields[at + 7:at + 11]) + ["", "", "", ""])[:4]
    if digits(mcc) and digits(mnc):
        attributes["mcc"], attributes["mnc"] = int(mcc), int(mnc)
    if _HEX.fullmatch(lac) and _HEX.fullmatch(cell) and len(lac) <= 8 and len(cell) <= 8:
        attributes["lac"], attributes["cell_id"] = int(lac, 16), int(cell, 16)
    return Position(time, latitude, longitude, bool(accuracy and accuracy > 0),
                    _number(fields[at + 1]), _number(fields[at + 2]), _number(fields[at + 3]),
                    alarms, kind[2:], attributes)


def _tail(kind: str, tail: Sequence[str]) -> dict:
    """
    What the fields after the last block say, read only where the vendor
    documents put them (GV300 / GV55 / GMT100 family, spec section 5.5):
    C{<mileage>,<hour meter>,<analog…>,<battery %>,<device status>} after
    reports, C{<hour meter>,<mileage>} after ignition reports. Models that
    put other fields first simply do not match. They belong to the message:
    the caller puts them on its last record.
    """
    out: dict = {}
    hours, mileage = (0, 1) if kind in ("GTIGN", "GTIGF", "GTVGN", "GTVGF") else (1, 0)
    if len(tail) > mileage and _MILEAGE.fullmatch(tail[mileage]):
        out["odometer_m"] = round(float(tail[mileage]) * 1000)
    if len(tail) > hours:
        m = _HOURS.fullmatch(tail[hours])
        if m:
            out["engine_hours_s"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
    if "odometer_m" not in out:
        return out
    for at in range(2, min(len(tail), 8)):
        state = _DEVICE_STATUS.fullmatch(tail[at])
        if state is None:
            continue
        motion, inputs, outputs = state.group(1), state.group(2), state.group(3)
        if motion[0] in "12":
            out["ignition"] = motion[0] == "2"
        if motion[1] in "12":
            out["motion"] = motion[1] == "2"
        out["inputs"], out["outputs"] = int(inputs, 16), int(outputs, 16)
        battery = tail[at - 1]
        if digits(battery) and int(battery) <= 100:
            out["battery_level_pct"] = int(battery)
        break
    return out


# -- HEX -----------------------------------------------------------------------

def _hex_position(frame: bytes, at: int, event: str, alarms, attributes) -> Position:
    (accuracy, speed, course, altitude, lon, lat, year, month, day, hour, minute, second,
     mcc, mnc, lac, cell, _) = _HEX_POSITION.unpack_from(frame, at)
    time = utc(year, month, day, hour, minute, second)
    latitude, longitude = lat / 1e6, lon / 1e6
    check_coordinates(latitude, longitude)
    guessed: List[str] = []
    if any(speed):
        # Whole km/h then tenths (spec section 0 rule 5): not yet confirmed by a
        # frame with a known speed.
        guessed.append("speed_kmh")
    attributes = dict(attributes)
    attributes["mcc"] = _decimal_hex(mcc, guessed, "mcc")
    attributes["mnc"] = _decimal_hex(mnc, guessed, "mnc")
    attributes["lac"], attributes["cell_id"] = lac, cell
    if accuracy:
        attributes["hdop"] = accuracy
    if guessed:
        attributes["queclink.guessed"] = guessed
    return Position(
        time=time, latitude=latitude, longitude=longitude, valid=accuracy > 0,
        speed_kmh=_u16(speed, 0) + speed[2] / 10.0, course=course, altitude_m=altitude,
        alarm=alarms, event=event, attributes=attributes)


def _signed(value: int, width: int) -> int:
    return value - (1 << width) if value & (1 << (width - 1)) else value


def _compressed(frame: bytes, end: int, attributes) -> List[Position]:
    """
    The points of a compressed +RSP report (type 0x64, spec section 0 rule 4):
    full points, deltas against the point before, one-byte fillers; each
    point 1 s after the one before it.
    """
    count = _u16(frame, 29)
    at = 31
    points = []
    speed = course = lon = lat = None
    start = None
    for index in range(count):
        if at >= end:
            raise DecodeError("compressed report ends inside its points")
        form = frame[at] >> 6
        if form == 1:
            field = int.from_bytes(frame[at:at + 3], "big")
            speed, course = bits(field, 9, 12), bits(field, 0, 9)
            lon, lat = struct.unpack_from(">ii", frame, at + 3)
            at += 11
            if start is None:
                start = unix_time(struct.unpack_from(">I", frame, at)[0]) - timedelta(seconds=index)
                at += 4
        elif form == 2:
            field = int.from_bytes(frame[at:at + 5], "big")
            at += 5
            if start is None:
                continue
            speed += _signed(bits(field, 30, 7), 7)
            course = (course + _signed(bits(field, 23, 7), 7)) % 360
            lon += _signed(bits(field, 11, 12), 12)
            lat += _signed(bits(field, 0, 11), 11)
        else:
            at += 1
            continue
        check_coordinates(lat / 1e6, lon / 1e6)
        points.append((start + timedelta(seconds=index), lat / 1e6, lon / 1e6, speed, course))
    # The Traccar reading the spec settles is not the vendor's: say so.
    guessed = ["compressed_points"]
    attributes = dict(attributes)
    if at + 9 <= end:
        attributes["mcc"] = _decimal_hex(_u16(frame, at), guessed, "mcc")
        attributes["mnc"] = _decimal_hex(_u16(frame, at + 2), guessed, "mnc")
        attributes["lac"], attributes["cell_id"] = _u16(frame, at + 4), _u16(frame, at + 6)
    attributes["queclink.guessed"] = guessed
    return [Position(time=time, latitude=latitude, longitude=longitude, valid=True,
                     speed_kmh=speed / 10.0, course=course, event="FRI",
                     attributes=dict(attributes))
            for time, latitude, longitude, speed, course in points]


# -- new generation ------------------------------------------------------------

def _varlen(data: bytes, at: int) -> Tuple[int, int]:
    """
    A 1- or 2-byte length or id (spec section 0 rule 3): the value and the
    offset after it.
    """
    if data[at] & 0x80:
        return _u16(data, at) & 0x7FFF, at + 2
    return data[at], at + 1


def _newgen_imei(data: bytes) -> str:
    text = data.hex()
    return text[1:] if text.startswith("0") and text[1:].isdigit() else text.upper()


def _gnss(content: bytes, event: str, attributes) -> Optional[Position]:
    if len(content) < 22:
        return None
    fix = content[0]
    lon, lat, seconds, speed, hdop, course = struct.unpack_from(">iiIHBH", content, 1)
    altitude = _signed(int.from_bytes(content[18:21], "big"), 24)
    latitude, longitude = lat / 1e6, lon / 1e6
    check_coordinates(latitude, longitude)
    attributes = dict(attributes, satellites=content[21], hdop=hdop / 10.0)
    return Position(
        time=unix_time(seconds), latitude=latitude, longitude=longitude,
        valid=(fix >> 2) & 0x3 == 2, speed_kmh=speed / 10.0, course=course,
        altitude_m=altitude / 10.0, event=event, attributes=attributes)


# -- validators of per-device settings -----------------------------------------

def _flag(text: str) -> str:
    text = text.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return "1"
    if text in ("0", "false", "no", "off", ""):
        return "0"
    raise ValueError("must be 1 (the device wants +SACK acks) or 0")


def _password(text: str) -> str:
    text = text.strip()
    if text and not _PASSWORD.fullmatch(text):
        raise ValueError("a Queclink password is 4-6 letters or digits")
    return text


def _output(text: str) -> str:
    text = text.strip()
    if text not in ("1", "2", "3", "4"):
        raise ValueError("the immobiliser output is 1, 2, 3 or 4")
    return text


@implementer(IPlugin, IDecoder, ICommandEncoder)
class QueclinkProtocol:
    name = "queclink"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "reboot", "custom"})
    settings_spec = {
        "queclink.sack": _flag,
        "queclink.password": _password,
        "queclink.output": _output,
    }

    # -- detection ----------------------------------------------------------

    def detect(self, head: bytes, transport: str) -> Verdict:
        partial = transport == "tcp"
        kind = _kind(head)
        if kind is None:
            return Verdict.no()
        if kind == "":
            return Verdict.more() if partial else Verdict.no()
        if kind == "text":
            return self._detect_text(head, _text_size(head, final=not partial), partial)
        size = _frame_size(head, final=not partial)
        if size < 0:
            return Verdict.no()
        if size == 0:
            return Verdict.more()
        # A CRC (16 bits for HEX, 8 for new-generation) and the header.
        return Verdict.match(90 if kind == "hex" else 80)

    @staticmethod
    def _detect_text(head: bytes, size: int, partial: bool) -> Verdict:
        """
        Judge an ASCII head by its grammar. C{size} is what the framer says of
        it: a first frame that another frame's header cuts short is judged
        by what arrived of it.
        """
        complete = size > 0
        if complete:
            head = head[:size]
        else:
            cut = _TEXT_RESTART.search(head, 1)
            if size < 0 and cut is None:
                return Verdict.no()
            head = head[:cut.start()] if cut else head[:MAX_FRAME]
            if _PRINTABLE.fullmatch(head) is None:
                return Verdict.no()
        wait = partial and size == 0
        text = head.decode("ascii")
        fields = text.rstrip("$").split(",")
        if _NEWGEN_ACK.fullmatch(fields[0]) and not text.startswith(_GT_HEADS[2].decode()):
            if len(fields) < 3:
                return Verdict.more() if wait else Verdict.no()
            return Verdict.match(60) if digits(fields[1]) and len(fields[1]) == 15 else Verdict.no()
        if not head.startswith(_GT_HEADS):
            if wait and any(h.startswith(head) for h in _GT_HEADS):
                return Verdict.more()
            return Verdict.no()
        # Field 1 tells this protocol (a version) from the legacy GL100 one
        # (an IMEI there).
        if len(fields) < 3 or (not complete and len(fields) < 4):
            return Verdict.more() if wait else Verdict.no()
        if not _TYPE.fullmatch(fields[0].split(":", 1)[1]) or not _VERSION.fullmatch(fields[1]) \
                or not _UNIQUE_ID.fullmatch(fields[2]):
            return Verdict.no()
        if not complete:
            return Verdict.match(60)
        if len(fields) >= 5 and text.endswith("$") and _COUNT.fullmatch(fields[-1]) \
                and (not fields[-2] or _TIME14.fullmatch(fields[-2])):
            return Verdict.match(90)
        return Verdict.match(50)

    # -- framing --------------------------------------------------------------

    def frame(self, buffer: bytes, transport: str):
        at = 0
        while at < len(buffer) and buffer[at] in b"\r\n\x00 ":
            at += 1
        if at:
            return b"", at
        size = _frame_size(buffer, final=transport == "udp")
        if size > 0:
            return buffer[:size], size
        if size == 0:
            return None, 0
        m = _START.search(buffer, 1)
        return None, m.start() if m else len(buffer)

    # -- decoding -------------------------------------------------------------

    def decode(self, frame: bytes, context) -> DecodeResult:
        kind = _kind(frame)
        try:
            if kind == "text":
                return self._text(frame, context)
            if kind == "hex":
                return self._hex(frame, context)
            if kind == "newgen":
                return self._newgen(frame, context)
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            raise DecodeError(f"malformed Queclink frame: {e}") from e
        raise DecodeError("not a Queclink frame")

    @staticmethod
    def _fresh(context, key) -> bool:
        recent = context.state.get("recent")
        if recent is None:
            recent = context.state["recent"] = _Recent()
        return not recent.seen(key)

    def _text(self, frame: bytes, context) -> DecodeResult:
        if _PRINTABLE.fullmatch(frame) is None:
            raise DecodeError("ASCII frame holds bytes that are not printable")
        text = frame.decode("ascii")
        fields = (text[:-1] if text.endswith("$") else text).split(",")
        head, _, kind = fields[0].partition(":")
        if _NEWGEN_ACK.fullmatch(fields[0]) and not kind.startswith("GT"):
            # A new-generation device answering an AT@ command.
            if len(fields) < 2 or not _LOOSE_ID.fullmatch(fields[1]):
                raise DecodeError(f"{fields[0]} without an IMEI")
            return DecodeResult(device_id=fields[1])
        if not _TYPE.fullmatch(kind) or len(fields) < 5:
            raise DecodeError(f"not an @Track message: {text[:24]!r}")
        device_id = fields[2]
        if not _LOOSE_ID.fullmatch(device_id):
            raise DecodeError(f"bad unique id {device_id[:24]!r}")
        count, send_time = fields[-1], fields[-2]
        if head == "+ACK":
            return self._text_ack(kind, fields, device_id, context)
        reply = _sack(context, device_id, count)
        if send_time and not self._fresh(context, (device_id, kind, count, send_time)):
            return DecodeResult(device_id=device_id, reply=reply)
        attributes = {"queclink.protocol_version": fields[1]}
        if _COUNT.fullmatch(count):
            attributes["index"] = int(count, 16)
        if send_time:
            attributes["queclink.send_time"] = send_time
        if head == "+BUFF":
            attributes["archive"] = True
        if kind in _IGNITION:
            attributes["ignition"] = _IGNITION[kind]
        first, blocks = _blocks(fields, len(fields) - 2)
        alarms = _ascii_alarm(kind, fields, first)
        if kind == "GTIDA" and len(fields) > 5 and fields[5]:
            attributes["driver_id"] = fields[5]
        tail = _tail(kind, fields[blocks[-1] + 12:len(fields) - 2]) if blocks else {}
        records = [r for r in (_ascii_block(fields, at, kind, alarms,
                                            {**attributes, **tail} if at == blocks[-1] else attributes)
                               for at in blocks)
                   if r is not None]
        if not records and alarms:
            records = [Position(time=None, alarm=alarms, event=kind[2:], attributes=attributes)]
        return DecodeResult(device_id=device_id, records=records, reply=reply)

    @staticmethod
    def _text_ack(kind: str, fields: Sequence[str], device_id: str, context) -> DecodeResult:
        count = fields[-1]
        if kind == "GTHBD":
            # Answered whatever the SACK setting: a heartbeat left unanswered
            # makes the device drop the connection.
            reply = f"+SACK:GTHBD,{fields[1]},{count}$".encode("ascii")
            return DecodeResult(device_id=device_id, reply=reply)
        reply = _sack(context, device_id, count)
        serial = fields[-3] if len(fields) >= 7 else ""
        confirmations = ()
        if _COUNT.fullmatch(serial):
            command_type = None
            if kind == "GTRTO" and len(fields) >= 8:
                command_type = _RTO_TYPES.get(fields[-4].upper())
            confirmations = (Confirmation(token=serial.upper(), reply=",".join(fields) + "$",
                                          command_type=command_type),)
        return DecodeResult(device_id=device_id, reply=reply, confirmations=confirmations)

    def _hex(self, frame: bytes, context) -> DecodeResult:
        if not _hex_crc_ok(frame, len(frame)):
            raise DecodeError("HEX frame fails its CRC-16")
        head = frame[:4]
        if head in (b"+RSP", b"+BSP", b"+EVT", b"+BVT"):
            return self._hex_report(frame, context)
        if head in (b"+INF", b"+BNF"):
            at = 9 if frame[6] & 0x01 else 7
            return DecodeResult(device_id=_hex_unique_id(frame[at:at + 8], bool(frame[6] & 0x02)))
        if head == b"+ACK":
            return self._hex_ack(frame)
        if head == b"+HBD":
            return DecodeResult(device_id=self._hbd_id(frame))
        raise DecodeError(f"{head.decode()} frame: its layout is not documented, skipped")

    @staticmethod
    def _hbd_id(frame: bytes) -> Optional[str]:
        mask = frame[4]
        at = 5 + (mask & 0x01) + (mask >> 1 & 1) + 2 * (mask >> 2 & 1) + 2 * (mask >> 3 & 1)
        if not mask & 0x80 or at + 8 > len(frame) - 4:
            return None
        return _hex_unique_id(frame[at:at + 8], bool(mask & 0x10))

    @staticmethod
    def _hex_ack(frame: bytes) -> DecodeResult:
        if len(frame) < 36:
            raise DecodeError(f"HEX +ACK of {len(frame)} bytes, not 36")
        device_id = _hex_unique_id(frame[12:20], None)
        serial = "%04X" % _u16(frame, 21)
        reply = f"+ACK type 0x{frame[4]:02X} serial {serial}"
        return DecodeResult(device_id=device_id,
                            confirmations=(Confirmation(token=serial, reply=reply),))

    def _hex_report(self, frame: bytes, context) -> DecodeResult:
        head, code, mask = frame[:4], frame[4], struct.unpack_from(">I", frame, 5)[0]
        if mask | _NAME_BIT != _KNOWN_MASK:
            raise DecodeError(f"{head.decode()} mask {mask:08X}: field layout unknown, skipped")
        device_id = _hex_unique_id(frame[16:24], bool(mask & _NAME_BIT))
        end = len(frame) - 13
        send_time, count = frame[end:end + 7], _u16(frame, end + 7)
        if not self._fresh(context, (device_id, head, code, count, send_time)):
            return DecodeResult(device_id=device_id)
        report = head in (b"+RSP", b"+BSP")
        names = _RSP_TYPES if report else _EVT_TYPES
        event = names.get(code, f"0x{code:02X}")
        attributes = {"index": count, "battery_level_pct": frame[24],
                      "power_v": _u16(frame, 25) / 1000.0,
                      "queclink.protocol_version": "%02X%04X" % (frame[11], _u16(frame, 12))}
        if head in (b"+BSP", b"+BVT"):
            attributes["archive"] = True
        at = 27 + (2 if report and code == 0x08 else 0)
        attributes["satellites"] = frame[at + 1]
        if report and code == 0x64:
            return DecodeResult(device_id=device_id, records=_compressed(frame, end, attributes))
        at += 2
        alarms: List[str] = []
        if report:
            report_type = frame[at] & 0x0F
            at += 1
            if code == 0x03:
                at = self._skip_phone(frame, at)
            elif code == 0x08 and report_type in (0, 1):
                alarms.append("geofence_enter" if report_type == 1 else "geofence_exit")
        else:
            at += _EVT_EXTRA.get(event, 0)
            alarms += [a for a in (_ALARMS.get("GT" + event),) if a]
            if event in ("VGN", "VGF"):
                attributes["ignition"] = event == "VGN"
        number = frame[at]
        at += 1
        if at + 32 * number > end:
            raise DecodeError(f"{number} positions do not fit the frame")
        records = [_hex_position(frame, at + 32 * n, event, alarms, attributes)
                   for n in range(number)]
        return DecodeResult(device_id=device_id, records=records)

    @staticmethod
    def _skip_phone(frame: bytes, at: int) -> int:
        # A number-type byte, then packed BCD up to the byte with the F filler.
        at += 1
        for n in range(at, min(at + 12, len(frame))):
            if (frame[n] >> 4) == 0xF or (frame[n] & 0x0F) == 0xF:
                return n + 1
        raise DecodeError("GTLBC phone number without its F filler")

    def _newgen(self, frame: bytes, context) -> DecodeResult:
        if frame[1] == 0x10:
            return DecodeResult(device_id=_newgen_imei(frame[3:11]))
        at = 5 + (2 if frame[4] & 0x80 else 0)
        device_id = _newgen_imei(frame[at:at + 8])
        at += 8 + 2 + 2 + 1
        at += 1 + frame[at]
        end = len(frame) - 4
        records = []
        attributes = {"index": _u16(frame, end)}
        while at < end:
            size, body = _varlen(frame, at)
            record_end = at + size
            if body + 8 > record_end or record_end > end:
                raise DecodeError(f"record of {size} bytes does not fit the frame")
            generated, number, record_id, event_code = struct.unpack_from(">IHBB", frame, body)
            item = body + 8
            event = f"{record_id:02X}:{event_code:02X}"
            while item < record_end:
                item_id, item = _varlen(frame, item)
                length, item = _varlen(frame, item)
                if item + length > record_end:
                    attributes["queclink.truncated_item"] = item_id
                    break
                if item_id == 0x52:
                    position = _gnss(frame[item:item + length], event, attributes)
                    if position is not None:
                        records.append(position)
                item += length
            at = record_end
        return DecodeResult(device_id=device_id, records=records)

    # -- commands -------------------------------------------------------------

    def encode(self, command, context) -> EncodedCommand:
        params = command.params or {}
        kind = command.type
        if kind == "custom":
            return self._custom(params)
        password = params.get("password")
        if password is None:
            password = context.setting("queclink.password", "", device_id=command.device_id)
        try:
            password = _password(str(password))
        except ValueError as e:
            raise EncodeError(str(e)) from e
        serial = self._serial(command, context)
        if kind in ("engine_stop", "engine_resume"):
            try:
                output = int(_output(context.setting("queclink.output", "1",
                                                     device_id=command.device_id)))
            except ValueError as e:
                raise EncodeError(str(e)) from e
            values = ["0"] * 10 + [""] * 6
            # The chosen output gets its status and an empty duration and
            # toggle count: held on (wave shape 1), as Traccar sends output 1.
            slot = 3 * (output - 1)
            values[slot:slot + 3] = ["1" if kind == "engine_stop" else "0", "", ""]
            text = f"AT+GTOUT={password},{','.join(values)},{serial}$"
        elif kind == "position_request":
            text = f"AT+GTRTO={password},1,,,,,,{serial}$"
        elif kind == "reboot":
            text = f"AT+GTRTO={password},3,,,,,,{serial}$"
        else:
            raise EncodeError(f"queclink has no {kind} command")
        return EncodedCommand(text.encode("ascii"), token=serial)

    @staticmethod
    def _serial(command, context) -> str:
        """
        The serial number the device echoes in its +ACK: the command's id,
        so two commands in flight never share one (ids 65536 apart would).
        """
        if command.id is not None:
            return "%04X" % (command.id & 0xFFFF)
        number = context.state.get("serial", 0) + 1
        context.state["serial"] = number
        return "%04X" % (number & 0xFFFF)

    @staticmethod
    def _custom(params) -> EncodedCommand:
        text = custom_command_bytes(params).decode("latin-1")
        if not _CUSTOM.fullmatch(text):
            raise EncodeError("custom must be one AT+GT<CMD>=...$ (or AT@<CMD>=...$) command, "
                              "printable, with no '$' before its end")
        if not text.endswith("$"):
            text += "$"
        serial = text[:-1].rsplit(",", 1)[-1]
        token = serial.upper() if "," in text and _COUNT.fullmatch(serial) else None
        return EncodedCommand(text.encode("ascii"), token=token, expects_reply=token is not None)


queclink = QueclinkProtocol()
