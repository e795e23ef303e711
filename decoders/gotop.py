# -*- test-case-name: tests.test_gotop -*-
"""
GOTOP's text protocol (GPRS protocol V5.0 of the TL201/TL206/VT108, kept by
later firmwares: Farnear, TL403, 4G units); target device the GOTOP S7.

Uplink, one message per C{#...#}, no length, no checksum, never acknowledged::

    #<IMEI>,<type>,<A|V>,DATE:yymmdd,TIME:hhmmss,LAT:dd.dddN,LOT:ddd.dddE,Speed:ddd.d,<status>[,<extensions>]#

Downlink commands are C{:<password><code><data>#}; the device answers with a
C{CMD-<code>} message (or C{ ERROR!}) that carries a position.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import List, Optional, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.context import Context
from gateway.encoding import custom_command_bytes
from gateway.fields import check_coordinates, hemisphere, utc
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position
from gateway.settings import choice, pattern

#: Longest body accepted; Traccar caps at 1024, the longest real frame is 450 bytes.
MAX_FRAME = 2048

DEFAULT_PASSWORD = "123456"

#: Detection decodes the head without a session: no settings, no clock.
_DETECTION = Context()

# IMEI and message type: the part of every message that tells it is GOTOP's.
# The IMEI may not be glued to digits before it (garbage in front of a body).
_IMEI_TYPE = re.compile(
    rb"(?<![0-9])([0-9]{10,16}),( ?ERROR!|CMD-[A-Z0-9]+|ALM-[A-Z0-9]+(?:-[0-9]+)?)(,|\Z)")
# What a TCP head that has not reached the end of the type yet may look like.
_PARTIAL = re.compile(
    rb"[0-9]{0,16}\Z|[0-9]{10,16},(?:C(?:M(?:D(?:-[A-Z0-9]*)?)?)?"
    rb"|A(?:L(?:M(?:-[A-Z0-9]*(?:-[0-9]*)?)?)?)?| ?(?:E(?:R(?:R(?:O(?:R!?)?)?)?)?)?)\Z")
_LEADING_DELIMITERS = re.compile(rb"[#\r\n]*")

_IMEI = re.compile(r"[0-9]{10,16}")
_TYPE = re.compile(r"ERROR!|CMD-[A-Z0-9]+|ALM-[A-Z0-9]+(?:-[0-9]+)?")
_DIGITS6 = re.compile(r"[0-9]{6}")
_LATITUDE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,10})?)([NSns])")
_LONGITUDE = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,10})?)([EWew])")
_SPEED = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,6})?")
_STATUS = re.compile(r"((?:[0-9X]{1,3}-)*)([0-9]{1,3})-([0-9]{1,3})")
_DIRECTION = re.compile(r"[0-9]{1,3}")
_DECIMAL = re.compile(r"-?[0-9]{1,6}\.[0-9]{1,6}")
_NUMBER = re.compile(r"-?[0-9]{1,6}(?:\.[0-9]{1,6})?")
_HDOP_FARNEAR = re.compile(r"[0-9]{2}\.[0-9]{2}")
_CELL = re.compile(r"([0-9]{3})([0-9]{2,3})-([0-9A-Fa-f]{1,8})-([0-9A-Fa-f]{1,8})")
_RADIO_LIST = re.compile(r"(WIFI|BLE):\{(.*)\}", re.IGNORECASE)
_RADIO = re.compile(r"([0-9A-Fa-f]{2}(?:[-:][0-9A-Fa-f]{2}){5})&(-?[0-9]{1,4})")
_UTC_OFFSET = re.compile(r"([+-])([0-9]{1,2})(?::?([0-9]{2}))?")
_COMMAND = re.compile(r":([0-9]{6})([^#]*)#")
_COMMAND_CODE = re.compile(r"([A-Z])([0-9]?)")
_GEOFENCE = re.compile(r"B[0-9]*-([0-9]+)")
_MCC_MNC = re.compile(r"[0-9]{1,3}")

# CMD- messages the device sends on its own (report, heartbeat, "GPRS
# connected", SOS key); every other CMD-<code> answers the command <code>.
_UNSOLICITED = frozenset({"T", "X", "D", "KEY"})
# Alarm letter after "ALM-" (V5.0 document, TL403 firmware); B (geofence) is
# handled apart. F (fully charged) and U (upgrade done) are notices, no alarm.
_ALARMS = {"A": "sos", "C": "overspeed", "D": "low_battery", "H": "movement",
           "M": "fall_down", "N": "fall_down", "F": None, "U": None}


def _tokens(text: str) -> List[str]:
    """
    Split a body on commas, except inside C{{...}} (WIFI/BLE lists hold commas).
    """
    if "{" not in text:
        return text.split(",")
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif c == "," and not depth:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _value(token: str, *labels: str) -> str:
    """
    The value of a C{LABEL:value} field whose label some firmwares leave out.
    """
    label, sep, value = token.partition(":")
    if not sep:
        return token.strip()
    if label.strip().upper() not in labels:
        raise DecodeError(f"expected a {labels[0]}: field, got {token!r}")
    return value.strip()


def _coordinate(text: str, pattern, what: str) -> Optional[float]:
    if not text:
        return None
    m = pattern.fullmatch(text)
    if m is None:
        raise DecodeError(f"bad {what} {text!r}")
    return hemisphere(float(m.group(1)), m.group(2))


def _utc_offset(setting: Optional[str]) -> timedelta:
    """
    The device clock's offset from UTC, after an C{L} (time zone) command.
    """
    if not setting:
        return timedelta(0)
    m = _UTC_OFFSET.fullmatch(setting.strip())
    if m is None or int(m.group(2)) > 14 or int(m.group(3) or 0) > 59:
        raise DecodeError(f"bad setting gotop.utc_offset={setting!r} (want e.g. +08 or -05:30)")
    offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0))
    return -offset if m.group(1) == "-" else offset


def _fix_time(date: str, clock: str, offset: timedelta):
    if not date or not clock or not date.strip("0"):
        return None  # the GPS never had a fix: no time to report
    if not (_DIGITS6.fullmatch(date) and _DIGITS6.fullmatch(clock)):
        raise DecodeError(f"bad date/time {date!r} {clock!r}")
    local = utc(int(date[0:2]), int(date[2:4]), int(date[4:6]),
                int(clock[0:2]), int(clock[2:4]), int(clock[4:6]))
    return local - offset


def _status(status: str, attributes: dict) -> None:
    """
    Battery % and GSM level are the last two numbers; flags may precede them.
    """
    m = _STATUS.fullmatch(status)
    if m is None:
        if status:
            attributes["gotop.status"] = status
        return
    attributes["battery_level_pct"] = int(m.group(2))
    attributes["rssi"] = int(m.group(3))
    flags = m.group(1)[:-1]
    if not flags:
        return
    parts = flags.split("-")
    if len(parts) == 3 and all(p in ("0", "1") for p in parts):
        # VT108: ACC, external power, door.
        attributes["ignition"] = parts[0] == "1"
        attributes["gotop.external_power"] = parts[1] == "1"
        attributes["door"] = parts[2] == "1"
    else:
        attributes["gotop.flags"] = flags


def _radios(body: str) -> Optional[list]:
    entries = [e.strip() for e in body.split(",") if e.strip()]
    out = []
    for entry in entries:
        m = _RADIO.fullmatch(entry)
        if m is None:
            return None
        out.append({"mac": m.group(1).lower().replace("-", ":"), "rssi": int(m.group(2))})
    return out


def _extensions(ext: List[str], attributes: dict) -> Tuple[Optional[float], Optional[float]]:
    """
    Read what follows the status into C{attributes}: V5.0 C{Direction,Cell};
    Farnear C{hdop[,WIFI,BLE]}; the 4G variant C{altitude,hdop,serving~cell,
    neighbour~cells...}; anything else is kept raw in C{gotop.extra}.

    @return: C{(course, altitude_m)}.
    """
    ext = [t.strip() for t in ext]
    course = altitude = None
    guessed = []
    extra = []
    i = 0
    if (len(ext) >= 3 and _NUMBER.fullmatch(ext[0]) and _DECIMAL.fullmatch(ext[1])
            and "~" in ext[2]):
        # Tested before Direction: an altitude printed without decimals would
        # otherwise pass for a course. V5.0's Direction is followed by a
        # MCCMNC-LAC-CID cell, never by a decimal and a ~ list.
        altitude = float(ext[0])
        attributes["hdop"] = float(ext[1])
        i = 2
    elif ext and _DIRECTION.fullmatch(ext[0]) and int(ext[0]) <= 360:
        course = float(int(ext[0]))
        i = 1
    elif ext and _HDOP_FARNEAR.fullmatch(ext[0]):
        # Farnear's <HH.HH>: the same shape as the 4G variant's hdop; no
        # document names it.
        attributes["hdop"] = float(ext[0])
        guessed.append("hdop")
        i = 1
    neighbours = []
    for token in ext[i:]:
        radio = _RADIO_LIST.fullmatch(token)
        cell = _CELL.fullmatch(token)
        if radio is not None:
            entries = _radios(radio.group(2))
            if entries is None:
                extra.append(token)
            else:
                attributes["gotop." + radio.group(1).lower()] = entries
        elif cell is not None and "mcc" not in attributes:
            attributes["mcc"] = int(cell.group(1))
            attributes["mnc"] = int(cell.group(2))
            attributes["lac"] = int(cell.group(3), 16)
            attributes["cell_id"] = int(cell.group(4), 16)
        elif "~" in token and "gotop.serving_cell" not in attributes:
            attributes["gotop.serving_cell"] = token
            parts = token.split("~")
            # MCC~MNC~cell~PCI~EARFCN~RSRP~RSRQ~RSSI~SINR, by analogy with
            # Quectel's AT+QENG output (no document says so).
            if (len(parts) == 9 and "mcc" not in attributes
                    and _MCC_MNC.fullmatch(parts[0]) and _MCC_MNC.fullmatch(parts[1])):
                attributes["mcc"] = int(parts[0])
                attributes["mnc"] = int(parts[1])
                guessed += ["mcc", "mnc"]
        elif "~" in token:
            neighbours.append(token)
        elif token:
            extra.append(token)
    if neighbours:
        attributes["gotop.neighbour_cells"] = neighbours
    if extra:
        attributes["gotop.extra"] = extra
    if guessed:
        attributes["gotop.guessed"] = guessed
    return course, altitude


def _alarm(kind: str) -> Tuple[str, ...]:
    """
    Alarm names for a message type (spec section 0.4 for geofences).
    """
    if kind == "CMD-KEY":
        return ("sos",)
    if not kind.startswith("ALM-"):
        return ()
    code = kind[4:]
    if code.startswith("B"):
        m = _GEOFENCE.fullmatch(code)
        if m is None:
            return ("general",)  # fence number only: enter or exit is the fence's setting
        # Parity is the last digit's; int() of the whole would refuse a
        # number longer than Python's digit limit.
        return ("geofence_enter",) if int(m.group(1)[-1]) % 2 else ("geofence_exit",)
    name = _ALARMS.get(code[:1], "general")
    return (name,) if name else ()


def _command_code(text: str) -> Optional[str]:
    """
    The code the device echoes as C{CMD-<code>} for a command body (what
    follows the password): the letter, plus the digit where the digit is part
    of the command's name rather than its first parameter: V5.0's C{A<n>},
    C{T<n>}, C{U<n>}, and the TL403 firmware's C{M2}/C{M4} (heartbeat, GPS
    mode) and C{L1} (clock), answered C{CMD-M2}, C{CMD-M4}, C{CMD-L1}. V5.0's
    C{M0}/C{M1} (reports off/on) are answered C{CMD-M}.
    """
    m = _COMMAND_CODE.match(text)
    if m is None:
        return None
    letter, digit = m.groups()
    if letter in "ATUL" or (letter == "M" and digit not in ("", "0", "1")):
        return letter + digit
    return letter


def _relay_codes(context, device_id: Optional[str]) -> Tuple[str, str]:
    """
    (stop, resume) codes. The V5.0 document contradicts itself on T1/T0; two
    of its three statements make T1 cut the engine, the default here.
    """
    polarity = context.setting("gotop.relay_polarity", "normal", device_id=device_id)
    if polarity == "normal":
        return "T1", "T0"
    if polarity == "inverted":
        return "T0", "T1"
    raise EncodeError(f"bad setting gotop.relay_polarity={polarity!r} (normal or inverted)")


def _interval(seconds: int) -> str:
    """
    C{nnn<S|M|H>} for an interval: 3 digits, S and M up to 255, H up to 90.
    """
    if seconds < 1:
        raise EncodeError(f"interval {seconds} s: must be at least 1 s")
    if seconds <= 255:
        return f"{seconds:03d}S"
    if seconds % 60 == 0 and seconds // 60 <= 255:
        return f"{seconds // 60:03d}M"
    if seconds % 3600 == 0 and seconds // 3600 <= 90:
        return f"{seconds // 3600:03d}H"
    raise EncodeError(f"interval {seconds} s cannot be sent: use 1-255 s, whole minutes up to "
                      "255 min or whole hours up to 90 h")


#: One command as C{custom} may send it.
_ONE_CUSTOM = re.compile(rb":[0-9]{6}[ -\"$-~]+#")


@implementer(IPlugin, IDecoder, ICommandEncoder)
class GotopProtocol:
    name = "gotop"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request",
                          "set_interval", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "gotop.password": pattern(r"[0-9]{6}", "6 digits"),
        "gotop.relay_polarity": choice("normal", "inverted"),
        "gotop.utc_offset": pattern(r"[+-](?:0?[0-9]|1[0-4])(?::[0-5][0-9])?", "an offset such as +08 or -05:30"),
    }

    # -- detection and framing ------------------------------------------

    def detect(self, head: bytes, transport: str) -> Verdict:
        body = head[1:] if head[:1] == b"#" else head
        end = body.find(b"#")
        complete = end >= 0 or transport == "udp"
        if end >= 0:
            body = body[:end]
        m = _IMEI_TYPE.match(body)
        if m is None or (not complete and not m.group(3)):
            # Wialon IPS (#L#), TLT-2H (#<digits>#), GPS103 (##,) fail here.
            if not complete and len(body) < MAX_FRAME and _PARTIAL.match(body):
                return Verdict.more()
            return Verdict.no()
        if not complete:
            return Verdict.match(60)
        try:
            self.decode(body, _DETECTION)
        except DecodeError:
            return Verdict.match(50)
        return Verdict.match(90)

    def frame(self, buffer: bytes, transport: str):
        start = _LEADING_DELIMITERS.match(buffer).end()
        end = buffer.find(b"#", start)
        if end < 0:
            if transport != "udp":
                return (None, len(buffer)) if len(buffer) - start > MAX_FRAME else (None, 0)
            if start == len(buffer):
                return None, start
            end = len(buffer)  # a datagram needs no closing '#' to be whole
        consumed = min(end + 1, len(buffer))
        while consumed < len(buffer) and buffer[consumed] in b"\r\n":
            consumed += 1
        body = buffer[start:end].rstrip(b"\r\n")
        if len(body) > MAX_FRAME:
            return None, consumed
        m = _IMEI_TYPE.search(body)
        if m is None:
            return None, consumed
        if m.start() > 0:
            return None, start + m.start()  # garbage glued before a body
        return body, consumed

    # -- decoding ---------------------------------------------------------

    def decode(self, frame: bytes, context) -> DecodeResult:
        text = frame.strip(b"#\r\n").decode("latin-1")
        tokens = _tokens(text)
        if len(tokens) < 2 or not _IMEI.fullmatch(tokens[0]):
            raise DecodeError(f"not a GOTOP message (no IMEI and type): {text[:40]!r}")
        imei, kind = tokens[0], tokens[1].strip()
        if not _TYPE.fullmatch(kind):
            raise DecodeError(f"unknown message type {kind!r}")
        alarm = _alarm(kind)
        data = tokens[2:]
        if any(t.strip() for t in data):
            records = (self._position(imei, kind, alarm, data, context),)
        elif kind.startswith("ALM-") or alarm:
            records = (Position(time=None, alarm=alarm, event=kind),)  # an alarm without a fix
        else:
            records = ()
        return DecodeResult(device_id=imei, records=records,
                            confirmations=self._confirmations(kind, text))

    def _position(self, imei, kind, alarm, data, context) -> Position:
        if len(data) < 6:
            raise DecodeError(f"truncated {kind} message: {len(data)} fields after the type")
        fix = data[0].strip()
        if fix not in ("A", "V"):
            raise DecodeError(f"bad fix flag {fix!r}")
        offset = _utc_offset(context.setting("gotop.utc_offset", None, device_id=imei))
        time = _fix_time(_value(data[1], "DATE"), _value(data[2], "TIME"), offset)
        latitude = _coordinate(_value(data[3], "LAT"), _LATITUDE, "latitude")
        longitude = _coordinate(_value(data[4], "LOT", "LON"), _LONGITUDE, "longitude")
        if latitude is None or longitude is None or (latitude == 0 and longitude == 0):
            latitude = longitude = None
        else:
            check_coordinates(latitude, longitude)
        speed = _value(data[5], "SPEED")
        if speed and not _SPEED.fullmatch(speed):
            raise DecodeError(f"bad speed {speed!r}")
        attributes: dict = {}
        if len(data) > 6:
            _status(data[6].strip(), attributes)
        course, altitude = _extensions(data[7:], attributes)
        return Position(
            time=time, latitude=latitude, longitude=longitude, valid=fix == "A",
            speed_kmh=float(speed) if speed else None, course=course, altitude_m=altitude,
            alarm=alarm, event=kind, attributes=attributes)

    def _confirmations(self, kind: str, text: str) -> Tuple[Confirmation, ...]:
        if kind == "ERROR!":
            # The device rejected a command; it does not say which.
            return (Confirmation(token=None, success=False, reply=text),)
        if not kind.startswith("CMD-") or kind[4:] in _UNSOLICITED:
            return ()
        # The echoed code is the encoder's token; no command type is given, so
        # that a custom command with the same code (custom text=F) matches too.
        return (Confirmation(token=kind[4:], success=True, reply=text),)

    # -- commands ---------------------------------------------------------

    def encode(self, command, context) -> EncodedCommand:
        params = command.params
        device_id = command.device_id
        password = params.get("password") or context.setting(
            "gotop.password", DEFAULT_PASSWORD, device_id=device_id)
        if not _DIGITS6.fullmatch(str(password)):
            raise EncodeError(f"the device password must be 6 digits, not {password!r}")
        kind = command.type
        if kind == "position_request":
            body = "F"
        elif kind in ("engine_stop", "engine_resume"):
            stop, resume = _relay_codes(context, device_id)
            body = stop if kind == "engine_stop" else resume
        elif kind == "set_interval":
            body = self._set_interval(params)
        elif kind == "custom":
            return self._custom(params, password)
        else:
            raise EncodeError(f"gotop has no {kind} command")
        return EncodedCommand(f":{password}{body}#".encode("ascii"), token=_command_code(body))

    def _set_interval(self, params) -> str:
        try:
            seconds = int(params["seconds"])
        except (KeyError, TypeError, ValueError) as e:
            raise EncodeError("set_interval needs seconds=<whole number>") from e
        enabled = str(params.get("enabled", "true")).lower() not in ("0", "false", "no", "off")
        return f"M{int(enabled)},{_interval(seconds)}"

    def _custom(self, params, password: str) -> EncodedCommand:
        if ("text" in params) == ("hex" in params):
            raise EncodeError("custom needs one of text=... or hex=...")
        data = custom_command_bytes(params)
        if "text" in params and not data.startswith(b":"):
            data = b":" + password.encode("ascii") + data + b"#"
        if not _ONE_CUSTOM.fullmatch(data):
            # A '#' inside would end this command and start another.
            raise EncodeError("custom must be one command: :<6-digit password><command># or the"
                              " command alone, printable ASCII without '#' inside")
        m = _COMMAND.fullmatch(data.decode("latin-1"))
        token = _command_code(m.group(2)) if m else None
        # Something that is not a command gets no answer from the device.
        return EncodedCommand(data, token=token, expects_reply=token is not None)


gotop = GotopProtocol()
