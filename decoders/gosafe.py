# -*- test-case-name: tests.test_gosafe -*-
"""
GoSafe protocol (SkyPatrol SP7600 = GoSafe G79W, and the other GoSafe-built
SkyPatrol SP models).

Two wire formats share one port:
  - text: C{*GS<vv>,<IMEI>,<record>[$<record>...]#}, records made of tagged
    C{TAG:a;b;c} blocks;
  - binary: C{F8 <version> <type> <IMEI:7> <body> <CRC-16/XMODEM> F8}, byte
    stuffed with C{1B}.

Reference: trackport's GoSafe protocol notes ("spec section N" below),
compiled from the GoSafe/SkyPatrol documents and public captures. Every frame
carries the IMEI;
there is no login. Every frame (every UDP datagram) is answered C{1234}.
"""

from __future__ import annotations

import re
from datetime import timedelta

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc16_xmodem
from gateway.encoding import custom_command_bytes
from gateway.fields import (bit, bits, check_coordinates, ddmmyy_hhmmss, hemisphere, optional_float,
                            optional_int, utc)
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position
from gateway.settings import choice, integer

#: Sent back for every frame, text or binary, as the reference recommends.
REPLY = b"1234"

#: Largest frame we wait for. Real text frames reach ~1 KiB (5 buffered
#: records); the reference asks for at least 4 KiB.
MAX_FRAME = 16 * 1024

_TEXT_START = b"*GS"
_BINARY_MARK = 0xF8
_MARK = bytes([_BINARY_MARK])
_ESCAPE = 0x1B
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset("0123456789ABCDEFabcdef")
_HEX_TEXT = re.compile("[0-9A-Fa-f]+")

#: The text head grammar of spec §0.5, one byte class per position.
_HEAD = [frozenset(b"*"), frozenset(b"G"), frozenset(b"S"), _DIGITS, _DIGITS,
         frozenset(b",")] + [_DIGITS] * 15
_HEAD_END = frozenset(b",#")
#: A whole text head followed by its end: what L{_HEAD} and L{_HEAD_END}
#: accept, at once (every UDP datagram is detected on its own).
_WHOLE_HEAD = re.compile(rb"\*GS[0-9]{2},[0-9]{15}[,#]")
#: A text head's verdict: as specific as the grammar with the IMEI allows.
_MATCH = Verdict.match(90)

_TEXT = re.compile(r"\*GS(\d{2}),(\d{15})(?:,(.*))?\Z", re.S)
_NO_CLOCK = "000000000000"
_BINARY_EPOCH = utc(2000, 1, 1)

#: Binary data-mask blocks, by bit. In event packets bit 7 is ETD and OBD/FUL
#: move up one bit (glonassd, from the vendor's V1.5 document).
_BLOCKS = ("SYS", "GPS", "GSM", "COT", "ADC", "DTT", "IWD", "OBD", "FUL")
_EVENT_BLOCKS = ("SYS", "GPS", "GSM", "COT", "ADC", "DTT", "IWD", "ETD", "OBD", "FUL")

#: Analogue channels in the order the text ADC block lists them (spec §0.8)
#: and by channel number in the binary one.
_ADC_NAMES = ("power_v", "battery_v", "adc1_v", "adc2_v")


def _u(data: bytes) -> int:
    return int.from_bytes(data, "big")


# -- detection and framing ------------------------------------------------

def _text_head(head: bytes, transport: str) -> Verdict:
    if _WHOLE_HEAD.match(head):
        return _MATCH
    for i, allowed in enumerate(_HEAD):
        if i == len(head):
            return Verdict.more() if transport == "tcp" else Verdict.no()
        if head[i] not in allowed:
            return Verdict.no()
    if len(head) == len(_HEAD):
        # A UDP heartbeat may end right after the IMEI (spec §0.1).
        return _MATCH if transport == "udp" else Verdict.more()
    return _MATCH if head[len(_HEAD)] in _HEAD_END else Verdict.no()


def _unstuff(data: bytes) -> bytes:
    """
    Undo the byte stuffing between the two C{F8}: C{1B 00} -> C{1B},
    C{1B E3} -> C{F8}.
    """
    if _ESCAPE not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == _ESCAPE:
            if i + 1 == len(data) or data[i + 1] not in (0x00, 0xE3):
                raise DecodeError(f"bad escape 1b {data[i + 1:i + 2].hex() or 'at the end'}")
            out.append(b ^ data[i + 1])
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def _binary_body(frame: bytes) -> bytes:
    """
    The unstuffed bytes between the marks, CRC checked and stripped.

    C{0xF8} framing is shared with Ulbotech (version 01, BCD IMEI, C{F7}
    escapes) and G1rus (version 0x46): the version byte, the escape rule and a
    7-byte binary IMEI tell GoSafe apart.
    """
    if len(frame) < 13 or frame[0] != _BINARY_MARK or frame[-1] != _BINARY_MARK:
        raise DecodeError("not a GoSafe binary frame")
    data = _unstuff(frame[1:-1])
    if len(data) < 11:
        raise DecodeError("binary frame too short")
    if crc16_xmodem(data[:-2]) != _u(data[-2:]):
        raise DecodeError("CRC-16/XMODEM mismatch")
    version, kind = data[0], data[1] & 0x3F
    # Versions mirror the text *GSvv numbers seen (02, 06, 16, 26, 56);
    # 0x46 is G1rus, a different protocol in the same framing.
    if version >> 4 > 9 or (version & 0x0F) not in (2, 6) or version == 0x46:
        raise DecodeError(f"unknown binary version {version:#04x}")
    if kind > 4:
        raise DecodeError(f"unknown binary packet type {data[1]:#04x}")
    if not 10 ** 14 <= _u(data[2:9]) < 10 ** 15:
        raise DecodeError("binary IMEI out of range")
    return data[:-2]


def _binary_frames(data: bytes):
    """
    Split back-to-back binary frames (a UDP datagram may hold several).
    """
    start = 0
    while start < len(data):
        if data[start] != _BINARY_MARK:
            raise DecodeError("bytes between binary frames")
        end = data.find(_MARK, start + 1)
        if end < 0:
            raise DecodeError("unterminated binary frame")
        yield data[start:end + 1]
        start = end + 1


def _skip_to_start(buffer: bytes) -> int:
    """
    Bytes to drop before the next possible frame start.
    """
    starts = [i for i in (buffer.find(b"*", 1), buffer.find(_MARK, 1)) if i >= 0]
    return min(starts) if starts else len(buffer)


# -- text records ---------------------------------------------------------

def _hex(text: str):
    text = text.strip()
    if not text:
        return None
    if not set(text) <= _HEX:
        raise DecodeError(f"not hex: {text!r}")
    return int(text, 16)


def _coordinate(text: str) -> float:
    text = text.strip()
    if len(text) < 2:
        raise DecodeError(f"bad coordinate {text!r}")
    return hemisphere(optional_float(text[1:]), text[0])


def _text_time(text: str):
    """
    C{HHMMSSDDMMYY}.
    """
    if len(text) != 12:
        raise DecodeError(f"bad time {text!r}")
    return ddmmyy_hhmmss(text[6:], text[:6])


def _engine_seconds(text: str):
    # "H-M-S", or plain hours (spec §0.8).
    if "-" in text:
        parts = text.split("-")
        if len(parts) != 3:
            raise DecodeError(f"bad engine time {text!r}")
        h, m, s = (optional_int(p) or 0 for p in parts)
        return h * 3600 + m * 60 + s
    hours = optional_float(text)
    return None if hours is None else int(hours * 3600)


class _Record:
    """
    The fields of one record while its blocks are read.
    """

    __slots__ = ("time", "latitude", "longitude", "valid", "speed", "course", "altitude", "event",
                 "attributes")

    def __init__(self):
        self.time = None
        self.latitude = self.longitude = None
        self.valid = False
        self.speed = self.course = self.altitude = None
        self.event = None
        self.attributes = {}

    def position(self) -> Position:
        return Position(self.time, self.latitude, self.longitude, self.valid, self.speed,
                        self.course, self.altitude, (), self.event, self.attributes)

    def fix(self, valid: bool, latitude, longitude):
        # GPS:V;0;N0.000000;E0.000000 is "never had a fix", not a place (§0.2):
        # no coordinates, and never a valid fix whatever the flag says.
        if latitude is None or longitude is None or (latitude == 0 and longitude == 0):
            self.valid = False
            return
        check_coordinates(latitude, longitude)
        self.valid = valid
        self.latitude, self.longitude = latitude, longitude

    def io(self, value: int):
        # Traccar's I/O bit list: 0 ACC, 1-4 inputs, 5-7 outputs; the raw
        # value too, as the device prints it, since the vendor's list is unknown.
        a = self.attributes
        a["gosafe.io_status"] = f"{value:X}"
        a["ignition"] = bool(value & 1)
        a["inputs"] = (value >> 1) & 0x0F
        a["outputs"] = (value >> 5) & 0x07


def _gps(record: _Record, items):
    if len(items) != 9:
        items += [""] * (9 - len(items))
        items = items[:9]
    flag, satellites, lat, lon, speed, course, altitude, hdop, vdop = items
    record.fix(flag == "A", _coordinate(lat) if lat else None, _coordinate(lon) if lon else None)
    a = record.attributes
    if satellites:
        a["satellites"] = optional_int(satellites)
    record.speed = optional_float(speed)
    record.course = optional_float(course)
    record.altitude = optional_float(altitude)
    if hdop:
        a["hdop"] = optional_float(hdop)
    if vdop:
        a["gosafe.vdop"] = optional_float(vdop)


def _gsm(record: _Record, items):
    status, level, cells = items[0], items[1] if len(items) > 1 else "", items[2:]
    a = record.attributes
    if status:
        a["gosafe.gsm_status"] = optional_int(status)
    if level:
        a["gosafe.signal_level"] = optional_int(level)
    found = []
    for i in range(0, len(cells) - 4, 5):
        mcc, mnc, lac, cid, rssi = cells[i:i + 5]
        found.append({"mcc": optional_int(mcc), "mnc": optional_int(mnc),
                      "lac": _hex(lac), "cell_id": _hex(cid), "rssi": optional_int(rssi)})
    if found:
        a.update(found[0])
        if len(found) > 1:
            a["gosafe.neighbours"] = found[1:]


def _cot(record: _Record, items):
    if items[0]:
        record.attributes["odometer_m"] = optional_int(items[0])
    if len(items) > 1 and items[1]:
        record.attributes["engine_hours_s"] = _engine_seconds(items[1])


def _adc_name(channel: int) -> str:
    # Channels past the four named ones continue the adc<N>_v numbering.
    return _ADC_NAMES[channel] if channel < len(_ADC_NAMES) else f"adc{channel - 1}_v"


def _adc(record: _Record, items):
    a = record.attributes
    if len(items) <= len(_ADC_NAMES):
        for name, value in zip(_ADC_NAMES, items):
            if value:
                a[name] = optional_float(value)
        return
    for channel, value in enumerate(items):
        if value:
            a[_adc_name(channel)] = optional_float(value)


_DTT_NAMES = ("gosafe.geofence_low", "gosafe.geofence_high", "gosafe.event_status",
              "gosafe.packet_type")


def _dtt(record: _Record, items):
    if len(items) != 6:
        items += [""] * (6 - len(items))
        items = items[:6]
    status, io = items[0].strip(), items[1].strip()
    a = record.attributes
    if status:
        a["gosafe.device_status"] = status.upper()
    if io:
        if _HEX_TEXT.fullmatch(io):
            record.io(int(io, 16))
        else:
            a["gosafe.io_status"] = io
    for name, value in zip(_DTT_NAMES, items[2:]):
        if value:
            a[name] = value


def _iwd(record: _Record, items):
    i = 0
    while i + 2 < len(items):
        index, kind = items[i], items[i + 1]
        if kind == "0":
            record.attributes["driver_id"] = items[i + 2]
            i += 3
        elif kind == "1" and i + 3 < len(items):
            record.attributes[f"temp{optional_int(index)}_c"] = optional_float(items[i + 3])
            record.attributes[f"gosafe.sensor{optional_int(index)}"] = items[i + 2]
            i += 4
        else:
            # An unknown data type has an unknown length: keep the rest raw.
            record.attributes["gosafe.iwd"] = ";".join(items[i:])
            return


def _obd_text(record: _Record, items):
    text = "".join(item.strip() for item in items)
    if len(text) % 2 or not set(text) <= _HEX:
        # Not a J1979 hex dump (firmware we have not seen): kept raw, it must
        # not cost the record its position.
        record.attributes["gosafe.obd"] = ";".join(items)
        return
    _obd(record, bytes.fromhex(text))


def _legacy_gps(record: _Record, items):
    """
    C{*GS02} GPS block: C{HHMMSS;[fix type;]A|V;lat;lon;speed;course;[hdop;]DDMMYY}.
    """
    if len(items) < 7:
        raise DecodeError("short *GS02 GPS block")
    clock, rest = items[0], items[1:]
    if rest[0] not in ("A", "V"):
        rest = rest[1:]
    flag, lat, lon, speed, course, tail = rest[0], rest[1], rest[2], rest[3], rest[4], rest[5:]
    if not tail:
        raise DecodeError("*GS02 GPS block without a date")
    date = tail[-1]
    hdop = tail[0] if len(tail) > 1 else ""
    if len(date) > 6 and not hdop:
        # Firmware that writes the HDOP right against the date.
        hdop, date = date[:-6], date[-6:]
    if len(clock) != 6 or len(date) != 6 or not (clock + date).isdigit():
        raise DecodeError(f"bad *GS02 time {clock!r} {date!r}")
    record.time = _text_time(clock + date)
    record.fix(flag == "A", _coordinate(lat), _coordinate(lon))
    record.speed = optional_float(speed)
    record.course = optional_float(course)
    if hdop:
        record.attributes["hdop"] = optional_float(hdop)


def _legacy_adc(record: _Record, items):
    # *GS02 lists index;value pairs (spec §0.7).
    for index, value in zip(items[0::2], items[1::2]):
        if index and value:
            record.attributes[f"adc{optional_int(index)}_v"] = optional_float(value)


def _legacy_cell(record: _Record, items):
    items += [""] * (5 - len(items))
    clock, mcc, mnc, lac, cid = items[:5]
    if len(clock) == 12 and clock.isdigit() and clock != _NO_CLOCK:
        record.time = _text_time(clock)
    # Decimal, unlike the hex of the GSM block (spec section 0.9).
    record.attributes.update({"mcc": optional_int(mcc), "mnc": optional_int(mnc),
                              "lac": optional_int(lac), "cell_id": optional_int(cid)})


def _legacy_stt(record: _Record, items):
    record.attributes["gosafe.status"] = items[0]
    if len(items) > 1:
        record.attributes["gosafe.alarm"] = items[1]


def _set(name, convert=str):
    def block(record: _Record, items):
        if items[0]:
            record.attributes[name] = convert(";".join(items))
    return block


_SYS_NAMES = ("gosafe.model", "gosafe.firmware", "gosafe.hardware")


def _sys(record: _Record, items):
    a = record.attributes
    for name, value in zip(_SYS_NAMES, items):
        if value:
            a[name] = value


_TEXT_BLOCKS = {
    "SYS": _sys,
    "GPS": _gps,
    "GSM": _gsm,
    "COT": _cot,
    "ADC": _adc,
    "DTT": _dtt,
    "IWD": _iwd,
    "ETD": _set("gosafe.etd"),
    "OBD": _obd_text,
    "FUL": _set("gosafe.fuel_used", lambda t: int(t) if t.isdigit() else t),
    "TAG": _set("gosafe.tag"),
}

_LEGACY_BLOCKS = dict(_TEXT_BLOCKS, GPS=_legacy_gps, ADC=_legacy_adc, CLL=_legacy_cell,
                      STT=_legacy_stt, MGR=_set("odometer_m", optional_int),
                      GFS=_set("gosafe.geofence"))


def _blocks(record: _Record, fields, table, start=0):
    loose = []
    for i in range(start, len(fields)):
        tag, colon, value = fields[i].partition(":")
        if not colon:
            if tag.strip():
                loose.append(tag)
            continue
        handler = table.get(tag)
        if handler is None:
            # Unknown (J1939, newer firmware) blocks are kept, not lost.
            record.attributes[f"gosafe.{tag.lower()}"] = value
        else:
            handler(record, value.split(";"))
    if loose:
        # Untagged fields of firmware we have not seen: kept, not guessed at.
        record.attributes["gosafe.fields"] = ",".join(loose)


def _text_record(fields) -> Position:
    record = _Record()
    stamp = fields[0]
    if stamp == _NO_CLOCK:
        record.attributes["no_clock"] = True
    else:
        record.time = _text_time(stamp)
    start = 1
    # The event code (hex) comes right after the time; empty = periodic.
    if len(fields) > 1 and ":" not in fields[1]:
        code = fields[1].strip()
        if code:
            record.event = code.upper()
        start = 2
    _blocks(record, fields, _TEXT_BLOCKS, start)
    return record.position()


def _legacy_record(fields) -> Position:
    record = _Record()
    _blocks(record, fields, _LEGACY_BLOCKS)
    return record.position()


# -- binary records -------------------------------------------------------

_OBD_PIDS = {
    0x04: ("engine_load_pct", 1, lambda v: round(v * 100 / 255, 1)),
    0x05: ("coolant_temp_c", 1, lambda v: v - 40),
    0x0B: ("gosafe.intake_pressure_kpa", 1, int),
    0x0C: ("rpm", 2, lambda v: v / 4),
    0x0D: ("obd_speed_kmh", 1, int),
    0x0F: ("gosafe.intake_temp_c", 1, lambda v: v - 40),
    0x10: ("gosafe.maf_g_s", 2, lambda v: v / 100),
    0x11: ("throttle_pct", 1, lambda v: round(v * 100 / 255, 1)),
    0x1F: ("gosafe.engine_run_time_s", 2, int),
    0x21: ("gosafe.mil_distance_km", 2, int),
    0x2F: ("fuel_level_pct", 1, lambda v: round(v * 100 / 255, 1)),
    0x31: ("gosafe.clear_distance_km", 2, int),
    0x33: ("gosafe.barometric_kpa", 1, int),
    0x46: ("gosafe.ambient_temp_c", 1, lambda v: v - 40),
    0x5C: ("gosafe.oil_temp_c", 1, lambda v: v - 40),
    0x5E: ("gosafe.fuel_rate_l_h", 2, lambda v: v / 20),
}


def _dtc(code: int) -> str:
    return "PCBU"[code >> 14] + f"{code & 0x3FFF:04X}"


def _obd(record: _Record, data: bytes):
    """
    SAE J1979 responses, each C{[len][mode+0x40][PID][data]}.
    """
    a = record.attributes
    a["gosafe.obd"] = data.hex().upper()
    i = 0
    while i < len(data):
        size = data[i]
        reply = data[i + 1:i + 1 + size]
        i += 1 + size
        if size == 0 or len(reply) < size:
            return
        mode = reply[0]
        if mode == 0x41 and len(reply) >= 2:
            known = _OBD_PIDS.get(reply[1])
            value = reply[2:]
            if known and len(value) >= known[1]:
                a[known[0]] = known[2](_u(value[:known[1]]))
            else:
                a[f"gosafe.obd_01_{reply[1]:02x}"] = value.hex()
        elif mode == 0x43:
            codes = [_u(reply[j:j + 2]) for j in range(1, len(reply) - 1, 2)]
            a["dtcs"] = [_dtc(c) for c in codes if c]
        elif mode == 0x49 and len(reply) > 3 and reply[1] == 0x02:
            a["gosafe.vin"] = reply[3:].decode("ascii", "replace")
        # 0x7F is a negative response: the ECU lacks that PID.


def _items(data: bytes):
    """
    SYS/COT/DTT binary items: C{[id << 4 | len][len bytes]}.
    """
    i = 0
    while i < len(data):
        ident, size = data[i] >> 4, data[i] & 0x0F
        value = data[i + 1:i + 1 + size]
        if len(value) < size:
            raise DecodeError("binary item runs past its block")
        yield ident, value
        i += 1 + size


def _binary_gps(record: _Record, data: bytes):
    if len(data) < 2:
        raise DecodeError("binary GPS block too short")
    mask, i = _u(data[:2]), 2
    fields = ((0, 1), (1, 8), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2))
    values = {}
    for index, size in fields:
        if bit(mask, index):
            if i + size > len(data):
                raise DecodeError("binary GPS block shorter than its mask")
            values[index] = data[i:i + size]
            i += size
    valid = False
    if 0 in values:
        flags = values[0][0]
        record.attributes["satellites"] = bits(flags, 0, 5)
        valid = bits(flags, 5, 2) > 0
    lat = lon = None
    if 1 in values:
        lat = int.from_bytes(values[1][:4], "big", signed=True) / 1e6
        lon = int.from_bytes(values[1][4:], "big", signed=True) / 1e6
    record.fix(valid, lat, lon)
    if 2 in values:
        record.speed = float(int.from_bytes(values[2], "big", signed=True))
    if 3 in values:
        record.course = float(_u(values[3]))
    if 4 in values:
        record.altitude = float(int.from_bytes(values[4], "big", signed=True))
    if 5 in values:
        record.attributes["hdop"] = _u(values[5]) / 100
    if 6 in values:
        record.attributes["gosafe.vdop"] = _u(values[6]) / 100


def _binary_sys(record: _Record, data: bytes):
    names = {0: "gosafe.model", 1: "gosafe.firmware", 2: "gosafe.hardware"}
    for ident, value in _items(data):
        if ident in names:
            record.attributes[names[ident]] = value.decode("ascii", "replace")


def _binary_cot(record: _Record, data: bytes):
    for ident, value in _items(data):
        if ident == 0:
            record.attributes["odometer_m"] = _u(value)
        elif ident == 1:
            record.attributes["engine_hours_s"] = _u(value)


def _binary_dtt(record: _Record, data: bytes):
    names = {0: "gosafe.device_status", 2: "gosafe.geofence_low", 3: "gosafe.geofence_high",
             4: "gosafe.event_status", 5: "gosafe.packet_type"}
    for ident, value in _items(data):
        if ident == 1:
            record.io(_u(value))
        elif ident in names:
            # Printed as the text protocol prints them (0x020000 <-> "20000").
            record.attributes[names[ident]] = f"{_u(value):X}"


def _binary_adc(record: _Record, data: bytes):
    for j in range(0, len(data) - 1, 2):
        word = _u(data[j:j + 2])
        channel = word >> 12
        volts = round((word & 0x0FFF) * 110 / 4096 - 10, 2)
        record.attributes[_adc_name(channel)] = volts


_BINARY_BLOCKS = {
    "SYS": _binary_sys,
    "GPS": _binary_gps,
    "COT": _binary_cot,
    "ADC": _binary_adc,
    "DTT": _binary_dtt,
    "OBD": _obd,
}


def _binary_record(data: bytes, kind: int) -> Position:
    """
    One record body: C{time u32 [event u8] mask u16 blocks}.
    """
    event = bit(kind, 6)
    head = 7 if event else 6
    if len(data) < head:
        raise DecodeError("binary record too short")
    record = _Record()
    seconds = _u(data[:4])
    if seconds:
        record.time = _BINARY_EPOCH + timedelta(seconds=seconds)
    else:
        record.attributes["no_clock"] = True
    if event:
        record.event = f"{data[4]:02X}"
    mask = _u(data[head - 2:head])
    names = _EVENT_BLOCKS if event else _BLOCKS
    i = head
    for index in range(16):
        if not bit(mask, index):
            continue
        if i >= len(data):
            raise DecodeError(f"binary block {index} missing")
        size = data[i]
        block = data[i + 1:i + 1 + size]
        if len(block) < size:
            raise DecodeError(f"binary block {index} runs past the record")
        i += 1 + size
        name = names[index] if index < len(names) else f"block{index}"
        handler = _BINARY_BLOCKS.get(name)
        if handler is None:
            # GSM, IWD, ETD, FUL binary layouts are not documented: keep raw.
            record.attributes[f"gosafe.{name.lower()}"] = block.hex()
        else:
            handler(record, block)
    return record.position()


def _binary_records(body: bytes):
    kind = body[1]
    if kind & 0x3F == 1:
        # Layout A: one record right after the IMEI.
        return [_binary_record(body[9:], kind)]
    if kind & 0x3F == 4:
        # Layout B ("mixed", what a G79 sends): length-prefixed records, each
        # with its own type byte. Traccar reads a time right after the IMEI
        # here and gets it wrong.
        records, i = [], 9
        while i < len(body):
            if i + 2 > len(body):
                raise DecodeError("truncated record length")
            size = _u(body[i:i + 2])
            record = body[i + 2:i + 2 + size]
            if size < 1 or len(record) < size:
                raise DecodeError("record length beyond the frame")
            records.append(_binary_record(record[1:], record[0]))
            i += 2 + size
        return records
    # Heartbeat, SMS forward, transparent serial data: nothing to store.
    return []


# -- the plugin -----------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class GoSafeProtocol:
    """
    GoSafe text and binary frames over TCP and UDP.
    """

    name = "gosafe"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "gosafe.output": integer(0, 99),
        "gosafe.stop_level": choice("0", "1"),
    }

    def detect(self, head, transport):
        if not head:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        if head[0] == _BINARY_MARK:
            end = head.find(_MARK, 1)
            if end < 0:
                return Verdict.more() if transport == "tcp" and len(head) < MAX_FRAME else Verdict.no()
            try:
                _binary_body(head[:end + 1])
            except DecodeError:
                return Verdict.no()
            return Verdict.match(90)
        return _text_head(head, transport)

    def frame(self, buffer, transport):
        first = buffer[0]
        if first == _BINARY_MARK:
            if transport == "udp":
                return buffer, len(buffer)
            end = buffer.find(_MARK, 1)
            if end < 0:
                return (None, 0) if len(buffer) < MAX_FRAME else (None, _skip_to_start(buffer))
            try:
                _binary_body(buffer[:end + 1])
            except DecodeError:
                # Out of step (a lost start mark): the closing F8 may open the next frame.
                return None, end
            return buffer[:end + 1], end + 1
        if first == _TEXT_START[0]:
            if not _TEXT_START.startswith(buffer[:3]):
                return None, _skip_to_start(buffer)
            end = buffer.find(b"#")
            restart = buffer.find(_TEXT_START, 1, end if end >= 0 else len(buffer))
            if restart > 0:
                # A frame cut short before a new one began.
                return None, restart
            if end < 0:
                if transport == "udp":
                    return buffer, len(buffer)
                return (None, 0) if len(buffer) < MAX_FRAME else (None, _skip_to_start(buffer))
            consumed = end + 1
            while consumed < len(buffer) and buffer[consumed] in b"\r\n":
                consumed += 1
            return buffer[:end + 1], consumed
        return None, _skip_to_start(buffer)

    def decode(self, frame, context):
        if frame[:1] == _MARK:
            return self._decode_binary(frame)
        return self._decode_text(frame)

    def _decode_binary(self, data):
        device_id, records = None, []
        for frame in _binary_frames(data):
            body = _binary_body(frame)
            imei = f"{_u(body[2:9]):015d}"
            if device_id is not None and imei != device_id:
                raise DecodeError("two devices in one datagram")
            device_id = imei
            records += _binary_records(body)
        return DecodeResult(device_id=device_id, records=records, reply=REPLY)

    def _decode_text(self, frame):
        try:
            text = frame.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("non-ASCII byte in a text frame") from None
        match = _TEXT.match(text.rstrip("\r\n").removesuffix("#"))
        if match is None:
            raise DecodeError("not a *GSvv,IMEI frame")
        device_id, body = match.group(2), match.group(3)
        records, confirmations = [], []
        if body:
            first = body.split(",", 1)[0]
            if len(first) == 12 and first.isdigit():
                records = [_text_record(chunk.split(",")) for chunk in body.split("$") if chunk]
            elif first.startswith(("GPS:", "CLL:")):
                records = [_legacy_record(chunk.split(",")) for chunk in body.split("$") if chunk]
            else:
                # Not a time stamp: the device answers a command (e.g. "RST").
                confirmations = [Confirmation(token=None, success=True, reply=body)]
        return DecodeResult(device_id=device_id, records=records, reply=REPLY,
                            confirmations=confirmations)

    def encode(self, command, context):
        if command.type in ("engine_stop", "engine_resume"):
            # Single-source candidate (ioannco/traccar): DOO<output>;<level>,
            # 0 to stop, 1 to resume; the relay wiring decides, so both the
            # output and the stop level are per-device settings.
            output = context.setting("gosafe.output", "0")
            stop = context.setting("gosafe.stop_level", "0")
            if not output.isdigit() or stop not in ("0", "1"):
                raise EncodeError("gosafe.output must be a number and gosafe.stop_level 0 or 1")
            level = stop if command.type == "engine_stop" else str(1 - int(stop))
            return EncodedCommand(f"*GS06,DOO{output};{level}#".encode("ascii"))
        if command.type == "custom":
            return EncodedCommand(_custom(command.params))
        raise EncodeError(f"gosafe has no documented {command.type} command; use custom")


#: One text command frame, as C{custom} may send it: no second C{*}, C{#} or
#: record separator C{$} inside.
_ONE_FRAME = re.compile(rb"\*GS[0-9]{2},[ -\"%-)+-~]*#")


def _custom(params) -> bytes:
    data = custom_command_bytes(params)
    if not _ONE_FRAME.fullmatch(data):
        raise EncodeError("custom must be one frame *GSvv,...# of printable ASCII, with no other"
                          " *, # or $ inside")
    return data


gosafe = GoSafeProtocol()
