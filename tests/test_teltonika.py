"""
Teltonika FMB / FMC / FM / GH (L{decoders.teltonika}): shared vectors,
detection, TCP and UDP framing through the session, every AVL codec, the
16-byte group fallback, acks only where the device expects one and only after
commit, Codec 12/13/14 messages, commands and their confirmations,
robustness.
"""

import functools
import socket
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from decoders.teltonika import MAX_PACKET, command_packet, teltonika
from gateway.checksums import crc16_arc
from gateway.context import Context
from gateway.hub import Hub, MemoryStore
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from gateway.server import StreamFactory
from gateway.session import Session
from tests import vectorcheck
from tests.harness import (bit_flipped, device_context, each_vector, frame_and_decode, frame_of,
                           mean_decode_seconds, memory_hub,
                           other_vectors_refused_test, run_session, split_anywhere, truncated,
                           udp_endpoint, vector_replay_test)
from tests.test_commands_e2e import assert_nothing_more, send, status_of, wait_status
from tests.test_e2e import positions, recv_exactly, tcp, wait_until

VECTORS = vectorcheck.load("teltonika")
IMEI = "123456789012345"
LOGIN = b"\x00\x0f" + IMEI.encode()

#: Feed chunks to one session of a teltonika-only hub: (records, sent, hub).
run = functools.partial(run_session, teltonika)


# -- packets built to the reference's layouts ------------------------------------------

def tcp_packet(body: bytes, crc=None) -> bytes:
    crc = crc16_arc(body) if crc is None else crc
    return b"\x00" * 4 + len(body).to_bytes(4, "big") + body + crc.to_bytes(4, "big")


def channel_packet(body: bytes, packet_id=b"\xca\xfe", avl_id=5, imei=IMEI) -> bytes:
    data = packet_id + b"\x01" + bytes([avl_id]) + b"\x00\x0f" + imei.encode() + body
    return len(data).to_bytes(2, "big") + data


def array(codec: int, records) -> bytes:
    return bytes([codec, len(records)]) + b"".join(records) + bytes([len(records)])


WHEN = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
MS = int(WHEN.timestamp() * 1000)


def codec8(ios1=(), ios2=(), ios4=(), ios8=(), event=0, lat=546990336, lon=252618832,
           satellites=9, ms=MS):
    head = struct.pack(">QBiihHBH", ms, 1, lon, lat, -6, 90, satellites, 50)
    groups = (ios1, ios2, ios4, ios8)
    io = bytes([event, sum(len(g) for g in groups)])
    for size, group in zip((1, 2, 4, 8), groups):
        io += bytes([len(group)]) + b"".join(bytes([i]) + v.to_bytes(size, "big") for i, v in group)
    return head + io


def message(codec: int, kind: int, payload: bytes) -> bytes:
    return bytes([codec, 1, kind]) + len(payload).to_bytes(4, "big") + payload + b"\x01"


def decode(frame: bytes, transport="tcp", device_id=IMEI, **device_settings):
    context = device_context(transport, **device_settings)
    context.device_id = device_id
    return teltonika.decode(frame, context)


def only(frame: bytes, **device_settings):
    return decode(frame, **device_settings).records[0]


# -- vectors and detection ----------------------------------------------------------------

test_vector = vector_replay_test(VECTORS, without_errors=True)
test_claims_no_other_vector = other_vectors_refused_test(teltonika, every_prefix=True)


@each_vector(VECTORS)
def test_claims_own_vectors(vec):
    chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
    if vec["transport"] == "udp":
        assert teltonika.detect(chunks[0], "udp").score == 90
    else:
        assert teltonika.detect(b"".join(chunks), "tcp").score == 90


def test_tcp_detection_waits_for_the_whole_login():
    head = b"\xff\xff" + LOGIN
    for n in range(1, len(head)):
        assert teltonika.detect(head[:n], "tcp").outcome.value == "more", n
    assert teltonika.detect(head, "tcp").score == 90
    # Arnavi (FF 22..25), Enfora (00 LL 00 04), Ruptela (binary IMEI): not ours.
    for other in (b"\xff\x23\x01\x02", b"\x00\x1e\x00\x04\x02", b"\x00\x0f\x00\x03\x1b\xa3",
                  b"\x00\x0f" + b"12345678901234x"):
        assert not teltonika.detect(other, "tcp").matched, other


def test_tcp_detection_of_a_packet_without_login():
    packet = frame_of("teltonika-018", 1)
    assert teltonika.detect(packet[:9], "tcp").outcome.value == "more"
    assert teltonika.detect(packet[:40], "tcp").score == 50
    assert teltonika.detect(packet, "tcp").score == 90
    assert not teltonika.detect(packet[:-1] + bytes([packet[-1] ^ 1]), "tcp").matched
    assert not teltonika.detect(b"\x00\x00\x00\x00\x00\x00\x00\x30\x55", "tcp").matched


def test_udp_detection_checks_header_and_counts():
    datagram = frame_of("teltonika-061")
    assert teltonika.detect(datagram, "udp").score == 90
    assert not teltonika.detect(datagram[:-1] + b"\x07", "udp").matched
    assert not teltonika.detect(datagram[:8] + b"x" + datagram[9:], "udp").matched
    assert not teltonika.detect(datagram[:30], "udp").matched


# -- TCP session: login, acks, keep-alives --------------------------------------------------

def test_keep_alives_get_nothing_and_logins_one_byte_each():
    other = b"\x00\x0f" + b"356307042441013"
    packet = frame_of("teltonika-018", 1)
    records, sent, hub = run([b"\xff" + LOGIN + b"\xff\xff", packet, b"\xff", other, packet])
    assert sent == [b"\x01", b"\x00\x00\x00\x01", b"\x01", b"\x00\x00\x00\x01"]
    # After the second login the packets belong to the IMEI it names.
    assert [device for device, _ in records] == [IMEI, "356307042441013"]
    assert hub.errors == []


def test_a_login_that_is_not_digits_is_refused():
    result = teltonika.decode(b"\x00\x0f" + b"12345678901234\x7f", Context())
    assert result.reply == b"\x00" and result.device_id is None


def test_avl_packet_before_login_is_shown_not_stored_not_acked():
    packet = frame_of("teltonika-018", 1)
    records, sent, hub = run([packet])
    assert records == [] and sent == []
    assert hub.store_.decoded[0][2].attributes["teltonika.unattributed"] is True
    assert any("before login" in e for e in hub.errors)
    out = vectorcheck.run({"frames_hex": [packet.hex()], "transport": "tcp"})
    assert out["device_id"] is None and out["responses_hex"] == []
    assert len(out["records"]) == 1 and out["records"][0]["attributes"]["teltonika.unattributed"]


def test_commands_wait_for_the_ack_of_the_first_packet():
    hub = memory_hub(teltonika)
    ready = []
    hub.commands.device_active = ready.append
    sent = []
    session = Session(hub, "tcp", "test", sent.append, lambda: None)
    session.data_received(LOGIN)
    # Right after its login the device reads only the ack of its first packet.
    assert session.send(b"command") is False
    del ready[:]
    session.data_received(frame_of("teltonika-018", 1))
    # The command queue hears the device is active, and the command goes now.
    assert ready == [IMEI]
    assert session.send(b"command")
    assert sent == [b"\x01", b"\x00\x00\x00\x01", b"command"]


class HeldStore(MemoryStore):
    """
    A store whose commits the test releases by hand.
    """

    def __init__(self):
        super().__init__()
        self.held = []

    def submit(self, device_id, protocol, peer, records, **kw):
        d = Deferred()
        self.held.append(d)
        return d


def test_ack_leaves_only_after_the_commit():
    hub = Hub({"teltonika": teltonika}, HeldStore(), Clock())
    protocol = StreamFactory(hub).buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(LOGIN + frame_of("teltonika-001", 1))
    assert transport.value() == b"\x01"
    hub.store_.held[0].callback(None)
    assert transport.value() == b"\x01\x00\x00\x00\x02"


def test_bad_crc_or_counts_get_no_ack_and_the_session_goes_on():
    good = frame_of("teltonika-018", 1)
    bad_crc = good[:-1] + bytes([good[-1] ^ 0xFF])
    body = bytearray(good[8:-4])
    body[-1] = 2
    bad_count = tcp_packet(bytes(body))
    records, sent, hub = run([LOGIN + bad_crc + bad_count + good])
    assert sent == [b"\x01", b"\x00\x00\x00\x01"] and len(records) == 1
    assert any("CRC" in e for e in hub.errors) and any("counts differ" in e for e in hub.errors)


def test_split_at_every_byte():
    stream = b"\xff" + LOGIN + frame_of("teltonika-004", 1) + b"\xff" + frame_of("teltonika-021", 1)
    records, sent = split_anywhere(run, stream)
    assert sent == [b"\x01", b"\x00\x00\x00\x01", b"\x00\x00\x00\x04"] and len(records) == 5


def test_garbage_between_packets_is_skipped_and_logged():
    good = frame_of("teltonika-018", 1)
    oversized = b"\x00\x00\x00\x00\x00\x01\x00\x00\x08\x01"
    records, sent, hub = run([LOGIN + b"GARBAGE" + good + oversized + good])
    assert sent == [b"\x01", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01"] and len(records) == 2
    assert len(hub.errors) == 2 and all("skipped" in e for e in hub.errors)


def test_oversized_length_never_holds_the_buffer():
    frame, consumed = teltonika.frame(b"\x00\x00\x00\x00\x7f\xff\xff\xff\x08\x01" + bytes(100), "tcp")
    assert frame is None and consumed > 0
    frame, consumed = teltonika.frame(b"\x00\x00\x00\x00\x00\x00\x7f\xf4\x08\x01", "tcp")
    assert (frame, consumed) == (None, 0)


# -- UDP ------------------------------------------------------------------------------------

def test_udp_ack_echoes_packet_id_and_avl_id():
    datagram = channel_packet(array(0x08, [codec8()]), packet_id=b"\x12\x34", avl_id=0x2A)
    records, sent, _ = run([datagram], transport="udp")
    assert sent == [bytes.fromhex("0005123401" "2a" "01")] and records[0][0] == IMEI


def test_several_channel_packets_in_one_datagram():
    first = channel_packet(array(0x08, [codec8()]), avl_id=1)
    second = channel_packet(array(0x08, [codec8(), codec8(ms=MS + 1000)]), avl_id=2)
    records, sent, hub = run([first + second + b"\x00\x40junk"], transport="udp")
    assert sent == [bytes.fromhex("0005cafe010101"), bytes.fromhex("0005cafe010202")]
    assert len(records) == 3
    assert len(hub.errors) == 1 and "skipped" in hub.errors[0]


def test_udp_resend_with_a_new_avl_id_is_the_same_records():
    datagram = frame_of("teltonika-061")
    again = datagram[:5] + b"\x16" + datagram[6:]
    hub, endpoint, sent = udp_endpoint(teltonika)
    endpoint.datagramReceived(datagram, ("127.0.0.1", 5000))
    endpoint.datagramReceived(again, ("127.0.0.1", 5000))
    assert [data for data, _ in sent] == [bytes.fromhex("0005cafe011502"),
                                          bytes.fromhex("0005cafe011602")]
    stored = [r for _, _, r in hub.store_.records]
    # The store keeps one row per fingerprint: the resend adds nothing.
    assert [r.fingerprint() for r in stored[:2]] == [r.fingerprint() for r in stored[2:]]


# -- AVL codecs -----------------------------------------------------------------------------

def test_codec8_fixed_fields_and_raw_ios():
    record = only(tcp_packet(array(0x08, [codec8(ios1=[(239, 1), (200, 7)], ios2=[(66, 12345)],
                                                 ios4=[(16, 99)], ios8=[(11, 2 ** 64 - 1)],
                                                 event=239)])))
    assert record.time == WHEN and record.valid
    assert (record.latitude, record.longitude) == (54.6990336, 25.2618832)
    assert (record.speed_kmh, record.course, record.altitude_m) == (50.0, 90.0, -6.0)
    assert record.event == "239"
    a = record.attributes
    assert a["io239"] == 1 and a["io66"] == 12345 and a["io11"] == 2 ** 64 - 1
    assert a["ignition"] is True and a["power_v"] == 12.345 and a["odometer_m"] == 99
    assert a["teltonika.sleep_mode"] == 7 and a["teltonika.priority"] == 1


def test_zero_coordinates_are_no_position_and_no_satellites_no_fix():
    record = only(tcp_packet(array(0x08, [codec8(lat=0, lon=0, satellites=0)])))
    assert record.latitude is None and record.longitude is None and not record.valid
    record = only(tcp_packet(array(0x08, [codec8(satellites=0)])))
    # The last known place stays, but it is not a fix.
    assert record.latitude == 54.6990336 and not record.valid


def test_coordinates_off_the_globe_are_kept_raw():
    record = only(tcp_packet(array(0x08, [codec8(lon=2000000000)])))
    assert record.latitude is None and not record.valid
    assert record.attributes["teltonika.raw_coordinates"] == "77359400209a6900"


def test_named_meanings_need_their_size_and_an_fmb_model():
    # IO 113 in the 4-byte group (an FM6320) is not a battery percentage.
    assert "battery_level_pct" not in only(frame_of("teltonika-007", 1)).attributes
    record = only(tcp_packet(array(0x08, [codec8(ios1=[(113, 80)], ios2=[(239, 1)])])))
    assert record.attributes["battery_level_pct"] == 80 and "ignition" not in record.attributes
    legacy = only(tcp_packet(array(0x08, [codec8(ios1=[(113, 80), (252, 1)])])),
                  **{"teltonika.model": "FM1100"})
    assert "battery_level_pct" not in legacy.attributes and legacy.alarm == ()
    assert legacy.attributes["io113"] == 80


def test_signed_readings_only_as_named_attributes():
    record = only(tcp_packet(array(0x08, [codec8(ios2=[(17, 0xFFF6)], ios4=[(72, 0xFFFFFF9C), (73, 3000)])])))
    a = record.attributes
    assert a["io17"] == 0xFFF6 and a["teltonika.accel_x"] == -10
    assert a["io72"] == 0xFFFFFF9C and a["temp1_c"] == -10.0
    # 3000 is "no sensor", not 300 degrees.
    assert a["io73"] == 3000 and "temp2_c" not in a


def test_ibutton_id_is_read_byte_reversed():
    record = only(tcp_packet(array(0x08, [codec8(ios8=[(78, 0x0102030405060708)])])))
    assert record.attributes["driver_id"] == "0807060504030201"
    assert "driver_id" not in only(tcp_packet(array(0x08, [codec8(ios8=[(78, 0)])]))).attributes


@pytest.mark.parametrize("ios1, event, alarms", [
    ([(252, 1)], 252, ("power_cut",)),
    ([(247, 1)], 247, ("accident",)),
    ([(247, 5)], 247, ()),  # a crash-trace record, not a crash
    ([(249, 1)], 249, ("jamming",)),
    ([(249, 0)], 249, ()),
    ([(253, 2)], 253, ("harsh_braking",)),
    ([(255, 90)], 255, ("overspeed",)),
    ([(255, 90)], 0, ()),
    ([(155, 1)], 155, ("geofence_enter",)),
    ([(175, 0)], 175, ("geofence_exit",)),
    ([(175, 0)], 0, ()),
    ([(246, 1)], 246, ("general",)),
    ([(236, 2)], 236, ()),
])
def test_alarms_on_exact_values(ios1, event, alarms):
    record = only(tcp_packet(array(0x08, [codec8(ios1=ios1, event=event)])))
    assert record.alarm == alarms and record.event == str(event)


def test_alarm_ios_outside_the_one_byte_group_raise_nothing():
    assert only(tcp_packet(array(0x08, [codec8(ios2=[(252, 1)])]))).alarm == ()


def test_codec8_extended_and_codec16_layouts():
    records = decode(frame_of("teltonika-006", 1)).records
    assert [r.alarm for r in records[:1]] == [("accident",)]
    # Variable-length values as hex, a length of 0 as "".
    assert records[0].attributes["io331"] == "" and records[0].attributes["io387"].startswith("2d3333")
    records = decode(frame_of("teltonika-007", 1)).records
    assert records[0].attributes["teltonika.generation_type"] == 7


def test_sixteen_byte_group_fallback():
    records = decode(frame_of("teltonika-032", 1)).records
    assert len(records) == 11
    wide = [k for k, v in records[0].attributes.items() if k.startswith("io") and isinstance(v, str)]
    assert wide and all(len(records[0].attributes[k]) == 32 for k in wide)
    # The layout is inferred, and the records say so; the standard one is not.
    assert all(r.attributes["teltonika.guessed"] == ["io16_group"] for r in records)
    assert "teltonika.guessed" not in decode(frame_of("teltonika-019", 1)).records[0].attributes


def test_records_that_fit_no_layout_are_refused():
    body = frame_of("teltonika-018", 1)[8:-4]
    with pytest.raises(DecodeError, match="no record layout"):
        decode(tcp_packet(body[:-1] + b"\x05\x05" + body[-1:]))


def gh3000(stamp: int, mask: int, gps: bytes = b"", ios: bytes = b"") -> bytes:
    return struct.pack(">IB", stamp, mask) + gps + ios


def test_codec7_gh3000_records():
    seconds = int(WHEN.timestamp()) - 1167609600
    # Every location-mask bit: lat, lon, altitude, angle, speed, satellites, LAC, cell, signal, operator.
    gps = bytes([0xFF]) + struct.pack(">ffHBBBHHBI", 54.5, 25.25, 120, 64, 36, 7, 1, 2, 3, 24602)
    ios = bytes([1, 1, 55, 1, 2]) + (300).to_bytes(2, "big") + bytes([1, 3]) + (9).to_bytes(4, "big")
    full = gh3000(seconds | 0xC0000000, 0x0F, gps, ios)
    no_gps = gh3000(seconds, 0x02, b"", bytes([1, 240, 1]))
    operator_only = gh3000(seconds, 0x01, bytes([0xC0, 4]) + (24602).to_bytes(4, "big"))
    no_satellites = gh3000(seconds, 0x01, bytes([0x11]) + struct.pack(">ffB", 54.5, 25.25, 0))
    records = decode(tcp_packet(array(0x07, [full, no_gps, operator_only, no_satellites]))).records
    first = records[0]
    assert first.time == WHEN and first.valid and (first.latitude, first.longitude) == (54.5, 25.25)
    assert (first.altitude_m, first.course, first.speed_kmh) == (120.0, 90.0, 36.0)
    assert first.event is None and first.alarm == ()
    assert {k: first.attributes[k] for k in ("satellites", "lac", "cell_id", "rssi", "teltonika.operator",
                                              "io1", "io2", "io3")} == {
        "satellites": 7, "lac": 1, "cell_id": 2, "rssi": 3, "teltonika.operator": 24602,
        "io1": 55, "io2": 300, "io3": 9}
    # The FMB dictionary never applies to Codec 7.
    assert "din1" not in first.attributes and "motion" not in records[1].attributes
    for record in records[1:3]:
        assert not record.valid and record.latitude is None and record.longitude is None
    assert records[2].attributes["rssi"] == 4
    assert not records[3].valid and records[3].attributes["satellites"] == 0


# -- Codec 12 / 13 / 14 messages --------------------------------------------------------------

def test_codec12_reply_confirms_and_gets_no_ack():
    reply = tcp_packet(message(0x0C, 0x06, b"DOUT1:1 Timeout:INFINITY DOUT2:0 Timeout:INFINITY \r\n"))
    _, sent, hub = run([LOGIN + reply])
    assert sent == [b"\x01"]
    ((device, confirmation),) = hub.commands.confirmations
    assert device == IMEI and confirmation.success
    assert confirmation.reply == "DOUT1:1 Timeout:INFINITY DOUT2:0 Timeout:INFINITY"
    assert confirmation.command_type == "engine_stop" and confirmation.token is None


@pytest.mark.parametrize("text, device_settings, kind", [
    (b"DOUT1:0 Timeout:INFINITY", {}, "engine_resume"),
    (b"DOUT1:0 Timeout:INFINITY DOUT2:1 Timeout:INFINITY", {"teltonika.output": "2"}, "engine_stop"),
    (b"GPS:1 Sat:7 Lat:54.714096 Long:25.303984 Alt:146 Speed:0 Dir:77 Date: 2019/7/22 Time: 7:53:36",
     {}, "position_request"),
    (b"New value 11:60;", {"teltonika.interval_parameter": "11"}, "set_interval"),
    (b"New value 113:1;", {"teltonika.interval_parameter": "11"}, None),
    (b"DI1:1 DI2:0 DI3:0 AIN1:0 AIN2:16924 DO1:0 DO2:1", {}, None),
])
def test_reply_says_which_command_it_answers(text, device_settings, kind):
    result = decode(tcp_packet(message(0x0C, 0x06, text)), **device_settings)
    assert result.records == () and result.reply == b""
    assert result.confirmations[0].command_type == kind


def test_binary_reply_is_kept_as_hex():
    # A Modbus answer from a serial peripheral.
    result = decode(tcp_packet(message(0x0C, 0x06, bytes.fromhex("010300010015d5c5"))))
    assert result.confirmations[0].reply == "010300010015d5c5"


def test_codec14_ack_and_nack():
    imei = bytes.fromhex("0352093081452251")
    ok = decode(tcp_packet(message(0x0E, 0x06, imei + b"Ver:03.18.14_04")))
    assert ok.confirmations[0].success and ok.confirmations[0].reply == "Ver:03.18.14_04"
    nack = decode(tcp_packet(bytes([0x0E, 1, 0x11]) + (8).to_bytes(4, "big") + imei + b"\x01"))
    assert not nack.confirmations[0].success and "352093081452251" in nack.confirmations[0].reply


@pytest.mark.parametrize("stamp", [bytes.fromhex("642b3ad1"), bytes.fromhex("0000016c0a81c320")])
def test_codec13_is_neither_record_nor_reply_nor_confirmation(stamp):
    payload = stamp + b"GTSL|1|2|3\r\n"
    result = decode(tcp_packet(message(0x0D, 0x06, payload)))
    assert (result.records, result.reply, result.confirmations) == ((), b"", ())


def test_codec15_is_framed_but_not_decoded():
    packet = tcp_packet(message(0x0F, 0x06, b"x" * 12))
    assert teltonika.frame(packet, "tcp") == (packet, len(packet))
    with pytest.raises(DecodeError):
        decode(packet)


# -- commands -----------------------------------------------------------------------------------

def command(kind, **params):
    return Command(id=1, device_id="352093081452251", type=kind, params=params)


def encoded(kind, transport="tcp", device_settings=None, **params):
    context = device_context(transport, **(device_settings or {}))
    context.device_id = "352093081452251"
    return teltonika.encode(command(kind, **params), context)


@pytest.mark.parametrize("kind, device_settings, params, want", [
    ("engine_stop", {}, {}, "00000000000000130c01050000000b7365746469676f7574203101000087a2"),
    ("engine_resume", {}, {}, "00000000000000130c01050000000b7365746469676f7574203001000017a3"),
    ("engine_stop", {"teltonika.outputs": "2"}, {},
     "00000000000000140c01050000000c7365746469676f757420313f010000ded1"),
    ("engine_resume", {"teltonika.outputs": "2"}, {},
     "00000000000000140c01050000000c7365746469676f757420303f0100001e80"),
    ("position_request", {}, {}, "000000000000000e0c010500000006676574677073010000ccd7"),
    ("reboot", {}, {}, "00000000000000100c01050000000863707572657365740100007a75"),
    ("custom", {}, {"text": "setdigout 11"},
     "00000000000000140c01050000000c7365746469676f7574203131010000bed5"),
    ("custom", {}, {"hex": "03030000000185E8"},
     "00000000000000100c01050000000803030000000185e8010000da8b"),
    ("custom", {}, {"text": "getinfo"}, "000000000000000f0c010500000007676574696e666f0100004312"),
    ("custom", {}, {"text": "setparam 113:1"},
     "00000000000000160c01050000000e736574706172616d203131333a310100003faa"),
    ("custom", {}, {"text": "getver", "codec": "14"},
     "00000000000000160e01050000000e0352093081452251676574766572010000d2c1"),
])
def test_reference_command_bytes(kind, device_settings, params, want):
    assert encoded(kind, device_settings=device_settings, **params).data.hex() == want


def test_output_patterns_and_replies():
    four = {"teltonika.outputs": "4", "teltonika.output": "3"}
    assert b"setdigout ??1?" in encoded("engine_stop", device_settings=four).data
    assert b"setdigout ??0?" in encoded("engine_resume", device_settings=four).data
    assert encoded("reboot").expects_reply is False
    assert encoded("engine_stop").expects_reply and encoded("engine_stop").token is None
    with pytest.raises(EncodeError, match="beyond"):
        encoded("engine_stop", device_settings={"teltonika.output": "2"})
    with pytest.raises(EncodeError):
        encoded("engine_stop", device_settings={"teltonika.output": "9"})


def test_custom_text_of_hex_digits_stays_text():
    # Traccar sends a text made only of hex digits as the bytes they spell;
    # here raw bytes need the explicit hex parameter.
    assert encoded("custom", text="1234").data == command_packet(b"1234")
    assert encoded("custom", hex="1234").data == command_packet(b"\x12\x34")


def test_set_interval_needs_the_models_parameter():
    with pytest.raises(EncodeError, match="interval_parameter"):
        encoded("set_interval", seconds="60")
    data = encoded("set_interval", device_settings={"teltonika.interval_parameter": "10050"},
                   seconds="60").data
    assert data == command_packet(b"setparam 10050:60")
    for seconds in ("", "0", "1.5", "x"):
        with pytest.raises(EncodeError):
            encoded("set_interval", device_settings={"teltonika.interval_parameter": "11"},
                    seconds=seconds)


@pytest.mark.parametrize("params", [{}, {"text": ""}, {"text": "getinfo\r\ngetver"},
                                    {"text": "get\x00ver"}, {"text": "x" * 2000}, {"hex": "zz"},
                                    {"text": "getver", "codec": "13"}])
def test_custom_refused(params):
    with pytest.raises(EncodeError):
        encoded("custom", **params)


def test_no_commands_over_udp():
    with pytest.raises(EncodeError, match="TCP"):
        encoded("engine_stop", transport="udp")


def test_settings_spec_normalises_and_refuses():
    spec = teltonika.settings_spec
    assert spec["teltonika.output"](" 2 ") == "2"
    assert spec["teltonika.model"]("fmb920") == "FMB920"
    assert spec["teltonika.interval_parameter"]("011") == "11"
    assert spec["teltonika.command_codec"]("14") == "14"
    for key, bad in (("teltonika.output", "5"), ("teltonika.outputs", "0"),
                     ("teltonika.model", "FMB 920"), ("teltonika.interval_parameter", "a"),
                     ("teltonika.command_codec", "8")):
        with pytest.raises(ValueError):
            spec[key](bad)


# -- robustness -----------------------------------------------------------------------------------

REAL = [bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]] + [
    tcp_packet(array(0x07, [gh3000(1, 0x0F, bytes([0xFF]) + bytes(22), bytes([0, 0, 0]))])),
    tcp_packet(message(0x0C, 0x06, b"DOUT1:1")), tcp_packet(message(0x0D, 0x06, b"\0\0" + bytes(10))),
    channel_packet(array(0x08, [codec8()])) * 2]


def mutations():
    real = st.sampled_from(REAL)
    spliced = st.tuples(real, st.integers(0, 2000), st.binary(max_size=8)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    refit = bit_flipped(real).map(lambda p: tcp_packet(p[8:-4]) if p[:4] == bytes(4) and len(p) > 12 else p)
    return st.one_of(st.binary(max_size=600), truncated(real, 1200), bit_flipped(real), spliced, refit)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=mutations(), transport=st.sampled_from(["tcp", "udp"]))
def test_only_decode_errors_escape(data, transport):
    teltonika.detect(data, transport)
    context = device_context(transport)
    context.device_id = IMEI
    frame_and_decode(teltonika, data, transport, context, max_frame=MAX_PACKET)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_a_good_packet_after_garbage_still_gets_its_ack(garbage):
    packet = frame_of("teltonika-018", 1)
    _, sent, _ = run([LOGIN, garbage.replace(b"\x00", b"\x01") + packet])
    assert sent[0] == b"\x01" and sent[-1] == b"\x00\x00\x00\x01"


def test_decode_is_fast():
    frames = [frame_of("teltonika-006", 1), frame_of("teltonika-019", 1), frame_of("teltonika-032", 1)]
    context = device_context()
    context.device_id = IMEI
    assert mean_decode_seconds(teltonika, frames, context, rounds=30) < 0.01


# -- end to end: a real twistd, a scripted device on a real socket -------------------------------

def test_end_to_end_login_ack_after_commit_and_confirmed_command(gateway, db_url):
    g = gateway(db_url)
    stop = send(g, IMEI, "engine_stop")
    s = tcp(g.port)
    # A packet before the login is neither stored nor acked.
    s.sendall(frame_of("teltonika-018", 1))
    assert_nothing_more(s, "a packet without login was acked")
    s.sendall(b"\xff" + LOGIN)
    assert recv_exactly(s, 1) == b"\x01"
    # The device reads the ack of its first packet next: the command waits.
    assert_nothing_more(s, "a command went out before the first packet's ack")
    s.sendall(frame_of("teltonika-021", 1))
    # The ack (4 records), then the queued command, exactly as encoded.
    want = b"\x00\x00\x00\x04" + bytes.fromhex(
        "00000000000000130c01050000000b7365746469676f7574203101000087a2")
    assert recv_exactly(s, len(want)) == want
    rows = wait_until(lambda: positions(g, "--device", IMEI))
    assert len(rows) == 4 and all(r["device_id"] == IMEI for r in rows)
    assert wait_status(g, IMEI, stop, "sent")
    s.sendall(tcp_packet(message(0x0C, 0x06, b"DOUT1:1 Timeout:INFINITY\r\n")))
    row = wait_status(g, IMEI, stop, "confirmed")
    assert row["reply"] == "DOUT1:1 Timeout:INFINITY"
    # The reply itself is never acked; nothing was stored without the login.
    assert_nothing_more(s, "a Codec 12 reply was acked")
    assert len(positions(g)) == 4
    assert status_of(g, IMEI, stop)["status"] == "confirmed"


def test_end_to_end_udp_ack_after_commit_and_no_command(gateway, db_url):
    g = gateway(db_url)
    imei = "356307048159957"
    stop = send(g, imei, "engine_stop")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    u.sendto(frame_of("teltonika-061"), ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == bytes.fromhex("0005cafe011502")
    assert len(wait_until(lambda: positions(g, "--device", imei))) == 2
    # Teltonika takes no GPRS command over UDP: refused with the reason.
    row = wait_status(g, imei, stop, "failed")
    assert "TCP" in row["error"]
