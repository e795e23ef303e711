# -*- test-case-name: tests.test_h02 -*-
"""
H02: SinoTrack ST-90x (ST-907L and family) and the many clones of the same
protocol. One connection carries C{*XX,id,TYPE,...#} text frames and C{$} BCD
binary frames that have neither a length nor a terminator, so the framer splits
binary frames on structure: a valid BCD core, then the start of the next frame.

Reference: trackport's H02 protocol notes, compiled from SinoTrack's documents and
public captures; "spec section N" below cites their numbering, section 0 being
the rules that settle conflicts between sources. docs/devices/ has the
operator's view.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.encoding import custom_command_bytes
from gateway.fields import (bcd, bit, ddmmyy_hhmmss, hemisphere, knots_to_kmh, nmea_degrees,
                            nmea_degrees_implied, utc)
from gateway.interfaces import (DecodeError, EncodeError, ICommandEncoder, IDecoder,
                                Outcome, Verdict)
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position
from gateway.settings import choice, flag

# -- grammar -----------------------------------------------------------------

#: The opening of a text frame (spec section 0, clarification 5).
_TEXT_HEAD = re.compile(
    rb"\*[A-Za-z]{2},[0-9]{0,20},(V[0-9A-Z]{0,3}|NBR|LINK|HTBT|XT|SMS|BS|BASE|)[,#]")
#: A prefix of L{_TEXT_HEAD}: the session may still become a text session.
_TEXT_PREFIX = re.compile(
    rb"\*(?:[A-Za-z](?:[A-Za-z](?:,(?:[0-9]{0,20}(?:,(?:V[0-9A-Z]{0,3}|N(?:BR?)?|L(?:I(?:NK?)?)?"
    rb"|H(?:T(?:BT?)?)?|XT?|S(?:MS?)?|B(?:A(?:SE?)?|S)?)?)?)?)?)?)?\Z")
#: The opening of a text frame with the maker code C{HQ}/C{hq} (spec section 0,
#: clarification 11): any type token, so a session opened with a type this
#: decoder does not know (C{ICCID}, C{IMSI}, ...) is still recognised.
_HQ_HEAD = re.compile(rb"\*(?:HQ|hq),[0-9]{1,20},([0-9A-Z]{1,10})[,#]")
#: A prefix of L{_HQ_HEAD}.
_HQ_PREFIX = re.compile(
    rb"\*(?:H(?:Q(?:,(?:[0-9]{1,20}(?:,[0-9A-Z]{0,10})?)?)?)?|h(?:q(?:,(?:[0-9]{1,20}(?:,[0-9A-Z]{0,10})?)?)?)?)?\Z")
#: The types L{_TEXT_HEAD} lists: those this decoder reads.
_KNOWN_TYPE = re.compile(r"V[0-9A-Z]{0,3}|NBR|LINK|HTBT|XT|SMS|BS|BASE|")
#: Where a text frame starts inside a stream.
_TEXT_START = re.compile(rb"\*[A-Za-z]{2},")
_STATUS = re.compile(r"[0-9A-Fa-f]{8}\Z")
_HHMMSS = re.compile(r"[0-9]{6}\Z")
_DEVICE_ID = re.compile(r"[0-9A-Za-z]{1,20}\Z")
#: ST-901L-4G writes 9999.9999 / 99999.9999 when it has no fix.
_PLACEHOLDER = re.compile(r"9{4,}\.?9*\Z")
_INTEGER = re.compile(r"-?[0-9]+\Z")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?\Z|\.[0-9]+\Z")
_DASHED = re.compile(r"-?([0-9]+)-([0-9]+(?:\.[0-9]+)?)\Z")

_STAR, _DOLLAR, _X, _HASH = 0x2A, 0x24, 0x58, 0x23
_CRLF = b"\r\n"

#: Lengths of binary frames seen in the field (spec section 2).
BINARY_LENGTHS = (32, 42, 45, 46, 47, 48)
#: The longest text frame before the framer gives up on finding its C{#}.
MAX_TEXT = 1024
#: Validity letters of text reports: C{0} is a "coding scheme" digit of V2/VI1
#: firmwares that report a fix.
_VALID = frozenset({"A", "0"})
_VALIDITY = frozenset({"A", "V", "B", "0", ""})

#: Battery byte of binary frames (spec section 6): 1-6 are levels, not
#: percent; 7-100 are percent; F1-F6 stand for 1-6 percent.
_BATTERY_LEVELS = {1: 0, 2: 10, 3: 20, 4: 60, 5: 80, 6: 100,
                   **{0xF0 + n: n for n in range(1, 7)}}

_MORE = Outcome.MORE
_NO = Outcome.NO
_OK = Outcome.MATCH


# -- binary core -----------------------------------------------------------------

def _core_outcome(data: bytes, id_bytes: int) -> Outcome:
    """
    Whether C{data} opens with the 29-byte binary core (spec section 6) when
    the device id takes C{id_bytes} bytes: every field BCD and in range.
    C{MORE} when C{data} ends before that is decided.
    """
    h = bcd(data[1:id_bytes + 20])
    id_digits = 2 * id_bytes - (1 if id_bytes == 8 else 0)  # the 8-byte IMEI has a pad nibble
    digits = h[:id_digits]
    if data[0] == _DOLLAR and digits and not digits.isdigit():
        return _NO
    t = 2 * id_bytes
    for end, ok in (
        (t + 6, _hhmmss_ok),
        (t + 12, _ddmmyy_ok),
        (t + 20, _latitude_ok),
        (t + 31, _longitude_ok),
        (t + 38, _speed_course_ok),
    ):
        if len(h) < end:
            return _MORE
        if not ok(h, end):
            return _NO
    return _OK


def _hhmmss_ok(h: str, end: int) -> bool:
    s = h[end - 6:end]
    return s.isdigit() and int(s[0:2]) < 24 and int(s[2:4]) < 60 and int(s[4:6]) < 60


def _ddmmyy_ok(h: str, end: int) -> bool:
    s = h[end - 6:end]
    return s.isdigit() and 1 <= int(s[0:2]) <= 31 and 1 <= int(s[2:4]) <= 12


def _latitude_ok(h: str, end: int) -> bool:
    s = h[end - 8:end]
    return s == "99999999" or (s.isdigit() and int(s[0:2]) <= 90 and int(s[2:4]) < 60)


def _longitude_ok(h: str, end: int) -> bool:
    s = h[end - 9:end]
    return s == "999999999" or (s.isdigit() and int(s[0:3]) <= 180 and int(s[3:5]) < 60)


def _speed_course_ok(h: str, end: int) -> bool:
    s = h[end - 6:end]
    return s.isdigit() and int(s[3:6]) <= 360


def _binary_id_bytes(data: bytes) -> Outcome | int:
    """
    How many bytes the id of the binary frame opening C{data} takes: 5, or 8
    for the 42-byte IMEI variant (tried only when the 5-byte reading fails,
    spec section 0.4). C{NO} when neither reading holds, C{MORE} when
    C{data} is too short to tell.
    """
    five = _core_outcome(data, 5)
    if five is _OK:
        return 5
    if data[0] == _X:
        return five
    eight = _core_outcome(data, 8)
    if eight is _OK:
        return 8
    return _MORE if _MORE in (five, eight) else _NO


# -- text helpers --------------------------------------------------------------

def _number(text: str) -> float:
    """
    Speed and course: decimal, maybe space-padded; empty means 0 (spec 5.1).
    """
    text = text.strip()
    if not text:
        return 0.0
    if not _DECIMAL.match(text):
        raise DecodeError(f"not a decimal number: {text!r}")
    return float(text)


def _coordinate(text: str, letter: str, letters: str, limit: float) -> Optional[float]:
    """
    One text coordinate in any of the encodings of spec section 5.8, signed by
    its hemisphere letter; L{None} for the no-fix placeholders.
    """
    text = text.strip()
    if not text or letter in ("", "0") or _PLACEHOLDER.match(text):
        return None
    if letter.upper() not in letters:
        raise DecodeError(f"hemisphere {letter!r} for coordinate {text!r}")
    dashed = _DASHED.match(text)
    if dashed:
        # Brazilian firmware: "-23-29.0095"; the dash is a separator, not a sign.
        minutes = float(dashed.group(2))
        if minutes >= 60:
            raise DecodeError(f"minutes out of range in coordinate {text!r}")
        value = int(dashed.group(1)) + minutes / 60.0
    elif "." not in text and len(text) >= 7:
        value = nmea_degrees_implied(text)
    else:
        value = nmea_degrees(text)
    if abs(value) > limit:
        raise DecodeError(f"coordinate out of range: {text!r}")
    return hemisphere(value, letter)


def _text_time(hhmmss: str, ddmmyy: str, attributes: dict):
    """
    The time of a text frame, or L{None} when the frame has none (empty
    fields, the all-zero date of firmwares without a clock fix) or when it is
    not a real time (seen: second 69); the raw fields are kept then.
    """
    if not hhmmss or not ddmmyy or ddmmyy == "000000":
        return None
    if _HHMMSS.match(hhmmss):
        try:
            return ddmmyy_hhmmss(ddmmyy, hhmmss)
        except DecodeError:
            pass
    attributes["h02.bad_time"] = f"{hhmmss},{ddmmyy}"
    return None


def _status_attributes(status: Optional[int], context, attributes: dict) -> List[str]:
    """
    Attributes and alarms of the 32-bit vehicle status word (spec section 7).

    The bits are negative logic (0 = active) and are levels repeated in every
    report, so an alarm is present in every record while its bit is clear.
    """
    if status is None:
        return []
    attributes["h02.status"] = f"{status:08X}"
    polarity = context.setting("h02.ignition", "low")
    if polarity in ("low", "high"):
        # Bit 10 is ACC. Its polarity is disputed (Traccar flipped it three
        # times); SinoTrack units drive with it clear, as the vendor's negative
        # logic says, so "low" (clear = on) is the default.
        attributes["ignition"] = bit(status, 10) == (polarity == "high")
    alarms = []
    if not bit(status, 0):
        alarms.append("vibration")
    if not bit(status, 1) or not bit(status, 18):
        alarms.append("sos")
    if not bit(status, 2):
        alarms.append("overspeed")
    if not bit(status, 19):
        alarms.append("power_cut")
    return alarms


def _status(text: str) -> Optional[int]:
    return int(text, 16) if _STATUS.match(text) else None


def _enabled(context, key: str) -> bool:
    return str(context.setting(key, "0")).lower() in ("1", "true", "yes", "on")


# -- the plugin ------------------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class H02Protocol:
    """
    H02 text and binary frames on one connection (TCP, or UDP datagrams).
    """

    name = "h02"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "set_interval", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "h02.ignition": choice("low", "high", "none"),
        "h02.time_sync": flag("1", "0"),
        "h02.interval_command": choice("S71", "D1"),
    }

    # -- detection ---------------------------------------------------------

    def detect(self, head: bytes, transport: str) -> Verdict:
        # A line end may trail the previous frame (the framer passes it over).
        head = head.lstrip(_CRLF)
        if not head:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        if head[0] == _STAR:
            if _TEXT_HEAD.match(head) or _HQ_HEAD.match(head):
                return Verdict.match(90)
            if transport == "tcp" and _text_prefix(head):
                return Verdict.more()
            return Verdict.no()
        if head[0] in (_DOLLAR, _X):
            layout = _binary_id_bytes(head)
            if layout is _MORE:
                return Verdict.more() if transport == "tcp" else Verdict.no()
            # The id and 18 bytes of BCD fields, each in range: an exact grammar.
            return Verdict.no() if layout is _NO else Verdict.match(90)
        return Verdict.no()

    # -- framing -----------------------------------------------------------

    def frame(self, buffer: bytes, transport: str) -> Tuple[Optional[bytes], int]:
        first = buffer[0]
        if first == _STAR:
            return self._frame_text(buffer)
        if first in (_DOLLAR, _X):
            return self._frame_binary(buffer, transport)
        if first in _CRLF:
            # The CR LF some firmwares write after "#", arriving in a later
            # read: part of the previous frame, not garbage to complain about.
            return b"", len(buffer) - len(buffer.lstrip(_CRLF))
        return None, _next_marker(buffer, 1)

    def _frame_text(self, buffer: bytes) -> Tuple[Optional[bytes], int]:
        if len(buffer) < 4:
            return (None, 0) if _text_prefix(buffer) else (None, _next_marker(buffer, 1))
        if not _TEXT_START.match(buffer):
            return None, _next_marker(buffer, 1)
        end = buffer.find(b"#", 1, MAX_TEXT)
        # A frame that starts before this one ended means this one was cut off
        # (a device reset mid-write): resynchronise on the newer frame.
        restart = _restart(buffer, end if end >= 0 else min(len(buffer), MAX_TEXT))
        if restart is not None:
            return None, restart
        if end < 0:
            return (None, 0) if len(buffer) < MAX_TEXT else (None, _next_marker(buffer, 1))
        consumed = end + 1
        # Some firmwares append CR LF; newlines inside the frame (SMS replies) stay.
        while consumed < len(buffer) and buffer[consumed] in _CRLF:
            consumed += 1
        return buffer[:end + 1], consumed

    def _frame_binary(self, buffer: bytes, transport: str) -> Tuple[Optional[bytes], int]:
        layout = _binary_id_bytes(buffer)
        if layout is _MORE:
            return None, 0
        if layout is _NO:
            return None, _next_marker(buffer, 1)
        if buffer[0] == _X:
            return (buffer[:32], 32) if len(buffer) >= 32 else (None, 0)
        n = len(buffer)
        if n < BINARY_LENGTHS[0]:
            return None, 0
        # No length, no terminator: the frame ends where the device's next
        # frame starts ("$" and the same id, an "X" frame, or a text frame),
        # else at one of the lengths seen in the field.
        own = b"$" + buffer[1:1 + layout]
        for p in range(BINARY_LENGTHS[0], min(n, BINARY_LENGTHS[-1] + 1)):
            following = _next_frame_at(buffer, p, own)
            if following is _OK:
                return buffer[:p], p
            if following is _MORE and p in BINARY_LENGTHS and transport == "tcp":
                # Only worth waiting for where a frame can end: elsewhere a
                # "$" or "*" is trailer data, and waiting would hold the frame
                # and its R12 back until the device sends again.
                return None, 0
        if n in BINARY_LENGTHS:
            return buffer, n
        if n < BINARY_LENGTHS[-1] and transport == "tcp":
            return None, 0
        # Trailing bytes that start no frame: the longest known length that
        # fits is the frame, the rest is skipped as garbage.
        size = max(length for length in BINARY_LENGTHS if length <= n)
        return buffer[:size], size

    # -- decoding ----------------------------------------------------------

    def decode(self, frame: bytes, context) -> DecodeResult:
        if not frame:
            raise DecodeError("empty frame")
        if frame[0] == _STAR:
            return self._decode_text(frame, context)
        if frame[0] in (_DOLLAR, _X):
            return self._decode_binary(frame, context)
        raise DecodeError(f"not an H02 frame (first byte {frame[0]:#04x})")

    def _decode_binary(self, frame: bytes, context) -> DecodeResult:
        layout = _binary_id_bytes(frame)
        if layout is _MORE:
            raise DecodeError(f"binary frame too short ({len(frame)} bytes)")
        if layout is _NO:
            raise DecodeError("binary frame fails the BCD time/date/coordinate checks")
        h = bcd(frame)
        device_id = h[2:2 + 2 * layout]
        if layout == 8:
            device_id = device_id[:15]
        t = 2 + 2 * layout
        time = ddmmyy_hhmmss(h[t + 6:t + 12], h[t:t + 6])
        flags = int(h[t + 31], 16)
        valid = bool(flags & 0x2)
        lat_text, lon_text = h[t + 12:t + 20], h[t + 22:t + 31]
        latitude = longitude = None
        if lat_text != "99999999" and lon_text != "999999999":
            latitude = int(lat_text[:2]) + int(lat_text[2:]) / 600000.0
            longitude = int(lon_text[:3]) + int(lon_text[3:]) / 600000.0
            if not flags & 0x4:
                latitude = -latitude
            if not flags & 0x8:
                longitude = -longitude
            if not valid and latitude == 0 and longitude == 0:
                latitude = longitude = None
        attributes = {}
        offset = layout + 1
        battery = frame[offset + 10]
        attributes["h02.battery"] = battery
        level = _BATTERY_LEVELS.get(battery, battery if 7 <= battery <= 100 else None)
        if level is not None:
            attributes["battery_level_pct"] = level
        status = int.from_bytes(frame[offset + 19:offset + 23], "big")
        alarms = _status_attributes(status, context, attributes)
        if layout == 5 and len(frame) in (45, 47):
            # Cell of the 45/47-byte trailer; its MCC matches the position's
            # country in every public sample (spec section 6).
            attributes["mcc"] = int.from_bytes(frame[37:39], "big")
            attributes["mnc"] = frame[39]
            attributes["lac"] = int.from_bytes(frame[40:42], "big")
            attributes["cell_id"] = int.from_bytes(frame[42:44], "big")
        record = Position(
            time=time, latitude=latitude, longitude=longitude,
            valid=valid and latitude is not None,
            speed_kmh=knots_to_kmh(int(h[t + 32:t + 35])), course=float(int(h[t + 35:t + 38])),
            alarm=alarms, attributes=attributes)
        reply = b""
        if frame[0] == _DOLLAR:
            # SinoTrack 4G units resend their stored frames until they get R12.
            reply = f"*HQ,{device_id},R12,{context.now():%H%M%S}#".encode("ascii")
        return DecodeResult(device_id=device_id, records=[record], reply=reply)

    def _decode_text(self, frame: bytes, context) -> DecodeResult:
        head = _TEXT_HEAD.match(frame) or _HQ_HEAD.match(frame)
        if head is None or frame[-1] != _HASH:
            raise DecodeError("not an H02 text frame")
        opening = head.group(0)
        maker, raw_id, kind = opening[1:-1].decode("ascii").split(",")
        device_id = raw_id or None
        rest = frame[len(opening):-1]
        if not _KNOWN_TYPE.fullmatch(kind):
            # A type this decoder does not read: it names the device, and
            # nothing more is known of it (no record, no reply).
            return DecodeResult(device_id=device_id)
        if kind in ("HTBT", "V0"):
            # The echo repeats the device's own maker code and type.
            return DecodeResult(device_id=device_id,
                                reply=f"*{maker},{raw_id},{kind}#".encode("ascii"))
        if kind in ("", "XT", "BS", "BASE"):
            return DecodeResult(device_id=device_id)
        if kind == "SMS":
            return DecodeResult(device_id=device_id, confirmations=[Confirmation(
                token=None, success=True, reply=rest.decode("utf-8", "replace"),
                command_type="custom")])
        if not rest.isascii():
            raise DecodeError("non-ASCII bytes in a text frame")
        body = rest.decode("ascii").split(",") if opening.endswith(b",") else []
        if kind == "V4":
            return self._confirmation(device_id, body, context)
        if kind == "NBR":
            return self._cells(device_id, kind, body, context)
        if kind == "LINK":
            return self._link(device_id, body, context)
        if kind == "V3":
            return self._cells_v3(device_id, body, context)
        if kind == "VP1":
            return DecodeResult(device_id=device_id, records=[_vp1(body)])
        record = _report(kind, body, context)
        reply = b""
        if kind == "V1" and device_id and _enabled(context, "h02.time_sync"):
            reply = f"*HQ,{device_id},V4,V1,{context.now():%Y%m%d%H%M%S}#".encode("ascii")
        return DecodeResult(device_id=device_id, records=[record], reply=reply)

    def _confirmation(self, device_id, body: List[str], context) -> DecodeResult:
        """
        V4: the reply words to a command, the time token the command carried,
        then a position report.
        """
        tail = None
        for i in range(2, len(body) - 1):
            if _HHMMSS.match(body[i - 1]) and _HHMMSS.match(body[i]) and body[i + 1] in _VALIDITY:
                tail = i
                break
        words = body if tail is None else body[:tail]
        if not words or not words[0]:
            raise DecodeError("V4 without the command it confirms")
        token = words[-1] if len(words) > 1 and _HHMMSS.match(words[-1]) else None
        success = not any(w.upper() in ("ERROR", "FAIL", "FAILED") for w in words[1:])
        reply = ",".join(words)
        records = []
        if tail is not None:
            try:
                records.append(_report("V4", body[tail:], context, {"h02.reply": reply}))
            except DecodeError:
                # The confirmation matters more than the position it carries:
                # keep it, with the unreadable position as the device sent it.
                reply = ",".join(body)
        confirmation = Confirmation(token=token, success=success, reply=reply,
                                    command_type=_CONFIRMED_TYPES.get(words[0]))
        return DecodeResult(device_id=device_id, records=records, confirmations=[confirmation])

    def _cells(self, device_id, kind: str, body: List[str], context) -> DecodeResult:
        """
        NBR: cell towers and the status word, no GPS position.
        C{hhmmss,MCC,MNC,ta,count,(LAC,CID,RSSI)*count,DDMMYY,status[,battery]}
        """
        if len(body) < 5 or not body[4].isdigit():
            raise DecodeError("NBR frame too short")
        count = int(body[4])
        end = 5 + 3 * count
        if len(body) < end + 2:
            raise DecodeError(f"NBR frame announces {count} cells it does not hold")
        attributes = {"mcc": _int(body[1]), "mnc": _int(body[2]),
                      "h02.cells": [body[i:i + 3] for i in range(5, end, 3)]}
        if len(body) > end + 2 and body[end + 2].isdigit():
            attributes["h02.battery"] = int(body[end + 2])
        alarms = _status_attributes(_status(body[end + 1]), context, attributes)
        record = Position(time=_text_time(body[0], body[end], attributes), alarm=alarms, event=kind,
                          attributes=attributes)
        reply = b""
        if device_id and _enabled(context, "h02.time_sync"):
            reply = f"*HQ,{device_id},V4,NBR,{context.now():%Y%m%d%H%M%S}#".encode("ascii")
        return DecodeResult(device_id=device_id, records=[record], reply=reply)

    def _cells_v3(self, device_id, body: List[str], context) -> DecodeResult:
        """
        V3: C{hhmmss,MCCMNC,count,(LAC,CID,RSSI,x)*count,battery,reboot,X,DDMMYY,status}.
        """
        if len(body) < 8 or not body[2].isdigit() or not body[1].isdigit():
            raise DecodeError("V3 frame too short")
        count = int(body[2])
        end = 3 + 4 * count
        if len(body) != end + 5:
            raise DecodeError(f"V3 frame announces {count} cells it does not hold")
        attributes = {"mcc": int(body[1][:3]), "mnc": _int(body[1][3:]),
                      "h02.cells": [body[i:i + 4] for i in range(3, end, 4)],
                      "h02.battery": body[end]}
        alarms = _status_attributes(_status(body[end + 4]), context, attributes)
        record = Position(time=_text_time(body[0], body[end + 3], attributes), alarm=alarms, event="V3",
                          attributes=attributes)
        return DecodeResult(device_id=device_id, records=[record])

    def _link(self, device_id, body: List[str], context) -> DecodeResult:
        """
        LINK: C{hhmmss,rssi,satellites,battery%,steps,turnovers,DDMMYY,status}.
        """
        if len(body) < 8:
            raise DecodeError("LINK frame too short")
        attributes = {"rssi": _int(body[1]), "satellites": _int(body[2]),
                      "battery_level_pct": _int(body[3]), "h02.steps": _int(body[4]),
                      "h02.turnovers": _int(body[5])}
        alarms = _status_attributes(_status(body[7]), context, attributes)
        record = Position(time=_text_time(body[0], body[6], attributes), alarm=alarms, event="LINK",
                          attributes=attributes)
        return DecodeResult(device_id=device_id, records=[record])

    # -- commands ----------------------------------------------------------

    def encode(self, command, context) -> EncodedCommand:
        params = command.params
        device_id = command.device_id
        if command.type == "custom":
            return _custom(params)
        if command.type not in self.commands:
            raise EncodeError(f"h02 has no {command.type} command")
        if not _DEVICE_ID.match(device_id):
            raise EncodeError(f"not an H02 device id: {device_id!r}")
        # The device echoes this token in its V4 reply: that is how the reply
        # is matched to the command.
        token = str(params.get("time_hhmmss") or f"{context.now():%H%M%S}")
        if not _HHMMSS.match(token):
            raise EncodeError(f"time_hhmmss must be six digits, not {token!r}")
        if command.type == "engine_stop":
            text = f"*HQ,{device_id},S20,{token},1,1#"
        elif command.type == "engine_resume":
            text = f"*HQ,{device_id},S20,{token},1,0#"
        else:
            seconds = str(params.get("seconds", ""))
            if not _INTEGER.match(seconds) or not 0 < int(seconds) <= 65535:
                raise EncodeError(f"set_interval needs seconds between 1 and 65535, not {seconds!r}")
            if context.setting("h02.interval_command", "S71") == "D1":
                text = f"*HQ,{device_id},D1,{token},{int(seconds)}#"
            else:
                text = f"*HQ,{device_id},S71,{token},22,{int(seconds)}#"
        return EncodedCommand(data=text.encode("ascii"), token=token)


#: Command codes of V4 replies that name the command type.
#: The command types a V4 reply to each command word answers.
_CONFIRMED_TYPES = {"S71": "set_interval", "D1": "set_interval",
                    "S20": ("engine_stop", "engine_resume")}
#: One command as C{custom} may send it: a frame, or SinoTrack SMS syntax.
_ONE_FRAME = re.compile(rb"\*[A-Za-z]{2},[ -\"$-)+-~]*#")
_ONE_SMS = re.compile(rb"[ -\"$-)+-~]+")


def _int(text: str) -> Optional[int]:
    text = text.strip()
    if not text:
        return None
    if not _INTEGER.match(text):
        raise DecodeError(f"not an integer: {text!r}")
    return int(text)


def _report(kind: str, f: List[str], context, attributes: Optional[dict] = None) -> Position:
    """
    A position report: C{hhmmss,S,lat,N,lon,E,speed,course,[battery,]DDMMYY[,status[,...]]}.
    """
    if len(f) < 9:
        raise DecodeError(f"{kind} report has {len(f)} fields, needs at least 9")
    validity = f[1].strip().upper()
    if validity not in _VALIDITY:
        raise DecodeError(f"validity {f[1]!r}")
    latitude = _coordinate(f[2], f[3], "NS", 90.0)
    longitude = _coordinate(f[4], f[5], "EW", 180.0)
    if latitude is None or longitude is None:
        latitude = longitude = None
    valid = validity in _VALID
    if not valid and latitude == 0 and longitude == 0:
        latitude = longitude = None
    attributes = dict(attributes or {})
    i = 8
    if len(f) > 9 and 1 <= len(f[8]) <= 3 and f[8].isdigit() and len(f[9]) == 6 and f[9].isdigit():
        # Optional battery field some firmwares put before the date.
        attributes["h02.battery"] = int(f[8])
        i = 9
    time = _text_time(f[0], f[i], attributes)
    rest = f[i + 1:]
    status = None
    if rest:
        status = _status(rest[0])
        if status is None and not rest[0] and len(rest) > 1 and _status(rest[-1]) is not None:
            # V19: empty status slot, phone number and ICCID, the status last.
            status = _status(rest[-1])
            attributes["h02.sim"] = rest[1:-1]
        elif len(rest) > 1:
            # Cells or odometer/fuel in firmware-specific radix and order:
            # kept raw (spec section 0.9).
            attributes["h02.cells"] = rest[1:]
    alarms = _status_attributes(status, context, attributes)
    return Position(
        time=time, latitude=latitude, longitude=longitude, valid=valid and latitude is not None,
        speed_kmh=knots_to_kmh(_number(f[6])), course=_number(f[7]),
        alarm=alarms, event=kind, attributes=attributes)


def _vp1(f: List[str]) -> Position:
    """
    VP1: a fix with a date but no time of day, or cell towers.
    """
    if not f:
        raise DecodeError("empty VP1 frame")
    if f[0] in ("A", "B"):
        if len(f) < 8:
            raise DecodeError("VP1 fix too short")
        latitude = _coordinate(f[1], f[2], "NS", 90.0)
        longitude = _coordinate(f[3], f[4], "EW", 180.0)
        if latitude is None or longitude is None:
            latitude = longitude = None
        attributes = {}
        date = f[7]
        if _HHMMSS.match(date) and date != "000000":
            day = utc(int(date[4:6]), int(date[2:4]), int(date[0:2]))
            attributes["date"] = f"{day:%Y-%m-%d}"
        return Position(time=None, latitude=latitude, longitude=longitude,
                        valid=latitude is not None,
                        speed_kmh=knots_to_kmh(_number(f[5])),
                        course=_number(f[6]), event="VP1", attributes=attributes)
    if len(f) < 6:
        raise DecodeError("VP1 cell frame too short")
    cells = ",".join(f[3:]).split("Y")
    attributes = {"mcc": _int(f[1]), "mnc": _int(f[2]),
                  "h02.cells": [c.split(",") for c in cells]}
    return Position(time=None, event="VP1", attributes=attributes)


def _custom(params) -> EncodedCommand:
    """
    Raw text (C{text}) or bytes (C{hex}): H02 commands of the operator's own,
    or SinoTrack SMS-syntax commands such as C{CXZT}, answered by an SMS frame.
    """
    data = custom_command_bytes(params)
    if not (_ONE_FRAME.fullmatch(data) or _ONE_SMS.fullmatch(data)):
        # A second '*' or '#' would start another command.
        raise EncodeError("custom must be one command: *XX,...# or SMS-syntax text, printable"
                          " ASCII with no other * or # inside")
    # An H02 command carries a time token the V4 reply echoes.
    match = re.match(rb"\*[A-Za-z]{2},[^,]*,[^,]+,([0-9]{6})[,#]", data)
    return EncodedCommand(data=data, token=match.group(1).decode("ascii") if match else None)


def _text_prefix(buffer: bytes, p: int = 0) -> bool:
    """
    Whether C{buffer[p:]} may still grow into the opening of a text frame.
    """
    return bool(_TEXT_PREFIX.match(buffer, p) or _HQ_PREFIX.match(buffer, p))


def _next_marker(buffer: bytes, start: int) -> int:
    """
    Where the next possible frame starts at or after C{start}, or the end.
    """
    found = [i for i in (buffer.find(b"*", start), buffer.find(b"$", start),
                         buffer.find(b"X", start)) if i >= 0]
    return min(found) if found else len(buffer)


def _next_frame_at(buffer: bytes, p: int, own: bytes) -> Outcome:
    """
    Whether another frame of the device whose binary frames open with C{own}
    (C{$} and its id) starts at C{buffer[p]}: C{MORE} when the buffer ends
    before that is decided.
    """
    marker = buffer[p]
    if marker == _DOLLAR:
        rest = buffer[p:p + len(own)]
        return _OK if rest == own else _MORE if own.startswith(rest) else _NO
    if marker == _STAR:
        if _TEXT_START.match(buffer, p):
            return _OK
        return _MORE if _text_prefix(buffer, p) else _NO
    if marker in _CRLF:
        # Line ends after a frame of a known length, and nothing else.
        return _OK if p in BINARY_LENGTHS and not buffer[p:].strip(_CRLF) else _NO
    if marker == _X:
        # X frames are rare, and 0x58 may be any trailer byte (a cell id):
        # only a whole 29-byte core counts, a partial one is not waited for.
        return _OK if _core_outcome(buffer[p:], 5) is _OK else _NO
    return _NO


def _restart(buffer: bytes, end: int) -> Optional[int]:
    """
    The start of another frame inside C{buffer[1:end]}, if any.
    """
    text = _TEXT_START.search(buffer, 1, end)
    if text is not None:
        return text.start()
    p = buffer.find(b"$", 1, end)
    while p >= 0:
        if _binary_id_bytes(buffer[p:]) in (5, 8):
            return p
        p = buffer.find(b"$", p + 1, end)
    return None


h02 = H02Protocol()
