# -*- test-case-name: tests.test_jt808 -*-
"""
JT/T 808, China's national standard for vehicle terminals (2011, 2013 and
2019 editions), spoken by road-transport terminals, dashcams and a very large
number of 2G/4G trackers (Jimi/Concox JT808 firmware, BSJ, Howen, ...).

A frame is C{7E header body check 7E} with C{7D 02} standing for C{7E} and
C{7D 01} for C{7D} inside; the check byte is the XOR of the un-escaped header
and body. The header names the terminal in every message, so there is no
login to wait for. Everything the terminal starts is answered with 0x8001
(0x8100 for a registration); the terminal's answers to our requests get
nothing.

Reference: trackport's JT/T 808 protocol notes, compiled from the standard's editions and public
captures; "spec section N" below cites their numbering, section 0 being the
rules that settle conflicts between sources.
"""

from __future__ import annotations

import functools
import re
import struct
from datetime import timedelta
from typing import List, Optional, Tuple

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import luhn_valid, xor8
from gateway.fields import bcd_int, bit, is_bcd, utc
from gateway.hexdump import hexdump
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position

log = Logger()

_FLAG = 0x7E
_FLAG_BYTE = b"\x7e"
_ESCAPE = b"\x7d"

#: Longest wire frame: 2 flags + 2 x (21-byte header + 1,023-byte body + check).
MAX_WIRE = 2 + 2 * (21 + 1023 + 1)
#: Bytes we wait for a closing C{7E} before giving the buffer up (spec §2).
MAX_WAIT = 4096
#: Largest body the 10-bit length field can announce.
MAX_BODY = 1023
#: Bytes of subpackaged bodies kept per session while the rest arrives.
MAX_REASSEMBLY = 64 * 1024

_VERSION_FLAG = 1 << 14
_SUBPACKAGED = 1 << 13
_ENCRYPTED = 1 << 10

#: The terminal's own answers to platform requests: no 0x8001 (spec §9.2, §0.8).
_NO_REPLY = frozenset({0x0001, 0x0104, 0x0107, 0x0201, 0x0302, 0x0500, 0x0805})
#: Messages whose subpackaged bodies are put back together (they hold records).
_REASSEMBLED = frozenset({0x0200, 0x0201, 0x0500, 0x0704})
_MEDIA = 0x0801

#: Alarm flag bits (spec §7.2); bits 20 and 21 depend on item 0x12.
_ALARM_BITS = ((0, "sos"), (1, "overspeed"), (5, "gps_antenna_cut"), (6, "gps_antenna_cut"),
               (7, "low_power"), (8, "power_cut"), (19, "parking"), (26, "general"),
               (28, "movement"), (29, "accident"), (30, "accident"), (31, "door"))

_RESULTS = {0: "ok", 1: "failure", 2: "message error", 3: "not supported", 4: "alarm confirmed"}

#: Command replies whose subject is one command type only.
_TYPED_REPLIES = {0x8201: "position_request", 0x8103: "set_interval"}

#: Default time zone of every JT808 time: Beijing (spec §7.1).
DEFAULT_TIMEZONE = "+08:00"
_TIMEZONE = re.compile(r"(?:UTC|GMT)?([+-]?)([0-9]{1,2})(?::?([0-9]{2}))?\Z")

#: Immobilizer styles (spec §11.2): how engine_stop/engine_resume are sent.
IMMOBILIZER_STYLES = ("f0", "64", "8500", "text", "jimi", "a006", "vl300")
#: The SMS-style relay commands of the text styles.
_RELAY_TEXT = {True: "RELAY,1#", False: "RELAY,0#"}
#: Parameter 0x0029: default report interval in seconds (spec §11.5).
_REPORT_INTERVAL = 0x0029


def _u16(data: bytes, offset: int = 0) -> int:
    return (data[offset] << 8) | data[offset + 1]


def _u32(data: bytes, offset: int = 0) -> int:
    return int.from_bytes(data[offset:offset + 4], "big")


# -- settings ----------------------------------------------------------------

def timezone_setting(text: str) -> str:
    """
    Validate a C{jt808.timezone}: C{+8}, C{0}, C{-3}, C{+5:30}, C{UTC+08:00}...
    Returns it as C{+HH:MM}.
    """
    match = _TIMEZONE.match(text.strip().upper())
    if match is None:
        raise ValueError(f"not a UTC offset like +8, -3 or +5:30: {text!r}")
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    total = (hours * 60 + minutes) * (-1 if sign == "-" else 1)
    if minutes >= 60 or not -12 * 60 <= total <= 14 * 60:
        raise ValueError(f"UTC offset out of range: {text!r}")
    return f"{'-' if total < 0 else '+'}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def immobilizer_setting(text: str) -> str:
    """
    Validate a C{jt808.immobilizer} style (spec §11.2).
    """
    style = text.strip().lower()
    if style not in IMMOBILIZER_STYLES:
        raise ValueError(f"immobilizer style must be one of {', '.join(IMMOBILIZER_STYLES)}")
    return style


@functools.lru_cache(maxsize=64)
def _parse_offset(text: str) -> timedelta:
    try:
        normal = timezone_setting(text)
    except ValueError as e:
        raise DecodeError(f"jt808.timezone setting: {e}") from None
    minutes = int(normal[1:3]) * 60 + int(normal[4:6])
    return timedelta(minutes=-minutes if normal[0] == "-" else minutes)


def _offset(context, device_id: Optional[str]) -> timedelta:
    return _parse_offset(context.setting("jt808.timezone", DEFAULT_TIMEZONE, device_id=device_id))


# -- framing -----------------------------------------------------------------

def unescape(data: bytes) -> Optional[bytes]:
    """
    Undo C{7D 02} -> C{7E} and C{7D 01} -> C{7D}; L{None} when a C{7D} is
    followed by anything else.
    """
    if _ESCAPE not in data:
        return data
    escapes = data.count(_ESCAPE)
    if escapes != data.count(b"\x7d\x01") + data.count(b"\x7d\x02"):
        return None
    return data.replace(b"\x7d\x02", _FLAG_BYTE).replace(b"\x7d\x01", _ESCAPE)


def escape(content: bytes) -> bytes:
    """
    A wire frame: C{content} escaped between two C{7E}.
    """
    return b"\x7e" + content.replace(_ESCAPE, b"\x7d\x01").replace(_FLAG_BYTE, b"\x7d\x02") + b"\x7e"


def header_length(attributes: int) -> int:
    """
    Header bytes for a body-attribute word: 12 (2011/2013) or 17 (2019), plus
    4 when the message is subpackaged.
    """
    return (17 if attributes & _VERSION_FLAG else 12) + (4 if attributes & _SUBPACKAGED else 0)


def _check(content: Optional[bytes]) -> Optional[str]:
    """
    What is wrong with un-escaped C{content} as a frame, or L{None}.
    """
    if content is None:
        return "7D not followed by 01 or 02"
    if len(content) < 4:
        return "shorter than a header"
    if len(content) < header_length(_u16(content, 2)) + 1:
        return "shorter than its header (spec §0.7)"
    if xor8(content[:-1]) != content[-1]:
        return f"check code {content[-1]:02x}, computed {xor8(content[:-1]):02x}"
    return None


def unwrap(frame: bytes) -> bytes:
    """
    The checked content (header, body, check byte) of a wire frame.

    @raise DecodeError: when it is not one well-formed JT808 frame.
    """
    if len(frame) < 2 or frame[0] != _FLAG or frame[-1] != _FLAG or _FLAG_BYTE in frame[1:-1]:
        raise DecodeError("not one 7E ... 7E frame")
    content = unescape(frame[1:-1])
    problem = _check(content)
    if problem:
        raise DecodeError(problem)
    return content


@attrs.frozen
class Header:
    """
    A message header (spec §4).

    @ivar version: the 2019 protocol version byte, L{None} for 2011/2013.
    @ivar number: the terminal number as sent (6 or 10 BCD bytes), echoed in
        every reply.
    @ivar total: packet count of a subpackaged message, else 0.
    """

    id: int
    attributes: int
    version: Optional[int]
    number: bytes
    serial: int
    total: int
    index: int
    body: bytes


def parse(content: bytes) -> Header:
    """
    The header and body of checked content (see L{unwrap}).
    """
    attributes = _u16(content, 2)
    if attributes & _VERSION_FLAG:
        version, number, at = content[4], content[5:15], 15
    else:
        version, number, at = None, content[4:10], 10
    serial = _u16(content, at)
    total = index = 0
    if attributes & _SUBPACKAGED:
        total, index = _u16(content, at + 2), _u16(content, at + 4)
    return Header(_u16(content), attributes, version, number, serial, total, index,
                  content[header_length(attributes):-1])


def device_id(number: bytes) -> str:
    """
    The device id of a terminal number (spec §4.5): the digits without leading
    zeros; a 6-byte number with non-decimal nibbles is a binary IMEI (48-bit
    value plus its Luhn digit, as Jimi/Concox units send it).
    """
    if is_bcd(number):
        return str(bcd_int(number))
    if len(number) == 6:
        body = str(int.from_bytes(number, "big"))
        return next(body + d for d in "0123456789" if luhn_valid(body + d))
    return number.hex()


def message(message_id: int, version: Optional[int], number: bytes, serial: int,
            body: bytes) -> bytes:
    """
    A platform message for the terminal C{number} (2019 header when C{version}
    is not L{None}), escaped for the wire.
    """
    attributes = len(body)
    head = struct.pack(">HH", message_id, attributes | (_VERSION_FLAG if version is not None else 0))
    if version is not None:
        head += bytes([version])
    content = head + number + struct.pack(">H", serial) + body
    return escape(content + bytes([xor8(content)]))


def _next_serial(context) -> int:
    # Our own counter, per session, for replies and commands alike (spec §9.1).
    serial = context.state.get("serial", 0)
    context.state["serial"] = (serial + 1) & 0xFFFF
    return serial


def _reply(context, header: Header, message_id: int, body: bytes) -> bytes:
    return message(message_id, header.version, header.number, _next_serial(context), body)


def _general_response(context, header: Header) -> bytes:
    return _reply(context, header, 0x8001, struct.pack(">HHB", header.serial, header.id, 0))


# -- location reports --------------------------------------------------------

def _time(stamp: bytes, offset: timedelta):
    digits = stamp.hex()
    if not digits.isdigit():
        return None
    # YYMMDDhhmmss as one number, cut by divmod rather than six slices.
    rest, second = divmod(int(digits), 100)
    rest, minute = divmod(rest, 100)
    rest, hour = divmod(rest, 100)
    rest, day = divmod(rest, 100)
    year, month = divmod(rest, 100)
    try:
        return utc(year, month, day, hour, minute, second) - offset
    except DecodeError:
        return None


def _walk(data: bytes) -> Tuple[List[Tuple[int, bytes]], bool]:
    """
    The C{id, length, value} items of C{data}, and whether they end exactly at
    its end (spec §0.2-0.3).
    """
    items, i, end = [], 0, len(data)
    while i < end:
        if i + 2 > end or i + 2 + data[i + 1] > end:
            return items, False
        items.append((data[i], data[i + 2:i + 2 + data[i + 1]]))
        i += 2 + data[i + 1]
    return items, True


def _carscop_tail(data: bytes, attributes: dict) -> None:
    # Carscop CCTR-830G-4G: 18 fixed bytes instead of items (spec §0.4).
    attributes["odometer_m"] = _u32(data, 4) * 1000
    attributes["battery_v"] = _u16(data, 8) / 10
    attributes["rssi"] = data[14]


def _fuel(value: bytes, attributes: dict) -> None:
    word = _u16(value)
    if word & 0x8000:
        # Some vendors flag a percentage with bit 15 (not the standard): kept raw.
        attributes["jt808.fuel_raw"] = word
    else:
        attributes["fuel_l"] = word / 10


def _overspeed(value: bytes, attributes: dict) -> None:
    attributes["jt808.overspeed_area_type"] = value[0]
    if len(value) == 5:
        attributes["jt808.overspeed_area_id"] = _u32(value, 1)


def _area(value: bytes, attributes: dict) -> None:
    attributes["jt808.area_type"] = value[0]
    attributes["jt808.area_id"] = _u32(value, 1)
    attributes["jt808.area_direction"] = value[5]


def _route_section(value: bytes, attributes: dict) -> None:
    attributes["jt808.route_section_id"] = _u32(value)
    attributes["jt808.route_section_time_s"] = _u16(value, 4)
    attributes["jt808.route_section_result"] = value[6]


def _analog(value: bytes, attributes: dict) -> None:
    word = _u32(value)
    attributes["jt808.ad0"] = word & 0xFFFF
    attributes["jt808.ad1"] = word >> 16


def _set(name, convert):
    def item(value: bytes, attributes: dict) -> None:
        attributes[name] = convert(value)
    return item


#: Standard items, decoded only at their table length (spec §0.1, §7.4).
_ITEMS = {
    (0x01, 4): _set("odometer_m", lambda v: _u32(v) * 100),
    (0x02, 2): _fuel,
    (0x03, 2): _set("jt808.vss_speed_kmh", lambda v: _u16(v) / 10),
    (0x04, 2): _set("jt808.alarm_event_id", _u16),
    (0x05, 30): _set("jt808.tyre_pressure", lambda v: [None if b == 0xFF else b for b in v]),
    (0x06, 2): _set("temp1_c", lambda v: int.from_bytes(v, "big", signed=True)),
    (0x11, 1): _overspeed,
    (0x11, 5): _overspeed,
    (0x12, 6): _area,
    (0x13, 7): _route_section,
    (0x25, 4): _set("jt808.signal_status", _u32),
    (0x2A, 2): _set("jt808.io_status", _u16),
    (0x2B, 4): _analog,
    (0x30, 1): _set("rssi", lambda v: v[0]),
    (0x31, 1): _set("satellites", lambda v: v[0]),
}


#: The basic block: alarm flags, status, latitude, longitude, altitude, speed,
#: course (the time follows).
_BASIC = struct.Struct(">IIIIhHH")


def location(body: bytes, offset: timedelta, archive: Optional[bool] = None) -> Position:
    """
    One record from a 0x0200 body (the basic block and its additional items).
    """
    if len(body) < 28:
        raise DecodeError(f"location body of {len(body)} bytes, 28 needed")
    alarm, status, lat, lon, altitude, speed, course = _BASIC.unpack_from(body)
    # The status bits, tested in place.
    a = {"ignition": bool(status & 1), "jt808.oil_cut": bool(status & 0x400),
         "jt808.power_cut_relay": bool(status & 0x800), "jt808.doors_locked": bool(status & 0x1000),
         "jt808.alarm": alarm, "jt808.status": status}
    doors = (status >> 13) & 0x1F
    if doors:
        a["jt808.doors"] = doors
    time = _time(body[22:28], offset)
    if time is None:
        a["jt808.time_invalid"] = True
    latitude = -lat / 1e6 if status & 4 else lat / 1e6
    longitude = -lon / 1e6 if status & 8 else lon / 1e6
    valid = bool(status & 2)
    if status & 0x20:
        # The standard's "scrambled by a confidentiality plug-in"; many units
        # set the bit with plain coordinates, so they are reported as sent.
        a["jt808.encrypted_position"] = True
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        a["jt808.bad_coordinates"] = True
        latitude = longitude = None
        valid = False

    tail = body[28:]
    items, clean = _walk(tail)
    if not clean and len(tail) == 18:
        _carscop_tail(tail, a)
        items = []
    elif not clean:
        a["jt808.truncated_items"] = True
    for ident, value in items:
        handler = _ITEMS.get((ident, len(value)))
        if handler is not None:
            handler(value, a)
    if archive is not None:
        a["archive"] = archive

    alarms = []
    if alarm:
        alarms = [name for index, name in _ALARM_BITS if bit(alarm, index)]
        direction = a.get("jt808.area_direction")
        if (bit(alarm, 20) or bit(alarm, 21)) and direction in (0, 1):
            alarms.append("geofence_enter" if direction == 0 else "geofence_exit")
    return Position(time, latitude, longitude, valid, speed / 10, float(course), float(altitude),
                    alarms, None, a)


def batch(body: bytes, offset: timedelta) -> List[Position]:
    """
    The records of a 0x0704 batch upload (spec §8), as far as its items go.
    """
    if len(body) < 3:
        raise DecodeError("batch upload shorter than its count and type")
    count, archive = _u16(body), body[2] == 1
    records, i = [], 3
    while i + 2 <= len(body):
        size = _u16(body, i)
        item = body[i + 2:i + 2 + size]
        if size < 28 or len(item) < size:
            log.warn("jt808 batch: item of {size} bytes at offset {at} is cut short; "
                     "{n} of {count} items decoded", size=size, at=i, n=len(records), count=count)
            break
        records.append(location(item, offset, archive))
        i += 2 + size
    if len(records) != count:
        log.warn("jt808 batch announces {count} items, holds {n}", count=count, n=len(records))
    return records


# -- the plugin --------------------------------------------------------------

def _confirmation(header: Header, reply_serial: int, reply_id: int, result: int,
                  text: str) -> Confirmation:
    return Confirmation(token=_token(reply_id, reply_serial), success=result == 0,
                        reply=f"0x{header.id:04x} to 0x{reply_id:04x} #{reply_serial}: {text}",
                        command_type=_TYPED_REPLIES.get(reply_id))


def _token(message_id: int, serial: int) -> str:
    # The terminal quotes our serial and (but for 0x0201/0x0500) our message id.
    return f"{message_id:04x}/{serial:04x}"


@implementer(IPlugin, IDecoder, ICommandEncoder)
class Jt808Protocol:
    """
    JT/T 808 frames over TCP or UDP.
    """

    name = "jt808"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "reboot",
                          "set_interval", "custom"})
    settings_spec = {"jt808.timezone": timezone_setting, "jt808.immobilizer": immobilizer_setting}

    # -- detection and framing ---------------------------------------------

    def detect(self, head, transport):
        # A doubled start (or the end of a frame we missed) before the first frame.
        while head[:2] == b"\x7e\x7e":
            head = head[1:]
        if not head:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        if head[0] != _FLAG:
            return Verdict.no()
        end = head.find(_FLAG_BYTE, 1)
        if end < 0:
            return Verdict.more() if transport == "tcp" and len(head) < MAX_WIRE else Verdict.no()
        content = unescape(head[1:end])
        if _check(content) is not None or content[0] & 0x80:
            return Verdict.no()
        attributes = _u16(content, 2)
        if attributes & 0x3FF != len(content) - header_length(attributes) - 1:
            return Verdict.no()
        return Verdict.match(90)

    def frame(self, buffer, transport):
        if buffer[0] != _FLAG:
            start = buffer.find(_FLAG_BYTE)
            return None, start if start >= 0 else len(buffer)
        end = buffer.find(_FLAG_BYTE, 1)
        if end < 0:
            return (None, 0) if len(buffer) < MAX_WAIT else (None, len(buffer))
        if end == 1:
            # 7E 7E: the end of one frame and the start of the next.
            return b"", 1
        if _check(unescape(buffer[1:end])) is not None:
            # Out of step or damaged: the closing 7E may open the next frame.
            return None, end
        return buffer[:end + 1], end + 1

    # -- decoding ----------------------------------------------------------

    def decode(self, frame, context):
        header = parse(unwrap(frame))
        device = device_id(header.number)
        context.state["terminal"] = (header.number, header.version)
        length = header.attributes & 0x3FF
        if length != len(header.body):
            log.warn("jt808 {device}: body length field {length}, body {size} bytes: {hex}",
                     device=device, length=length, size=len(header.body), hex=hexdump(frame))
        if header.total:
            return self._packet(header, device, context)
        records, confirmations = self._body(header, header.body, device, context)
        if header.id == 0x0100:
            reply = _reply(context, header, 0x8100, struct.pack(">HB", header.serial, 0)
                           + header.number.hex().encode("ascii"))
        elif header.id == _MEDIA:
            reply = self._media_response(context, header, header.body[:4])
        elif header.id in _NO_REPLY or header.id & 0x8000:
            # Answers to us, and platform ids (an echo of our own frames).
            reply = b""
        else:
            reply = _general_response(context, header)
        return DecodeResult(device_id=device, records=records, reply=reply,
                            confirmations=confirmations)

    def _body(self, header: Header, body: bytes, device: str, context):
        """
        The records and command confirmations of one whole message body.
        """
        if header.attributes & _ENCRYPTED:
            # RSA bodies (not seen from trackers): acknowledged, not read.
            log.warn("jt808 {device}: encrypted 0x{id:04x} body not decoded", device=device,
                     id=header.id)
            return [], []
        if header.id == 0x0200:
            return [location(body, _offset(context, device))], []
        if header.id == 0x0704:
            return batch(body, _offset(context, device)), []
        if header.id in (0x0201, 0x0500):
            if len(body) < 2:
                raise DecodeError(f"0x{header.id:04x} without a reply serial")
            record = location(body[2:], _offset(context, device))
            request = 0x8201 if header.id == 0x0201 else 0x8500
            what = "position" if header.id == 0x0201 else "vehicle control done"
            return [record], [_confirmation(header, _u16(body), request, 0, what)]
        if header.id == 0x0001:
            if len(body) < 5:
                raise DecodeError("general response shorter than 5 bytes")
            reply_serial, reply_id, result = struct.unpack_from(">HHB", body)
            text = _RESULTS.get(result, f"result {result}")
            return [], [_confirmation(header, reply_serial, reply_id, result, text)]
        return [], []

    def _packet(self, header: Header, device: str, context) -> DecodeResult:
        """
        One packet of a subpackaged message: acknowledged on arrival (spec §0.9),
        kept until the message is whole when it holds records.
        """
        if not 1 <= header.index <= header.total:
            raise DecodeError(f"packet {header.index} of {header.total}")
        if header.id == _MEDIA:
            if header.index == 1:
                context.state["media"] = header.body[:4]
            reply = b""
            if header.index == header.total:
                reply = self._media_response(context, header, context.state.pop("media", b""))
            return DecodeResult(device_id=device, reply=reply)
        records, confirmations = [], []
        if header.id & 0x8000:
            return DecodeResult(device_id=device)
        if header.id in _REASSEMBLED:
            parts = context.state.get("parts")
            if header.index == 1 or parts is None or parts[0] != (header.id, header.total):
                parts = context.state["parts"] = ((header.id, header.total), {})
            bodies = parts[1]
            bodies[header.index] = header.body
            if sum(len(b) for b in bodies.values()) > MAX_REASSEMBLY:
                del context.state["parts"]
                raise DecodeError("subpackaged message larger than we keep")
            if len(bodies) == header.total:
                del context.state["parts"]
                whole = b"".join(bodies[i] for i in range(1, header.total + 1))
                records, confirmations = self._body(header, whole, device, context)
        return DecodeResult(device_id=device, records=records, confirmations=confirmations,
                            reply=_general_response(context, header))

    def _media_response(self, context, header: Header, media_id: bytes) -> bytes:
        # 0x8800: multimedia ID, no packet to resend (spec §9.4).
        if len(media_id) != 4:
            return b""
        return _reply(context, header, 0x8800, media_id + b"\x00")

    # -- commands ----------------------------------------------------------

    def encode(self, command, context):
        terminal = context.state.get("terminal")
        if terminal is None:
            # Commands go out on a session the device has spoken on, whose
            # header they repeat; without one (checking a command before it is
            # queued) the 2013 header is made from the device id.
            device = command.device_id or ""
            if not (device.isascii() and device.isdigit() and len(device) <= 12):
                raise EncodeError("no JT808 frame from this device on this session yet")
            terminal = (bytes.fromhex(device.zfill(12)), None)
        number, version = terminal
        kind, params = command.type, command.params

        def send(message_id: int, body: bytes) -> EncodedCommand:
            if len(body) > MAX_BODY:
                raise EncodeError(f"command body of {len(body)} bytes, {MAX_BODY} at most")
            serial = _next_serial(context)
            return EncodedCommand(message(message_id, version, number, serial, body),
                                  token=_token(message_id, serial))

        if kind in ("engine_stop", "engine_resume"):
            style = context.setting("jt808.immobilizer", "f0")
            try:
                style = immobilizer_setting(style)
            except ValueError as e:
                raise EncodeError(str(e)) from None
            stop = kind == "engine_stop"
            if style == "f0":
                return send(0x8105, b"\xf0" if stop else b"\xf1")
            if style == "64":
                return send(0x8105, b"\x64" if stop else b"\x65")
            if style == "vl300":
                return send(0x8105, b"#0;1" if stop else b"#0;0")
            if style == "8500":
                if version is None:
                    return send(0x8500, b"\x01" if stop else b"\x00")
                return send(0x8500, struct.pack(">HHB", 1, 0x0001, 0 if stop else 1))
            if style == "a006":
                try:
                    now = context.now() + _offset(context, command.device_id)
                except DecodeError as e:
                    raise EncodeError(str(e)) from None
                return send(0xA006, (b"\x01" if stop else b"\x00")
                            + bytes.fromhex(f"{now:%y%m%d%H%M%S}"))
            text = _RELAY_TEXT[stop].encode("ascii")
            return send(*_text_command(style, version, text))
        if kind == "position_request":
            return send(0x8201, b"")
        if kind == "reboot":
            return send(0x8105, b"\x04")
        if kind == "set_interval":
            seconds = str(params.get("seconds", ""))
            if not (seconds.isascii() and seconds.isdigit()) or not 0 < int(seconds) < 1 << 32:
                raise EncodeError(f"set_interval needs whole seconds above 0, not {seconds!r}")
            return send(0x8103, struct.pack(">BIBI", 1, _REPORT_INTERVAL, 4, int(seconds)))
        if kind == "custom":
            if "hex" in params:
                return _custom_frame(params["hex"])
            if "text" not in params:
                raise EncodeError("custom needs a text or hex parameter")
            style = context.setting("jt808.immobilizer", "f0")
            return send(*_text_command("jimi" if style == "jimi" else "text", version,
                                       _command_text(params["text"])))
        raise EncodeError(f"jt808 cannot encode {kind}")


def _command_text(text: str) -> bytes:
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise EncodeError("custom text must be one line of printable characters")
    try:
        return text.encode("gbk")
    except UnicodeEncodeError:
        raise EncodeError("custom text has characters GBK cannot encode") from None


def _text_command(style: str, version: Optional[int], text: bytes) -> Tuple[int, bytes]:
    """
    An SMS-style text command: 0x8900 pass-through type F0 (Jimi), else a
    0x8300 text message flagged 01 (2019: text type 2, service).
    """
    if style == "jimi":
        return 0x8900, b"\xf0" + text
    return 0x8300, (b"\x01" if version is None else b"\x01\x02") + text


def _custom_frame(text: str) -> EncodedCommand:
    """
    An operator-built frame, sent unchanged once it proves to be exactly one
    well-formed platform message; its own id and serial are the token.
    """
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise EncodeError(f"custom hex is not hex: {text!r}") from None
    try:
        header = parse(unwrap(data))
    except DecodeError as e:
        raise EncodeError(f"custom hex is not one JT808 frame: {e}") from None
    if not header.id & 0x8000:
        raise EncodeError(f"custom hex holds terminal message 0x{header.id:04x}, not a command")
    if header.attributes & 0x3FF != len(header.body):
        raise EncodeError("custom hex: the body length field disagrees with the body")
    return EncodedCommand(data, token=_token(header.id, header.serial))


jt808 = Jt808Protocol()
