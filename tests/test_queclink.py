"""
Queclink @Track (L{decoders.queclink}): shared vectors, detection, framing of
the three encodings through the session, replies, resends, commands and their
confirmations, where Traccar reads the protocol wrongly, robustness, and one
end-to-end run through a real twistd.
"""

import functools
import json
import os
import socket
import struct
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from decoders.queclink import MAX_FRAME, queclink
from gateway.checksums import crc8_nrsc5, crc16_ccitt_false
from gateway.interfaces import DecodeError, EncodeError, Outcome
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (bit_flipped, device_context, each_vector, feed,
                           frame_and_decode, frame_of, memory_hub, other_vectors_refused_test,
                           run_session, split_anywhere, truncated, vector_replay_test)
from tests.test_commands_e2e import send, wait_status
from tests.test_e2e import recv_exactly, tcp

VECTORS = vectorcheck.load("queclink")
BY_ID = {v["id"]: v for v in VECTORS}
COMMANDS = [json.loads(line) for line in open(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "commands", "queclink.jsonl"))]

#: Feed chunks to one session of a queclink-only hub: (records, sent, hub).
run = functools.partial(run_session, queclink)


def decode(frame: bytes, transport="tcp", **device_settings):
    return queclink.decode(frame, device_context(transport, **device_settings))


def text(vector_id: str) -> str:
    return frame_of(vector_id).decode("ascii")


def hex_frame(body: bytes) -> bytes:
    """
    A HEX frame around C{body} (everything from the header through the count
    number), with its CRC and CR LF.
    """
    return body + crc16_ccitt_false(body[4:]).to_bytes(2, "big") + b"\r\n"


def newgen_frame(body: bytes) -> bytes:
    """
    A new-generation frame around C{body} (from C{2B} through the count
    number): the check byte and C{$}.
    """
    return body + bytes([crc8_nrsc5(body)]) + b"$"


def utc(*fields):
    return datetime(*fields, tzinfo=timezone.utc)


# -- shared vectors -------------------------------------------------------------

test_vector = vector_replay_test(VECTORS, without_errors=True)
test_claims_no_other_vector = other_vectors_refused_test(queclink, every_prefix=True)


@each_vector([v for v in VECTORS if v.get("transport") != "tcp"])
def test_same_records_on_udp(vec):
    """
    A datagram holds one frame: the same bytes give the same records and
    replies on UDP as on TCP (vectors captured as TCP chunks are not
    datagrams).
    """
    tcp_records, tcp_sent, _ = run([bytes.fromhex(h) for h in vec["frames_hex"]], "tcp",
                                   vec.get("settings"))
    udp_records, udp_sent, hub = run([bytes.fromhex(h) for h in vec["frames_hex"]], "udp",
                                     vec.get("settings"))
    assert udp_records == tcp_records and udp_sent == tcp_sent and hub.errors == []


# -- detection ------------------------------------------------------------------

@each_vector(VECTORS)
def test_every_prefix_of_a_frame_is_never_refused(vec):
    frame = frame_of(vec["id"])
    for n in range(1, len(frame)):
        assert queclink.detect(frame[:n], "tcp").outcome is not Outcome.NO, n


@pytest.mark.parametrize("head", [
    # Legacy GT300/GL100 @Track (Traccar gl100): the IMEI in field 1, no '$'.
    b"+RESP:GTSOS,359464030073766,0,0,0,1,4.3,92,70.0,121.354335,31.222073,20090214013254,"
    b"0460,0000,18d8,6141,00,0102070202\x00",
    b"+RESP:GTSOS,359464030073766,0,0,0,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460,",
    b"#BUF#+RESP:GTFRI,359464030073766,0,0,0,1",
    b"+SRVACK:GTHBD,1234$",
    # Granit.
    b"+RRCB~000100001234567890$",
    b"+DDAT~12345,",
    # A '+' alone, modem chatter, an HEX header whose CRC fails.
    b"+CMTI: \"SM\",3\r\n",
    b"+ACK:GTHBD,not a version,862894021415222,,20160527161045,0081$",
    bytes.fromhex("2b41434b017f244501010108676231303000000000ffff07e1070b03112d054dfe040d0a"),
])
def test_look_alikes_are_not_claimed(head):
    for transport in ("tcp", "udp"):
        assert not queclink.detect(head, transport).matched, transport


def test_scores():
    assert queclink.detect(frame_of("queclink-173"), "udp").score >= 90
    assert queclink.detect(frame_of("queclink-205"), "tcp").score >= 90
    assert queclink.detect(frame_of("queclink-207"), "tcp").matched
    # The header, version and id suffice to claim a TCP stream whose first
    # frame has not ended yet.
    assert queclink.detect(frame_of("queclink-053")[:80], "tcp").matched


def test_new_generation_ascii_ack_is_claimed():
    head = b"+ACK:ACK,865134050947226,C031,1,0001,20200722020000,0011$"
    assert queclink.detect(head, "tcp").matched
    assert decode(head).device_id == "865134050947226"


# -- framing --------------------------------------------------------------------

MIXED = ["queclink-173", "queclink-053", "queclink-205", "queclink-207", "queclink-200",
         "queclink-197", "queclink-150"]


def mixed_stream() -> bytes:
    return b"".join(b"".join(bytes.fromhex(h) for h in BY_ID[i]["frames_hex"]) for i in MIXED)


def expected(ids, **device_settings):
    out, replies = [], []
    for i in ids:
        got, sent, _ = run([bytes.fromhex(h) for h in BY_ID[i]["frames_hex"]],
                           settings=device_settings)
        out += got
        replies += sent
    return out, replies


def test_text_hex_and_new_generation_frames_share_a_stream_split_anywhere():
    whole, replies = split_anywhere(run, mixed_stream())
    assert (whole, replies) == expected(MIXED)
    assert len(whole) == 4 + 1 + 1


def test_byte_by_byte():
    stream = mixed_stream()
    got, sent, hub = run([stream[i:i + 1] for i in range(len(stream))])
    assert (got, sent) == expected(MIXED)
    assert hub.errors == []


def test_garbage_between_frames_is_skipped_and_the_session_goes_on():
    first, second = frame_of("queclink-053"), frame_of("queclink-205")
    again = first.replace(b",0654$", b",0655$")
    got, _, hub = run([first + b"\xff\x00junk" + again + b"\r\n" + b"noise+++" + second])
    assert len(got) == 8 and got[:4] == expected(["queclink-053"])[0]
    assert [e.split(":")[0] for e in hub.errors] == ["skipped bytes outside any frame"] * 2


def test_a_text_frame_cut_short_does_not_swallow_the_next():
    first, second = frame_of("queclink-053"), frame_of("queclink-151")
    got, _, hub = run([first[:120] + second])
    assert got == expected(["queclink-151"])[0]
    assert len(hub.errors) == 1
    assert queclink.detect(first[:120] + second, "tcp").matched


def test_endless_text_without_dollar_stays_bounded():
    frame, consumed = queclink.frame(b"+RESP:GTFRI," + b"1" * MAX_FRAME, "tcp")
    assert frame is None and 0 < consumed
    assert queclink.frame(b"+RESP:GTFRI,060100,", "tcp") == (None, 0)
    good = frame_of("queclink-151")
    got, _, hub = run([good, b"+RESP:GTFRI," + b"1," * 3000, good.replace(b"11F0$", b"11F1$")])
    assert len(got) == 2 and len(hub.errors) == 1


def test_hex_frame_without_length_is_delimited_by_its_crc():
    """
    The vendor's +INF has no length field (mask bit 0 clear): a C{0D 0A}
    inside its body does not end it, the one after the matching CRC does.
    """
    real = frame_of("queclink-197")
    body = bytearray(real[:-4])
    body[40:42] = b"\r\n"
    frame = hex_frame(bytes(body))
    assert queclink.frame(frame + frame_of("queclink-205"), "tcp") == (frame, len(frame))
    got, _, hub = run([frame[:45], frame[45:] + frame_of("queclink-173")])
    assert hub.errors == []


def test_hex_length_that_lies_is_not_believed():
    body = bytearray(frame_of("queclink-205")[:-4])
    body[6] = 0x30  # +ACK length 48, where the frame has 36 bytes
    real = hex_frame(bytes(body))
    frame, consumed = queclink.frame(real + b"x" * 20, "tcp")
    assert frame == real and consumed == 36


def test_new_generation_frame_with_a_bad_check_byte_is_skipped():
    good = frame_of("queclink-207")
    bad = good[:-2] + bytes([good[-2] ^ 1]) + b"$"
    got, _, hub = run([good + bad + good.replace(b"\x01\x0f\xf8$", b"\x01\x10" + bytes(
        [crc8_nrsc5(good[:-4] + b"\x01\x10")]) + b"$")])
    assert len(got) == 2 and len(hub.errors) == 1


def test_new_generation_check_byte_is_crc8_nrsc5():
    assert crc8_nrsc5(b"123456789") == 0xF7  # the catalogue's check value
    frame = frame_of("queclink-207")
    assert crc8_nrsc5(frame[:-2]) == frame[-2]


def test_new_generation_heartbeat():
    body = bytes.fromhex("2b1018") + bytes.fromhex("0865134050947226") + bytes.fromhex(
        "c031000a00") + struct.pack(">IH", 1593396000, 0x0102)
    frame = newgen_frame(body)
    assert len(frame) == 24
    assert queclink.detect(frame, "tcp").matched
    result = decode(frame)
    assert result.device_id == "865134050947226"
    assert result.records == () and result.reply == b""


# -- replies --------------------------------------------------------------------

def test_heartbeat_is_always_answered_with_its_version_and_count():
    for transport in ("tcp", "udp"):
        for sack in ("0", "1"):
            _, sent, _ = run([frame_of("queclink-173")], transport, {"queclink.sack": sack})
            assert sent == [b"+SACK:GTHBD,0E0502,0081$"]


def test_heartbeat_without_version_keeps_the_empty_field():
    result = decode(b"+ACK:GTHBD,,135790246811220,,20100214093254,11F0$")
    assert result.reply == b"+SACK:GTHBD,,11F0$"


def test_server_ack_only_when_the_device_wants_it():
    report = frame_of("queclink-151")
    assert run([report])[1] == []
    for transport in ("tcp", "udp"):
        _, sent, _ = run([report], transport, {"queclink.sack": "1"})
        assert sent == [b"+SACK:" + report[-5:]]


def test_hex_and_new_generation_frames_get_no_reply_even_with_sack():
    for vector_id in ("queclink-200", "queclink-205", "queclink-207", "queclink-197"):
        _, sent, _ = run([frame_of(vector_id)], settings={"queclink.sack": "1"})
        assert sent == []


def test_ack_waits_for_the_records_to_commit():
    hub = memory_hub(queclink, {"queclink.sack": "1"})
    pending = Deferred()
    submitted = []

    def submit(device_id, protocol, peer, batch, **kwargs):
        submitted.append(batch)
        return pending

    hub.store_.submit = submit
    sent = feed(hub, [frame_of("queclink-151")])
    assert submitted and sent == []
    pending.callback(None)
    assert sent == [b"+SACK:11F0$"]


def test_a_resent_message_is_stored_once_and_acked_each_time():
    report = frame_of("queclink-053")
    got, sent, hub = run([report, report, report], settings={"queclink.sack": "1"})
    assert len(got) == 4
    assert sent == [b"+SACK:0654$"] * 3
    # Another count is another message, even with the same positions.
    got, _, _ = run([report, report.replace(b",0654$", b",0655$")])
    assert len(got) == 8


# -- decoding -------------------------------------------------------------------

def test_multi_position_report_oldest_first_with_the_message_fields_on_each():
    result = decode(frame_of("queclink-053"))
    times = [r.time for r in result.records]
    assert times == sorted(times) and len(times) == 4
    assert all(r.attributes["index"] == 0x0654 for r in result.records)


def test_block_found_by_its_shape_whatever_comes_before():
    """
    The same block after a different number of model-specific fields gives
    the same position.
    """
    base = decode(frame_of("queclink-151")).records[0]
    line = text("queclink-151")
    for extra in ("", "a,", "1,2,3,", "4.5,6.7,"):
        head, rest = line.split(",,,", 1)
        moved = decode(f"{head},,,{extra}{rest}".encode()).records
        assert len(moved) == 1
        assert (moved[0].time, moved[0].latitude, moved[0].longitude, moved[0].speed_kmh) == \
            (base.time, base.latitude, base.longitude, base.speed_kmh)


def test_block_without_a_fix_ever_gives_no_position_and_no_error():
    result = decode(frame_of("queclink-134"))
    assert result.device_id == "861106050005423" and result.records == ()


def test_buffered_reports_are_archive():
    result = decode(frame_of("queclink-032"))
    assert [r.attributes["archive"] for r in result.records] == [True]
    assert "archive" not in decode(frame_of("queclink-151")).records[0].attributes


def test_alarms():
    def alarm(line):
        return decode(line.encode()).records[0].alarm

    spd = text("queclink-163")
    assert alarm(spd) == ("overspeed",)
    assert alarm(spd.replace(",,,00,1,1,", ",,,01,1,1,")) == ()
    geo = spd.replace("GTSPD", "GTGEO")
    assert alarm(geo.replace(",,,00,1,1,", ",,,11,1,1,")) == ("geofence_enter",)
    assert alarm(geo) == ("geofence_exit",)
    hbm = text("queclink-052")
    assert alarm(hbm.replace(",,,10,1,1,", ",,,11,1,1,")) == ("harsh_acceleration",)
    assert alarm(text("queclink-167")) == ("power_cut",)


def test_message_fields_after_the_blocks_where_the_vendor_puts_them():
    """
    GV300 document example: mileage, hour meter, two analog inputs, backup
    battery, device status (ignition on, at rest, input 1); they go on the
    last record of the message only.
    """
    record = decode(frame_of("queclink-151")).records[0]
    assert {k: record.attributes.get(k) for k in (
        "odometer_m", "engine_hours_s", "battery_level_pct", "ignition", "motion", "inputs",
        "outputs")} == {"odometer_m": 2000000, "engine_hours_s": 12345 * 3600 + 12 * 60 + 34,
                        "battery_level_pct": 80, "ignition": True, "motion": False,
                        "inputs": 1, "outputs": 0}
    first, last = decode(frame_of("queclink-097")).records
    assert "odometer_m" not in first.attributes and last.attributes["odometer_m"] == 2000000
    # Ignition reports put the hour meter first.
    ignition_off = decode(frame_of("queclink-164")).records[0].attributes
    assert (ignition_off["engine_hours_s"], ignition_off["odometer_m"]) == (44442754, 2000000)
    # A model with other fields first (GV310LAU) is not read at the wrong place.
    assert "odometer_m" not in decode(frame_of("queclink-014")).records[0].attributes


def test_an_alarm_without_a_position_is_still_a_record():
    line = text("queclink-123").replace("121.354335,31.222073,20090214013254", ",,")
    result = decode(line.encode())
    assert [(r.alarm, r.latitude, r.time) for r in result.records] == [(("sos",), None, None)]


def test_hex_position_report():
    record = decode(frame_of("queclink-200")).records[0]
    assert record.attributes["mcc"] == 268 and record.attributes["mnc"] == 3
    assert record.attributes["index"] == 0x19E1
    assert record.event == "FRI" and "queclink.guessed" not in record.attributes


def test_buffered_hex_report_is_archive():
    frame = bytearray(frame_of("queclink-200")[:-4])
    frame[0:4] = b"+BSP"
    record = decode(hex_frame(bytes(frame))).records[0]
    assert record.attributes["archive"] is True


def test_hex_report_with_an_unknown_mask_is_refused_not_misread():
    frame = bytearray(frame_of("queclink-200")[:-4])
    frame[8] = 0x3F  # speed, azimuth... bits differ from the known layout
    with pytest.raises(DecodeError, match="mask"):
        decode(hex_frame(bytes(frame)))


def test_hex_login_frame_is_framed_and_skipped_with_a_reason():
    body = b"+LGN" + b"\x01\x02" + (30).to_bytes(2, "big") + bytes(18)
    frame = hex_frame(body)
    assert queclink.frame(frame, "tcp") == (frame, len(frame))
    with pytest.raises(DecodeError, match="not documented"):
        decode(frame)


def test_hex_heartbeat_names_its_device():
    # Vendor mask EB: length, device type, firmware, send time, count, id.
    body = (b"+HBD" + bytes([0xEB, 0x1E, 0x04]) + bytes.fromhex("0102")
            + bytes.fromhex("0d395a18440b1600") + bytes.fromhex("07da020e09203611f0"))
    frame = hex_frame(body)
    assert len(frame) == 0x1E
    assert queclink.frame(frame, "tcp") == (frame, len(frame))
    result = decode(frame)
    assert result.device_id == "135790246811220" and result.reply == b""


def test_new_generation_gnss_item():
    record = decode(frame_of("queclink-207")).records[0]
    assert record.valid and record.attributes["satellites"] == 5
    assert record.attributes["index"] == 0x010F


def compressed_report(points: bytes, count: int) -> bytes:
    """
    A compressed +RSP (type 0x64) in the known mask's layout around
    C{points}, with the cell block and tail after them.
    """
    head = (b"+RSP" + b"\x64" + bytes.fromhex("00fc1fbf") + b"\x00\x00" + bytes.fromhex("45")
            + bytes.fromhex("01020209") + bytes.fromhex("5632540300034305")
            + bytes.fromhex("64377e4207") + count.to_bytes(2, "big"))
    tail = (bytes.fromhex("0268000318" "9c355300") + bytes.fromhex("07e1080108281e") + b"\x01\x02")
    body = bytearray(head + points + tail)
    body[9:11] = (len(body) + 4).to_bytes(2, "big")
    return hex_frame(bytes(body))


def test_compressed_report_points():
    """
    Spec section 0 rule 4: a full point with the time, a delta, a one-byte
    filler (no record, but one second), a delta.
    """
    full = (1 << 22) | (227 << 9) | 240  # form 01, fix 0, 22.7 km/h, 240 degrees
    first = full.to_bytes(3, "big") + struct.pack(">iiI", -9068108, 39611129, 1501576587)

    def delta(speed, course, lon, lat):
        value = (2 << 38) | ((speed & 0x7F) << 30) | ((course & 0x7F) << 23) \
            | ((lon & 0xFFF) << 11) | (lat & 0x7FF)
        return value.to_bytes(5, "big")

    points = first + delta(-3, 5, 100, -20) + b"\xe0" + delta(1, -10, -2048, 1023)
    result = decode(compressed_report(points, 4))
    got = [(r.time, round(r.latitude, 6), round(r.longitude, 6), r.speed_kmh, r.course)
           for r in result.records]
    assert got == [
        (utc(2017, 8, 1, 8, 36, 27), 39.611129, -9.068108, 22.7, 240),
        (utc(2017, 8, 1, 8, 36, 28), 39.611109, -9.068008, 22.4, 245),
        (utc(2017, 8, 1, 8, 36, 30), 39.612132, -9.070056, 22.5, 235),
    ]
    assert all(r.valid and r.attributes["queclink.guessed"] == ["compressed_points"]
               and r.attributes["mcc"] == 268 and r.attributes["cell_id"] == 0x3553
               for r in result.records)


# -- where Traccar is wrong -----------------------------------------------------

def test_accuracy_zero_is_the_last_known_position_not_a_fix():
    """
    Traccar's text decoder marks every block with coordinates valid; GPS
    accuracy 0 means the device sent its last known position.
    """
    assert [r.valid for r in decode(frame_of("queclink-097")).records] == [True, False]


def test_hex_unique_id_is_digit_pairs_not_a_64_bit_integer():
    # Traccar prints 56 32 54 03 00 03 43 05 as 6210345838393721605.
    assert decode(frame_of("queclink-200")).device_id == "865084030003675"


def test_hex_speed_is_whole_kmh_and_tenths_and_says_it_is_a_guess():
    """
    Traccar reads 00 16 01 as 563.3 km/h; the reference reads 22.1 km/h
    (unverified, so the record says it guessed).
    """
    stream = b"".join(bytes.fromhex(h) for h in BY_ID["queclink-208"]["frames_hex"])
    record = decode(stream[93:]).records[0]
    assert record.speed_kmh == pytest.approx(22.1)
    assert record.attributes["queclink.guessed"] == ["speed_kmh"]


def test_jamming_status_one_carries_no_alarm():
    line = text("queclink-122")
    assert decode(line.encode()).records[0].alarm == ("jamming",)
    assert decode(line.replace(",,2,0,4.3,", ",,1,0,4.3,").encode()).records[0].alarm == ()


def test_gtlbc_number_type_byte_is_not_a_length():
    record = decode(frame_of("queclink-201")).records[0]
    assert (record.latitude, record.longitude) == (31.164093, 121.392449)


def test_heartbeat_reply_copies_the_hex_count_verbatim():
    # jaayesta/queclink-parser prints the count in decimal.
    assert decode(frame_of("queclink-189")).reply == b"+SACK:GTHBD,080100,11F0$"


# -- commands -------------------------------------------------------------------

def command(kind, command_id=1, **params):
    return Command(id=command_id, device_id="135790246811220", type=kind, params=params)


#: The reference's commands that are gateway command types (its
#: "identification" is sent as custom: L{test_identification_as_custom}).
TYPED = [c for c in COMMANDS if c["command"] != "identification"]


@pytest.mark.parametrize("entry", TYPED, ids=[f"{c['command']}-{c['params'].get('serial')}"
                                              for c in TYPED])
def test_reference_commands_exactly(entry):
    params = entry["params"]
    context = device_context(**{"queclink.password": params["password"]})
    if entry["command"] == "custom":
        encoded = queclink.encode(command("custom", text=entry["text"]), context)
    else:
        encoded = queclink.encode(command(entry["command"], int(params["serial"], 16)), context)
    assert encoded.data.hex() == entry["bytes_hex"]
    assert encoded.token == params["serial"]


def test_identification_as_custom():
    entry = next(c for c in COMMANDS if c["command"] == "identification")
    encoded = queclink.encode(command("custom", text=entry["text"]), device_context())
    assert encoded.data.hex() == entry["bytes_hex"] and encoded.token == "FFFF"


@pytest.mark.parametrize("output, stop", [
    ("1", "AT+GTOUT=gv300,1,,,0,0,0,0,0,0,0,,,,,,,0001$"),
    ("2", "AT+GTOUT=gv300,0,0,0,1,,,0,0,0,0,,,,,,,0001$"),
    ("3", "AT+GTOUT=gv300,0,0,0,0,0,0,1,,,0,,,,,,,0001$"),
    ("4", "AT+GTOUT=gv300,0,0,0,0,0,0,0,0,0,1,,,,,,,0001$"),
])
def test_immobiliser_output_is_a_device_setting(output, stop):
    context = device_context(**{"queclink.password": "gv300", "queclink.output": output})
    assert queclink.encode(command("engine_stop"), context).data.decode() == stop
    resume = queclink.encode(command("engine_resume"), context).data.decode()
    on = "=gv300,1," if output == "1" else ",1,,"
    assert resume == stop.replace(on, on.replace("1", "0"), 1)
    assert len(resume.split(",")) == len(stop.split(",")) == 18


def test_two_commands_in_flight_never_share_a_serial():
    context = device_context()
    tokens = {queclink.encode(command("reboot", n), context).token for n in range(1, 300)}
    assert len(tokens) == 299
    anonymous = {queclink.encode(command("reboot", None), context).token for _ in range(5)}
    assert len(anonymous) == 5


@pytest.mark.parametrize("params", [
    {"text": "AT+GTRTO=gv300,1,,,,,,0003$AT+GTRTO=gv300,3,,,,,,0004$"},
    {"text": "AT+GTRTO=gv300,1,,,,,,0003$\r\n"},
    {"text": "AT+GTRTO=gv300,1,,,,,,0003\nAT+GTRTO=gv300,3,,,,,,0004"},
    {"text": "+SACK:11F0$"},
    {"text": ""},
    {"text": "AT+GTRTO=gv300,1,\x00,,,,,0003$"},
    {"hex": "41542b475452"},
    {"hex": "41542b4754525f3dff24"},
])
def test_custom_is_exactly_one_command(params):
    with pytest.raises(EncodeError):
        queclink.encode(command("custom", **params), device_context())


def test_custom_gets_its_closing_dollar_and_its_serial_as_token():
    encoded = queclink.encode(command("custom", text="AT+GTRTO=gv300,8,,,,,,00ab"), device_context())
    assert encoded.data == b"AT+GTRTO=gv300,8,,,,,,00ab$" and encoded.token == "00AB"


def test_bad_password_or_output_setting_refused():
    with pytest.raises(EncodeError):
        queclink.encode(command("reboot"), device_context(**{"queclink.password": "a,b"}))
    with pytest.raises(EncodeError):
        queclink.encode(command("engine_stop"), device_context(**{"queclink.output": "7"}))
    with pytest.raises(EncodeError):
        queclink.encode(command("set_interval", seconds="30"), device_context())


def test_settings_spec():
    spec = queclink.settings_spec
    assert set(spec) == {"queclink.sack", "queclink.password", "queclink.output"}
    assert spec["queclink.sack"]("on") == "1" and spec["queclink.sack"](" 0") == "0"
    assert spec["queclink.password"]("gv300") == "gv300"
    assert spec["queclink.output"]("2") == "2"
    for key, bad in (("queclink.sack", "maybe"), ("queclink.password", "pass$word"),
                     ("queclink.password", "ab"), ("queclink.output", "0")):
        with pytest.raises(ValueError):
            spec[key](bad)


def test_acks_confirm_by_serial_and_say_what_they_answer():
    out = decode(frame_of("queclink-156")).confirmations
    assert [(c.token, c.command_type) for c in out] == [("0018", None)]
    assert [(c.token, c.command_type) for c in decode(frame_of("queclink-159")).confirmations] \
        == [("0060", "reboot")]
    # A device echoed the serial in lower case.
    assert [c.token for c in decode(frame_of("queclink-158")).confirmations] == ["005F"]
    rtl = b"+ACK:GTRTO,350401,867844003101634,,RTL,0003,20161102204545,028F$"
    assert [c.command_type for c in decode(rtl).confirmations] == ["position_request"]
    # Heartbeats confirm nothing.
    assert decode(frame_of("queclink-173")).confirmations == ()


def test_hex_ack_confirms_by_serial():
    assert [c.token for c in decode(frame_of("queclink-185")).confirmations] == ["0007"]
    assert [c.token for c in decode(frame_of("queclink-205")).confirmations] == ["FFFF"]


def test_confirmation_reaches_the_command_queue_with_its_device():
    _, _, hub = run([frame_of("queclink-159")])
    assert [(d, c.token) for d, c in hub.commands.confirmations] == [("867844003101634", "0060")]


# -- robustness -----------------------------------------------------------------

REAL = st.sampled_from([bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]])
ANYTHING = st.one_of(st.binary(max_size=400), truncated(REAL, 400), bit_flipped(REAL),
                     st.lists(REAL, min_size=1, max_size=3).map(b"".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANYTHING, st.sampled_from(["tcp", "udp"]))
def test_random_and_mutated_frames(data, transport):
    frame_and_decode(queclink, data, transport, device_context(transport),
                     max_frame=MAX_FRAME)
    verdict = queclink.detect(data, transport)
    assert verdict.outcome in (Outcome.NO, Outcome.MORE, Outcome.MATCH)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANYTHING, min_size=1, max_size=5))
def test_session_survives_garbage_and_decodes_the_frame_after(pieces):
    good = frame_of("queclink-151")
    got, _, _ = run([good] + pieces + [b"$" + good.replace(b"11F0$", b"11F1$")])
    assert got[0] == expected(["queclink-151"])[0][0]
    assert got[-1][1]["attributes"]["index"] == 0x11F1


# -- end to end -----------------------------------------------------------------

def test_engine_stop_through_twistd_confirmed_by_serial(gateway, db_url):
    g = gateway(db_url)
    imei = "135790246811220"
    g.cli("configure", imei, "queclink.password=gv300", "queclink.sack=1")
    s = tcp(g.port)
    # The running gateway picks settings up every few seconds: report (a new
    # count each time, so none is a resend) until the first server ack shows
    # they are in.
    report = frame_of("queclink-151")
    deadline = time.time() + 30
    for count in range(0x1000, 0x2000):
        assert time.time() < deadline, "queclink.sack=1 never took effect"
        ack = f"+SACK:{count:04X}$".encode()
        s.sendall(report.replace(b",11F0$", b"," + ack[6:]))
        try:
            if recv_exactly(s, len(ack), timeout=0.5) == ack:
                break
        except socket.timeout:
            pass
    stop = send(g, imei, "engine_stop")
    want = f"AT+GTOUT=gv300,1,,,0,0,0,0,0,0,0,,,,,,,{stop & 0xFFFF:04X}$".encode()
    assert recv_exactly(s, len(want), timeout=30) == want
    wait_status(g, imei, stop, "sent", timeout=30)
    s.sendall(f"+ACK:GTOUT,060100,{imei},,{stop & 0xFFFF:04x},20090214093300,11F1$".encode())
    assert recv_exactly(s, 11, timeout=30) == b"+SACK:11F1$"
    row = wait_status(g, imei, stop, "confirmed", timeout=30)
    assert row["reply"].startswith("+ACK:GTOUT,")
    s.close()
