# -*- test-case-name: tests.test_astra -*-
"""
Astra Telematics report protocols (AT402 and the AT1xx/AT2xx family).

Every binary packet is a protocol letter, a big-endian u16 total length, the
payload and a CRC-16/MODBUS sent high byte first; the server answers each packet
whose CRC checks out with one C{0x06}. The AT402 speaks protocol X: by default
(C{$MODE,6}) an ASCII C{$ASTRA;...} login line names the IMEI once per session
and the packets carry none; in C{$MODE,4} every packet has the IMEI after the
report count. Older units speak K, M, C or V, which carry the IMEI in every
packet. Protocol Y, X's successor, is public only in outline: its reports are
acked and kept undecoded. Command replies (C{$IMOB,OK}) are ASCII lines on the
same stream.
"""

from __future__ import annotations

import re
import struct
from typing import List, Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.checksums import crc16_modbus, luhn_valid
from gateway.encoding import custom_command_bytes
from gateway.fields import bit, gps_time
from gateway.interfaces import DecodeError, EncodeError, ICommandEncoder, IDecoder, Verdict
from gateway.model import Confirmation, DecodeResult, EncodedCommand, Position
from gateway.settings import choice, pattern

ACK = b"\x06"

#: Smallest packet per letter: envelope, IMEI where the letter has one, one report.
#: X without IMEI ($MODE,6) is the shortest X; Y has a 27-byte report header.
MIN_LENGTH = {b"K"[0]: 50, b"M"[0]: 53, b"C"[0]: 45, b"V"[0]: 84, b"X"[0]: 23, b"Y"[0]: 33}

#: Largest packet accepted. Real ones are 50-316 bytes; a bigger cap only
#: makes a stray letter in the stream stall the session longer.
MAX_LENGTH = 4096

#: ASCII lines: the login and command replies. A line longer than this is garbage.
MAX_LINE = 512

LOGIN = b"$ASTRA;"
#: Model; IMEI; VIN; firmware; protocol letter; hardware revision and settings checksum.
_LOGIN_LINE = re.compile(
    rb"\$ASTRA;([^;\r\n]*);(\d{15});([^;\r\n]*);([^;\r\n]*);([XYZ])(?:;[^\r\n]*)?\r?\n?\Z")
#: How a login or reply line starts, and what may still become one.
_LINE_HEAD = re.compile(rb"\$(?:ASTRA;|[A-Z]{4},)")
_LINE_HEAD_PART = re.compile(rb"\$[A-Z]{0,5}\Z")
_REPLY_PART = re.compile(rb"\$([A-Z]{4})(?:,([^\r\n$]*))?\Z")
#: A command's mnemonic, which its reply repeats.
_MNEMONIC = re.compile(rb"\$([A-Z]{4})")
#: What C{custom} may send: one command, or printable text naming none.
_ONE_COMMAND = re.compile(rb"(?:\$PASS,[A-Za-z0-9]{1,16})?\$[A-Z]{4}(?:,[ -#%-~]*)?|[ -#%-~]+")
# What a command-reply line must look like for detection to claim it on its own
# (UDP, where each datagram is detected afresh): only ",OK"/",UN" answers.
_REPLY_LINE = re.compile(rb"(?:\$[A-Z]{4},(?:OK|UN)\r)*\$[A-Z]{4},(?:OK|UN)\r?\n\Z")

REASONS = (
    "timed_interval", "distance", "position_on_demand", "geofence", "panic",
    "external_input", "journey_start", "journey_stop", "heading_change", "low_battery",
    "external_power", "idling_start", "idling_end", "idling_ongoing", "reboot",
    "overspeed", "towing", "unauthorised_driver", "collision", "acceleration",
    "cornering", "deceleration", "gnss_reacquired", "canbus", "carrier", "tamper",
    "towing_end", "serial_device", "low_external_voltage", "sleep", "rollover",
    "motion_while_parked",
    # Protocol Y's 64 reason bits name one more (spec §5.2.1).
    "trailer_data",
)

#: Reason bit -> alarm (spec §0.5). Bit 3 (geofence) depends on the geofence
#: byte and bit 8 of the X status word is a jammer; both are handled apart.
REASON_ALARMS = {4: "sos", 9: "low_battery", 11: "idle", 15: "overspeed", 18: "accident",
                 19: "harsh_acceleration", 20: "harsh_cornering", 21: "harsh_braking",
                 25: "tampering", 28: "low_power", 31: "movement"}

DRIVER_ID_SOURCES = {1: "ibutton", 2: "rfid", 3: "bluetooth", 4: "cr002"}

# -- protocol X module sizes ------------------------------------------------

#: Fixed module sizes by bit (spec §5.2.3). Bit 9 changed with the firmware
#: (12-byte trailer ID, then 8-byte alcohol test) and is resolved per packet;
#: 44, 45 and 47 carry their own length; 24 has no public size.
X_SIZES = {
    0: 2, 1: 18, 2: 4, 3: 4, 4: 8, 5: 1, 6: 4, 7: 1, 8: 9, 10: 2, 11: 5, 12: 20,
    13: 18, 14: 25, 15: 13, 16: 9, 17: 25, 18: 8, 19: 17, 20: 18, 21: 3, 22: 4,
    23: 6, 25: 73, 26: 7, 27: 20, 28: 38, 29: 20, 30: 5, 31: 12, 32: 18, 33: 2,
    34: 9, 35: 44, 36: 32, 37: 39, 38: 6, 39: 39, 40: 39, 41: 42, 42: 22, 43: 28,
    46: 13,
}
#: Customer firmware "Z" (login protocol field Z, or setting astra.variant=Z)
#: resizes these modules.
Z_SIZES = {**X_SIZES, 17: 17, 19: 10, 20: 19, 25: 6, 30: 1, 31: 25, 32: 46, 33: 38,
           34: 106, 35: 9, 36: 31, 37: 26, 38: 71}
#: Modules whose layout differs on Z firmware: their fields are not decoded there.
Z_CHANGED = frozenset(b for b, size in Z_SIZES.items() if size != X_SIZES[b])
MODULE9_SIZES = (8, 12)

X_HEADER = 17
_X_HEAD = struct.Struct(">B6xIIH")

#: Protocol Y report header: sequence, 80-bit module mask, RTC, 64 reason
#: bits, 32 status bits (spec §5.5).
Y_HEADER = 27
_Y_HEAD = struct.Struct(">B10xIQI")


class _Layout(Exception):
    """A packet whose modules do not fit its length (internal to X parsing)."""


def _imei(data: bytes) -> Optional[str]:
    """
    The IMEI of the 7-byte field (u32 first 8 digits, u24 last 7, each
    zero-padded on the left), or L{None} when it is not a valid IMEI.
    """
    tac = int.from_bytes(data[:4], "big")
    serial = int.from_bytes(data[4:7], "big")
    if tac > 99999999 or serial > 9999999:
        return None
    text = "%08d%07d" % (tac, serial)
    return text if luhn_valid(text) else None


def _eol_run(data: bytes, start: int) -> int:
    """How many CR and LF bytes follow C{start}."""
    end = start
    while end < len(data) and data[end] in (0x0D, 0x0A):
        end += 1
    return end - start


def _s32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 4], "big", signed=True)


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off:off + size], "big")


def _ascii(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def _event(reason: int) -> Optional[str]:
    names = [REASONS[i] if i < len(REASONS) else f"reason_{i}"
             for i in range(reason.bit_length()) if reason >> i & 1]
    return ",".join(names) or None


def _alarms(reason: int, geofence: Optional[int], jammed: bool) -> List[str]:
    out = [alarm for b, alarm in REASON_ALARMS.items() if reason >> b & 1]
    if reason & 0x08 and geofence is not None:
        out.append("geofence_enter" if geofence & 0x80 else "geofence_exit")
    if jammed:
        out.append("jamming")
    return out


def _accel(data: bytes, off: int, attrs: dict) -> None:
    """Six bytes of peak accelerations, 0.1 m/s² each."""
    for i, name in enumerate(("x_max", "x_min", "y_max", "y_min", "z_max", "z_min")):
        attrs[f"astra.accel_{name}_ms2"] = round(data[off + i] * 0.1, 1)


def _driver_id(data: bytes) -> Optional[str]:
    return data.hex() if any(data) else None


# -- protocol X modules -----------------------------------------------------

class _Report:
    """What the modules of one X report add up to."""

    __slots__ = ("attrs", "fix", "geofence")

    def __init__(self):
        self.attrs = {}
        self.fix = None       # (fix seconds, lat, lon, speed, course, altitude)
        self.geofence = None


def _m_power(d, o, n, r):
    r.attrs["power_v"] = round(d[o] * 0.2, 1)
    r.attrs["battery_level_pct"] = d[o + 1]


def _m_gnss(d, o, n, r):
    # Module 43 (extended) starts like module 1; a report holding both keeps 1.
    if r.fix is None:
        r.fix = (_u(d, o, 4), _s32(d, o + 4), _s32(d, o + 8), d[o + 12] * 2, d[o + 14] * 2,
                 d[o + 15] * 20)
        r.attrs["astra.max_speed_kmh"] = d[o + 13] * 2
        r.attrs["trip_odometer_m"] = _u(d, o + 16, 2) * 100


def _m_gnss_extended(d, o, n, r):
    _m_gnss(d, o, n, r)
    r.attrs["astra.valid_fix_pct"] = d[o + 18]
    r.attrs["astra.satellites_in_view"] = d[o + 19]
    r.attrs["astra.position_error_m"] = d[o + 20]
    r.attrs["hdop"] = round(d[o + 21] * 0.1, 1)
    r.attrs["astra.jammer_hits"] = d[o + 22]


def _m_io(d, o, n, r):
    states = _u(d, o, 2)
    r.attrs["inputs"] = states & 0xFF
    r.attrs["outputs"] = states >> 8
    r.attrs["astra.io_changed"] = _u(d, o + 2, 2)


def _m_analogue(d, o, n, r):
    # The scale of X ADC counts is not published: keep the counts.
    r.attrs["astra.adc1_raw"] = _u(d, o, 2)
    r.attrs["astra.adc2_raw"] = _u(d, o + 2, 2)


def _m_behaviour(d, o, n, r):
    _accel(d, o, r.attrs)
    r.attrs["astra.idle_time_s"] = _u(d, o + 6, 2)


def _m_signal(d, o, n, r):
    r.attrs["satellites"] = d[o] & 0x0F
    r.attrs["astra.gsm_level"] = d[o] >> 4
    r.attrs["rssi"] = -111 + 4 * (d[o] >> 4)


def _m_network(d, o, n, r):
    r.attrs["mcc"] = _u(d, o, 2)
    r.attrs["mnc"] = _u(d, o + 2, 2)


def _m_geofence(d, o, n, r):
    r.geofence = d[o]
    r.attrs["astra.geofence"] = d[o] & 0x7F


def _m_driver(d, o, n, r):
    driver = _driver_id(d[o + 1:o + 9])
    if driver:
        r.attrs["driver_id"] = driver
        r.attrs["astra.driver_id_source"] = DRIVER_ID_SOURCES.get(d[o], str(d[o]))


def _m_module9(d, o, n, r):
    if n == 12:
        r.attrs["astra.trailer_id"] = _ascii(d[o + 1:o + 11])
        r.attrs["astra.trailer_status"] = d[o + 11]
    else:
        r.attrs["astra.alcohol_test_passed"] = bit(d[o], 0)
        r.attrs["astra.alcohol_ugl"] = _u(d, o + 1, 2)


def _m_axle(d, o, n, r):
    r.attrs["astra.axle_weight_kg"] = _u(d, o, 2)


def _m_stop_odometer(d, o, n, r):
    r.attrs["odometer_m"] = _u(d, o, 3) * 1000
    r.attrs["engine_hours_s"] = _u(d, o + 3, 2) * 3600


def _in_journey(d, o, r):
    """The 15 bytes FMS and OBD in-journey modules share (bits 12, 13, 29)."""
    a = r.attrs
    a["astra.wheel_speed_max_kmh"] = d[o]
    a["obd_speed_kmh"] = d[o + 1]
    a["astra.rpm_max"] = d[o + 2] * 32
    a["rpm"] = d[o + 3] * 32
    a["astra.throttle_max_pct"] = d[o + 4]
    a["throttle_pct"] = d[o + 5]
    a["astra.engine_load_max_pct"] = d[o + 6]
    a["engine_load_pct"] = d[o + 7]
    a["astra.can_distance_m"] = _u(d, o + 8, 2) * 100
    # J1939 offset: unsigned byte minus 40 (Traccar's signed + 40 is wrong).
    a["coolant_temp_c"] = d[o + 10] - 40
    a["astra.fms_status"] = _u(d, o + 11, 2)
    a["astra.fms_events"] = _u(d, o + 13, 2)


def _m_fms_journey(d, o, n, r):
    _in_journey(d, o, r)
    r.attrs["fuel_level_pct"] = d[o + 15]
    r.attrs["fuel_used_l"] = _u(d, o + 16, 4) * 0.5


def _m_obd_journey(d, o, n, r):
    _in_journey(d, o, r)
    r.attrs["fuel_level_pct"] = d[o + 15]
    r.attrs["fuel_used_l"] = round(_u(d, o + 16, 2) * 0.1, 1)


def _m_fms_journey_hires(d, o, n, r):
    _in_journey(d, o, r)
    r.attrs["fuel_level_pct"] = d[o + 15]
    r.attrs["fuel_used_l"] = round(_u(d, o + 16, 4) * 0.001, 3)


def _m_dtcs(d, o, n, r):
    codes = [_ascii(d[o + i:o + i + 5]) for i in range(0, 25, 5)]
    codes = [c for c in codes if c and c.strip("0")]
    if codes:
        r.attrs["dtcs"] = codes


def _m_fms_stop(d, o, n, r):
    r.attrs["odometer_m"] = _u(d, o, 3) * 1000
    r.attrs["engine_hours_s"] = _u(d, o + 3, 2) * 3600
    r.attrs["astra.axle_weight_kg"] = _u(d, o + 5, 2)
    r.attrs["astra.journey_fuel_l"] = round(_u(d, o + 7, 2) * 0.1, 1)
    r.attrs["astra.cruise_time_s"] = _u(d, o + 9, 2)
    r.attrs["astra.service_distance_m"] = _u(d, o + 11, 2) * 5000


def _m_obd_stop(d, o, n, r):
    r.attrs["odometer_m"] = _u(d, o, 3) * 1000
    r.attrs["engine_hours_s"] = _u(d, o + 3, 2) * 3600
    r.attrs["astra.mil_time"] = _u(d, o + 5, 2)
    r.attrs["astra.mil_distance_km"] = _u(d, o + 7, 2)


def _m_one_wire(d, o, n, r):
    for i in range(4):
        raw = _u(d, o + 2 * i, 2)
        # 0 and 0xFFFF: no sensor on that channel.
        if raw not in (0, 0xFFFF):
            r.attrs[f"temp{i + 1}_c"] = round((raw - 550) / 10.0, 1)


def _m_iccid(d, o, n, r):
    r.attrs["astra.iccid"] = _ascii(d[o:o + 20])


def _m_fms_drivers(d, o, n, r):
    first, second = _ascii(d[o:o + 19]), _ascii(d[o + 19:o + 38])
    if first:
        r.attrs["driver_id"] = first
    if second:
        r.attrs["astra.driver2_id"] = second


def _m_sensors(d, o, n, r):
    for i in range(6):
        kind, p = d[o + 3 * i] & 0x0F, o + 3 * i + 1
        if kind == 1:
            r.attrs[f"astra.sensor{i + 1}_temp_c"] = int.from_bytes(d[p:p + 2], "big", signed=True) / 100
        elif kind == 2:
            r.attrs[f"astra.sensor{i + 1}_humidity_pct"] = _u(d, p, 2) / 100
        elif kind == 3:
            r.attrs[f"astra.sensor{i + 1}_light"] = _u(d, p, 2) / 100


#: Module bit -> field decoder. Modules without one are skipped by their size.
X_MODULES = {
    0: _m_power, 1: _m_gnss, 2: _m_io, 3: _m_analogue, 4: _m_behaviour, 5: _m_signal,
    6: _m_network, 7: _m_geofence, 8: _m_driver, 9: _m_module9, 10: _m_axle,
    11: _m_stop_odometer, 12: _m_fms_journey, 13: _m_obd_journey, 14: _m_dtcs,
    15: _m_fms_stop, 16: _m_obd_stop, 18: _m_one_wire, 27: _m_iccid, 28: _m_fms_drivers,
    29: _m_fms_journey_hires, 32: _m_sensors, 43: _m_gnss_extended,
}


#: 2000-01-01 in GPS seconds: no real report is older.
_EARLIEST_RTC = 630_720_000


def _dated(frame: bytes, reports) -> bool:
    """
    Whether the first report of a (partial) X reading has a plausible clock
    (Astra's own parser tells the modes apart by that report's date too).
    """
    return bool(reports) and _u(frame, reports[0][0] + 7, 4) >= _EARLIEST_RTC


def _module_size(frame: bytes, bitno: int, off: int, end: int, sizes: dict,
                 m9: Optional[int]) -> int:
    """
    The size of module C{bitno} starting at C{off}; C{m9} is the size module 9
    is read with, L{None} when no size fits.

    @raise _Layout: when the module has no known size or its own length is bad.
    """
    size = sizes.get(bitno)
    if size is not None:
        return size
    if bitno == 9:
        if m9 is None:
            raise _Layout("module 9 fits the packet with neither 8 nor 12 bytes")
        return m9
    if bitno not in (44, 45, 47):
        raise _Layout(f"module {bitno} has no known size")
    if off + 3 > end:
        raise _Layout(f"module {bitno} runs past the packet")
    if bitno == 44:      # u8 count, u16 length of the entries, 4 reserved
        return 7 + _u(frame, off + 1, 2)
    if bitno == 45:      # u16 total length including itself, 4 reserved, 13-byte entries
        size = _u(frame, off, 2)
        if size < 6 or (size - 6) % 13:
            raise _Layout(f"module 45 length {size} is not 6 + 13n")
        return size
    return 2 + _u(frame, off, 2)      # 47: u16 N, then N bytes


def _x_layout(frame: bytes, start: int, count: int, sizes: dict, m9: Optional[int]):
    """
    Where the reports and their modules sit, from C{start} (after the report
    count, and after the IMEI in C{$MODE,4}).

    @return: C{(reports, end, problem)}: a list of C{(header offset, [(bit,
        offset, size), ...])}, the offset after the last module read, and
        L{None} or what stopped the walk (the last report is then partial).
    """
    end = len(frame) - 2
    reports = []
    off = start
    for _ in range(count):
        if off + X_HEADER > end:
            return reports, off, "report header runs past the packet"
        head = off
        mask = int.from_bytes(frame[off + 1:off + 7], "big")
        off += X_HEADER
        modules = []
        reports.append((head, modules))
        while mask:
            low = mask & -mask
            mask ^= low
            bitno = low.bit_length() - 1
            try:
                size = _module_size(frame, bitno, off, end, sizes, m9)
            except _Layout as e:
                return reports, off, str(e)
            if off + size > end:
                return reports, off, f"module {bitno} runs past the packet"
            modules.append((bitno, off, size))
            off += size
    return reports, off, None


# -- the plugin -------------------------------------------------------------

@implementer(IPlugin, IDecoder, ICommandEncoder)
class AstraProtocol:
    """
    Astra Telematics protocols X (both connection modes), K, M, C, V and,
    in outline, Y.
    """

    name = "astra"
    transports = frozenset({"tcp", "udp"})
    commands = frozenset({"engine_stop", "engine_resume", "position_request", "reboot",
                          "set_interval", "custom"})
    #: Per-device settings (gateway.settings); values reach the bytes sent.
    settings_spec = {
        "astra.pin": pattern(r"[A-Za-z0-9]{1,16}", "1-16 letters and digits"),
        "astra.variant": choice("X", "Z"),
    }

    # -- detection ---------------------------------------------------------

    def detect(self, head, transport):
        if not head:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        if head[0] == 0x24:
            return self._detect_line(head, transport)
        if head[0] not in MIN_LENGTH:
            return Verdict.no()
        if len(head) < 3:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        length = _u(head, 1, 2)
        if not MIN_LENGTH[head[0]] <= length <= MAX_LENGTH:
            return Verdict.no()
        if len(head) < length:
            return Verdict.more() if transport == "tcp" else Verdict.no()
        packet = head[:length]
        if crc16_modbus(packet[:-2]) != _u(packet, length - 2, 2):
            return Verdict.no()
        if head[0] in b"XY":
            return Verdict.match(90) if packet[3] >= 1 else Verdict.no()
        return Verdict.match(95) if _imei(packet[3:10]) else Verdict.no()

    def _detect_line(self, head, transport):
        newline = head.find(b"\n")
        line = head if newline < 0 else head[:newline + 1]
        if line.startswith(LOGIN) or LOGIN.startswith(line):
            if newline < 0 and transport == "tcp":
                return Verdict.more() if len(head) < MAX_LINE else Verdict.no()
            return Verdict.match(90) if _LOGIN_LINE.match(line) else Verdict.no()
        # A TCP session opens with a login or a packet; a command reply stands
        # alone only in a UDP datagram, which is detected afresh each time.
        if transport == "udp" and _REPLY_LINE.match(line):
            return Verdict.match(50)
        return Verdict.no()

    # -- framing -----------------------------------------------------------

    def frame(self, buffer, transport):
        # Devices end lines (and some firmware packets) with CR LF: line ends
        # around a frame belong to it, so they are not logged as garbage.
        lead = _eol_run(buffer, 0)
        if lead == len(buffer):
            if transport == "tcp" and lead < MAX_LINE:
                return None, 0
            return None, lead
        rest = buffer[lead:] if lead else buffer
        first = rest[0]
        if first == 0x24:
            frame, consumed = self._frame_line(rest, transport)
        elif first in MIN_LENGTH:
            frame, consumed = self._frame_packet(rest, transport)
        else:
            frame, consumed = None, self._skip(rest, 1)
        if consumed == 0:
            return None, 0
        if frame is not None:
            consumed += _eol_run(rest, consumed)
        return frame, lead + consumed

    @staticmethod
    def _skip(buffer: bytes, start: int) -> int:
        """How many bytes to drop to reach the next byte that may start a frame."""
        for i in range(start, len(buffer)):
            if buffer[i] == 0x24 or buffer[i] in MIN_LENGTH:
                return i
        return len(buffer)

    def _frame_line(self, buffer, transport):
        if not _LINE_HEAD.match(buffer):
            if len(buffer) < len(LOGIN) and _LINE_HEAD_PART.match(buffer):
                return None, 0
            return None, self._skip(buffer, 1)
        newline = buffer.find(b"\n", 0, MAX_LINE)
        if newline >= 0:
            return buffer[:newline + 1], newline + 1
        if transport == "udp" and len(buffer) <= MAX_LINE:
            return buffer, len(buffer)
        if len(buffer) < MAX_LINE:
            return None, 0
        return None, self._skip(buffer, 1)

    def _frame_packet(self, buffer, transport):
        if len(buffer) < 3:
            return None, 0
        length = _u(buffer, 1, 2)
        if not MIN_LENGTH[buffer[0]] <= length <= MAX_LENGTH:
            return None, self._skip(buffer, 1)
        if len(buffer) < length:
            return None, 0
        if crc16_modbus(buffer[:length - 2]) != _u(buffer, length - 2, 2):
            # No ack: the device sends the packet again. The length may be what
            # is wrong, so resynchronise on the next possible start.
            return None, self._skip(buffer, 1)
        return buffer[:length], length

    # -- decoding ----------------------------------------------------------

    def decode(self, frame, context):
        if not frame:
            raise DecodeError("empty frame")
        if frame[0] == 0x24:
            return self._decode_line(frame, context)
        letter = frame[0]
        if letter not in MIN_LENGTH:
            raise DecodeError(f"unknown protocol letter 0x{letter:02x}")
        length = len(frame)
        if length < MIN_LENGTH[letter] or length > MAX_LENGTH or _u(frame, 1, 2) != length:
            raise DecodeError(f"packet length {length} does not match its length field {_u(frame, 1, 2)}")
        if crc16_modbus(frame[:-2]) != _u(frame, length - 2, 2):
            raise DecodeError("CRC-16/MODBUS mismatch")
        if letter == 0x58:
            return self._decode_x(frame, context)
        if letter == 0x59:
            return self._decode_y(frame, context)
        imei = _imei(frame[3:10])
        if imei is None:
            raise DecodeError(f"not an IMEI: {frame[3:10].hex()}")
        size, report = _LEGACY[letter]
        records = []
        off, end = 10, length - 2
        # Reports follow each other up to the CRC; the "more reports" status
        # bit is still set on the last one in real packets.
        while off < end:
            n = size(frame, off)
            if off + n > end:
                # The CRC was good: ack (the device would resend it forever)
                # and keep what fits, saying what does not.
                note = f"report at byte {off} needs {n} bytes, {end - off} left"
                records.append(_undecoded(records, note, frame))
                break
            records.append(report(frame[off:off + n]))
            off += n
        return DecodeResult(device_id=imei, records=records, reply=ACK)

    def _decode_line(self, frame, context):
        line = frame.rstrip(b"\r\n")
        if line.startswith(LOGIN):
            match = _LOGIN_LINE.match(frame)
            if match is None:
                raise DecodeError("malformed $ASTRA login line")
            imei, protocol = match.group(2).decode("ascii"), match.group(5).decode("ascii")
            context.state.update(imei=imei, variant=protocol)
            return DecodeResult(device_id=imei, reply=ACK)
        parts = line.split(b"\r")
        replies = [_REPLY_PART.match(p) for p in parts if p]
        if not replies or None in replies:
            raise DecodeError("not a command reply or login line")
        text = line.replace(b"\r", b"\n").decode("ascii", "replace")
        success = all(m.group(2) != b"UN" for m in replies)
        # The last answer names the command the line closes (see _command).
        token = replies[-1].group(1).decode("ascii")
        return DecodeResult(confirmations=[Confirmation(token=token, success=success, reply=text)])

    def _decode_x(self, frame, context):
        count = frame[3]
        if count == 0:
            return DecodeResult(reply=ACK)
        variant = context.state.get("variant") or context.setting("astra.variant", "X")
        sizes = Z_SIZES if variant == "Z" else X_SIZES
        logged_in = "imei" in context.state
        imei = _imei(frame[4:11]) if len(frame) >= 30 else None
        starts = [4] if logged_in else ([4, 11] if imei else [4])
        # Tell the connection mode (and the firmware's module 9) apart by which
        # reading consumes the packet exactly: no IMEI first, then 7 IMEI bytes.
        chosen = None
        for start in starts:
            for m9 in MODULE9_SIZES:
                reports, end, problem = _x_layout(frame, start, count, sizes, m9)
                if problem is None and end == len(frame) - 2:
                    chosen = start, reports, None
                    break
                if not any(b == 9 for _, mods in reports for b, _, _ in mods):
                    break
            if chosen:
                break
        if chosen is None:
            # Nothing fits: the CRC was good, so ack (the device would resend
            # it forever) and keep what precedes the problem, saying so. Past
            # a module 9 of unknown size nothing is aligned (spec §0.6). A
            # device without login is in $MODE,4, unless only the IMEI-less
            # reading is dated plausibly (bytes 4-10 may pass Luhn by chance).
            start = starts[-1]
            reports, end, problem = _x_layout(frame, start, count, sizes, None)
            if start == 11 and not _dated(frame, reports):
                other = _x_layout(frame, 4, count, sizes, None)
                if _dated(frame, other[0]):
                    start, (reports, end, problem) = 4, other
            problem = problem or f"modules end at byte {end}, packet at {len(frame) - 2}"
            chosen = start, reports, problem
        start, reports, problem = chosen
        records = []
        for i, (head, modules) in enumerate(reports):
            last = i == len(reports) - 1
            note = None
            if problem and last:
                note = f"{problem}; {count - len(reports)} later report(s) not decoded"
            records.append(_x_record(frame, head, modules, variant, note))
        return DecodeResult(device_id=imei if start == 11 else context.state.get("imei"),
                            records=records, reply=ACK)

    def _decode_y(self, frame, context):
        """
        Protocol Y, of which only the outline is public (spec §5.5): each
        report's header is decoded, its modules are walked by their own byte
        counts and kept as hex, so that nothing the ack lets the device drop
        is lost.
        """
        end = len(frame) - 2
        off = 4
        records = []
        problem = None
        for _ in range(frame[3]):
            if off + Y_HEADER > end:
                problem = "report header runs past the packet"
                break
            head = off
            seq, rtc, reason, status = _Y_HEAD.unpack_from(frame, off)
            mask = int.from_bytes(frame[off + 1:off + 11], "big")
            off += Y_HEADER
            modules = []
            while mask and problem is None:
                low = mask & -mask
                mask ^= low
                size = frame[off] if off < end else 0
                if size == 0 or off + size > end:
                    problem = f"module {low.bit_length() - 1} runs past the packet"
                else:
                    modules.append(low.bit_length() - 1)
                    off += size
            attrs = {"index": seq, "astra.status": status, "astra.modules": modules,
                     "astra.report_hex": frame[head:off].hex()}
            records.append(Position(gps_time(rtc), alarm=_alarms(reason, None, False),
                                    event=_event(reason), attributes=attrs))
            if problem:
                break
        if problem is None and off != end:
            problem = f"reports end at byte {off}, packet at {end}"
        if problem:
            records.append(_undecoded(records, problem, frame))
        return DecodeResult(device_id=context.state.get("imei"), records=records, reply=ACK)

    # -- commands ----------------------------------------------------------

    def encode(self, command, context):
        params = command.params
        kind = command.type
        if kind in ("engine_stop", "engine_resume"):
            on = kind == "engine_stop"
            output = params.get("output")
            if output is not None:
                output = str(output)
                if not (output.isascii() and output.isdigit() and 1 <= int(output) <= 8):
                    raise EncodeError(f"output must be 1-8, got {output!r}")
                return _command(f"$SDIG,{int(output)},{int(on)}".encode("ascii"))
            mode = "0"
            if on:
                mode = str(params.get("mode", "safe"))
                mode = {"safe": "3", "immediate": "4"}.get(mode, mode)
                if mode not in ("1", "2", "3", "4"):
                    raise EncodeError(f"engine_stop mode must be safe, immediate or 1-4, got {mode!r}")
            return self._with_pin(f"$IMOB,{mode}", context)
        if kind == "position_request":
            return _command(b"$POLL")
        if kind == "reboot":
            return _command(b"$BOOT")
        if kind == "set_interval":
            return self._interval(params, context)
        if kind == "custom":
            data = custom_command_bytes(params)
            if not _ONE_COMMAND.fullmatch(data):
                # Commands may be concatenated in one message: a custom one
                # must be exactly one (after the PIN, if any).
                raise EncodeError("custom must be one command, $XXXX[,parameters] (optionally after"
                                  " $PASS,<pin>), printable ASCII with no other $ inside")
            return _command(data)
        raise EncodeError(f"astra does not support {kind!r}")

    def _interval(self, params, context):
        if "metres" in params:
            metres = str(params["metres"])
            if not (metres.isascii() and metres.isdigit() and int(metres) > 0):
                raise EncodeError(f"metres must be a positive integer, got {metres!r}")
            return self._with_pin(f"$DIST,{int(metres)}", context)
        if "seconds" not in params:
            raise EncodeError("set_interval needs seconds (or metres)")
        seconds = str(params["seconds"])
        if not (seconds.isascii() and seconds.isdigit()) or int(seconds) < 60 or int(seconds) % 60:
            # $STIM counts whole minutes.
            raise EncodeError(f"seconds must be a positive multiple of 60, got {seconds!r}")
        return self._with_pin(f"$STIM,{int(seconds) // 60}", context)

    @staticmethod
    def _with_pin(text, context):
        # With a PIN configured ($PASS), configuration commands need it first;
        # $POLL, $BOOT and $SDIG are exempt.
        pin = context.setting("astra.pin")
        if pin:
            if not (pin.isascii() and pin.isalnum()):
                raise EncodeError(f"astra.pin must be letters and digits, got {pin!r}")
            text = f"$PASS,{pin}{text}"
        return _command(text.encode("ascii"))


def _command(data: bytes) -> EncodedCommand:
    """
    The device answers each command in C{data} with a line naming its
    mnemonic (C{$IMOB,3} -> C{$IMOB,OK}), the last answer closing the line:
    that mnemonic is the token, so a reply that was lost does not let the
    next command's reply confirm the wrong command. Bytes naming no command
    get no answer that could be matched to them.
    """
    names = _MNEMONIC.findall(data)
    if not names:
        return EncodedCommand(data, expects_reply=False)
    return EncodedCommand(data, token=names[-1].decode("ascii"))


# -- protocol X reports -------------------------------------------------------

def _x_record(frame, head, modules, variant, note):
    seq, rtc, reason, status = _X_HEAD.unpack_from(frame, head)
    report = _Report()
    for bitno, off, size in modules:
        decoder = X_MODULES.get(bitno)
        if decoder is not None and not (variant == "Z" and bitno in Z_CHANGED):
            decoder(frame, off, size, report)
    attrs = report.attrs
    attrs["astra.modules"] = [b for b, _, _ in modules]
    if note:
        attrs["astra.undecoded"] = note
    device_time = gps_time(rtc)
    attrs["astra.device_time"] = device_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    _status_attrs(attrs, seq, status)
    attrs["astra.private_mode"] = bit(status, 1)
    attrs["astra.roaming"] = bit(status, 3)
    attrs["astra.immobilised"] = bit(status, 6)
    attrs["astra.battery_charging"] = bit(status, 10)
    alarms = _alarms(reason, report.geofence, bit(status, 8))
    fix = report.fix
    if fix is None or fix[0] == 0:
        # No GNSS module (or never a fix): an event at the device's time.
        return Position(device_time, alarm=alarms, event=_event(reason), attributes=attrs)
    seconds, lat, lon, speed, course, altitude = fix
    return Position(gps_time(seconds), lat / 1e6, lon / 1e6, not bit(status, 2), float(speed),
                    float(course), float(altitude), alarms, _event(reason), attrs)


def _undecoded(records, note, frame):
    """
    The last record, marked with what could not be decoded after it; with no
    record yet, an event holding the packet so that nothing acked is lost unseen.
    """
    if records:
        r = records.pop()
        return Position(r.time, r.latitude, r.longitude, r.valid, r.speed_kmh, r.course, r.altitude_m,
                        r.alarm, r.event, {**r.attributes, "astra.undecoded": note})
    return Position(None, event="undecoded",
                    attributes={"astra.undecoded": note, "astra.packet_hex": frame.hex()})


def _status_attrs(attrs, seq, status):
    attrs["index"] = seq
    attrs["ignition"] = bit(status, 0)
    attrs["archive"] = bit(status, 5)


# -- protocols K, M, C, V ------------------------------------------------------

def _legacy_position(r, time_off, lat_off, speed_off, altitude, reason, status, geofence, attrs):
    """The record of a K/M/C/V report: the fix fields sit at the given offsets."""
    _status_attrs(attrs, r[0], status)
    return Position(gps_time(_u(r, time_off, 4)), _s32(r, lat_off) / 1e6, _s32(r, lat_off + 4) / 1e6,
                    not bit(status, 2), float(r[speed_off] * 2), float(r[speed_off + 1] * 2),
                    float(altitude * 20), _alarms(reason, geofence, False), _event(reason), attrs)


def _common(r, off, attrs):
    """Max speed, six accelerations, distance, idle, (altitude), signal, geofence: K/M/V share this run."""
    attrs["astra.max_speed_kmh"] = r[off] * 2
    _accel(r, off + 1, attrs)
    attrs["trip_odometer_m"] = _u(r, off + 7, 2) * 100
    attrs["astra.idle_time_s"] = _u(r, off + 9, 2)
    attrs["satellites"] = r[off + 12] & 0x0F
    attrs["astra.gsm_level"] = r[off + 12] >> 4
    attrs["astra.geofence"] = r[off + 13] & 0x7F


def _driver(r, off, attrs):
    """A driver ID of binary iButton family + serial: hex, not text (Traccar reads text)."""
    driver = _driver_id(r[off:off + 7])
    if driver:
        attrs["driver_id"] = driver


def _k_size(frame, off):
    return 50 if bit(_u(frame, off + 18, 2), 8) else 38


def _k_report(r):
    reason, status = _u(r, 15, 3), _u(r, 18, 2)
    attrs = {"astra.io": r[20], "din1": bit(r[20], 0), "adc1_v": round(r[21] * 0.02, 2),
             "battery_level_pct": r[22], "power_v": round(r[23] * 0.2, 1)}
    _common(r, 24, attrs)
    if len(r) == 50:
        _driver(r, 38, attrs)
        attrs["odometer_m"] = _u(r, 45, 3) * 1000
        attrs["engine_hours_s"] = _u(r, 48, 2) * 3600
    return _legacy_position(r, 9, 1, 13, r[35], reason, status, r[37], attrs)


def _digitals(r, off):
    """
    Three digital I/O bytes, "digitals #1" (inputs 1-8) first: the first byte
    is the least significant of the mask (spec §5.4, M; V, from the same
    Astra-written decoder, is read the same way).
    """
    return int.from_bytes(r[off:off + 3], "little")


def _m_size(frame, off):
    return 53 if bit(_u(frame, off + 18, 2), 8) else 41


def _m_report(r):
    reason, status = _u(r, 15, 3), _u(r, 18, 2)
    digitals = _digitals(r, 20)
    attrs = {"astra.digitals": digitals, "din1": bit(digitals, 0), "adc1_v": round(r[23] * 0.02, 2),
             "adc2_v": round(r[24] * 0.059, 3), "battery_level_pct": r[25],
             "power_v": round(r[26] * 0.2, 1)}
    _common(r, 27, attrs)
    if len(r) == 53:
        _driver(r, 41, attrs)
        attrs["odometer_m"] = _u(r, 48, 3) * 1000
    return _legacy_position(r, 9, 1, 13, r[38], reason, status, r[40], attrs)


def _c_size(frame, off):
    return 33


def _c_report(r):
    reason, status = _u(r, 16, 2), r[18]
    attrs = {"astra.geofence": r[19] & 0x7F, "astra.digitals": r[20], "din1": bit(r[20], 0),
             "astra.io_changed": r[21], "adc2_v": round(r[22] * 0.059, 3),
             "adc1_v": round(r[23] * 0.02, 2), "battery_level_pct": r[24],
             "power_v": round(r[25] * 0.2, 1), "astra.max_speed_kmh": r[26] * 2,
             "trip_odometer_m": _u(r, 29, 2) * 100, "astra.idle_time_s": _u(r, 31, 2)}
    return _legacy_position(r, 9, 1, 13, r[15], reason, status, r[19], attrs)


def _v_size(frame, off):
    # Start/stop data follows when status bit 8 is set; the stop report
    # (reason bit 7) has twelve more bytes than the start report.
    if not bit(_u(frame, off + 22, 2), 8):
        return 72
    return 98 if bit(_u(frame, off + 19, 3), 7) else 86


def _v_report(r):
    reason, status = _u(r, 19, 3), _u(r, 22, 2)
    digitals, adcs = _digitals(r, 24), _u(r, 27, 3)
    attrs = {"astra.device_time": gps_time(_u(r, 1, 4)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "astra.digitals": digitals, "din1": bit(digitals, 0),
             "adc1_v": round((adcs & 0xFFF) * 5 / 4096, 3), "adc2_v": round((adcs >> 12) * 15 / 4096, 3),
             "battery_level_pct": r[30], "power_v": round(r[31] * 0.2, 1),
             "obd_speed_kmh": r[46], "rpm": r[47] * 32, "throttle_pct": r[48],
             "engine_load_pct": r[49], "astra.can_distance_m": _u(r, 50, 2) * 100,
             "coolant_temp_c": r[52] - 40, "astra.fms_status": _u(r, 53, 2),
             "astra.obd_status": _u(r, 55, 2), "astra.mil": bit(_u(r, 55, 2), 7),
             "astra.can_status": _u(r, 57, 2), "fuel_level_pct": r[59],
             "fuel_used_l": _u(r, 60, 4) * 0.5, "odometer_m": _u(r, 64, 4) * 5,
             "astra.avg_wheel_speed_kmh": r[68], "astra.avg_rpm": r[69] * 32,
             "astra.avg_throttle_pct": r[70], "astra.avg_engine_load_pct": r[71]}
    _common(r, 32, attrs)
    if len(r) >= 86:
        _driver(r, 72, attrs)
        attrs["astra.lifetime_odometer_m"] = _u(r, 79, 3) * 1000
        attrs["astra.running_time_h"] = _u(r, 82, 2)
        attrs["astra.axle_weight_kg"] = _u(r, 84, 2)
    if len(r) == 98:
        attrs["engine_hours_s"] = _u(r, 86, 2) * 3600
        attrs["astra.fuel_economy_l100km"] = round(_u(r, 88, 2) * 0.1, 1)
        attrs["astra.cruise_time_s"] = _u(r, 90, 2)
        attrs["astra.service_distance_m"] = _u(r, 92, 2) * 5000
        attrs["astra.run_time_s"] = _u(r, 94, 2)
        attrs["astra.mil_distance_km"] = _u(r, 96, 2)
    return _legacy_position(r, 13, 5, 17, r[43], reason, status, r[45], attrs)


#: Letter -> (report size at an offset, report decoder).
_LEGACY = {b"K"[0]: (_k_size, _k_report), b"M"[0]: (_m_size, _m_report),
           b"C"[0]: (_c_size, _c_report), b"V"[0]: (_v_size, _v_report)}


astra = AstraProtocol()
