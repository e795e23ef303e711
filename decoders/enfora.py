# -*- test-case-name: tests.test_enfora,tests.test_skypatrol -*-
"""
Legacy SkyPatrol / Enfora "API" messages (TT8750, TT8750+, TT8740): two
plugins, one per payload kind, over one message format.

Every message starts with an Enfora API header (4 bytes, or 5 on the TT8750+,
possibly followed by an optional header). UDP datagrams stand alone; on TCP
every message is prefixed by its length (counting the length bytes). The
modem answers AT commands with a command-type-5 message.

  - C{skypatrol}: binary payloads whose fields are chosen by a 32-bit report
    mask, sent in the message when the device is configured with mask bit 27.
  - C{enfora}: ASCII payloads: Parm1 right-justified in 10 columns, the modem
    id (IMEI) right-justified in 22, configured fields and an NMEA C{GPRMC}
    sentence; keep-alives.

A binary report without its mask (the TT8750 "compressed" layout) cannot be
decoded: it is recognised as C{skypatrol} on API number 5, where Traccar's
skypatrol decoder takes binary reports, and as C{enfora} otherwise.

Reference: trackport's SkyPatrol/Enfora protocol notes ("spec section N"
below), compiled from the Enfora API documents and public captures. The
device expects no reply,
unless it runs an output event that asks for a UDP acknowledgement
(per-device settings C{skypatrol.udp_ack}, C{enfora.udp_ack}).
"""

from __future__ import annotations

import re

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import xor8
from gateway.fields import (bit, check_coordinates, ddmmyy_hhmmss, hemisphere, knots_to_kmh,
                            nmea_degrees, optional_float, utc)
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position
from gateway.settings import flag, integer, pattern

#: Largest message accepted; a full-mask binary report is 143 bytes, ASCII
#: reports are 100-150 bytes.
MAX_FRAME = 1024

#: josefd8's acknowledgement for UDP output events that ask for one.
UDP_ACK = bytes.fromhex("000a0100") + b"ACK"

_REPORT = 0x02
_AT_COMMAND = 0x04
_AT_RESPONSE = 0x05
_TCP_REPORT = 0x08

#: Option header sizes a 5-byte header carries: the report mask, the identity.
_OPTION_SIZES = (4, 17)
#: The API number Traccar's skypatrol decoder takes binary reports on (spec §4.1).
_BINARY_API = 0x0005


def _u(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _printable(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b in (0x0D, 0x0A, 0x00) for b in data)


# -- the API message, shared by both plugins ---------------------------------------

class _Message:
    """
    An Enfora API message split into header parts and payload.

    C{message_type} is L{None} for a 4-byte header (TT8750), else the high
    nibble of the fourth byte (0 keep-alive, 1 report).
    """

    __slots__ = ("api", "command", "message_type", "options", "payload")

    def __init__(self, data: bytes):
        if len(data) < 4:
            raise DecodeError("message shorter than its API header")
        self.api, self.command = _u(data[0:2]), data[2]
        if self.api > 0xFF or self.command not in (_REPORT, _AT_RESPONSE, _TCP_REPORT):
            raise DecodeError("not an Enfora API header")
        if data[3] == 0 and not (len(data) > 4 and data[4] in _OPTION_SIZES and len(data) >= 5 + data[4]):
            # 4-byte header (TT8750): its option size is 0 and the payload,
            # text or binary, starts right away. A 5-byte header of message
            # type 0 is told apart by an option size it uses (spec §3).
            self.message_type, self.options, self.payload = None, b"", data[4:]
            return
        if len(data) < 5 or data[3] >> 4 > 1:
            raise DecodeError("not an Enfora API header")
        size = data[4]
        if len(data) < 5 + size:
            raise DecodeError("optional header beyond the message")
        self.message_type = data[3] >> 4
        self.options = data[5:5 + size]
        self.payload = data[5 + size:]


def _message(frame: bytes, transport: str) -> _Message:
    """
    The API message of a frame; raises L{DecodeError}.
    """
    return _Message(frame[2:] if transport == "tcp" else frame)


def _plausible_start(rest: bytes) -> bool:
    # While a TCP message is incomplete: API number < 256 and a known command type.
    return (len(rest) < 1 or rest[0] == 0) and \
        (len(rest) < 3 or rest[2] in (_REPORT, _AT_RESPONSE, _TCP_REPORT))


def _leading_message(head: bytes, transport: str, smallest: int):
    """
    The API message at the start of C{head}, or the L{Verdict} to give while
    there is none: on TCP the first two bytes must be the whole message's
    length, at least C{smallest}.
    """
    if transport == "tcp":
        if len(head) < 2:
            return Verdict.more()
        size = _u(head[:2])
        if not smallest <= size <= MAX_FRAME:
            return Verdict.no()
        if len(head) < size:
            return Verdict.more() if _plausible_start(head[2:]) else Verdict.no()
        head = head[2:size]
    try:
        return _Message(head)
    except DecodeError:
        return Verdict.no()


def _identity(options: bytes):
    # The 17-byte option header seen in the wild: 01 <15 ASCII digits> 06.
    digits = options[1:16]
    if len(options) == 17 and digits.isdigit():
        return digits.decode("ascii")
    return None


def _at_reply(payload: bytes) -> Confirmation:
    """
    The modem's answer to an AT command (C{OK}, C{ERROR}, or text): it
    confirms the oldest unanswered command of the device.
    """
    text = " ".join(line.strip() for line in payload.decode("ascii", "replace").splitlines()
                    if line.strip(" \x00"))
    return Confirmation(token=None, success="ERROR" not in text, reply=text.strip("\x00 "))


def _udp_reply(context, setting: str, device_id) -> bytes:
    # Only a unit whose output event asks for an acknowledgement wants one.
    if context.transport == "udp" and context.setting(setting, "false", device_id=device_id) == "true":
        return UDP_ACK
    return b""


def _at_command(api: int, header: bytes, text: str, transport: str) -> EncodedCommand:
    """
    An AT command as an API message: C{<api> 04 <header> <text>}, behind its
    length on TCP.
    """
    try:
        message = api.to_bytes(2, "big") + bytes([_AT_COMMAND]) + header + text.encode("ascii")
    except UnicodeEncodeError:
        raise EncodeError("AT commands are ASCII") from None
    if transport == "tcp":
        # The 2-byte length counts itself.
        message = (len(message) + 2).to_bytes(2, "big") + message
    return EncodedCommand(message)


def _number_setting(context, name: str, default: str) -> str:
    value = context.setting(name, default)
    if not value.isdigit():
        raise EncodeError(f"{name} must be a number")
    return value


class _EnforaApi:
    """
    What both plugins share: the transports, the framing of API messages, and
    commands as AT commands. A plugin names its C{commands} and provides
    C{_at_text(kind, context)} for those other than C{custom}, and
    C{_wrap(text, kind, context)} for its API header.
    """

    transports = frozenset({"tcp", "udp"})

    def encode(self, command, context):
        if command.type == "custom":
            text = command.params.get("text")
            if not text:
                raise EncodeError("custom needs a text parameter (an AT command)")
            if not all(" " <= c <= "~" for c in text) or ";" in text:
                # CR, LF or ';' would put a second AT command in the message.
                raise EncodeError("custom must be one AT command: printable ASCII, no CR, LF or ';'")
        elif command.type in self.commands:
            text = self._at_text(command.type, context)
        else:
            raise EncodeError(f"{self.name} has no documented {command.type} command; use custom")
        return self._wrap(text, command.type, context)

    def frame(self, buffer, transport):
        if transport == "udp":
            return buffer, len(buffer)
        if len(buffer) < 2:
            return None, 0
        size = _u(buffer[:2])
        if not 6 <= size <= MAX_FRAME:
            # Out of step: drop a byte and look for a sane length again.
            return None, 1
        if len(buffer) < size:
            return None, 0
        return buffer[:size], size


# -- skypatrol: binary masked reports (TT8750+) ------------------------------------

#: Mask bit -> field size, in wire order; bit 23 (unit id) is placed right
#: after Parm1 and replaces bit 2 (modem id) (spec §0.3).
_FIELDS = ((1, 4), (23, 8), (2, 22), (3, 2), (4, 2), (5, 2), (7, 1), (8, 3), (9, 1),
           (10, 4), (11, 4), (12, 2), (13, 2), (14, 3), (15, 3), (16, 1), (17, 2),
           (20, 4), (21, 4), (22, 6), (24, 2), (25, 18), (26, 54), (28, 2))


def _layout(mask: int):
    """
    The (bit, offset, size) of every field the mask selects, and the total.
    """
    out, offset = [], 0
    for index, size in _FIELDS:
        if bit(mask, index) and not (index == 2 and bit(mask, 23)):
            out.append((index, offset, size))
            offset += size
    return out, offset


def _mask(message: _Message, context):
    """
    The report mask and where the fields start: from the message, or the
    device's configured C{skypatrol.mask} when it sends none.
    """
    options, payload = message.options, message.payload
    if len(options) == 4:
        return _u(options), payload
    if len(options) > 4 and len(payload) >= 4 and _layout(_u(payload[:4]))[1] == len(payload) - 4:
        # An identity option header (01 <IMEI> 06) with the mask leading the payload.
        return _u(payload[:4]), payload[4:]
    configured = context.setting("skypatrol.mask") if context is not None else None
    if configured:
        try:
            return int(configured, 16), payload
        except ValueError:
            raise DecodeError(f"skypatrol.mask is not hex: {configured!r}") from None
    return None, payload


def _maskless_binary(message: _Message) -> bool:
    """
    A binary report that does not carry its mask (the TT8750 "compressed"
    layout, or a TT8750+ without mask bit 27): recognised, not decodable
    without the device's configuration.
    """
    return not _printable(message.payload) and _mask(message, None)[0] is None


def _coordinate(raw: int) -> float:
    # DDDMM.MMMM x 10^4; "negative" values count down from 0xFFFFFFFF.
    negative = raw > 0x7FFFFFFF
    magnitude = 0xFFFFFFFF - raw if negative else raw
    degrees, minutes = divmod(magnitude, 1_000_000)
    value = degrees + minutes / 10_000 / 60
    return -value if negative else value


def _cells(data: bytes, attributes):
    # Observed layout (spec §4.1 bit 26): MCC, MNC as hex digits, serving
    # LAC, CID, ARFCN, level, timing advance, then 6 neighbour slots.
    mcc, mnc = data[0:2].hex(), data[2:4].hex()
    if mcc.isdigit() and mnc.isdigit() and _u(data[4:8]):
        attributes.update({"mcc": int(mcc), "mnc": int(mnc), "lac": _u(data[4:6]),
                           "cell_id": _u(data[6:8]), "skypatrol.cell_level": data[10]})
    neighbours = [{"lac": _u(data[i:i + 2]), "cell_id": _u(data[i + 2:i + 4]),
                   "skypatrol.level": data[i + 6]}
                  for i in range(12, 54, 7) if _u(data[i:i + 4])]
    if neighbours:
        attributes["skypatrol.neighbours"] = neighbours


def _binary_report(payload: bytes, mask: int):
    """
    The device id and the record of a binary masked report.
    """
    layout, size = _layout(mask)
    if len(payload) < size or payload[size:].strip(b"\x00"):
        raise DecodeError(f"payload of {len(payload)} bytes does not fit mask {mask:08x} ({size} bytes)")
    f = {index: payload[offset:offset + length] for index, offset, length in layout}
    a = {}
    device_id = None
    for index in (23, 2):
        if index in f:
            device_id = f[index].decode("ascii", "replace").strip(" \x00") or None
    date, clock = f.get(8), f.get(14)
    time = None
    # An all-zero date is a GPS that has not had a fix yet: no time, not an error.
    if date and clock and any(date):
        time = utc(date[2], date[1], date[0], clock[0], clock[1], clock[2])
    if 22 in f and any(f[22]):
        rtc = f[22]
        stamp = utc(rtc[0], rtc[1], rtc[2], rtc[3], rtc[4], rtc[5])
        a["skypatrol.rtc"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        # The message clock stands in only when there is no GPS time at all.
        time = time or stamp
    latitude = longitude = None
    if 10 in f and 11 in f:
        latitude, longitude = _coordinate(_u(f[10])), _coordinate(_u(f[11]))
        check_coordinates(latitude, longitude)
    valid = 9 in f and f[9][0] == 1
    if 3 in f:
        a["skypatrol.io_direction"] = f[3][0]
        a["inputs"] = f[3][1]
        a["ignition"] = bit(f[3][1], 0)
    for index, name in ((4, "adc1_v"), (5, "adc2_v")):
        if index in f:
            a[name] = _u(f[index]) / 1000
    for index, name in ((7, "skypatrol.function"), (16, "satellites"),
                        (17, "skypatrol.battery"), (20, "skypatrol.trip_odometer"),
                        (21, "skypatrol.odometer"), (28, "index")):
        if index in f:
            a[name] = _u(f[index])
    if 24 in f:
        a["power_v"] = _u(f[24]) / 1000
    if 25 in f:
        a["skypatrol.overspeed"] = f[25].hex()
    if 26 in f:
        _cells(f[26], a)
    position = Position(
        time=time,
        latitude=latitude if latitude or longitude else None,
        longitude=longitude if latitude or longitude else None,
        valid=valid,
        speed_kmh=knots_to_kmh(_u(f[12]) / 10) if 12 in f else None,
        course=_u(f[13]) / 10 if 13 in f else None,
        altitude_m=float(int.from_bytes(f[15], "big", signed=True)) if 15 in f else None,
        event=str(_u(f[1])) if 1 in f else None,
        attributes=a,
    )
    return device_id, position


@implementer(IPlugin, IDecoder, ICommandEncoder)
class SkypatrolProtocol(_EnforaApi):
    """
    SkyPatrol TT8750/TT8750+ binary (masked) reports.
    """

    name = "skypatrol"
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "skypatrol.mask": pattern(r"[0-9A-Fa-f]{1,8}", "a hex mask of at most 8 digits"),
        "skypatrol.udp_ack": flag(),
        "skypatrol.immobilizer_event": integer(0, 999),
    }

    def detect(self, head, transport):
        message = _leading_message(head, transport, smallest=8)
        if not isinstance(message, _Message):
            return message
        if message.command not in (_REPORT, _TCP_REPORT) or _RMC.search(message.payload):
            return Verdict.no()
        mask, fields = _mask(message, None)
        if mask is not None:
            size = _layout(mask)[1]
            # A binary mask predicting the payload length exactly: strong structure.
            if bit(mask, 0) and len(fields) >= size and not fields[size:].strip(b"\x00"):
                return Verdict.match(85)
            return Verdict.no()
        if _maskless_binary(message) and message.api == _BINARY_API:
            # Recognised, undecodable. Other API numbers are enfora's, as in
            # Traccar, whose skypatrol decoder takes binary on API 5 only;
            # text payloads (GPRMC reports, keep-alives) are enfora's too.
            return Verdict.match(30)
        return Verdict.no()

    def decode(self, frame, context):
        message = _message(frame, context.transport)
        device_id = _identity(message.options)
        if message.command == _AT_RESPONSE:
            return DecodeResult(device_id=device_id, confirmations=[_at_reply(message.payload)])
        records = []
        mask, fields = _mask(message, context)
        if _RMC.search(message.payload) or (mask is None and _printable(message.payload)):
            raise DecodeError("text payload: an Enfora ASCII message, not a binary report")
        if mask is not None and bit(mask, 0) and message.message_type is not None:
            # Only the 5-byte header's reports follow this field table; the
            # 4-byte header's "compressed" layout differs (spec §4.1).
            unit, position = _binary_report(fields, mask)
            device_id = device_id or unit
            # Keep-alives (message type 0) and status-only masks carry no fix.
            if message.message_type == 1 and position.latitude is not None:
                records.append(position)
        reply = _udp_reply(context, "skypatrol.udp_ack", device_id)
        return DecodeResult(device_id=device_id, records=records, reply=reply)

    def _at_text(self, kind: str, context) -> str:
        if kind == "position_request":
            return "AT$TTLOGRD=4,1,0"
        # Engine stop/resume only immobilises when the unit's AT$EVENT script
        # maps this user event to the relay output: the event number is per device.
        event = _number_setting(context, "skypatrol.immobilizer_event", "18")
        state = 0 if kind == "engine_stop" else 1
        return f"AT$TTTRGEV={event},{state},2"

    def _wrap(self, text: str, kind: str, context) -> EncodedCommand:
        # TT8750+ framing (5-byte header): <api> 04 00 00 <AT command>.
        api = 0x0001 if kind in ("engine_stop", "engine_resume") else 0x000A
        return _at_command(api, b"\x00\x00", text, context.transport)


# -- enfora: ASCII reports, keep-alives ----------------------------------------------

_IMEI = re.compile(rb"(?<!\d)\d{15}")
_RMC = re.compile(
    rb"\$?(GPRMC,(\d{6})(?:\.\d+)?,([0-9A-Za-z]?),([\d.]*),([NS]?),([\d.]*),([EW]?),"
    rb"([\d.]*),([\d.]*),(\d{6})(?:,[^*\r\n]*)?)(?:\*([0-9A-Fa-f]{2}))?")
_GGA_SENTENCE = re.compile(rb"\$?GPGGA,[^\r\n]*")
_GGA = re.compile(rb"GPGGA,[\d.]*,[\d.]*,[NS]?,[\d.]*,[EW]?,(\d?),(\d*),([\d.]*),(-?[\d.]*),")


def _rmc_checked(match) -> bool:
    return match.group(11) is not None and xor8(match.group(1)) == int(match.group(11), 16)


def _ascii_report(payload: bytes) -> Position:
    rmc = _RMC.search(payload)
    if rmc is None:
        raise DecodeError("no GPRMC sentence")
    clock, status, lat, ns, lon, ew, knots, course, date = (
        g.decode("ascii") for g in rmc.group(2, 3, 4, 5, 6, 7, 8, 9, 10))
    latitude = longitude = None
    if lat and lon:
        latitude = hemisphere(nmea_degrees(lat), ns)
        longitude = hemisphere(nmea_degrees(lon), ew)
        check_coordinates(latitude, longitude)
    # A GPGGA sentence before the GPRMC is read below, not a configured field.
    head = _GGA_SENTENCE.sub(b"", payload[:rmc.start()]).decode("ascii", "backslashreplace").split()
    attributes = {}
    if len(head) > 2:
        # Fields the AT$EVENT configuration puts before the sentence.
        attributes["enfora.fields"] = " ".join(head[2:])
    tail = payload[rmc.end():].strip(b" \r\n\x00")
    if tail and _printable(tail):
        attributes["enfora.trailer"] = tail.decode("ascii")
    elif tail:
        # Binary trailer fields (odometer, battery, ... as configured).
        attributes["enfora.trailer_hex"] = tail.hex()
    gga = _GGA.search(payload)
    altitude = None
    if gga is not None:
        if gga.group(2):
            attributes["satellites"] = int(gga.group(2))
        if gga.group(3):
            attributes["hdop"] = optional_float(gga.group(3).decode("ascii"))
        altitude = optional_float(gga.group(4).decode("ascii"))
    speed = optional_float(knots)
    return Position(
        time=ddmmyy_hhmmss(date, clock),
        latitude=latitude,
        longitude=longitude,
        # Status "9" and other non-A values occur: the record stays, not valid.
        valid=status == "A",
        speed_kmh=knots_to_kmh(speed) if speed is not None else None,
        course=optional_float(course),
        altitude_m=altitude,
        event=head[0] if head else None,
        attributes=attributes,
    )


def _device_id(message: _Message):
    # The identity option header, else the first 15-digit run of the text.
    identity = _identity(message.options)
    if identity is not None:
        return identity
    found = _IMEI.search(message.payload)
    return found.group(0).decode("ascii") if found else None


@implementer(IPlugin, IDecoder, ICommandEncoder)
class EnforaProtocol(_EnforaApi):
    """
    SkyPatrol/Enfora ASCII reports, keep-alives and AT command replies.
    """

    name = "enfora"
    commands = frozenset({"engine_stop", "engine_resume", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "enfora.udp_ack": flag(),
        "enfora.gpio": integer(0, 99),
    }

    def detect(self, head, transport):
        message = _leading_message(head, transport, smallest=6)
        if not isinstance(message, _Message):
            return message
        payload = message.payload
        rmc = _RMC.search(payload)
        if rmc is not None:
            # The payload names the protocol, whatever the header carries
            # (spec section 0.6): an NMEA report is enfora's.
            return Verdict.match(90 if _rmc_checked(rmc) else 60)
        if not _printable(payload):
            if _maskless_binary(message) and message.api != _BINARY_API and \
                    message.command in (_REPORT, _TCP_REPORT):
                # A binary report without its mask on an API number Traccar's
                # skypatrol decoder does not take: recognised, undecodable.
                return Verdict.match(30)
            return Verdict.no()
        if not payload.strip(b" \r\n\x00"):
            return Verdict.no()
        if len(message.options) == 4 and message.options[3] & 1:
            # A report mask with the binary flag: a SkyPatrol binary report.
            return Verdict.no()
        if message.command == _AT_RESPONSE:
            return Verdict.match(50)
        # A keep-alive: an id in text.
        return Verdict.match(40)

    def decode(self, frame, context):
        message = _message(frame, context.transport)
        if message.command == _AT_RESPONSE:
            return DecodeResult(confirmations=[_at_reply(message.payload)])
        device_id = _device_id(message)
        if _RMC.search(message.payload):
            records = [_ascii_report(message.payload)]
        elif not _printable(message.payload):
            if not _maskless_binary(message):
                raise DecodeError("binary payload: a SkyPatrol masked report, not an Enfora ASCII one")
            # Its layout is configured in the device, not sent: no record.
            records = []
        else:
            records = []
        reply = _udp_reply(context, "enfora.udp_ack", device_id)
        return DecodeResult(device_id=device_id, records=records, reply=reply)

    def _at_text(self, kind: str, context) -> str:
        # Engine stop/resume: which GPIO drives the relay is installation-specific.
        gpio = _number_setting(context, "enfora.gpio", "3")
        level = 1 if kind == "engine_stop" else 0
        return f"AT$IOGP{gpio}={level}"

    def _wrap(self, text: str, kind: str, context) -> EncodedCommand:
        # 4-byte header framing: <api> 04 00 <AT command>. On TCP Traccar's
        # encoder: length (whole frame), API number 0. On UDP the Enfora
        # integration guide's example: API number 1, no length.
        api = 0 if context.transport == "tcp" else 1
        return _at_command(api, b"\x00", text, context.transport)


skypatrol = SkypatrolProtocol()
enfora = EnforaProtocol()
