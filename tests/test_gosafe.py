"""
GoSafe / SkyPatrol SP7600 (L{decoders.gosafe}): shared vectors, detection,
framing through the session, binary frames, commands and their
confirmations, robustness.
"""

import functools
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.gosafe import MAX_FRAME, REPLY, gosafe
from gateway.checksums import crc16_xmodem
from gateway.context import Context
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (bit_flipped, device_context, each_vector, frame_of, mean_decode_seconds,
                           other_vectors_refused_test, run_session, split_anywhere, truncated,
                           vector_replay_test)

VECTORS = vectorcheck.load("gosafe")
IMEI = 351535059439208

#: Feed chunks to one session of a gosafe-only hub: (records, sent, hub).
run = functools.partial(run_session, gosafe)


def terminated(vector_id: str) -> bytes:
    """
    A vector's frame as it is on the wire: some sources dropped the C{#}.
    """
    data = frame_of(vector_id)
    return data if data.endswith(b"#") else data + b"#"


def decode(frame: bytes, transport="tcp"):
    return gosafe.decode(frame, Context(transport=transport))


# -- binary frames built to the reference's layout (spec.md §2.2, §4.4) -----

def stuff(data: bytes) -> bytes:
    return data.replace(b"\x1b", b"\x1b\x00").replace(b"\xf8", b"\x1b\xe3")


def binary(version: int, kind: int, body: bytes, imei: int = IMEI, crc=None) -> bytes:
    data = bytes([version, kind]) + imei.to_bytes(7, "big") + body
    data += struct.pack(">H", crc16_xmodem(data) if crc is None else crc)
    return b"\xf8" + stuff(data) + b"\xf8"


def block(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def item(ident: int, value: bytes) -> bytes:
    return bytes([ident << 4 | len(value)]) + value


WHEN = datetime(2015, 5, 9, 1, 1, 1, tzinfo=timezone.utc)
SECONDS = int((WHEN - datetime(2000, 1, 1, tzinfo=timezone.utc)).total_seconds())
GPS = block(struct.pack(">HBiihHhHH", 0x7F, 0x20 | 9, 31953618, 35910664, 7, 75, 864, 108, 177))
SYS = block(item(0, b"G79") + item(1, b"V1.10"))
COT = block(item(0, (147528).to_bytes(4, "big")) + item(1, (7697).to_bytes(4, "big")))
ADC = block(struct.pack(">HH", 0x0000 | 2178, 0x1000 | 520))
DTT = block(item(0, bytes.fromhex("027004")) + item(1, b"\xe1"))
OBD = block(bytes.fromhex("04410c1ecd03410d2d"))
MASK = 0b1011_1011  # SYS GPS COT ADC DTT OBD(bit 7 in a non-event record)
RECORD = struct.pack(">IH", SECONDS, MASK) + SYS + GPS + COT + ADC + DTT + OBD


def layout_a(kind=1, body=RECORD, **kw):
    return binary(0x06, kind, body, **kw)


def layout_b(records):
    body = b"".join(struct.pack(">HB", len(r) + 1, kind) + r for kind, r in records)
    return binary(0x16, 4, body)


# -- vectors ----------------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(VECTORS)
def test_claims_own_vectors(vec):
    data = frame_of(vec["id"])
    assert gosafe.detect(data, "udp").matched
    assert gosafe.detect(terminated(vec["id"]), "tcp").matched


test_claims_no_other_vector = other_vectors_refused_test(gosafe)


def test_detection_waits_for_the_imei_on_tcp():
    data = terminated("gosafe-004")
    for n in range(1, 22):
        assert gosafe.detect(data[:n], "tcp").outcome.value == "more", n
    assert gosafe.detect(data[:22], "tcp").matched
    assert not gosafe.detect(b"*HQ,1234", "tcp").matched
    assert not gosafe.detect(b"*GS16,35153505943920x", "tcp").matched


def test_detection_refuses_other_f8_protocols():
    good = layout_a()
    assert gosafe.detect(good, "tcp").matched
    # Ulbotech: version 01 and an 8-byte BCD IMEI; G1rus: version 0x46.
    ulbotech = bytes.fromhex("f801010353323083177450") + bytes(10)
    data = ulbotech[1:] + struct.pack(">H", crc16_xmodem(ulbotech[1:]))
    assert not gosafe.detect(b"\xf8" + data + b"\xf8", "udp").matched
    assert not gosafe.detect(binary(0x46, 1, RECORD), "udp").matched
    assert not gosafe.detect(layout_a(crc=0x1234), "udp").matched
    # A 1B escape other than 1B 00 / 1B E3 is not GoSafe.
    assert not gosafe.detect(good[:5] + b"\x1b\x41" + good[5:], "udp").matched


# -- text decoding -----------------------------------------------------------

def test_every_frame_and_datagram_gets_1234():
    frames = [terminated(v) for v in ("gosafe-003", "gosafe-024", "gosafe-030")]
    _, sent, _ = run([b"".join(frames)])
    assert sent == [REPLY] * 3
    _, sent, _ = run([frame_of("gosafe-033"), frame_of("gosafe-028")], transport="udp")
    assert sent == [REPLY, REPLY]


def test_packed_records_each_keep_their_time():
    result = decode(terminated("gosafe-024"))
    times = [r.time.strftime("%H%M%S") for r in result.records]
    stamps = [chunk.split(",")[0] for chunk in
              terminated("gosafe-024").decode().split(",", 2)[2].rstrip("#").split("$")]
    assert times == [s[:6] for s in stamps]


def test_records_without_clock_have_no_time():
    result = decode(frame_of("gosafe-030"))
    assert len(result.records) == 7
    assert result.records[0].time is not None
    for record in result.records[1:]:
        assert record.time is None
        assert record.attributes["no_clock"] is True
    assert [r.event for r in result.records] == ["10", "86", "86", "93", "13", "90", None]


def test_no_fix_is_no_position():
    record = decode(frame_of("gosafe-027"), "udp").records[0]
    assert record.latitude is None and record.longitude is None
    assert record.valid is False
    assert record.attributes["mcc"] == 416
    assert len(record.attributes["gosafe.neighbours"]) == 6


def test_zero_coordinates_are_never_a_valid_fix():
    # §0.2 whatever the flag: a 0/0 position is "no fix", not a place.
    text = frame_of("gosafe-027").replace(b"GPS:V;0;", b"GPS:A;0;")
    record = decode(text, "udp").records[0]
    assert record.valid is False and record.latitude is None


def test_invalid_fix_keeps_last_known_place():
    record = decode(frame_of("gosafe-018")).records[0]
    assert record.valid is False
    assert record.latitude == pytest.approx(42.594136)


def test_obd_block_into_the_vocabulary():
    record = decode(terminated("gosafe-024")).records[0]
    a = record.attributes
    assert a["rpm"] == 0x1ECD / 4
    assert a["obd_speed_kmh"] == 0x2D
    assert a["coolant_temp_c"] == 0x7A - 40
    assert a["throttle_pct"] == pytest.approx(7 * 100 / 255, abs=0.05)


def test_obd_trouble_codes_and_vin():
    text = b"*GS16,351535059439208,070034220815,,OBD:0643013301000014490201" + \
        b"".join(b"%02X" % c for c in b"1HGCM82633A004352") + b"#"
    a = decode(text).records[0].attributes
    assert a["dtcs"] == ["P0133", "P0100"]
    assert a["gosafe.vin"] == "1HGCM82633A004352"


def test_engine_hours_and_temperatures():
    a = decode(frame_of("gosafe-020")).records[0].attributes
    assert a["engine_hours_s"] == 2 * 3600 + 8 * 60 + 17
    a = decode(frame_of("gosafe-008")).records[0].attributes
    assert [a[f"temp{i}_c"] for i in range(4)] == [23.2, 24.3, 24.2, 24.0]
    assert a["ignition"] is True
    plain = decode(b"*GS06,351535059439208,070034220815,,COT:5;20#").records[0]
    assert plain.attributes["engine_hours_s"] == 20 * 3600


def test_driver_id_and_unknown_blocks_kept():
    text = b"*GS06,351535059439208,070034220815,,IWD:0;0;01A2B3C4D5E6,J19:ABCDEF#"
    a = decode(text).records[0].attributes
    assert a["driver_id"] == "01A2B3C4D5E6"
    assert a["gosafe.j19"] == "ABCDEF"


def test_untagged_fields_are_kept_raw():
    a = decode(b"*GS06,351535059439208,070034220815,1C,COT:5,XYZ,42#").records[0].attributes
    assert a["odometer_m"] == 5 and a["gosafe.fields"] == "XYZ,42"


def test_io_status_kept_as_the_device_prints_it():
    # The vendor's I/O bit list is unknown beyond Traccar's: keep the raw value.
    a = decode(frame_of("gosafe-008")).records[0].attributes
    assert a["gosafe.io_status"] == "E1" and a["ignition"] is True
    a = decode(frame_of("gosafe-041")).records[0].attributes
    assert a["gosafe.io_status"] == "E0" and a["ignition"] is False


def test_odd_obd_block_does_not_cost_the_position():
    # A block that is not a J1979 hex dump is kept raw; the record stays.
    whole = decode(terminated("gosafe-023")).records[0]
    odd = terminated("gosafe-023")[:-1] + b",OBD:2,FUL:0#"
    record = decode(odd).records[0]
    assert record.attributes["gosafe.obd"] == "2"
    assert record.attributes["gosafe.fuel_used"] == 0
    assert (record.time, record.latitude, record.longitude) == (whole.time, whole.latitude, whole.longitude)


def test_empty_satellites_field_is_left_out():
    text = b"*GS16,351535059439208,070034220815,,GPS:V;;N0.000000;E0.000000#"
    record = decode(text).records[0]
    assert "satellites" not in record.attributes
    assert record.latitude is None and record.valid is False


def test_adc_channels_past_the_fourth_keep_their_numbers():
    # Spec §0.8 names the first four; later ones continue adc<N>_v.
    a = decode(b"*GS06,351535059439208,070034220815,,ADC:12.66;0.58;1.5;2.5;3.5#").records[0].attributes
    names = ("power_v", "battery_v", "adc1_v", "adc2_v", "adc3_v")
    assert [a[n] for n in names] == [12.66, 0.58, 1.5, 2.5, 3.5]


def test_legacy_gs02_hdop_written_against_the_date():
    # Spec §4.3: "[hdop]<DDMMYY>" with no separator (Traccar's old pattern).
    text = (b"*GS02,358696043774648,GPS:084514;3;A;N24.807183;E46.616273;12;245;1.48240315,"
            b"STT:C202;8000,MGR:5185,ADC:0;14.22;1;28.30;2;4.18,GFS:0;0#")
    record = decode(text).records[0]
    assert record.time.isoformat() == "2015-03-24T08:45:14+00:00"
    assert record.attributes["hdop"] == 1.48 and record.attributes["adc2_v"] == 4.18


def test_legacy_gs02_cell_report_is_decimal():
    # Spec section 0.9: the CLL block's LAC and cell id are decimal (read as hex
    # they overflow 16 bits); only the GSM block carries hex.
    text = b"*GS02,358696043774648,CLL:084514240315;420;1;40101;26251#"
    record = decode(text).records[0]
    assert record.attributes["mcc"] == 420 and record.attributes["mnc"] == 1
    assert record.attributes["lac"] == 40101 and record.attributes["cell_id"] == 26251


def test_legacy_gs02_report():
    text = (b"*GS02,358696043774648,GPS:084514;3;A;N24.807183;E46.616273;12;245;1.48;240315,"
            b"STT:C202;8000,MGR:5185,ADC:0;14.22;1;28.30,GFS:0;0#")
    record = decode(text).records[0]
    assert record.time.isoformat() == "2015-03-24T08:45:14+00:00"
    assert (record.latitude, record.longitude) == (24.807183, 46.616273)
    assert record.valid and record.speed_kmh == 12 and record.course == 245
    assert record.attributes["hdop"] == 1.48
    assert record.attributes["odometer_m"] == 5185
    assert record.attributes["adc0_v"] == 14.22 and record.attributes["adc1_v"] == 28.3


def test_heartbeat_is_identity_only():
    result = decode(b"*GS16,351535058709775#")
    assert result.device_id == "351535058709775"
    assert result.records == () and result.reply == REPLY


# -- command replies -----------------------------------------------------------

def test_command_result_is_a_confirmation_not_a_position():
    records, sent, hub = run([b"*GS06,357330050846344,RST#"])
    assert records == []
    assert sent == [REPLY]
    [(device, confirmations)] = hub.commands.confirmed_
    assert device == "357330050846344"
    assert confirmations[0].reply == "RST" and confirmations[0].token is None


# -- binary ------------------------------------------------------------------

def test_binary_single_record_layout():
    result = decode(layout_a())
    assert result.device_id == str(IMEI)
    assert result.reply == REPLY
    [record] = result.records
    assert record.time.isoformat() == "2015-05-09T01:01:01+00:00"
    assert (record.latitude, record.longitude) == (31.953618, 35.910664)
    assert record.valid and record.speed_kmh == 7 and record.course == 75
    assert record.altitude_m == 864
    a = record.attributes
    assert a["satellites"] == 9 and a["hdop"] == 1.08 and a["gosafe.vdop"] == 1.77
    assert a["gosafe.model"] == "G79" and a["gosafe.firmware"] == "V1.10"
    assert a["odometer_m"] == 147528 and a["engine_hours_s"] == 7697
    assert a["power_v"] == round(2178 * 110 / 4096 - 10, 2)
    assert a["battery_v"] == round(520 * 110 / 4096 - 10, 2)
    assert a["gosafe.device_status"] == "27004" and a["ignition"] is True
    assert a["rpm"] == 0x1ECD / 4 and a["obd_speed_kmh"] == 0x2D


def test_binary_event_record_moves_obd_up_one_bit():
    body = struct.pack(">IBH", SECONDS, 0x1C, 0b11_1000_0010) + GPS + block(b"ev") + OBD + block(b"\x01\x02")
    record = decode(layout_a(kind=0x41, body=body)).records[0]
    assert record.event == "1C"
    assert record.attributes["gosafe.etd"] == b"ev".hex()
    assert record.attributes["rpm"] == 0x1ECD / 4
    assert record.attributes["gosafe.ful"] == "0102"


def test_binary_mixed_layout_reads_each_record_time():
    # Traccar reads a time right after the IMEI in this layout; the first
    # bytes there are the record length and type.
    second = struct.pack(">IH", SECONDS + 30, 0b10) + GPS
    result = decode(layout_b([(1, RECORD), (1, second)]))
    assert [r.time.isoformat() for r in result.records] == [
        "2015-05-09T01:01:01+00:00", "2015-05-09T01:01:31+00:00"]
    assert all(r.latitude == 31.953618 for r in result.records)


def test_binary_escapes_are_undone_before_the_crc():
    # Coordinates and an IMEI whose bytes need stuffing.
    gps = block(struct.pack(">HBii", 0b11, 0x25, 0x01F81B00, 0x00F81BE3))
    imei = 0x01_4F_1B_F8_00_00_01 + 10 ** 14
    frame = layout_a(body=struct.pack(">IH", SECONDS, 0b10) + gps, imei=imei)
    assert b"\x1b\x00" in frame and b"\x1b\xe3" in frame
    result = decode(frame)
    assert result.device_id == f"{imei:015d}"
    assert result.records[0].latitude == 0x01F81B00 / 1e6


def test_binary_heartbeat():
    result = decode(binary(0x16, 0, b""))
    assert result.device_id == str(IMEI) and result.records == ()
    assert result.reply == REPLY


def test_binary_bad_crc_is_an_error():
    with pytest.raises(DecodeError):
        decode(layout_a(crc=0))


# -- framing through the session -----------------------------------------------

STREAM = terminated("gosafe-024") + layout_a() + terminated("gosafe-030")


def test_split_at_every_byte():
    whole, replies = split_anywhere(run, STREAM)
    assert len(whole) == 4 + 1 + 7 and replies == [REPLY] * 3


def test_byte_by_byte():
    whole, _, _ = run([STREAM])
    records, sent, _ = run([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert records == whole and len(sent) == 3


def test_garbage_and_line_ends_between_frames():
    data = terminated("gosafe-003") + b"\r\n" + b"\x00junk" + terminated("gosafe-004") + b"\r\n"
    records, sent, hub = run([data])
    assert [d for d, _ in records] == ["351535058709775", "351535059439208"]
    assert sent == [REPLY, REPLY]
    assert len(hub.errors) == 1  # the junk, reported once


def test_frame_cut_short_by_a_new_one():
    data = terminated("gosafe-003")[:40] + terminated("gosafe-004")
    records, sent, hub = run([data])
    assert [d for d, _ in records] == ["351535059439208"] and sent == [REPLY]
    assert hub.errors


def test_tcp_never_flushes_an_unterminated_frame():
    data = terminated("gosafe-003")[:-1]
    records, sent, hub = run([data])
    assert records == [] and sent == []
    assert any("incomplete" in e for e in hub.errors)


def test_udp_datagram_without_hash_is_one_frame():
    records, sent, hub = run([frame_of("gosafe-028")], transport="udp")
    assert len(records) == 1 and sent == [REPLY] and hub.errors == []


def test_udp_binary_batch_gets_one_reply():
    records, sent, _ = run([layout_a() + layout_b([(1, RECORD)])], transport="udp")
    assert len(records) == 2 and sent == [REPLY]


# -- commands ------------------------------------------------------------------

def command(kind, **params):
    return Command(id=1, device_id="351535059439208", type=kind, params=params)


def test_engine_commands():
    assert gosafe.encode(command("engine_stop"), device_context()).data == b"*GS06,DOO0;0#"
    assert gosafe.encode(command("engine_resume"), device_context()).data == b"*GS06,DOO0;1#"
    inverted = device_context(**{"gosafe.output": "1", "gosafe.stop_level": "1"})
    assert gosafe.encode(command("engine_stop"), inverted).data == b"*GS06,DOO1;1#"
    assert gosafe.encode(command("engine_resume"), inverted).data == b"*GS06,DOO1;0#"
    with pytest.raises(EncodeError):
        gosafe.encode(command("engine_stop"), device_context(**{"gosafe.stop_level": "x"}))


def test_custom_and_unsupported():
    assert gosafe.encode(command("custom", text="*GS06,RST#"), device_context()).data == b"*GS06,RST#"
    assert gosafe.encode(command("custom", hex=b"*GS06,RST#".hex()), device_context()).data == b"*GS06,RST#"
    for kind, params in (("position_request", {}), ("reboot", {}), ("custom", {}),
                         ("custom", {"hex": "zz"}), ("custom", {"hex": "2a47"})):
        with pytest.raises(EncodeError):
            gosafe.encode(command(kind, **params), device_context())


# -- robustness ----------------------------------------------------------------

REAL = [terminated(v["id"]) for v in VECTORS] + [
    layout_a(), layout_b([(1, RECORD), (1, RECORD)]), binary(0x16, 0, b"")]


def mutations():
    real = st.sampled_from(REAL)
    spliced = st.tuples(real, st.integers(0, 2000), st.binary(max_size=8)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    return st.one_of(st.binary(max_size=600), truncated(real, 2000), bit_flipped(real), spliced)


def check_frame(buffer, transport):
    frame, consumed = gosafe.frame(buffer, transport)
    assert 0 <= consumed <= len(buffer)
    if frame is None:
        assert consumed > 0 or len(buffer) < MAX_FRAME
    else:
        assert consumed >= len(frame) > 0
    return frame, consumed


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=mutations(), transport=st.sampled_from(["tcp", "udp"]))
def test_only_decode_errors_escape(data, transport):
    gosafe.detect(data, transport)
    buffer = data
    while buffer:
        frame, consumed = check_frame(buffer, transport)
        if consumed == 0:
            break
        buffer = buffer[consumed:]
        if frame is not None:
            try:
                gosafe.decode(frame, Context(transport=transport))
            except DecodeError:
                pass


def test_buffer_stays_bounded():
    # Without '#' or a closing F8 the framer gives up past MAX_FRAME.
    for start in (b"*GS16,351535059439208,", b"\xf8\x16\x04"):
        frame, consumed = gosafe.frame(start + b"1" * MAX_FRAME, "tcp")
        assert frame is None and consumed > 0


def test_decode_is_fast():
    frames = [terminated("gosafe-024"), terminated("gosafe-008"), layout_a()]
    assert mean_decode_seconds(gosafe, frames, Context(), rounds=300) < 0.001
