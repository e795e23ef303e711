"""
Astra Telematics (protocol X in both connection modes, K, M, C, V): the shared
vectors, stream and datagram framing through the session, commands and their
replies, the places where Traccar decodes wrongly, and random input.

Packets the vectors do not cover are built here field by field from the
reference's layouts (spec.md §5), with a real CRC-16/MODBUS.
"""

import functools
import json
import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from decoders.astra import MAX_LENGTH, astra
from gateway.checksums import crc16_modbus, luhn_valid
from gateway.context import Context
from gateway.detector import Detector
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from gateway.registry import discover
from tests import vectorcheck
from tests.harness import (each_vector, frame_of, other_vectors, records, tcp_connection, udp_endpoint,
                           vector_replay_test)

VECTORS = vectorcheck.load("astra")
BY_ID = {v["id"]: v for v in VECTORS}
OTHERS = other_vectors("astra")

LOGIN = b"$ASTRA;AT402;860873045366969;;7.0.70.3;X;1;8A1B\r\n"
ACK = b"\x06"


#: Astra counts time in seconds from the GPS epoch, without leap seconds (spec §5).
EPOCH = datetime(1980, 1, 6, tzinfo=timezone.utc)


def at(seconds):
    return EPOCH + timedelta(seconds=seconds)


# -- building packets from the reference's layouts -----------------------------

def envelope(letter, payload):
    body = letter + struct.pack(">H", len(payload) + 5) + payload
    return body + struct.pack(">H", crc16_modbus(body))


def imei_field(imei):
    return struct.pack(">I", int(imei[:8])) + int(imei[8:]).to_bytes(3, "big")


def with_luhn(digits14):
    return next(digits14 + d for d in "0123456789" if luhn_valid(digits14 + d))


def gnss(fix_time, lat, lon, speed_kmh=0, heading=0, altitude=0, distance=0):
    return struct.pack(">IiiBBBBH", fix_time, round(lat * 1e6), round(lon * 1e6),
                       speed_kmh // 2, speed_kmh // 2, heading // 2, altitude // 20, distance)


def x_report(modules, seq=1, rtc=1_400_000_000, reason=1, status=0):
    mask = sum(1 << b for b in modules)
    body = b"".join(modules[b] for b in sorted(modules))
    return struct.pack(">B", seq) + mask.to_bytes(6, "big") + struct.pack(">IIH", rtc, reason, status) + body


def x_packet(reports, imei=None):
    return envelope(b"X", bytes([len(reports)]) + (imei_field(imei) if imei else b"") + b"".join(reports))


def k_report(seq=1, lat=51.5, lon=-0.1, time=1_100_000_000, reason=1, status=0, extended=b""):
    if extended:
        status |= 0x100
    return (struct.pack(">BiiIBB", seq, round(lat * 1e6), round(lon * 1e6), time, 10, 45)
            + reason.to_bytes(3, "big") + struct.pack(">H", status)
            + bytes([1, 50, 90, 65, 20, 1, 2, 3, 4, 5, 6]) + struct.pack(">HH", 12, 30)
            + bytes([3, 0x96, 0]) + extended)


# -- session plumbing ------------------------------------------------------------

#: An accepted TCP connection to an astra-only hub: (hub, protocol, transport).
tcp = functools.partial(tcp_connection, astra)


def decode(data, state=None, settings_=None, transport="tcp"):
    context = Context(transport=transport, lookup=lambda _: dict(settings_ or {}))
    context.state.update(state or {})
    return astra.decode(data, context)


# -- vectors -----------------------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(OTHERS)
def test_other_protocols_are_not_claimed(vec):
    head = b"".join(bytes.fromhex(h) for h in vec["frames_hex"])
    for transport in ("tcp", "udp"):
        assert not astra.detect(head, transport).matched
    for n in range(1, len(head)):
        assert not astra.detect(head[:n], "tcp").matched


@each_vector(VECTORS)
def test_every_vector_detected_on_both_transports(vec):
    detector = Detector(discover().values())
    data = frame_of(vec["id"])
    for transport in ("tcp", "udp"):
        assert detector.detect(data, transport, final=True).decoder is astra


# -- TCP framing ---------------------------------------------------------------------

@pytest.mark.parametrize("vector_id", sorted(BY_ID))
def test_split_at_every_byte_boundary(vector_id):
    data = frame_of(vector_id)
    hub, protocol, transport = tcp()
    protocol.dataReceived(data)
    whole = records(hub)
    for cut in range(1, len(data)):
        hub, protocol, transport = tcp()
        protocol.dataReceived(data[:cut])
        assert transport.value() == b""
        protocol.dataReceived(data[cut:])
        assert records(hub) == whole
        assert transport.value() == ACK
        assert hub.errors == []


def test_one_byte_at_a_time_login_packets_and_reply():
    stream = LOGIN + frame_of("astra-006") + b"$IMOB,OK\r\n" + frame_of("astra-006")
    hub, protocol, transport = tcp()
    for i in range(len(stream)):
        protocol.dataReceived(stream[i:i + 1])
    assert hub.errors == []
    # The login and each packet are acked; the command reply is not.
    assert transport.value() == ACK * 3
    assert [d for d, _ in records(hub)] == ["860873045366969"] * 2
    assert [(d, c.success, c.reply) for d, c in hub.commands.confirmations] == [
        ("860873045366969", True, "$IMOB,OK")]


def test_several_packets_in_one_read_with_crlf_between():
    stream = frame_of("astra-004") + b"\r\n" + frame_of("astra-005") + frame_of("astra-003") + b"\r\n"
    hub, protocol, transport = tcp()
    protocol.dataReceived(stream)
    assert hub.errors == []
    assert transport.value() == ACK * 3
    assert len(records(hub)) == 1 + 8 + 2


def test_garbage_before_a_packet_is_skipped_and_logged():
    hub, protocol, transport = tcp()
    protocol.dataReceived(frame_of("astra-004"))
    protocol.dataReceived(b"\x00\xff junk $$ \x17" + frame_of("astra-004"))
    assert transport.value() == ACK * 2
    assert len(records(hub)) == 2
    assert any("skipped" in e for e in hub.errors)


def test_bad_crc_gets_no_ack_and_the_resent_packet_does():
    good = frame_of("astra-001")
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    hub, protocol, transport = tcp()
    protocol.dataReceived(frame_of("astra-004"))
    protocol.dataReceived(bad)
    assert transport.value() == ACK
    assert len(records(hub)) == 1
    protocol.dataReceived(good)
    assert transport.value() == ACK * 2
    assert records(hub)[-1][0] == "860873041761486"
    assert transport.connected


def test_line_without_end_waits_then_is_dropped():
    assert astra.frame(b"$IMOB,O", "tcp") == (None, 0)
    frame, consumed = astra.frame(b"$IMOB," + b"A" * 600, "tcp")
    assert frame is None and consumed > 0


# -- UDP -------------------------------------------------------------------------------

#: The UDP endpoint of an astra-only hub: (hub, endpoint, sent).
udp = functools.partial(udp_endpoint, astra)


def test_udp_ack_goes_to_the_source_for_each_packet_of_a_batch():
    hub, endpoint, sent = udp()
    endpoint.datagramReceived(frame_of("astra-001") + frame_of("astra-004"), ("192.0.2.7", 4000))
    endpoint.datagramReceived(frame_of("astra-005"), ("192.0.2.8", 4001))
    assert sent == [(ACK, ("192.0.2.7", 4000)), (ACK, ("192.0.2.7", 4000)), (ACK, ("192.0.2.8", 4001))]
    assert len(records(hub)) == 1 + 1 + 8
    assert hub.errors == []


def test_udp_truncated_datagram_is_reported_and_not_acked():
    hub, endpoint, sent = udp()
    endpoint.datagramReceived(frame_of("astra-004")[:-3], ("192.0.2.7", 4000))
    endpoint.datagramReceived(frame_of("astra-004") + frame_of("astra-001")[:20], ("192.0.2.7", 4000))
    assert sent == [(ACK, ("192.0.2.7", 4000))]
    assert any("truncated" in e for e in hub.errors)


def test_udp_command_reply_datagram_is_claimed_and_decoded():
    hub, endpoint, sent = udp()
    endpoint.datagramReceived(frame_of("astra-004"), ("192.0.2.7", 4000))
    endpoint.datagramReceived(b"$POLL,OK\r\n", ("192.0.2.7", 4000))
    assert hub.errors == []
    assert sent == [(ACK, ("192.0.2.7", 4000))]


# -- protocol X: connection modes, identity, modules --------------------------------------

def test_login_line():
    result = decode(LOGIN)
    assert result.device_id == "860873045366969"
    assert result.reply == ACK and result.records == ()


def test_mode6_packet_takes_the_imei_of_the_login():
    context = Context(lookup=lambda _: {})
    decoded = astra.decode(LOGIN, context)
    assert decoded.device_id == "860873045366969"
    result = astra.decode(frame_of("astra-006"), context)
    assert result.device_id == "860873045366969"
    assert result.reply == ACK
    assert len(result.records) == 1


def test_mode6_without_login_is_still_decoded_and_acked():
    result = decode(frame_of("astra-006"))
    assert result.device_id is None
    assert result.reply == ACK
    assert result.records[0].latitude == pytest.approx(53.472329)


def test_mode4_and_mode6_told_apart_by_exact_consumption():
    imei = with_luhn("35732204352384")
    report = x_report({0: bytes([61, 90]), 1: gnss(1_400_000_000, 48.1, 11.5, 36, 90, 500)})
    mode4 = decode(x_packet([report], imei=imei))
    mode6 = decode(x_packet([report]))
    assert mode4.device_id == imei and mode6.device_id is None
    for result in (mode4, mode6):
        (rec,) = result.records
        assert (rec.latitude, rec.longitude, rec.speed_kmh, rec.course, rec.altitude_m) == (
            pytest.approx(48.1), pytest.approx(11.5), 36, 90, 500)
        assert rec.attributes["power_v"] == pytest.approx(12.2)


def test_imei_is_zero_padded_on_the_left():
    imei = with_luhn("00000012000003")
    packet = envelope(b"K", imei_field(imei) + k_report())
    assert decode(packet).device_id == imei


def test_gnss_time_is_gps_epoch_and_status_bits():
    fix = 1_406_000_000
    report = x_report({1: gnss(fix, 1.0, 2.0)}, rtc=fix + 2, status=0b100101, reason=1 << 4)
    (rec,) = decode(x_packet([report])).records
    assert rec.time == at(fix)
    assert rec.valid is False          # status bit 2: GNSS invalid
    assert rec.attributes["archive"] is True and rec.attributes["ignition"] is True
    assert rec.attributes["astra.device_time"] == at(fix + 2).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rec.alarm == ("sos",)


def test_report_without_gnss_is_an_event_at_the_device_time():
    report = x_report({0: bytes([60, 80])}, rtc=1_400_000_000, reason=1 << 14)
    (rec,) = decode(x_packet([report])).records
    assert rec.latitude is None and rec.longitude is None and rec.valid is False
    assert rec.time == at(1_400_000_000)
    assert rec.event == "reboot"


@pytest.mark.parametrize("old_firmware", [False, True])
def test_module_9_size_follows_the_packet(old_firmware):
    module9 = (b"\x01" + b"TRAILER-07" + b"\x00") if old_firmware else (b"\x01\x01\x90" + bytes(5))
    reports = [x_report({1: gnss(1_400_000_000, 10.0, 20.0), 9: module9, 5: b"\x76"}, seq=s)
               for s in (1, 2)]
    result = decode(x_packet(reports))
    assert [r.attributes["index"] for r in result.records] == [1, 2]
    for rec in result.records:
        assert rec.attributes["satellites"] == 6 and "astra.undecoded" not in rec.attributes
        if old_firmware:
            assert rec.attributes["astra.trailer_id"] == "TRAILER-07"
        else:
            assert rec.attributes["astra.alcohol_test_passed"] is True
            assert rec.attributes["astra.alcohol_ugl"] == 400


def test_module_9_that_fits_no_size_stops_the_packet_there():
    # Neither 8 nor 12 bytes consume the packet: what follows module 9 is not
    # aligned, so it is not decoded (spec §0.6); the packet is still acked.
    reports = [x_report({1: gnss(1_400_000_000, 10.0, 20.0), 9: bytes(10), 18: bytes(8)}, seq=s)
               for s in (1, 2)]
    packet = x_packet(reports)
    result = decode(packet)
    assert result.reply == ACK
    # Bytes 4-10 of this $MODE,6 packet pass as an IMEI (Luhn, 1 in 10); read
    # so, its report would be dated 1980: the IMEI-less reading is kept.
    assert luhn_valid("%08d%07d" % (int.from_bytes(packet[4:8], "big"), int.from_bytes(packet[8:11], "big")))
    assert result.device_id is None
    (rec,) = result.records
    assert rec.latitude == pytest.approx(10.0) and rec.attributes["astra.modules"] == [1]
    assert "module 9 fits the packet with neither" in rec.attributes["astra.undecoded"]
    assert "1 later report" in rec.attributes["astra.undecoded"]


def test_unknown_module_is_acked_and_says_what_was_not_decoded():
    first = x_report({1: gnss(1_400_000_000, 10.0, 20.0), 24: b"\x00\x01\x02"}, seq=7)
    second = x_report({1: gnss(1_400_000_100, 10.0, 20.0)}, seq=8)
    result = decode(x_packet([first, second]))
    assert result.reply == ACK
    (rec,) = result.records
    assert rec.latitude == pytest.approx(10.0)
    assert "module 24" in rec.attributes["astra.undecoded"]
    assert "1 later report" in rec.attributes["astra.undecoded"]


def test_mode4_packet_with_unknown_module_keeps_its_imei():
    imei = with_luhn("35732204352384")
    report = x_report({1: gnss(1_400_000_000, 10.0, 20.0), 24: b"\x00\x01\x02"}, seq=40)
    result = decode(x_packet([report], imei=imei))
    assert result.device_id == imei and result.reply == ACK
    (rec,) = result.records
    assert rec.latitude == pytest.approx(10.0)
    assert "module 24 has no known size" in rec.attributes["astra.undecoded"]


def test_variable_length_modules_are_walked():
    can = struct.pack(">H", 6 + 13) + bytes(4) + bytes(13)
    ble = bytes([1]) + struct.pack(">H", 12) + bytes(4) + bytes(12)
    debug = struct.pack(">H", 3) + b"\x01ab"
    report = x_report({1: gnss(1_400_000_000, 1.0, 2.0), 44: ble, 45: can, 47: debug, 0: b"\x3c\x10"})
    (a, b) = decode(x_packet([report, report])).records
    assert a.attributes["astra.modules"] == [0, 1, 44, 45, 47]
    assert b.attributes["power_v"] == pytest.approx(12.0)


def test_can_obd_1wire_and_driver_modules():
    fms = bytes([80, 60, 60, 40, 90, 30, 70, 50]) + struct.pack(">H", 123) + bytes([100]) \
        + struct.pack(">HH", 0, 0) + bytes([55]) + struct.pack(">I", 2000)
    one_wire = struct.pack(">HHHH", 800, 300, 0, 0xFFFF)
    driver = b"\x01" + bytes.fromhex("0100001920c43d00")
    dtcs = b"P0301P0420" + bytes(15)
    report = x_report({1: gnss(1_400_000_000, 1.0, 2.0), 8: driver, 11: b"\x01\x86\xa0\x00\x0a",
                       12: fms, 14: dtcs, 18: one_wire, 6: struct.pack(">HH", 234, 15)})
    (rec,) = decode(x_packet([report])).records
    a = rec.attributes
    assert (a["rpm"], a["obd_speed_kmh"], a["throttle_pct"], a["engine_load_pct"]) == (40 * 32, 60, 30, 50)
    assert a["coolant_temp_c"] == 60
    assert (a["fuel_level_pct"], a["fuel_used_l"]) == (55, 1000.0)
    assert (a["temp1_c"], a["temp2_c"]) == (25.0, -25.0) and "temp3_c" not in a and "temp4_c" not in a
    assert a["driver_id"] == "0100001920c43d00" and a["astra.driver_id_source"] == "ibutton"
    assert (a["odometer_m"], a["engine_hours_s"]) == (100_000_000, 36_000)
    assert a["dtcs"] == ["P0301", "P0420"]
    assert (a["mcc"], a["mnc"]) == (234, 15)


def test_gnss_extended_and_sensor_modules_beyond_traccars_bits():
    # Module 43: module 1's fields, then fix %, SVs in view, error, HDOP, jammer
    # hits, constellations, 4 reserved (spec §5.2.3); module 32: 6 x (type, value).
    extended = gnss(1_400_000_000, -33.9, 151.2, 50, 180, 40, 25) + bytes([97, 14, 3, 9, 2, 7]) + bytes(4)
    sensors = (b"\x01" + struct.pack(">h", -1250) + b"\x02" + struct.pack(">H", 4550) + bytes(12))
    report = x_report({32: sensors, 43: extended, 0: b"\x3c\x10"})
    (rec,) = decode(x_packet([report, report])).records[1:]
    assert (rec.latitude, rec.longitude, rec.speed_kmh, rec.course, rec.altitude_m) == (
        pytest.approx(-33.9), pytest.approx(151.2), 50, 180, 40)
    a = rec.attributes
    assert (a["hdop"], a["astra.satellites_in_view"], a["trip_odometer_m"]) == (0.9, 14, 2500)
    assert (a["astra.sensor1_temp_c"], a["astra.sensor2_humidity_pct"]) == (-12.5, 45.5)


def test_geofence_and_jammer_alarms():
    enter = x_report({1: gnss(1_400_000_000, 1.0, 2.0), 7: b"\x83"}, reason=1 << 3, status=1 << 8)
    leave = x_report({1: gnss(1_400_000_000, 1.0, 2.0), 7: b"\x03"}, reason=1 << 3)
    a, b = decode(x_packet([enter, leave])).records
    assert set(a.alarm) == {"geofence_enter", "jamming"} and a.attributes["astra.geofence"] == 3
    assert b.alarm == ("geofence_exit",)


def test_z_firmware_module_sizes_from_the_login():
    report = x_report({1: gnss(1_400_000_000, 1.0, 2.0), 19: bytes(10), 0: b"\x3c\x10"})
    packet = x_packet([report, report])
    context = Context(lookup=lambda _: {})
    astra.decode(LOGIN.replace(b";X;", b";Z;"), context)
    result = astra.decode(packet, context)
    assert len(result.records) == 2 and "astra.undecoded" not in result.records[1].attributes
    # Read as standard X firmware (module 19 = 17 bytes) it does not fit.
    assert any("astra.undecoded" in r.attributes for r in decode(packet).records)


# -- where Traccar decodes wrongly (spec §8, notes) -----------------------------------------

def test_second_report_of_fms_packet_is_aligned():
    # Traccar knows no module 29 and misreads the second report of astra-002.
    first, second = decode(frame_of("astra-002")).records
    assert [first.attributes["index"], second.attributes["index"]] == [60, 61]
    assert second.latitude == pytest.approx(52.138927) and second.longitude == pytest.approx(-0.326837)
    assert second.attributes["astra.modules"] == [0, 1, 2, 3, 4, 5, 7, 12, 29]


def test_k_driver_id_is_binary_and_supply_is_scaled_and_validity_follows_bit_2():
    a, b = decode(frame_of("astra-003")).records
    assert a.attributes["driver_id"] == "0100001920c43d"
    assert a.attributes["power_v"] == pytest.approx(10.8) and a.attributes["battery_level_pct"] == 100
    assert a.valid is False and a.attributes["odometer_m"] == 150_000
    assert a.attributes["engine_hours_s"] == 66 * 3600


def test_k_reports_iterated_by_length_not_by_more_bit():
    result = decode(frame_of("astra-005"))
    assert len(result.records) == 8
    assert [r.attributes["index"] for r in result.records] == list(range(173, 181))


def test_mode6_login_is_supported():
    hub, protocol, transport = tcp()
    protocol.dataReceived(LOGIN)
    assert protocol.session.protocol == "astra"
    assert protocol.session.device_id == "860873045366969"
    assert transport.value() == ACK


# -- protocol Y (outline only, spec §5.5) ---------------------------------------------------

def y_report(modules, seq=1, rtc=1_400_000_000, reason=1, status=0):
    """A Y report: 27-byte header, each module led by its byte count (counting itself)."""
    mask = sum(1 << b for b in modules)
    body = b"".join(bytes([len(modules[b]) + 1]) + modules[b] for b in sorted(modules))
    return (bytes([seq]) + mask.to_bytes(10, "big") + struct.pack(">IQI", rtc, reason, status) + body)


def test_y_packet_is_acked_and_its_reports_kept():
    first = y_report({0: b"\x00\x7a\x50", 1: bytes(21), 70: b"\xaa"}, seq=4, reason=(1 << 32) | (1 << 4))
    second = y_report({}, seq=5, rtc=1_400_000_060)
    context = Context(lookup=lambda _: {})
    astra.decode(LOGIN.replace(b";X;", b";Y;"), context)
    result = astra.decode(envelope(b"Y", bytes([2]) + first + second), context)
    # Every packet with a good CRC is acked, Y included (spec §6).
    assert result.reply == ACK and result.device_id == "860873045366969"
    a, b = result.records
    assert (a.time, b.time) == (at(1_400_000_000), at(1_400_000_060))
    assert a.latitude is None and a.valid is False
    assert a.event == "panic,trailer_data" and a.alarm == ("sos",)
    assert a.attributes["astra.modules"] == [0, 1, 70] and a.attributes["index"] == 4
    assert bytes.fromhex(a.attributes["astra.report_hex"]) == first
    assert "astra.undecoded" not in a.attributes and "astra.undecoded" not in b.attributes


def test_y_module_past_the_packet_is_acked_and_noted():
    report = y_report({0: b"\x00\x7a\x50"})
    packet = envelope(b"Y", b"\x01" + report[:27] + b"\x09" + report[28:])
    (rec,) = decode(packet).records
    assert decode(packet).reply == ACK
    assert "module 0 runs past the packet" in rec.attributes["astra.undecoded"]


def test_y_packet_acked_on_a_tcp_session():
    hub, protocol, transport = tcp()
    protocol.dataReceived(LOGIN.replace(b";X;", b";Y;"))
    protocol.dataReceived(envelope(b"Y", b"\x01" + y_report({0: b"\x00\x7a\x50"})))
    assert transport.value() == ACK * 2 and hub.errors == []
    assert [d for d, _ in records(hub)] == ["860873045366969"]


# -- protocols M, C, V --------------------------------------------------------------------

def test_m_packet():
    imei = with_luhn("86295002579753")
    r = (struct.pack(">BiiIBB", 5, 52_000_000, -1_500_000, 1_100_000_000, 20, 90) + (1 << 15).to_bytes(3, "big")
         + struct.pack(">H", 1) + b"\x01\x00\x80" + bytes([100, 200, 80, 70, 25]) + bytes(6)
         + struct.pack(">HH", 15, 0) + bytes([2, 0x97, 0]))
    (rec,) = decode(envelope(b"M", imei_field(imei) + r)).records
    assert (rec.latitude, rec.speed_kmh, rec.course, rec.altitude_m) == (52.0, 40, 180, 40)
    a = rec.attributes
    assert (a["adc1_v"], a["adc2_v"], a["power_v"], a["satellites"]) == (2.0, 11.8, 14.0, 7)
    assert rec.alarm == ("overspeed",) and a["ignition"] is True
    # Byte 20 is "digitals #1", the least significant of the three (spec §5.4).
    assert a["din1"] is True and a["astra.digitals"] == 0x800001


def test_c_packet():
    imei = with_luhn("35732204352384")
    r = (struct.pack(">BiiIBBB", 9, -33_900_000, 18_400_000, 1_100_000_000, 30, 10, 3)
         + struct.pack(">HBB", 1 << 4, 0, 0) + bytes([1, 0, 100, 50, 95, 61, 30, 0, 0])
         + struct.pack(">HH", 7, 3))
    (rec,) = decode(envelope(b"C", imei_field(imei) + r)).records
    assert (rec.latitude, rec.longitude, rec.speed_kmh, rec.altitude_m) == (-33.9, 18.4, 60, 60)
    assert rec.alarm == ("sos",) and rec.attributes["power_v"] == pytest.approx(12.2)


@pytest.mark.parametrize("stop", [False, True])
def test_v_packet_sizes(stop):
    imei = with_luhn("35732204352384")
    reason = (1 << 7) if stop else (1 << 6)
    base = (struct.pack(">BIiiIBB", 1, 1_100_000_005, 51_000_000, -2_000_000, 1_100_000_000, 25, 30)
            + reason.to_bytes(3, "big") + struct.pack(">H", 0x100)
            + b"\x00\x00\x01" + (2048 | (4095 << 12)).to_bytes(3, "big") + bytes([90, 62, 30]) + bytes(6)
            + struct.pack(">HH", 5, 0) + bytes([4, 0x88, 0])
            + bytes([50, 50, 20, 40]) + struct.pack(">H", 10) + bytes([130]) + struct.pack(">HHH", 0, 0x80, 0)
            + bytes([70]) + struct.pack(">II", 400, 2000) + bytes([48, 45, 18, 35]))
    ext = bytes.fromhex("0100001920c43d") + (1234).to_bytes(3, "big") + struct.pack(">HH", 10, 7000)
    if stop:
        ext += struct.pack(">HHHHHH", 500, 300, 60, 2, 3600, 0)
    packet = envelope(b"V", imei_field(imei) + base + ext)
    (rec,) = decode(packet).records
    a = rec.attributes
    assert rec.time == at(1_100_000_000)
    assert a["astra.device_time"] == at(1_100_000_005).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (a["obd_speed_kmh"], a["rpm"], a["throttle_pct"], a["engine_load_pct"]) == (50, 1600, 20, 40)
    assert (a["coolant_temp_c"], a["fuel_used_l"], a["odometer_m"]) == (90, 200.0, 10000)
    assert a["adc1_v"] == pytest.approx(2.5) and a["adc2_v"] == pytest.approx(15.0, abs=0.01)
    assert a["astra.mil"] is True and a["driver_id"] == "0100001920c43d"
    assert ("engine_hours_s" in a) is stop


# -- commands -----------------------------------------------------------------------------

def command(kind, **params):
    return Command(1, "860873045366969", kind, params)


def encode(kind, settings_=None, **params):
    return astra.encode(command(kind, **params), Context(lookup=lambda _: dict(settings_ or {})))


# The bytes of the Astra protocol document's command examples.
@pytest.mark.parametrize("kind, params, hexbytes", [
    ("engine_stop", {}, "24494d4f422c33"),
    ("engine_stop", {"mode": "immediate"}, "24494d4f422c34"),
    ("engine_stop", {"mode": "4"}, "24494d4f422c34"),
    ("engine_resume", {}, "24494d4f422c30"),
    ("engine_stop", {"output": "1"}, "24534449472c312c31"),
    ("engine_resume", {"output": "1"}, "24534449472c312c30"),
    ("position_request", {}, "24504f4c4c"),
    ("reboot", {}, "24424f4f54"),
    ("set_interval", {"seconds": "3600"}, "245354494d2c3630"),
    ("set_interval", {"metres": "500"}, "24444953542c353030"),
    ("custom", {"text": "$PASS,12345$DIST,1500"}, "24504153532c313233343524444953542c31353030"),
    ("custom", {"hex": "2441545357"}, "2441545357"),
])
def test_encoder_bytes(kind, params, hexbytes):
    encoded = encode(kind, **params)
    assert encoded.data.hex() == hexbytes
    # The device echoes the (last) command's mnemonic in its reply (spec §7).
    assert encoded.token == bytes.fromhex(hexbytes).rsplit(b"$", 1)[1][:4].decode()
    assert encoded.expects_reply


def test_custom_bytes_naming_no_command_expect_no_reply():
    encoded = encode("custom", text="hello")
    assert encoded.token is None and not encoded.expects_reply


def test_a_lost_reply_does_not_confirm_the_wrong_command():
    # $IMOB,3 went unanswered; the $POLL,OK that follows answers $POLL only.
    stop, poll = encode("engine_stop"), encode("position_request")
    (reply,) = decode(b"$POLL,OK\r\n").confirmations
    assert reply.token == poll.token == "POLL" != stop.token
    (reply,) = decode(b"$PASS,OK\r$IMOB,OK\r\n").confirmations
    assert reply.token == encode("engine_stop", {"astra.pin": "1234"}).token == "IMOB"


def test_pin_precedes_configuration_commands_only():
    assert encode("engine_stop", {"astra.pin": "12345"}).data == b"$PASS,12345$IMOB,3"
    assert encode("set_interval", {"astra.pin": "12345"}, seconds="120").data == b"$PASS,12345$STIM,2"
    assert encode("position_request", {"astra.pin": "12345"}).data == b"$POLL"


@pytest.mark.parametrize("kind, params", [
    ("engine_stop", {"mode": "7"}), ("engine_stop", {"output": "9"}),
    ("set_interval", {"seconds": "90"}), ("set_interval", {}), ("custom", {}),
    ("custom", {"hex": "zz"}), ("custom", {"text": "é"}), ("sms", {}),
])
def test_encoder_refuses(kind, params):
    with pytest.raises(EncodeError):
        encode(kind, **params)


@pytest.mark.parametrize("line, success, reply", [
    (b"$IMOB,OK\r\n", True, "$IMOB,OK"),
    (b"$SDIG,UN\r\n", False, "$SDIG,UN"),
    (b"$PASS,OK\r$DIST,OK\r\n", True, "$PASS,OK\n$DIST,OK"),
    (b"$DIST,OK\r$APPW,OK\r$FRED,UN\r\n", False, "$DIST,OK\n$APPW,OK\n$FRED,UN"),
    (b"$ATSW,7.0.70.3\r\n", True, "$ATSW,7.0.70.3"),
])
def test_command_replies(line, success, reply):
    result = decode(line)
    assert result.records == () and result.reply == b""
    (confirmation,) = result.confirmations
    token = reply.rsplit("$", 1)[1][:4]
    assert (confirmation.token, confirmation.success, confirmation.reply) == (token, success, reply)


@pytest.mark.parametrize("line", [b"$HELLO\r\n", b"$ASTRA;AT402;123;;1;X;1\r\n", b"$IMOB,OK$\r\n"])
def test_bad_lines_raise_decode_error(line):
    with pytest.raises(DecodeError):
        decode(line)


# -- robustness ---------------------------------------------------------------------------

REAL = [frame_of(i) for i in sorted(BY_ID)] + [LOGIN, b"$IMOB,OK\r\n",
                                                envelope(b"Y", b"\x01" + y_report({0: b"\x00\x7a\x50"}))]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(REAL)))
    kind = draw(st.sampled_from(["truncate", "flip", "length", "recrc", "splice"]))
    if kind == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "length" and data[:1] != b"$":
        data[1:3] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
    elif kind == "recrc" and data[:1] != b"$":
        # A lie about the contents the CRC vouches for: corrupt, then re-sign.
        i = draw(st.integers(3, len(data) - 3))
        data[i] = draw(st.integers(0, 255))
        data[-2:] = struct.pack(">H", crc16_modbus(bytes(data[:-2])))
    elif kind == "splice":
        data += draw(st.binary(max_size=64))
    return bytes(data)


def drain(buffer, transport):
    """Frame and decode all of C{buffer} the way the session does."""
    frames = 0
    context = Context(transport=transport, lookup=lambda _: {})
    while buffer:
        frame, consumed = astra.frame(buffer, transport)
        assert 0 <= consumed <= len(buffer)
        if consumed == 0:
            assert frame is None and len(buffer) < MAX_LENGTH
            break
        buffer = buffer[consumed:]
        if frame is not None:
            assert 0 < len(frame) <= consumed
            frames += 1
            try:
                result = astra.decode(frame, context)
            except DecodeError:
                continue
            json.dumps([r.to_json() for r in result.records])
    return frames


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), mutated()), min_size=1, max_size=5),
       st.sampled_from(["tcp", "udp"]))
def test_random_and_mutated_input(chunks, transport):
    data = b"".join(chunks)
    assert drain(data, transport) <= len(data)
    astra.detect(data, transport)
    for chunk in chunks:
        try:
            decode(chunk, transport=transport)
        except DecodeError:
            pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), mutated()), min_size=1, max_size=6))
def test_session_survives_random_input(chunks):
    hub, protocol, transport = tcp()
    protocol.dataReceived(LOGIN)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    protocol.dataReceived(b"\r\n" + frame_of("astra-006"))
    assert not any("decoder failed" in e or "framer failed" in e for e in hub.errors)
    assert len(protocol.session._buffer) <= MAX_LENGTH + 200 * 6


def test_k_report_that_does_not_fit_is_acked_and_kept():
    imei = with_luhn("35732204352384")
    one = k_report(seq=1)
    cut = k_report(seq=2)[:30]
    result = decode(envelope(b"K", imei_field(imei) + one + cut))
    assert result.reply == ACK
    (rec,) = result.records
    assert rec.attributes["index"] == 1 and "needs 38 bytes, 30 left" in rec.attributes["astra.undecoded"]
    # Nothing fits: the packet itself is kept in an event record.
    extended = k_report(seq=3, extended=bytes(12))[:-5]
    (event,) = decode(envelope(b"K", imei_field(imei) + extended)).records
    assert event.time is None and event.latitude is None and event.event == "undecoded"
    assert bytes.fromhex(event.attributes["astra.packet_hex"])[10:-2] == extended
