"""
JT/T 808 (jt808): vectors, framing through the session, detection, replies,
the location block and its items, subpackaging, commands and their
confirmations, settings, robustness.
"""

import socket
import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from decoders.jt808 import (MAX_REASSEMBLY, MAX_WAIT, device_id, escape, immobilizer_setting,
                            jt808, location, message, parse, timezone_setting, unescape,
                            unwrap)
from gateway.checksums import xor8
from gateway.context import Context
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from tests import vectorcheck
from tests.test_commands_e2e import assert_nothing_more, send, wait_status
from tests.test_e2e import positions, recv_exactly, tcp, wait_until
from tests.harness import (bit_flipped, frame_and_decode, frame_of,
                           other_vectors_refused_test, run_session, split_anywhere,
                           tcp_connection, truncated, udp_endpoint, vector_replay_test)

VECTORS = vectorcheck.load("jt808")

# Real frames from the vector file (sources there).
REGISTER_2019 = frame_of("jt808-007")   # 0x0100, 2019 header
AUTH = frame_of("jt808-013")            # 0x0102 of the BSJ KM02 (terminal 024530313349)
HEARTBEAT = frame_of("jt808-016")       # 0x0002, empty body, serial 00b7
HEARTBEAT_2019 = frame_of("jt808-020")
LOCATION = frame_of("jt808-067")        # 0x0200, items 01 2a 30 31
LOCATION_BIT5 = frame_of("jt808-048")   # status bit 5 set, plain coordinates
BATCH = frame_of("jt808-088")           # 0x0704, 3 blind-area items
GENERAL_RESPONSE = frame_of("jt808-093")  # BSJ 0x0001: our 0000 / 8105 / ok
PACKET = frame_of("jt808-095")          # 0x1205 packet 1 of 18

BSJ = bytes.fromhex("024530313349")
TRACCAR_MOCK = bytes.fromhex("0b3a73ce2ff2")
NUMBER_2019 = bytes.fromhex("00000866496077582164")

NOON = datetime(2024, 1, 1, 0, 0, 0, tzinfo=timezone.utc).timestamp()


def content_of(frame):
    return unwrap(frame)


def rebuild(content_without_check):
    """
    A wire frame around edited content, with a fresh check code.
    """
    return escape(content_without_check + bytes([xor8(content_without_check)]))


def with_body(frame, body, message_id=None, attributes_extra=0):
    """
    C{frame} (2011/2013 header) with another body (and message id).
    """
    c = content_of(frame)
    mid = message_id if message_id is not None else struct.unpack(">H", c[:2])[0]
    head = struct.pack(">HH", mid, len(body) | attributes_extra) + c[4:12]
    return rebuild(head + body)


def run(chunks, transport="tcp", settings=None):
    return run_session(jt808, chunks, transport, settings)


def context(transport="tcp", **device_settings):
    clock = Clock()
    clock.advance(NOON)
    return Context(transport=transport, lookup=lambda device_id: device_settings,
                   seconds=clock.seconds)


def terminal_context(number=BSJ, version=None, serial=0, **device_settings):
    """
    The context of a session whose terminal sent frames as C{number}, with our
    serial counter at C{serial}.
    """
    c = context(**device_settings)
    c.state.update(terminal=(number, version), serial=serial)
    return c


def encode(kind, ctx, **params):
    return jt808.encode(Command(1, "dev", kind, params), ctx)


# -- vectors and detection ------------------------------------------------------

test_vector = vector_replay_test(VECTORS, without_errors=True)
test_claims_no_other_vector = other_vectors_refused_test(jt808, every_prefix=True)


def test_vector_file_is_the_shared_one():
    assert len(VECTORS) >= 57
    assert all(v.get("source") for v in VECTORS)


def test_detect_needs_the_whole_first_frame():
    assert jt808.detect(HEARTBEAT[:5], "tcp").outcome.value == "more"
    assert not jt808.detect(HEARTBEAT[:5], "udp").matched
    assert jt808.detect(HEARTBEAT, "udp").matched
    # NDTP opens with 7E 7E: one 7E is skipped, the rest must still check.
    assert jt808.detect(b"\x7e" + HEARTBEAT, "tcp").matched
    assert not jt808.detect(bytes.fromhex("7e7e3b0002000000007e"), "tcp").matched


@pytest.mark.parametrize("head", [
    bytes.fromhex("7e002e000000146310100000000000007e"),   # Oigo-like: no XOR
    b"~000000041FE3FFFF;0;1~",                              # Jmak text
])
def test_other_7e_protocols_are_refused(head):
    assert not jt808.detect(head, "tcp").matched


def test_detect_refuses_a_wrong_length_field_and_platform_ids():
    c = content_of(HEARTBEAT)[:-1]
    assert not jt808.detect(rebuild(c[:3] + b"\x01" + c[4:]), "tcp").matched
    assert not jt808.detect(rebuild(b"\x80\x01" + c[2:]), "tcp").matched


def test_minimum_length_per_edition():
    # spec §0.7: 12 bytes of 2011 header with no check byte after it.
    short = escape(content_of(HEARTBEAT)[:12])
    assert not jt808.detect(short, "tcp").matched
    # A 2019 flag with a 2011-sized frame is short too.
    c = bytearray(content_of(HEARTBEAT)[:-1])
    c[2] |= 0x40
    assert not jt808.detect(rebuild(bytes(c)), "tcp").matched
    records, sent, hub = run([HEARTBEAT, rebuild(bytes(c)), HEARTBEAT])
    assert len(sent) == 2 and len(hub.errors) == 1


# -- escaping and framing --------------------------------------------------------

def test_escaping_example_of_the_standard():
    assert escape(bytes.fromhex("307e087d55")) == bytes.fromhex("7e307d02087d01557e")
    assert unescape(bytes.fromhex("307d02087d0155")) == bytes.fromhex("307e087d55")
    assert unescape(bytes.fromhex("307d0308")) is None
    assert unescape(bytes.fromhex("307d")) is None


STREAM = AUTH + HEARTBEAT + LOCATION + BATCH + GENERAL_RESPONSE + LOCATION_BIT5


def test_one_read_many_frames():
    records, sent, hub = run([STREAM])
    assert hub.errors == []
    assert len(records) == 1 + 3 + 1
    # Our serials count 0, 1, 2...; the 0x0001 gets no reply.
    assert [parse(unwrap(s)).serial for s in sent] == [0, 1, 2, 3, 4]
    assert [parse(unwrap(s)).body[2:4].hex() for s in sent] == ["0102", "0002", "0200", "0704",
                                                                "0200"]


def test_split_anywhere():
    stream = AUTH + LOCATION + HEARTBEAT
    records, sent = split_anywhere(run, stream)
    assert len(records) == 1 and len(sent) == 3


def test_byte_by_byte():
    whole, replies, _ = run([STREAM])
    records, sent, hub = run([bytes([b]) for b in STREAM])
    assert hub.errors == [] and records == whole and sent == replies


def test_doubled_flags_and_garbage_between_frames():
    records, sent, hub = run([b"\x7e\x7e" + HEARTBEAT + b"\x7e" + LOCATION + b"junk" + HEARTBEAT])
    assert len(records) == 1 and len(sent) == 3
    assert len(hub.errors) == 1  # the junk


def test_a_damaged_frame_does_not_take_the_next_one_with_it():
    bad = bytearray(LOCATION)
    bad[30] ^= 0x01
    records, sent, hub = run([HEARTBEAT + bytes(bad) + LOCATION])
    assert len(records) == 1 and len(sent) == 2 and len(hub.errors) == 1


def test_a_lost_start_resynchronises():
    # The stream starts mid-frame: the tail is skipped up to its closing 7E,
    # which pairs with nothing; the next frame decodes.
    records, sent, hub = run([HEARTBEAT + LOCATION[20:] + LOCATION])
    assert len(records) == 1 and len(sent) == 2 and len(hub.errors) == 1


def test_invalid_escape_is_skipped_without_reply():
    bad = LOCATION[:10] + b"\x7d\x05" + LOCATION[10:]
    records, sent, hub = run([HEARTBEAT + bad + HEARTBEAT])
    assert records == [] and len(sent) == 2 and len(hub.errors) == 1
    assert not jt808.detect(bad, "tcp").matched


def test_no_closing_flag_is_not_waited_for_forever():
    frame, consumed = jt808.frame(b"\x7e" + b"\x00" * (MAX_WAIT + 10), "tcp")
    assert frame is None and consumed == MAX_WAIT + 11
    assert jt808.frame(b"\x7e\x00\x01", "tcp") == (None, 0)


def test_length_field_disagreeing_with_a_good_check_code_is_still_decoded():
    # spec §3: on a bound session the check code wins over the length field.
    c = bytearray(content_of(LOCATION)[:-1])
    c[3] += 1
    records, sent, hub = run([HEARTBEAT, rebuild(bytes(c))])
    assert len(records) == 1 and len(sent) == 2 and hub.errors == []


def test_udp_datagram_with_two_frames():
    hub, endpoint, sent = udp_endpoint(jt808)
    endpoint.datagramReceived(HEARTBEAT + LOCATION, ("127.0.0.1", 5000))
    assert [parse(unwrap(d)).serial for d, _ in sent] == [0, 1]
    assert {a for _, a in sent} == {("127.0.0.1", 5000)}
    assert len(hub.store_.records) == 1


def test_tcp_connection_acks_after_the_record():
    hub, protocol, transport = tcp_connection(jt808)
    protocol.dataReceived(LOCATION)
    assert transport.value() == bytes.fromhex("7e8001000500160128561400000002020000f97e")
    assert len(hub.store_.records) == 1


# -- replies -------------------------------------------------------------------

def test_reply_check_code_is_escaped():
    # Find a heartbeat serial whose 0x8001 has the check code 7E (as jt808-085).
    for serial in range(0x10000):
        c = content_of(HEARTBEAT)[:-1]
        frame = rebuild(c[:10] + struct.pack(">H", serial))
        _, sent, _ = run([frame])
        if unescape(sent[0][1:-1])[-1] == 0x7E:
            break
    assert sent[0].endswith(b"\x7d\x02\x7e")
    assert unwrap(sent[0])[-1] == 0x7E


def test_2019_replies_echo_version_and_number():
    _, sent, _ = run([HEARTBEAT_2019])
    assert sent == [bytes.fromhex("7e8001400501000000000172998417380000ffff000200867e")]


@pytest.mark.parametrize("message_id", [0x0001, 0x0104, 0x0107, 0x0201, 0x0302, 0x0500, 0x0805])
def test_terminal_answers_get_no_reply(message_id):
    # Traccar answers 0x0107 and 0x0201 with 0x8001; the standard does not ask
    # for it (spec §0.8).
    body = struct.pack(">HHB", 0, 0x8105, 0) if message_id == 0x0001 else (
        b"\x00\x00" + content_of(LOCATION)[12:-1] if message_id in (0x0201, 0x0500) else b"\x00\x01")
    _, sent, hub = run([with_body(HEARTBEAT, body, message_id)])
    assert sent == [] and hub.errors == []


def test_platform_ids_from_a_terminal_get_no_reply():
    _, sent, hub = run([HEARTBEAT, with_body(HEARTBEAT, b"\x00\x01\x00\x02\x00", 0x8001)])
    assert len(sent) == 1 and hub.errors == []


def test_unknown_vendor_message_is_acknowledged():
    _, sent, hub = run([with_body(HEARTBEAT, b"\x01\x02", 0x6006)])
    (reply,) = sent
    header = parse(unwrap(reply))
    assert (header.id, header.serial, header.body.hex()) == (0x8001, 0, "00b7600600")


def test_registration_answer_carries_the_number_as_code():
    _, sent, _ = run([REGISTER_2019])
    header = parse(unwrap(sent[0]))
    assert header.id == 0x8100 and header.version == 1 and header.number == NUMBER_2019
    assert header.body == bytes.fromhex("521800") + b"00000866496077582164"


def test_subpackaged_packet_gets_its_own_ack():
    # spec §0.9: jt808-095, packet 1 of 18 of a 0x1205.
    _, sent, hub = run([PACKET])
    assert sent == [bytes.fromhex("7e80010005017299841738000042fc1205006c7e")]


def _packets(message_id, body, sizes, first_serial=7):
    c = content_of(HEARTBEAT)
    out, at = [], 0
    for index, size in enumerate(sizes, 1):
        part = body[at:at + size]
        at += size
        head = (struct.pack(">HH", message_id, len(part) | 0x2000) + c[4:10]
                + struct.pack(">HHH", first_serial + index - 1, len(sizes), index))
        out.append(rebuild(head + part))
    return out


def test_subpackaged_batch_is_reassembled():
    body = parse(unwrap(BATCH)).body
    packets = _packets(0x0704, body, [100, len(body) - 100])
    records, sent, hub = run(packets)
    assert hub.errors == []
    whole, _, _ = run([BATCH])
    assert [r for _, r in records] == [r for _, r in whole]
    assert [parse(unwrap(s)).body.hex() for s in sent] == ["0007070400", "0008070400"]


def test_multimedia_packets_get_8800_after_the_last():
    body = bytes.fromhex("0000002a") + bytes(40)
    _, sent, _ = run(_packets(0x0801, body, [20, 20, 4]))
    assert len(sent) == 1
    header = parse(unwrap(sent[0]))
    assert header.id == 0x8800 and header.body == bytes.fromhex("0000002a00")


def test_reassembly_is_bounded():
    packets = _packets(0x0704, bytes(1000 * 100), [1000] * 100)
    ctx = context()
    errors = 0
    for packet in packets:
        try:
            jt808.decode(packet, ctx)
        except DecodeError:
            errors += 1
        parts = ctx.state.get("parts")
        assert parts is None or sum(map(len, parts[1].values())) <= MAX_REASSEMBLY
    assert errors == 1


def test_packet_numbers_out_of_range_are_refused():
    bad = _packets(0x0704, bytes(30), [30])[0]
    c = bytearray(content_of(bad)[:-1])
    c[15] = 5   # packet 5 of 1
    with pytest.raises(DecodeError):
        jt808.decode(rebuild(bytes(c)), context())


# -- the location block ----------------------------------------------------------

BLOCK = content_of(LOCATION)[12:12 + 28]
PLUS8 = timedelta(hours=8)


def block(alarm=0, status=0x00040003):
    return struct.pack(">II", alarm, status) + BLOCK[8:]


def test_basic_block():
    r = location(BLOCK, PLUS8)
    assert r.time == datetime(2017, 1, 17, 2, 4, 42, tzinfo=timezone.utc)
    assert (r.latitude, r.longitude, r.valid) == (6.152695, 106.720495, False)
    assert r.event is None and r.alarm == ()
    # spec §0.5: the relay and door booleans are there when false.
    assert {k: r.attributes[k] for k in ("ignition", "jt808.oil_cut", "jt808.power_cut_relay",
                                         "jt808.doors_locked")} == {
        "ignition": True, "jt808.oil_cut": False, "jt808.power_cut_relay": False,
        "jt808.doors_locked": False}
    assert "jt808.doors" not in r.attributes and "jt808.truncated_items" not in r.attributes


def test_hemispheres_signed_altitude_and_status_bits():
    b = bytearray(block(status=0x0003_DC0F))
    b[16:18] = struct.pack(">h", -12)
    r = location(bytes(b), PLUS8)
    assert r.latitude < 0 and r.longitude < 0 and r.altitude_m == -12 and r.valid
    assert r.attributes["jt808.oil_cut"] and r.attributes["jt808.power_cut_relay"]
    assert r.attributes["jt808.doors_locked"] and r.attributes["jt808.doors"] == 0b11110


def test_timezone_setting_moves_the_time():
    _, _, hub = run([LOCATION], settings={"jt808.timezone": "0"})
    assert hub.store_.records[0][2].time == datetime(2017, 1, 17, 10, 4, 42, tzinfo=timezone.utc)
    _, _, hub = run([LOCATION], settings={"jt808.timezone": "+5:30"})
    assert hub.store_.records[0][2].time == datetime(2017, 1, 17, 4, 34, 42, tzinfo=timezone.utc)


def test_impossible_time_is_no_time():
    r = location(BLOCK[:22] + bytes(6), PLUS8)
    assert r.time is None and r.attributes["jt808.time_invalid"] is True
    assert location(BLOCK[:22] + bytes.fromhex("1a0117100442"), PLUS8).time is None


@pytest.mark.parametrize("bit, alarm", [(0, "sos"), (1, "overspeed"), (5, "gps_antenna_cut"),
                                        (7, "low_power"), (8, "power_cut"), (19, "parking"),
                                        (28, "movement"), (29, "accident"), (31, "door")])
def test_alarm_bits(bit, alarm):
    r = location(block(alarm=1 << bit), PLUS8)
    assert r.alarm == (alarm,) and r.attributes["jt808.alarm"] == 1 << bit


def test_vendor_reused_alarm_bits_15_to_17_are_not_mapped():
    # Traccar calls bit 15 vibration and 16/17 tampering; their meaning
    # differs by edition and vendor (spec §7.2).
    r = location(block(alarm=0b111 << 15), PLUS8)
    assert r.alarm == () and r.attributes["jt808.alarm"] == 0b111 << 15


@pytest.mark.parametrize("direction, alarm", [(0, "geofence_enter"), (1, "geofence_exit")])
def test_area_alarm_direction_comes_from_item_0x12(direction, alarm):
    item = bytes([0x12, 6, 1]) + struct.pack(">I", 77) + bytes([direction])
    r = location(block(alarm=1 << 20) + item, PLUS8)
    assert r.alarm == (alarm,) and r.attributes["jt808.area_id"] == 77
    assert location(block(alarm=1 << 20), PLUS8).alarm == ()


def test_standard_items():
    items = bytes.fromhex("0104000003e8" "02020123" "0302012c" "06020000" "06" "02ffec"
                          "2b04000a0014" "300117" "310109" "250400000011" "2a020001")
    a = location(block() + items.replace(b"\x06\x02\x00\x00", b""), PLUS8).attributes
    assert a["odometer_m"] == 100000 and a["fuel_l"] == 29.1 and a["jt808.vss_speed_kmh"] == 30
    assert a["temp1_c"] == -20 and a["jt808.ad0"] == 20 and a["jt808.ad1"] == 10
    assert a["rssi"] == 23 and a["satellites"] == 9
    assert a["jt808.signal_status"] == 0x11 and a["jt808.io_status"] == 1


def test_standard_ids_at_other_lengths_are_skipped():
    # spec §0.1: 0x06 of length 1 (battery on jt808-029's unit), 0x05 of
    # length 1 (crashed Traccar, issue #5331), 0x01 of length 2.
    items = bytes.fromhex("060155" "050101" "01020001" "300110")
    a = location(block() + items, PLUS8).attributes
    assert "temp1_c" not in a and "odometer_m" not in a and "jt808.tyre_pressure" not in a
    assert a["rssi"] == 16 and "jt808.truncated_items" not in a


def test_truncated_items_keep_what_came_before():
    a = location(block() + bytes.fromhex("300110" "3105ff"), PLUS8).attributes
    assert a["rssi"] == 16 and "satellites" not in a and a["jt808.truncated_items"] is True
    # spec §0.3: one leftover byte.
    a = location(block() + bytes.fromhex("300110" "31"), PLUS8).attributes
    assert a["rssi"] == 16 and a["jt808.truncated_items"] is True


def test_18_bytes_are_items_when_they_walk():
    # jt808-069's shape: 0x01 odometer and a vendor 0x36 item, 18 bytes.
    tail = bytes.fromhex("01040000001236" "0a" "00000000000000000000")
    assert len(tail) == 18
    a = location(block() + tail, PLUS8).attributes
    assert a["odometer_m"] == 1800 and "battery_v" not in a


def test_18_bytes_that_fail_are_the_carscop_tail():
    # jt808-058's tail: odometer 0 km, 12.0 V, RSSI 24.
    tail = bytes.fromhex("00000000" "00000000" "0078" "00000000" "18" "000000")
    a = location(block() + tail, PLUS8).attributes
    assert (a["odometer_m"], a["battery_v"], a["rssi"]) == (0, 12.0, 24)
    assert "jt808.truncated_items" not in a


def test_status_bit_5_flags_but_keeps_the_coordinates():
    records, _, _ = run([LOCATION_BIT5])
    attributes = records[0][1]["attributes"]
    assert attributes["jt808.encrypted_position"] is True
    assert records[0][1]["latitude"] == pytest.approx(13.788438)


def test_batch_archive_flag_on_every_item():
    records, _, _ = run([BATCH])
    assert [r["attributes"]["archive"] for _, r in records] == [True] * 3
    body = bytearray(parse(unwrap(BATCH)).body)
    body[2] = 0
    records, _, _ = run([with_body(BATCH, bytes(body))])
    assert [r["attributes"]["archive"] for _, r in records] == [False] * 3


def test_batch_cut_short_keeps_the_whole_items():
    body = parse(unwrap(BATCH)).body
    records, sent, hub = run([with_body(BATCH, body[:-10])])
    assert len(records) == 2 and len(sent) == 1 and hub.errors == []


def test_short_location_is_an_error_without_reply():
    records, sent, hub = run([with_body(LOCATION, bytes(20))])
    assert records == [] and sent == [] and len(hub.errors) == 1


# -- device identity -------------------------------------------------------------

@pytest.mark.parametrize("number, expected", [
    ("013511221122", "13511221122"),
    ("00000866496077582164", "866496077582164"),
    ("000000000000", "0"),
    ("4f07788ef676", "868935060005020"),       # Jimi binary IMEI (jt808-011)
    ("0b3a73ce2ff2", "123456789012347"),        # Traccar's mock IMEI body + Luhn
    ("0000000000000000000a", "0000000000000000000a"),
])
def test_device_id(number, expected):
    assert device_id(bytes.fromhex(number)) == expected


# -- settings --------------------------------------------------------------------

@pytest.mark.parametrize("text, normal", [("+8", "+08:00"), ("0", "+00:00"), ("-3", "-03:00"),
                                          ("+5:30", "+05:30"), ("UTC+08:00", "+08:00"),
                                          ("-0930", "-09:30")])
def test_timezone_setting(text, normal):
    assert timezone_setting(text) == normal


@pytest.mark.parametrize("text", ["", "8h", "+15", "-13", "+5:60", "Asia/Shanghai"])
def test_bad_timezone_setting(text):
    with pytest.raises(ValueError):
        timezone_setting(text)


def test_settings_spec():
    assert set(jt808.settings_spec) == {"jt808.timezone", "jt808.immobilizer"}
    assert jt808.settings_spec["jt808.immobilizer"](" F0 ") == "f0"
    with pytest.raises(ValueError):
        immobilizer_setting("relay2")


# -- commands --------------------------------------------------------------------
# Byte-exact frames: the BSJ KM02 log of Traccar PR #5997 (reboot, position
# query, set interval), Traccar's encoder tests (F0 engine stop, 0x8300 and
# 0x8900 text), and frames computed from the standard's layouts.

@pytest.mark.parametrize("kind, params, number, version, style, serial, expected", [
    ("reboot", {}, BSJ, None, None, 0, "7e81050001024530313349000004bd7e"),
    ("position_request", {}, BSJ, None, None, 0, "7e820100000245303133490000bf7e"),
    ("set_interval", {"seconds": "10"}, BSJ, None, None, 0,
     "7e8103000a02453031334900000100000029040000000a927e"),
    ("engine_stop", {}, TRACCAR_MOCK, None, None, 0, "7e810500010b3a73ce2ff20000f0247e"),
    ("engine_resume", {}, TRACCAR_MOCK, None, "f0", 0, "7e810500010b3a73ce2ff20000f1257e"),
    ("engine_stop", {}, BSJ, None, "64", 0, "7e81050001024530313349000064dd7e"),
    ("engine_resume", {}, BSJ, None, "64", 0, "7e81050001024530313349000065dc7e"),
    ("engine_stop", {}, TRACCAR_MOCK, None, "text", 0,
     "7e830000090b3a73ce2ff200000152454c41592c3123a77e"),
    ("engine_resume", {}, TRACCAR_MOCK, None, "text", 0,
     "7e830000090b3a73ce2ff200000152454c41592c3023a67e"),
    ("engine_stop", {}, BSJ, None, "8500", 0, "7e85000001024530313349000001b97e"),
    ("engine_stop", {}, NUMBER_2019, 1, "8500", 0,
     "7e85004005010000086649607758216400000001000100ec7e"),
    ("engine_stop", {}, TRACCAR_MOCK, None, "a006", 0,
     "7ea00600070b3a73ce2ff2000001240101080000dd7e"),
    ("custom", {"text": "Test, Command, 123#"}, TRACCAR_MOCK, None, None, 0,
     "7e830000140b3a73ce2ff2000001546573742c20436f6d6d616e642c2031323323a57e"),
    ("custom", {"text": "TEST"}, TRACCAR_MOCK, None, "jimi", 0,
     "7e890000050b3a73ce2ff20000f0544553543b7e"),
    ("reboot", {}, NUMBER_2019, 1, None, 0, "7e810540010100000866496077582164000004ed7e"),
    ("position_request", {}, NUMBER_2019, 1, None, 5, "7e8201400001000008664960775821640005ea7e"),
])
def test_command_bytes(kind, params, number, version, style, serial, expected):
    settings = {"jt808.immobilizer": style} if style else {}
    ctx = terminal_context(number, version, serial, **settings)
    encoded = encode(kind, ctx, **params)
    assert encoded.data.hex() == expected
    header = parse(unwrap(encoded.data))
    assert encoded.token == f"{header.id:04x}/{serial:04x}"


def test_custom_hex_is_sent_unchanged():
    frame = "7e8103000a02453031334900000100000001040000003c8c7e"
    encoded = encode("custom", terminal_context(), hex=frame)
    assert encoded.data.hex() == frame and encoded.token == "8103/0000"


@pytest.mark.parametrize("params", [
    {"hex": "7e8103000a02453031334900000100000001040000003c8c7e" * 2},   # two frames
    {"hex": "7e8103000a02453031334900000100000001040000003c8d7e"},       # check code
    {"hex": "7e0002000004304832546500b7ca7e"},                           # a terminal message
    {"hex": "7e81030001024530313349000001007e"},                         # length field
    {"hex": "zz"},
    {"text": "RELAY,1#\r\nRESET#"},
    {"text": ""},
    {"text": "\u263a"},
    {},
])
def test_custom_refusals(params):
    with pytest.raises(EncodeError):
        encode("custom", terminal_context(), **params)


@pytest.mark.parametrize("seconds", ["0", "-5", "ten", "", str(1 << 32)])
def test_bad_intervals(seconds):
    with pytest.raises(EncodeError):
        encode("set_interval", terminal_context(), seconds=seconds)


def test_no_command_before_the_device_spoke():
    with pytest.raises(EncodeError):
        encode("reboot", context())


def test_commands_and_replies_share_the_serial_counter():
    ctx = context()
    jt808.decode(AUTH, ctx)                 # our reply 0000
    first = encode("reboot", ctx)           # 0001
    second = encode("reboot", ctx)          # 0002
    assert (first.token, second.token) == ("8105/0001", "8105/0002")
    assert parse(unwrap(jt808.decode(AUTH, ctx).reply)).serial == 3


def test_2019_command_follows_the_terminals_header():
    ctx = context()
    jt808.decode(HEARTBEAT_2019, ctx)
    header = parse(unwrap(encode("reboot", ctx).data))
    assert header.version == 1 and header.number == bytes.fromhex("00000000017299841738")


# -- confirmations ---------------------------------------------------------------

def test_general_response_confirms_by_serial_and_id():
    result = jt808.decode(GENERAL_RESPONSE, context())
    assert result.reply == b"" and result.records == ()
    (c,) = result.confirmations
    assert c.token == encode("reboot", terminal_context()).token == "8105/0000"
    assert c.success and c.command_type is None and "ok" in c.reply


def test_general_response_failure_and_typed_replies():
    body = struct.pack(">HHB", 9, 0x8103, 3)
    (c,) = jt808.decode(with_body(GENERAL_RESPONSE, body), context()).confirmations
    assert c.token == "8103/0009" and not c.success and c.command_type == "set_interval"
    assert "not supported" in c.reply


def test_position_query_answer_is_a_record_and_a_confirmation():
    # The BSJ KM02's 0x0201 answer (Traccar PR #5997). The stored log copy has
    # one 00 too many after the terminal number (61 bytes under a length field
    # of 60, the block one byte off); without it the check code still holds and
    # the position is Yangon, where the unit was.
    frame = bytes.fromhex(
        "7e0201003c02453031334900140000000000000000000201000f9005bbd430000000000000070113102041"
        "010400000000eb16000c00b28995062412035796032900060089ffffffffb87e")
    result = jt808.decode(frame, context())
    assert result.reply == b""
    (c,) = result.confirmations
    assert (c.token, c.command_type) == ("8201/0000", "position_request")
    (r,) = result.records
    # GPS week rollover (2007 sent in 2026) reported as sent (spec §7.1).
    assert r.time == datetime(2007, 1, 13, 2, 20, 41, tzinfo=timezone.utc)
    assert (r.latitude, r.longitude) == (pytest.approx(16.7812), pytest.approx(96.195632))
    assert "archive" not in r.attributes


def test_vehicle_control_answer_confirms_0x8500():
    body = b"\x00\x04" + block(status=0x00000403)
    result = jt808.decode(with_body(GENERAL_RESPONSE, body, 0x0500), context())
    assert result.reply == b""
    assert result.confirmations[0].token == "8500/0004"
    assert result.records[0].attributes["jt808.oil_cut"] is True


# -- robustness ------------------------------------------------------------------

REAL = st.sampled_from([bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=300), truncated(REAL, 400), bit_flipped(REAL), REAL),
                min_size=1, max_size=6),
       st.sampled_from(["tcp", "udp"]))
def test_random_and_mutated_frames(pieces, transport):
    ctx = context(transport)
    frame_and_decode(jt808, b"".join(pieces), transport, ctx, max_frame=MAX_WAIT)
    parts = ctx.state.get("parts")
    assert parts is None or sum(map(len, parts[1].values())) <= MAX_REASSEMBLY


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_bytes_with_escapes_never_crash(data):
    ctx = context()
    frame_and_decode(jt808, b"\x7e" + data.replace(b"\x7e", b"\x7d") + b"\x7e", "tcp", ctx)
    jt808.detect(b"\x7e" + data, "tcp")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=28, max_size=300))
def test_any_location_body_decodes_or_refuses(body):
    r = location(body, PLUS8)
    assert r.latitude is None or -90 <= r.latitude <= 90


# -- end to end ------------------------------------------------------------------

def _bsj_frame(message_id, body, serial):
    head = struct.pack(">HH", message_id, len(body)) + BSJ + struct.pack(">H", serial)
    return rebuild(head + body)


def test_end_to_end_commands_confirmed_on_a_real_gateway(gateway, db_url):
    """
    A real twistd: a queued reboot goes out after the authentication's ack
    with the next serial, the 0x0001 naming that serial confirms it; a
    position query is answered by a 0x0201 that is stored and confirms it,
    and gets no reply.
    """
    g = gateway(db_url)
    device = "24530313349"
    reboot = send(g, device, "reboot")
    s = tcp(g.port)
    s.sendall(AUTH)
    ack = bytes.fromhex("7e8001000502453031334900000001010200ba7e")
    command = message(0x8105, None, BSJ, 1, b"\x04")
    assert recv_exactly(s, len(ack) + len(command)) == ack + command
    wait_status(g, device, reboot, "sent")
    s.sendall(_bsj_frame(0x0001, struct.pack(">HHB", 1, 0x8105, 0), 0x32))
    assert "ok" in wait_status(g, device, reboot, "confirmed")["reply"]

    query = send(g, device, "position_request")
    request = message(0x8201, None, BSJ, 2, b"")
    assert recv_exactly(s, len(request)) == request
    wait_status(g, device, query, "sent")
    answer = with_body(GENERAL_RESPONSE, b"\x00\x02" + block(status=0x00000003), 0x0201)
    s.sendall(answer)
    wait_status(g, device, query, "confirmed")
    rows = wait_until(lambda: positions(g, "--device", device))
    assert rows and rows[0]["latitude"] == pytest.approx(6.152695)
    assert_nothing_more(s, "a 0x0201 gets no reply")
    # A location report is acknowledged once stored, with the next serial.
    s.sendall(_bsj_frame(0x0200, block(), 0x33))
    want = message(0x8001, None, BSJ, 3, struct.pack(">HHB", 0x33, 0x0200, 0))
    assert recv_exactly(s, len(want)) == want
    s.close()


def test_end_to_end_udp_acks_to_the_datagram_source(gateway, db_url):
    g = gateway(db_url)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    u.sendto(HEARTBEAT_2019, ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == bytes.fromhex("7e8001400501000000000172998417380000ffff000200867e")
    u.sendto(LOCATION, ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == message(0x8001, None, bytes.fromhex("001601285614"), 1,
                                         bytes.fromhex("0002020000"))
    assert wait_until(lambda: positions(g, "--device", "1601285614"))
    u.close()
