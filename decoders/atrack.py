# -*- test-case-name: tests.test_atrack -*-
"""
ATrack report protocol (AL7 and the rest of ATrack's AK/AL/AS/AT/AX/AY range).

One TCP stream or UDP datagram mixes four kinds of message:

 - 12-byte keep-alives C{FE 02 <unit id U64> <seq U16>}, echoed back;
 - binary reports C{<prefix 2> <CRC-16/ARC 2> <length 2> <seq 2> <unit id 8>
   <records...>};
 - ASCII reports C{<prefix>,<CRC hex4>,<length>,<seq>,<unit id>,<records>};
 - C{$...} lines answering C{AT$...} commands.

Both report kinds are acknowledged with the 12-byte keep-alive layout carrying
the report's unit id and sequence number; the device sends nothing new until
then. The two-byte prefix is configurable on the device, so frames are told
apart by structure and CRC, never by the prefix. Records may end with
"custom info" fields whose layout only the device's C{AT$FORM} string tells:
in band (C{%CI}), from a C{$FORM} reply, or from the device's settings (see
L{ATrackProtocol._binary_layout} for what happens when none is known).
"""

from __future__ import annotations

import base64
import re
import struct
from datetime import datetime
from typing import List, Optional, Sequence, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc16_arc, luhn_valid
from gateway.encoding import custom_command_bytes
from gateway.fields import bit, optional_number, unix_time, utc
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import ALARMS, Confirmation, DecodeResult, EncodedCommand, Position, isoformat
from gateway.settings import choice, integer, pattern

KEEPALIVE = b"\xfe\x02"
KEEPALIVE_SIZE = 12
#: Binary header: prefix, CRC, length, sequence, unit id.
HEADER = struct.Struct(">2sHHHQ")
#: Standard record fields between the three times and the driver id.
STANDARD = struct.Struct(">iiHBIHBHBH")
TEMPERATURES = struct.Struct(">hh")
READABLE_TIME = struct.Struct(">HBBBBB")
#: The smallest binary body after the length field: seq, unit id and a photo
#: chunk header; anything shorter cannot be an ATrack frame.
MIN_BINARY_LENGTH = 18
#: Unit ids are IMEIs (15 digits), MAC addresses or small operator numbers.
MAX_UNIT_ID = 10 ** 16
#: A command reply line longer than this is not one.
MAX_REPLY_LINE = 1024
#: Largest photo reassembled in memory.
MAX_PHOTO = 2 * 1024 * 1024
NO_TEMPERATURE = 2000
NO_FIX_HDOP = 990
#: Fixed report ids (manual appendix); 101-164 are user defined.
REPORT_POSITION_REQUEST = 0
REPORT_LOG = 1
REPORT_JAMMING = 13

ERRORS = {
    "101": "invalid command", "102": "invalid parameters", "103": "bad tag",
    "104": "bad password", "105": "bad SIM PIN", "106": "no log data",
    "107": "no impact data", "108": "SMS not supported",
}

_ASCII_HEADER = re.compile(
    rb"[\x01-\xff]{2},([0-9A-Fa-f]{4}),(\d{1,5}),(\d{1,6}),(\d{1,20}),(?=(?:\d{10}|\d{14}|0),)")
# What an ASCII header looks like while it is still arriving.
_ASCII_PARTIAL = re.compile(
    rb"[\x01-\xff]{2}(?:,(?:[0-9A-Fa-f]{0,3}|[0-9A-Fa-f]{4}(?:,(?:\d{0,5}|\d{1,5}(?:,(?:\d{0,6}"
    rb"|\d{1,6}(?:,(?:\d{0,20}|\d{1,20}(?:,\d{0,14})?))?))?))?))?")
_REPLY = re.compile(rb"\$([A-Za-z0-9]+)(?:\+([^=\r\n]*))?(?:=([^\r\n]*))?\r\n")
_REPLIES = re.compile(rb"(?:\$[A-Za-z0-9]+(?:\+[^=\r\n]*)?(?:=[\x20-\x7e]*)?\r\n)+")
_TOKEN = re.compile(r"%([A-Z]{2})(\d*)")
_COMMAND_TAG = re.compile(r"AT\$[A-Za-z0-9]+\+([A-Za-z0-9]+)=")
_FORM_REPLY = re.compile(r'([01]),([^,]*),([01])(?:,"?([^"]*)"?)?')

# Binary sizes of custom-info tokens (spec section 6); strings are NUL-terminated.
_U8 = frozenset("SA GQ RL GS DT EL TR FL ML PD IA MP MT IN HA HB HC JO ZO".split())
_U16 = frozenset("MV BV LC RP MF SM AV JH ZH".split())
_U32 = frozenset("CN PC AT FC EO EH JL ZL JN".split())
_U64 = frozenset("CM ME".split())
_STRINGS = frozenset("CI VN NC GL CD MA JS ZS".split())
_BLOBS = {"GN": 60, "GV": 6}
#: ASCII values of these tokens end with SUB (0x1A) before their comma.
_SUB_TERMINATED = frozenset(["GL", "GN", "GV"])
_HARSH = {"HA": "harsh_acceleration", "HB": "harsh_braking", "HC": "harsh_cornering"}
#: Custom-info values kept as one attribute: its name, and how to convert from
#: the device's unit (L{None}: kept as it is).
_ATTRIBUTES = {
    "SA": ("satellites", None), "GQ": ("rssi", None), "CE": ("cell_id", None),
    "LC": ("lac", None), "RP": ("rpm", None), "EL": ("engine_load_pct", None),
    "TR": ("throttle_pct", None), "FL": ("fuel_level_pct", None), "ET": ("coolant_temp_c", None),
    "MV": ("power_v", lambda v: v / 10.0), "BV": ("battery_v", lambda v: v / 10.0),
    "FC": ("fuel_used_l", lambda v: v / 10.0), "MF": ("atrack.maf_gs", lambda v: v / 100.0),
    "EH": ("engine_hours_s", lambda v: v * 360), "DT": ("archive", bool), "MT": ("motion", bool),
}
#: Vendor-specific custom-info values and their attribute names.
_VENDOR_NAMES = {
    "RL": "atrack.rx_level", "PC": "atrack.pulse_count", "GS": "atrack.modem_state",
    "ML": "atrack.mil", "SM": "atrack.max_speed_kmh", "PD": "atrack.pending_dtc",
    "IA": "atrack.intake_temp_c", "MP": "atrack.map_kpa", "CD": "atrack.iccid",
    "MA": "atrack.mac", "NC": "atrack.neighbour_cells", "GL": "atrack.google_link",
    "GN": "atrack.g_samples", "GV": "atrack.peak_g", "EO": "atrack.engine_odometer",
    "CM": "atrack.imsi", "ME": "atrack.imei",
}


#: What a layout that does not fit the bytes raises while it is tried.
_MISFIT = (DecodeError, struct.error, IndexError, ValueError)


class _Unknown(DecodeError):
    """
    A custom-info token whose binary size is unknown: nothing after it can be
    located.
    """


def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def _ack(unit_id: int, seq: int) -> bytes:
    return KEEPALIVE + unit_id.to_bytes(8, "big") + (seq & 0xFFFF).to_bytes(2, "big")


def _tokens(form: str) -> Tuple[Tuple[str, str], ...]:
    """
    The C{(name, index)} tokens of an C{AT$FORM} custom-info string.
    """
    return tuple(_TOKEN.findall(form))


# -- framing -----------------------------------------------------------------

def _ascii_size(buf: bytes, at: int) -> int:
    """
    Size of the ASCII report at C{buf[at:]}: C{> 0}, C{0} when more bytes are
    needed, C{-1} when it is not an ASCII report header.

    The Length field counts from the comma after it through the final LF.
    """
    head = buf[at:at + 64]
    m = _ASCII_HEADER.match(head)
    if m is None:
        return 0 if _ASCII_PARTIAL.fullmatch(head) else -1
    comma = at + m.start(3) - 1
    end = comma + int(m.group(2))
    if end <= at + m.end():
        return -1
    if len(buf) < end:
        return 0
    # Some firmware counts one byte short of the LF (Traccar tolerates it too).
    if len(buf) > end and buf[end] == 0x0A and buf[end - 1] != 0x0A:
        end += 1
    return end - at


def _binary_size(buf: bytes, at: int, verify: bool) -> int:
    """
    Size of the binary report at C{buf[at:]}, as L{_ascii_size}.

    @param verify: may a CRC be computed to accept an unusual header (not
        while scanning garbage: that would cost a CRC per byte).
    """
    rest = len(buf) - at
    if rest < 6:
        return 0
    length = _u16(buf, at + 4)
    if length < MIN_BINARY_LENGTH:
        return -1
    size = 6 + length
    # Missing unit id bytes count as zeros: the smallest id they could become.
    plausible = int.from_bytes(buf[at + 8:at + 16].ljust(8, b"\0"), "big") < MAX_UNIT_ID
    if not plausible:
        # An odd unit id is believed only on a complete frame whose CRC holds.
        if verify and rest >= size and crc16_arc(buf[at + 4:at + size]) == _u16(buf, at + 2):
            return size
        return -1
    return size if rest >= size else 0


def _reply_size(buf: bytes, at: int) -> int:
    end = buf.find(b"\r\n", at, at + MAX_REPLY_LINE)
    line = buf[at:end if end >= 0 else at + MAX_REPLY_LINE]
    if any(b < 0x20 or b > 0x7E for b in line):
        return -1
    if end < 0:
        return 0 if len(buf) - at < MAX_REPLY_LINE else -1
    return end + 2 - at


def _frame_size(buf: bytes, at: int, verify: bool = True) -> int:
    """
    Size of the frame starting at C{buf[at:]}: C{> 0}; C{0} when it may be one
    but more bytes are needed; C{-1} when no frame starts there.
    """
    rest = len(buf) - at
    if rest < 2:
        return 0
    first, second = buf[at], buf[at + 1]
    if first == 0xFE and second == 0x02:
        return KEEPALIVE_SIZE if rest >= KEEPALIVE_SIZE else 0
    if first == 0x24:  # '$'
        return _reply_size(buf, at)
    # The manual forbids 0x00 and CR LF in the prefix.
    if first in (0x00, 0x0A, 0x0D) or second == 0x00:
        return -1
    if rest < 3:
        return 0
    if buf[at + 2] == 0x2C:
        size = _ascii_size(buf, at)
        if size >= 0:
            return size
    return _binary_size(buf, at, verify)


def _is_ascii(frame: bytes) -> bool:
    return len(frame) > 8 and frame[2] == 0x2C and _ASCII_HEADER.match(frame) is not None


# -- field conversion ----------------------------------------------------------

def _unix(seconds: int) -> Optional[datetime]:
    return unix_time(seconds) if seconds else None


def _readable(data: bytes, at: int) -> Optional[datetime]:
    year, month, day, hour, minute, second = READABLE_TIME.unpack_from(data, at)
    if not (year or month or day):
        return None
    return utc(year, month, day, hour, minute, second)


def _ascii_time(text: str) -> Optional[datetime]:
    if not text.strip("0"):
        return None
    if len(text) == 14 and text.isdigit():
        return utc(int(text[0:4]), int(text[4:6]), int(text[6:8]),
                   int(text[8:10]), int(text[10:12]), int(text[12:14]))
    if text.isdigit():
        return unix_time(int(text))
    raise DecodeError(f"bad time {text!r}")


def _degrees(text: str) -> Optional[float]:
    # Integers are millionths of a degree; a legacy firmware prints degrees.
    value = optional_number(text)
    if value is None:
        return None
    return float(value) if "." in text else value / 1e6


def _alarm_map(context, device_id: str) -> dict:
    """
    The installer's mapping of user report ids (101-164) to alarms, from the
    C{atrack.alarm_map} setting: C{"101:sos,105:power_cut"}.
    """
    text = context.setting("atrack.alarm_map", device_id=device_id) or ""
    out = {}
    for item in text.split(","):
        code, sep, name = item.replace("=", ":").partition(":")
        if sep and code.strip().isdigit() and name.strip() in ALARMS:
            out[int(code)] = name.strip()
    return out


class _Record:
    """
    One record being assembled: standard fields first, then custom info.
    """

    __slots__ = ("gps", "rtc", "lat", "lon", "course", "report", "hdop", "speed",
                 "altitude", "alarms", "attributes")

    def __init__(self):
        self.gps = self.rtc = self.lat = self.lon = None
        self.course = self.report = self.hdop = self.speed = None
        self.altitude = None
        self.alarms: List[str] = []
        self.attributes = {}

    def standard(self, gps, rtc, lon, lat, course, report, odometer, hdop, inputs,
                 speed, outputs, analog, driver, temp1, temp2, text):
        self.gps, self.rtc = gps, rtc
        self.lat, self.lon = lat, lon
        self.course, self.report, self.hdop, self.speed = course, report, hdop, speed
        a = self.attributes
        if hdop is not None:
            a["hdop"] = hdop / 10.0
        if odometer is not None:
            a["odometer_m"] = odometer * 100
        if inputs is not None:
            a["inputs"] = inputs
            a["ignition"] = bit(int(inputs), 0)
        if outputs is not None:
            a["outputs"] = outputs
        if analog is not None:
            a["adc1_v"] = analog / 1000.0
        if driver:
            a["driver_id"] = driver
        for n, t in ((1, temp1), (2, temp2)):
            if t is not None and t != NO_TEMPERATURE:
                a[f"temp{n}_c"] = t / 10.0
        if text:
            a["atrack.text"] = text
        if rtc is not None:
            a["atrack.rtc_time"] = isoformat(rtc)
        if report == REPORT_LOG:
            a["archive"] = True

    def custom(self, name: str, index: str, value) -> None:
        """
        Store one custom-info value (an C{int} or C{str} from a binary record,
        a C{str} from an ASCII one) under the record's vocabulary.
        """
        a = self.attributes
        if isinstance(value, str) and name not in _STRINGS and name not in _BLOBS \
                and name not in ("CM", "ME"):
            try:
                value = optional_number(value)
            except DecodeError:
                a[f"atrack.{name.lower()}{index}"] = value
                return
            if value is None:
                return
        if name in _ATTRIBUTES:
            attribute, convert = _ATTRIBUTES[name]
            a[attribute] = value if convert is None else convert(value)
        elif name == "CN":
            # MCC is always three digits; the MNC is the rest (2 or 3 digits).
            digits = str(int(value))
            if len(digits) > 3:
                a["mcc"], a["mnc"] = int(digits[:3]), int(digits[3:])
        elif name == "AT":
            self.altitude = float(value)
        elif name == "VN":
            if value:
                a["vin"] = value
        elif name in _HARSH:
            if value:
                self.alarms.append(_HARSH[name])
        elif name in _VENDOR_NAMES:
            if isinstance(value, bytes):
                # As an ASCII report writes it.
                value = value.hex().upper()
            elif name in ("CM", "ME"):
                value = str(value)
            a[_VENDOR_NAMES[name]] = value
        elif name != "CI":
            a[f"atrack.{name.lower()}{index}"] = value

    def position(self, alarm_map: dict) -> Position:
        # No fix ever (GPS time 0): no coordinates, and the device clock dates
        # the record. HDOP 99.0 is the firmware's "no fix now".
        has_fix = self.gps is not None and self.lat is not None and self.lon is not None
        if has_fix and not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            # The CRC vouches for the frame: keep the record, not the position.
            self.attributes["atrack.bad_coordinates"] = [self.lat, self.lon]
            has_fix = False
        valid = has_fix and self.hdop != NO_FIX_HDOP
        alarms = list(self.alarms)
        if self.report == REPORT_JAMMING:
            alarms.insert(0, "jamming")
        elif self.report in alarm_map:
            alarms.insert(0, alarm_map[self.report])
        return Position(
            time=self.gps or self.rtc,
            latitude=self.lat if has_fix else None,
            longitude=self.lon if has_fix else None,
            valid=bool(valid),
            speed_kmh=float(self.speed) if self.speed is not None else None,
            course=float(self.course) if self.course is not None else None,
            altitude_m=self.altitude,
            alarm=alarms,
            event=str(self.report) if self.report is not None else None,
            attributes=self.attributes,
        )


# -- binary records ----------------------------------------------------------

def _cstring(data: bytes, at: int) -> Tuple[str, int]:
    end = data.find(b"\0", at)
    if end < 0:
        raise DecodeError("string without its NUL terminator")
    return data[at:end].decode("latin-1"), end + 1


def _binary_standard(data: bytes, at: int, time_size: int) -> Tuple[_Record, int]:
    if time_size == 4:
        gps, rtc, _ = struct.unpack_from(">III", data, at)
        gps, rtc = _unix(gps), _unix(rtc)
    else:
        gps, rtc = _readable(data, at), _readable(data, at + 7)
    at += 3 * time_size
    lon, lat, course, report, odometer, hdop, inputs, speed, outputs, analog = \
        STANDARD.unpack_from(data, at)
    at += STANDARD.size
    driver, at = _cstring(data, at)
    temp1, temp2 = TEMPERATURES.unpack_from(data, at)
    text, at = _cstring(data, at + TEMPERATURES.size)
    record = _Record()
    record.standard(gps, rtc, lon / 1e6, lat / 1e6, course, report, odometer, hdop,
                    inputs, speed, outputs, analog, driver, temp1, temp2, text)
    return record, at


def _binary_value(data: bytes, at: int, name: str, cell_size: int):
    if name in _U8:
        return data[at], at + 1
    if name in _U16:
        return struct.unpack_from(">H", data, at)[0], at + 2
    if name == "ET":
        return struct.unpack_from(">h", data, at)[0], at + 2
    if name in _U32:
        return struct.unpack_from(">I", data, at)[0], at + 4
    if name == "CE":
        return int.from_bytes(data[at:at + cell_size], "big"), at + cell_size
    if name in _U64:
        return struct.unpack_from(">Q", data, at)[0], at + 8
    if name in _STRINGS:
        return _cstring(data, at)
    if name in _BLOBS:
        end = at + _BLOBS[name]
        if end > len(data):
            raise DecodeError(f"%{name} runs past the frame")
        return data[at:end], end
    raise _Unknown(f"binary size of %{name} is unknown")


def _binary_custom(data: bytes, at: int, record: _Record, configured, cell_size: int,
                   partial: bool = False) -> int:
    """
    Read the custom info of one record; the in-band C{%CI} string, when the
    record starts with it, names the fields that follow.

    @param partial: stop quietly before the first field whose size is not
        certain or that does not fit (the record is then the only one read
        from the frame), and return where reading stopped.
    """
    tokens = configured
    if data.startswith(b"%CI", at):
        try:
            form, at = _cstring(data, at)
        except DecodeError:
            if partial:
                return at
            raise
        tokens = _tokens(form)[1:]
    for name, index in tokens or ():
        if partial and name == "CE":
            break
        try:
            value, after = _binary_value(data, at, name, cell_size)
        except _MISFIT:
            if partial:
                break
            raise
        record.custom(name, index, value)
        at = after
    return at


def _binary_time_sizes(data: bytes, at: int, configured: Optional[str]) -> Tuple[int, ...]:
    """
    The sizes of a time field worth trying, best first: 4 (Unix seconds) or 7
    (C{YYYY MM DD hh mm ss}) bytes.

    A readable year starts 07 D0..08 33 and a Unix time 38..7E, so a GPS time
    tells. A zero one (never fixed) does not: then the configured format
    (spec 0.6), then the RTC field's guess, then the other size; the exact fit
    of the records decides.
    """
    if len(data) < at + 9:
        return (4,)
    if 0x07D0 <= _u16(data, at) <= 0x0833:
        return (7,)
    if any(data[at:at + 4]):
        return (4,)
    guess = 7 if 0x07D0 <= _u16(data, at + 7) <= 0x0833 else 4
    sizes = [guess, 4 if guess == 7 else 7]
    if configured in ("0", "1"):
        sizes.insert(0, 7 if configured == "1" else 4)
    return tuple(dict.fromkeys(sizes))


def _binary_records(data: bytes, at: int, time_size: int, configured,
                    cell_size: int) -> List[_Record]:
    """
    Every record up to the end of the frame, or L{DecodeError} when the
    layout does not end exactly there.
    """
    records = []
    while at < len(data):
        record, at = _binary_standard(data, at, time_size)
        at = _binary_custom(data, at, record, configured, cell_size)
        records.append(record)
    if at != len(data):
        raise DecodeError("records overrun the frame")
    return records


# -- ASCII records -----------------------------------------------------------

def _ascii_custom(text: str, record: _Record, configured) -> bool:
    """
    Read an ASCII record's custom fields (the text after C{SUB,}); C{False}
    when no known format fits them.
    """
    tokens = configured
    if text.startswith("%CI"):
        form, _, text = text.partition(",")
        tokens = _tokens(form)[1:]
    if not tokens:
        return not text
    values = []
    rest = text
    for name, index in tokens:
        if rest is None:
            return False
        if name in _SUB_TERMINATED and "\x1a" in rest:
            value, _, rest = rest.partition("\x1a")
            if rest.startswith(","):
                rest = rest[1:]
            elif rest:
                return False
            else:
                rest = None
        else:
            value, sep, rest = rest.partition(",")
            rest = rest if sep else None
        values.append((name, index, value))
    if rest:
        return False
    for name, index, value in values:
        record.custom(name, index, value)
    return True


def _ascii_records(body: str, configured) -> List[Tuple[_Record, bool]]:
    """
    The records of an ASCII report body; each with whether its custom info
    was understood.
    """
    out = []
    at = 0
    while True:
        while at < len(body) and body[at] in "\r\n":
            at += 1
        if at >= len(body):
            break
        fields = []
        for _ in range(16):
            comma = body.find(",", at)
            if comma < 0:
                raise DecodeError("ASCII record has too few fields")
            fields.append(body[at:comma])
            at = comma + 1
        line_end = body.find("\r\n", at)
        if line_end < 0:
            line_end = len(body)
        sub = body.find("\x1a", at, line_end)
        if sub < 0:
            text, custom = body[at:line_end], ""
        else:
            text = body[at:sub]
            custom = body[sub + 1:line_end]
            custom = custom[1:] if custom.startswith(",") else custom
        at = line_end + 2
        gps, rtc = _ascii_time(fields[0]), _ascii_time(fields[1])
        (lon, lat, course, report, odometer, hdop, inputs, speed, outputs, analog) = (
            _degrees(fields[3]), _degrees(fields[4]), *map(optional_number, fields[5:13]))
        record = _Record()
        record.standard(gps, rtc, lon, lat, course, report, odometer, hdop,
                        inputs, speed, outputs, analog, fields[13],
                        optional_number(fields[14]), optional_number(fields[15]), text)
        understood = _ascii_custom(custom, record, configured)
        if not understood:
            record.attributes["atrack.custom"] = custom
        out.append((record, understood))
    if not out:
        raise DecodeError("ASCII report without records")
    return out


# -- the plugin ----------------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class ATrackProtocol:
    """
    ATrack binary and ASCII reports, keep-alives and C{AT$} commands.
    """

    name = "atrack"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset(
        {"engine_stop", "engine_resume", "position_request", "reboot", "set_interval", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "atrack.format": pattern(r"(?:%[A-Z][A-Z0-9]{1,3})+", "AT$FORM tokens such as %SA%MV%CE"),
        "atrack.fms_format": pattern(r"(?:%[A-Z][A-Z0-9]{1,3})+", "AT$FMSC tokens such as %JO5%JH1"),
        "atrack.time_format": choice("0", "1"),
        "atrack.cell_id_size": choice("2", "4"),
        "atrack.alarm_map": pattern(
            r"\d{1,3}[:=](?:%s)(?:,\d{1,3}[:=](?:%s))*" % (("|".join(sorted(ALARMS)),) * 2),
            "report id:alarm pairs such as 101:sos,102:power_cut"),
        "atrack.relay_output": integer(0, 99),
        "atrack.relay_active": choice("0", "1"),
        "atrack.password": pattern(r"[A-Za-z0-9]{1,16}", "1-16 letters and digits"),
    }

    # -- detection --------------------------------------------------------

    def detect(self, head: bytes, transport: str) -> Verdict:
        partial = transport == "tcp"
        if head[:1] == b"$" and not partial and _REPLIES.fullmatch(head):
            # A reply line alone is no proof (spec 0.2), but the session asks
            # its bound decoder to claim each UDP datagram again: claim it
            # weakly so command replies over UDP reach the command queue.
            return Verdict.match(10)
        if not head or head[0] in (0x00, 0x0A, 0x0D, 0x24):
            # On TCP sessions open with a keep-alive or a report.
            return Verdict.no()
        if len(head) < 2:
            return Verdict.more() if partial else Verdict.no()
        if head.startswith(KEEPALIVE):
            return self._detect_keepalive(head, partial)
        size = _frame_size(head, 0)
        if size == 0:
            if not partial:
                return Verdict.no()
            # A long first frame (history after a reconnect) may not fit the
            # detector's window: its parsed header is all the evidence there is.
            return Verdict.match(40) if len(head) >= 1024 else Verdict.more()
        if size < 0:
            return Verdict.no()
        frame = head[:size]
        if _is_ascii(frame):
            # The ASCII grammar with a unit id is strong; the CRC settles it.
            return Verdict.match(90 if self._ascii_crc_ok(frame) else 50)
        if crc16_arc(frame[4:]) == _u16(frame, 2):
            return Verdict.match(90)
        return Verdict.no()

    @staticmethod
    def _detect_keepalive(head: bytes, partial: bool) -> Verdict:
        if len(head) < KEEPALIVE_SIZE:
            return Verdict.more() if partial else Verdict.no()
        unit = int.from_bytes(head[2:10], "big")
        if unit >= MAX_UNIT_ID:
            return Verdict.no()
        digits = str(unit)
        # The default unit id is the IMEI, whose Luhn digit is a real check;
        # some models default to 0.
        if len(digits) == 15 and luhn_valid(digits):
            return Verdict.match(90)
        return Verdict.match(60 if unit else 40)

    # -- framing ------------------------------------------------------------

    def frame(self, buffer: bytes, transport: str):
        size = _frame_size(buffer, 0)
        if size > 0:
            end = size
            # Some firmware and relays end binary frames with CR LF too.
            while end < len(buffer) and buffer[end] in (0x0D, 0x0A):
                end += 1
            return buffer[:size], end
        if size == 0:
            return None, 0
        for at in range(1, len(buffer)):
            if _frame_size(buffer, at, verify=False) >= 0:
                return None, at
        return None, len(buffer)

    # -- decoding -----------------------------------------------------------

    def decode(self, frame: bytes, context) -> DecodeResult:
        try:
            if frame.startswith(KEEPALIVE):
                return self._keepalive(frame)
            if frame.startswith(b"$"):
                return self._reply(frame, context)
            if _is_ascii(frame):
                return self._ascii(frame, context)
            return self._binary(frame, context)
        except (struct.error, ValueError, IndexError, OverflowError) as e:
            raise DecodeError(f"malformed ATrack frame: {e}") from e

    @staticmethod
    def _keepalive(frame: bytes) -> DecodeResult:
        if len(frame) != KEEPALIVE_SIZE:
            raise DecodeError(f"keep-alive of {len(frame)} bytes, not 12")
        unit = int.from_bytes(frame[2:10], "big")
        return DecodeResult(device_id=str(unit), reply=bytes(frame))

    def _reply(self, frame: bytes, context) -> DecodeResult:
        m = _REPLY.fullmatch(frame)
        if m is None:
            raise DecodeError("not a command reply line")
        command, tag, values = (g.decode("ascii") if g is not None else None for g in m.groups())
        command = command.upper()
        text = frame[:-2].decode("ascii")
        settings = {}
        device_id = None
        command_type = None
        success = True
        if command == "ERROR":
            success = False
            text = f"{text} ({ERRORS.get(values or '', 'unknown error')})"
        elif command != "OK":
            # Query replies answer the C{AT$...=?} lines sent as custom commands.
            command_type = "custom"
            first = (values or "").split(",")[0]
            if command in ("INFO", "UNID") and first.isdigit() and context.device_id is None:
                device_id = first
            if command == "FORM":
                settings = self._learn_form(values or "", context)
        return DecodeResult(
            device_id=device_id,
            confirmations=[Confirmation(token=tag or None, success=success, reply=text,
                                        command_type=command_type)],
            settings=settings)

    @staticmethod
    def _learn_form(values: str, context) -> dict:
        """
        Keep what C{$FORM=<ascii|binary>,<prefix>,<time format>,"<custom>"}
        says about the report layout: for this session at once, and as
        settings so the gateway remembers it for the device.
        """
        m = _FORM_REPLY.fullmatch(values)
        if m is None:
            return {}
        learned = {"atrack.format": m.group(4) or "", "atrack.time_format": m.group(3)}
        context.state["form"] = learned
        return learned

    @staticmethod
    def _configured(context, device_id: str) -> Tuple[Optional[tuple], Optional[str]]:
        """
        The custom-info tokens and time format known for the device: a
        C{$FORM} reply seen in this session, else the device's settings.
        """
        learned = context.state.get("form") or {}
        form = learned.get("atrack.format", context.setting("atrack.format", device_id=device_id))
        fms = context.setting("atrack.fms_format", device_id=device_id)
        time_format = learned.get("atrack.time_format",
                                  context.setting("atrack.time_format", device_id=device_id))
        if form is None and fms is None:
            return None, time_format
        return _tokens((form or "") + (fms or "")), time_format

    def _ascii_crc_ok(self, frame: bytes) -> bool:
        m = _ASCII_HEADER.match(frame)
        end = m.start(3) - 1 + int(m.group(2))
        crc = int(m.group(1), 16)
        # Length may stop one byte short of the LF (see L{_ascii_size}).
        return crc16_arc(frame[7:end]) == crc or crc16_arc(frame[7:]) == crc

    def _ascii(self, frame: bytes, context) -> DecodeResult:
        if not self._ascii_crc_ok(frame):
            raise DecodeError("ASCII report fails its CRC-16")
        m = _ASCII_HEADER.match(frame)
        seq, unit = int(m.group(3)), int(m.group(4))
        if unit >= 1 << 64:
            raise DecodeError(f"unit id {unit} does not fit the 8-byte ack")
        configured, _ = self._configured(context, str(unit))
        body = frame[m.end():].decode("latin-1")
        alarm_map = _alarm_map(context, str(unit))
        records = []
        for record, understood in _ascii_records(body, configured):
            if not understood:
                record.attributes["atrack.custom_unknown"] = True
            records.append(record.position(alarm_map))
        return self._result(str(unit), records, _ack(unit, seq))

    def _binary(self, frame: bytes, context) -> DecodeResult:
        if len(frame) < HEADER.size or len(frame) != 6 + _u16(frame, 4):
            raise DecodeError("binary report length does not match its frame")
        prefix, crc, _, seq, unit = HEADER.unpack_from(frame, 0)
        if crc16_arc(frame[4:]) != crc:
            raise DecodeError("binary report fails its CRC-16")
        ack = _ack(unit, seq)
        if prefix == b"@R" and self._is_photo(frame):
            return self._photo(frame, unit, ack, context)
        configured, time_format = self._configured(context, str(unit))
        time_sizes = _binary_time_sizes(frame, HEADER.size, time_format)
        cell_size = context.setting("atrack.cell_id_size", device_id=str(unit))
        records, guessed = self._binary_layout(frame, time_sizes, configured, cell_size)
        alarm_map = _alarm_map(context, str(unit))
        positions = []
        for record in records:
            if guessed:
                record.attributes["atrack.custom_unknown"] = True
            positions.append(record.position(alarm_map))
        return self._result(str(unit), positions, ack)

    @staticmethod
    def _binary_layout(frame: bytes, time_sizes: Sequence[int], configured,
                       cell_size: Optional[str]) -> Tuple[List[_Record], bool]:
        """
        The records of a binary report and whether their custom info is
        unknown.

        A layout is right when the records end exactly at the frame's end.
        Tried in order, for each time size: the in-band or configured format
        (cell id as the C{atrack.cell_id_size} setting says, else U32 then the
        older U16); no custom info at all. Failing all, the first record alone
        with what of its custom info is certain, and the bytes after that kept
        raw (spec 0.5 and 6.4).
        """
        start = HEADER.size
        if cell_size in ("2", "4"):
            cell_sizes = (int(cell_size),)
        elif b"%CE" in frame or ("CE", "") in (configured or ()):
            cell_sizes = (4, 2)
        else:
            cell_sizes = (4,)
        for time_size in time_sizes:
            for size in cell_sizes:
                try:
                    return _binary_records(frame, start, time_size, configured, size), False
                except _MISFIT:
                    pass
            if configured:
                try:
                    return _binary_records(frame, start, time_size, (), 4), False
                except _MISFIT:
                    pass
        try:
            record, at = _binary_standard(frame, start, time_sizes[0])
        except _MISFIT:
            # The CRC vouches for the frame, the ack stops the device resending
            # it: keep it raw rather than lose it.
            record, at = _Record(), start
        else:
            # Only an in-band %CI describes this record for certain.
            at = _binary_custom(frame, at, record, None, 4, partial=True)
        if at < len(frame):
            record.attributes["atrack.undecoded_hex"] = frame[at:].hex()
        return [record], True

    @staticmethod
    def _is_photo(frame: bytes) -> bool:
        if len(frame) < HEADER.size + 8:
            return False
        _, index, count, size = struct.unpack_from(">IBBH", frame, HEADER.size)
        return index < count and HEADER.size + 8 + size <= len(frame)

    @staticmethod
    def _photo(frame: bytes, unit: int, ack: bytes, context) -> DecodeResult:
        """
        One chunk of a camera picture: ack it; once the last chunk is in,
        the picture becomes a record without a position.
        """
        seconds, index, count, size = struct.unpack_from(">IBBH", frame, HEADER.size)
        chunk = frame[HEADER.size + 8:HEADER.size + 8 + size]
        parts = context.state.get("photo")
        if index == 0 or parts is None or parts[0] != (unit, seconds, count) \
                or len(parts[1]) != index:
            parts = ((unit, seconds, count), [])
        if index == len(parts[1]):
            parts[1].append(chunk)
        if sum(len(p) for p in parts[1]) > MAX_PHOTO:
            context.state.pop("photo", None)
            raise DecodeError("camera picture larger than the gateway keeps")
        records = []
        if index == count - 1 and len(parts[1]) == count:
            picture = b"".join(parts[1])
            context.state.pop("photo", None)
            records.append(Position(
                time=_unix(seconds), event="photo",
                attributes={"atrack.photo_jpeg": base64.b64encode(picture).decode("ascii")}))
        else:
            context.state["photo"] = parts
        return DecodeResult(device_id=str(unit), records=records, reply=ack)

    @staticmethod
    def _result(device_id: str, records: Sequence[Position], ack: bytes) -> DecodeResult:
        confirmations = []
        if any(r.event == str(REPORT_POSITION_REQUEST) for r in records):
            # Report id 0 is the device's answer to AT$GPOS.
            confirmations.append(Confirmation(reply="report id 0",
                                              command_type="position_request"))
        return DecodeResult(device_id=device_id, records=records, reply=ack,
                            confirmations=confirmations)

    # -- commands -----------------------------------------------------------

    def encode(self, command, context) -> EncodedCommand:
        params = command.params or {}
        kind = command.type
        if kind in ("engine_stop", "engine_resume"):
            output = context.setting("atrack.relay_output", "1")
            active = context.setting("atrack.relay_active", "1")
            if not output.isdigit() or active not in ("0", "1"):
                raise EncodeError("atrack.relay_output must be an output number and "
                                  "atrack.relay_active 0 or 1")
            state = active if kind == "engine_stop" else str(1 - int(active))
            return self._line(context, "OUTC", f"{output},{state},0,0,0")
        if kind == "position_request":
            return self._line(context, "GPOS", "0")
        if kind == "reboot":
            return self._line(context, "REST", "1,0")
        if kind == "set_interval":
            seconds = str(params.get("seconds", ""))
            if not seconds.isdigit() or not 0 < int(seconds) <= 65535:
                raise EncodeError("set_interval needs seconds between 1 and 65535")
            return self._line(context, "TRAC", f"1,{int(seconds)}")
        if kind == "custom":
            return self._custom(params)
        raise EncodeError(f"atrack has no command {kind!r}")

    @staticmethod
    def _line(context, name: str, values: str) -> EncodedCommand:
        password = context.setting("atrack.password")
        if password:
            if not (password.isascii() and password.isalnum()):
                # A line end in it would put a second command in this one.
                raise EncodeError("atrack.password must be letters and digits")
            values = f"{password},{values}"
        return EncodedCommand(f"AT${name}={values}\r\n".encode("ascii"))

    @staticmethod
    def _custom(params) -> EncodedCommand:
        # Exactly one command line: text or hex, ending (or not) with CR LF,
        # with no other line end inside that would start a second command.
        data = custom_command_bytes(params)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        if not data or not all(0x20 <= b < 0x7F for b in data):
            raise EncodeError("custom must be one non-empty line of printable ASCII (no CR, LF or"
                              " other control bytes inside)")
        text = data.decode("ascii")
        tag = _COMMAND_TAG.match(text)
        # A tagged command (AT$CMD+TAG=...) is answered with the same tag.
        return EncodedCommand((text + "\r\n").encode("ascii"), token=tag.group(1) if tag else None)


atrack = ATrackProtocol()
