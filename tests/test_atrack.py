"""
ATrack report protocol (L{decoders.atrack}): shared vectors, detection, framing
through the session, custom info, acks, commands and their confirmations,
robustness, and the places where Traccar decodes wrongly.
"""

import base64
import functools
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.atrack import atrack
from gateway.checksums import crc16_arc
from gateway.context import Context
from gateway.interfaces import EncodeError, Outcome
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (each_vector, frame_and_decode, frame_of,
                           mean_decode_seconds, other_vectors_refused_test, run_session,
                           split_anywhere, vector_replay_test)

VECTORS = vectorcheck.load("atrack")
BY_ID = {v["id"]: v for v in VECTORS}
FORM_015 = BY_ID["atrack-015"]["settings"]["atrack.format"]

#: Feed chunks to one session of an atrack-only hub: (records, sent, hub).
run = functools.partial(run_session, atrack)


def with_seq(frame: bytes, seq: int) -> bytes:
    """
    A real binary frame with another sequence number and its CRC redone.
    """
    body = frame[4:6] + struct.pack(">H", seq) + frame[8:]
    return frame[:2] + struct.pack(">H", crc16_arc(body)) + body


def binary(prefix: bytes, seq: int, unit: int, payload: bytes) -> bytes:
    body = struct.pack(">HHQ", 10 + len(payload), seq, unit) + payload
    return prefix + struct.pack(">H", crc16_arc(body)) + body


def decode(frame: bytes, settings=None, state=None, device_id=None):
    context = Context(lookup=lambda _: settings or {}, state=state if state is not None else {},
                      device_id=device_id)
    return atrack.decode(frame, context)


def ack(frame: bytes) -> bytes:
    return decode(frame).reply


# -- shared vectors -------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(VECTORS)
def test_vector_over_udp_gets_the_same_records_and_acks(vec):
    chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
    tcp_records, tcp_sent, _ = run(chunks, settings=vec.get("settings"))
    udp_records, udp_sent, hub = run(chunks, "udp", settings=vec.get("settings"))
    assert udp_records == tcp_records
    assert udp_sent == tcp_sent
    assert hub.errors == []


# -- detection ------------------------------------------------------------

@each_vector(VECTORS)
def test_detects_every_prefix_of_its_first_frame(vec):
    first = frame_of(vec["id"])
    for n in range(1, len(first)):
        assert atrack.detect(first[:n], "tcp").outcome is Outcome.MORE, n
    assert atrack.detect(first, "tcp").matched
    assert atrack.detect(first, "udp").matched
    assert not atrack.detect(first[:-1], "udp").matched


def test_crc_verified_reports_and_imei_keepalives_are_conclusive():
    for vid in ("atrack-001", "atrack-004", "atrack-014", "atrack-019", "atrack-033"):
        assert atrack.detect(frame_of(vid), "udp").score >= 90, vid
    # An operator-assigned unit id has no Luhn digit: weaker evidence.
    assert 0 < atrack.detect(frame_of("atrack-003"), "udp").score < 90


@pytest.mark.parametrize("head", [
    b"@@\x00\x1d\x01\x23\x45\x67\x89\xff\xff\x99\x55",  # Meiligao
    b"@NTC\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d",
    b"@GPSD,353327020115804,A,1234\r\n",
    b"@Z\r\n",                                          # Antzer heartbeat
])
def test_look_alikes_are_not_claimed(head):
    for transport in ("tcp", "udp"):
        assert not atrack.detect(head, transport).matched


def test_reply_lines_alone_are_claimed_only_weakly_on_udp():
    # Spec 0.2: no proof on their own; but a bound UDP session must still
    # claim each datagram, replies included.
    for line in (b"$OK\r\n", b"$INFO=358683066267395,AX7,Rev.0.61\r\n", frame_of("atrack-048", 1)):
        assert not atrack.detect(line, "tcp").matched
        assert atrack.detect(line, "udp").score <= 10
    assert not atrack.detect(b"$OK", "udp").matched


def test_a_bad_crc_is_not_claimed_for_binary():
    frame = bytearray(frame_of("atrack-004"))
    frame[30] ^= 0x01
    assert atrack.detect(bytes(frame), "udp").outcome is Outcome.NO


test_claims_no_other_protocols_vectors = other_vectors_refused_test(atrack, every_prefix=True)


# -- framing --------------------------------------------------------------

STREAM_IDS = ["atrack-001", "atrack-004", "atrack-033", "atrack-009", "atrack-031", "atrack-003"]


def expected(ids):
    records, sent = [], []
    for i in ids:
        r, s, _ = run([frame_of(i)])
        records += r
        sent += s
    return records, sent


def test_several_frames_in_one_read():
    stream = b"".join(frame_of(i) for i in STREAM_IDS)
    records, sent, hub = run([stream])
    assert hub.errors == []
    assert (records, sent) == expected(STREAM_IDS)
    assert len(sent) == len(STREAM_IDS)


def test_split_at_every_byte_boundary():
    ids = ["atrack-001", "atrack-004", "atrack-033"]
    stream = b"".join(frame_of(i) for i in ids)
    assert split_anywhere(run, stream) == expected(ids)


def test_byte_by_byte():
    stream = b"".join(frame_of(i) for i in STREAM_IDS)
    records, sent, hub = run([stream[i:i + 1] for i in range(len(stream))])
    assert (records, sent) == expected(STREAM_IDS)
    assert hub.errors == []


def test_crlf_after_frames_is_swallowed():
    stream = b"".join(frame_of(i) + b"\r\n" for i in STREAM_IDS)
    records, sent, hub = run([stream])
    assert (records, sent) == expected(STREAM_IDS)
    assert hub.errors == []


def test_garbage_before_a_frame_is_skipped_and_the_session_goes_on():
    first, second = frame_of("atrack-004"), frame_of("atrack-033")
    records, sent, hub = run([frame_of("atrack-001"), b"\x00\xffjunk\r\n" + first,
                                 b"\x13\x37" + second])
    assert (records, sent) == expected(["atrack-001", "atrack-004", "atrack-033"])
    assert [e.split(":")[0] for e in hub.errors] == ["skipped bytes outside any frame"] * 2


def test_bad_crc_is_dropped_without_ack_and_the_next_frame_is_taken():
    broken = bytearray(frame_of("atrack-004"))
    broken[40] ^= 0x10
    ascii_broken = frame_of("atrack-033").replace(b"30550901", b"30550902")
    records, sent, hub = run([frame_of("atrack-001"), bytes(broken), ascii_broken,
                                 frame_of("atrack-034")])
    assert (records, sent) == expected(["atrack-001", "atrack-034"])
    assert [e.split(":")[:2] for e in hub.errors] == [["bad frame", " binary report fails its CRC-16"],
                                                      ["bad frame", " ASCII report fails its CRC-16"]]


def test_udp_datagram_with_a_batch_of_frames_acks_each():
    batch = frame_of("atrack-001") + frame_of("atrack-004") + frame_of("atrack-034")
    records, sent, hub = run([batch], "udp")
    assert (records, sent) == expected(["atrack-001", "atrack-004", "atrack-034"])
    assert hub.errors == []


def test_udp_truncated_datagram_is_reported_and_not_acked():
    records, sent, hub = run([frame_of("atrack-001"), frame_of("atrack-010")[:-5]], "udp")
    assert records == [] and sent == [frame_of("atrack-001")]
    assert len(hub.errors) == 1


def test_a_lying_binary_length_waits_then_resyncs():
    frame = frame_of("atrack-004")
    lying = frame[:4] + b"\xff\xf0" + frame[6:]
    assert atrack.frame(lying, "tcp") == (None, 0)
    assert atrack.frame(lying[:3] + b"\x00\x01" + frame[6:], "tcp")[0] is None


def test_ascii_length_one_short_of_the_lf_is_tolerated():
    frame = frame_of("atrack-033")
    short = frame[:8] + b"102" + frame[11:]
    got, consumed = atrack.frame(short + frame_of("atrack-001"), "tcp")
    assert (got, consumed) == (short, len(short))


def test_reply_lines_are_framed_one_by_one():
    chunk = frame_of("atrack-048", 1)
    lines = []
    while chunk:
        got, consumed = atrack.frame(chunk, "tcp")
        lines.append(got)
        chunk = chunk[consumed:]
    assert len(lines) == 17 and all(line.endswith(b"\r\n") for line in lines)


# -- acks, and where Traccar decodes wrongly ---------------------------------

def test_ascii_ack_carries_the_unit_id_not_the_length():
    frame = frame_of("atrack-033")  # length 103, seq 22075, unit 1000019848
    assert ack(frame) == b"\xfe\x02" + (1000019848).to_bytes(8, "big") + (22075).to_bytes(2, "big")
    traccar = b"\xfe\x02" + (103).to_bytes(8, "big") + (22075).to_bytes(2, "big")
    assert ack(frame) != traccar


def test_binary_crc_byte_0x2c_is_not_taken_for_ascii():
    # Traccar's issue #5024: a CRC high byte of ',' made its framer read ASCII.
    base = frame_of("atrack-004")
    frame = next(f for f in (with_seq(base, s) for s in range(65536)) if f[2] == 0x2C)
    records, sent, hub = run([frame_of("atrack-001"), frame + frame_of("atrack-034")])
    assert hub.errors == []
    assert len(records) == 2 and sent[1] == frame_of("atrack-001")[:10] + frame[6:8]


def test_binary_prefix_without_at_sign():
    # Traccar's framer only knows binary prefixes starting with '@'; the CRC
    # does not cover the prefix, so a real frame takes any prefix.
    frame = b"\x02\x03" + frame_of("atrack-004")[2:]
    records, sent, hub = run([frame])
    assert hub.errors == [] and len(records) == 1 and sent == [ack(frame_of("atrack-004"))]


def test_validity_follows_the_bytes():
    # Traccar marks every record valid.
    no_fix_now = decode(frame_of("atrack-004")).records[0]
    assert no_fix_now.valid is False and no_fix_now.latitude is not None
    never_fixed = decode(frame_of("atrack-006")).records[0]
    assert never_fixed.valid is False and never_fixed.latitude is None
    assert never_fixed.time.isoformat() == "1970-01-01T00:03:21+00:00"  # the RTC time
    assert decode(frame_of("atrack-008")).records[0].valid is True


def test_mcc_mnc_split_after_three_digits():
    # Traccar's binary path reads 310260 as MCC 102, MNC 60.
    attrs = decode(frame_of("atrack-013")).records[0].attributes
    assert (attrs["mcc"], attrs["mnc"]) == (310, 260)


def test_coolant_temperature_is_signed():
    # Traccar reads %ET unsigned (65496 for -40 C).
    attrs = decode(frame_of("atrack-015"), {"atrack.format": FORM_015}).records[0].attributes
    assert attrs["coolant_temp_c"] == -40


# -- custom info --------------------------------------------------------------

def test_in_band_format_decodes_every_record():
    records = decode(frame_of("atrack-010")).records
    assert len(records) == 13
    assert all(r.attributes["power_v"] == 12.7 and "atrack.custom_unknown" not in r.attributes
               for r in records)


def test_cell_id_size_follows_the_frame():
    # %CE is U16 on 2013 AX5 firmware (015) and U32 on 2018 firmware (013).
    old = decode(frame_of("atrack-015"), {"atrack.format": FORM_015}).records[0]
    new = decode(frame_of("atrack-013")).records[0]
    assert old.altitude_m == 158 and old.attributes["satellites"] == 7
    assert new.altitude_m == 253 and new.attributes["vin"] == "2T1KR32E28C706185"


def test_cell_id_size_setting_settles_what_the_exact_fit_cannot():
    # With a string after %CE, a U16 cell id read as U32 shifts the fields up
    # to the string's NUL and still ends at the frame's end: 015 (old
    # firmware, U16) with a VIN in %VN fits both ways (notes: make the size
    # configurable).
    frame = frame_of("atrack-015")
    body = frame[16:]
    vin_at = body.index(b"\x00\x9e\x00\x00\x02\x00") + 6  # after %AT %RP %GS %DT
    with_vin = binary(b"@P", 0x1A, 352964050784041,
                      body[:vin_at] + b"WDB9634031L123456" + body[vin_at:])
    settings = {"atrack.format": FORM_015}
    assert decode(with_vin, settings).records[0].altitude_m != 158  # U32 fits, wrongly
    record = decode(with_vin, dict(settings, **{"atrack.cell_id_size": "2"})).records[0]
    assert record.altitude_m == 158 and record.attributes["satellites"] == 7
    assert record.attributes["vin"] == "WDB9634031L123456"
    assert record.attributes["coolant_temp_c"] == -40
    new = decode(frame_of("atrack-013"), {"atrack.cell_id_size": "4"}).records[0]
    assert new.altitude_m == 253 and new.attributes["mcc"] == 310


def test_unknown_custom_info_gives_the_first_record_and_still_acks():
    result = decode(frame_of("atrack-017"))
    assert len(result.records) == 1
    assert result.records[0].attributes["atrack.custom_unknown"] is True
    # Nothing is lost: the bytes after the first record's standard fields
    # (41 bytes: three times, 23 fixed, empty driver id, temperatures, empty
    # text) are kept as sent.
    assert result.records[0].attributes["atrack.undecoded_hex"] == frame_of("atrack-017")[57:].hex()
    assert result.reply == b"\xfe\x02" + frame_of("atrack-017")[8:16] + frame_of("atrack-017")[6:8]


def test_without_format_an_exact_fit_of_plain_records_is_trusted():
    result = decode(frame_of("atrack-004"))
    assert len(result.records) == 1 and "atrack.custom_unknown" not in result.records[0].attributes


def test_wrong_configured_format_falls_back_and_still_acks():
    result = decode(frame_of("atrack-017"), {"atrack.format": "%SA%MV"})
    assert len(result.records) == 1 and result.records[0].attributes["atrack.custom_unknown"]
    result = decode(frame_of("atrack-004"), {"atrack.format": "%SA%MV"})
    assert len(result.records) == 1 and "atrack.custom_unknown" not in result.records[0].attributes


def test_binary_unknown_token_keeps_what_is_certain():
    # %BC has no known binary size: the fields before it are still read.
    record = bytearray(frame_of("atrack-009")[16:16 + 70])
    form_at = record.index(b"%CI")
    payload = bytes(record[:form_at]) + b"%CI%SA%BC\x00" + b"\x09" + b"\x01\x02\x03"
    result = decode(binary(b"@P", 7, 357543057991638, payload))
    attrs = result.records[0].attributes
    assert attrs["satellites"] == 9 and attrs["atrack.custom_unknown"] is True
    assert attrs["atrack.undecoded_hex"] == "010203"


def test_crc_valid_frame_without_a_readable_record_is_acked_and_kept_raw():
    # The CRC proves the unit sent it (spec 9: impact data, "ACK and store
    # raw"); without the ack the unit would resend it and reset its modem.
    payload = bytes(range(1, 30))
    frame = binary(b"@P", 9, 352964052096642, payload)
    result = decode(frame)
    [record] = result.records
    assert record.latitude is None and record.time is None
    assert record.attributes["atrack.undecoded_hex"] == payload.hex()
    assert result.reply == b"\xfe\x02" + frame[8:16] + frame[6:8]


def test_form_reply_teaches_the_format_for_the_session_and_the_device():
    form = b'$FORM=1,@P,0,"' + FORM_015.encode() + b'"\r\n'
    records, sent, hub = run([frame_of("atrack-002"), form, frame_of("atrack-015")])
    assert records[0][1]["altitude_m"] == 158
    assert hub.store_.learned["352964050784040"] == {"atrack.format": FORM_015, "atrack.time_format": "0"}
    assert sent == [frame_of("atrack-002"), ack(frame_of("atrack-015"))]


def test_ascii_custom_fields_with_commas_and_sub_terminators():
    attrs = decode(frame_of("atrack-030")).records[0].attributes
    assert attrs["atrack.google_link"] == "http://maps.google.com/maps?q=44.271225,-88.429184 "
    assert len(attrs["atrack.g_samples"]) == 120 and attrs["atrack.peak_g"] == "0048FF1003E8"
    assert attrs["rpm"] == 980 and attrs["satellites"] == 12


def test_ascii_text_with_commas_keeps_the_fields_after_it():
    record = decode(frame_of("atrack-032")).records[0]
    assert record.attributes["atrack.text"] == "12160,42,624,002,20009,20014,"
    assert (record.course, record.event, record.attributes["hdop"]) == (61, "2", 2.0)
    assert "temp1_c" not in record.attributes  # 2000: no sensor


def test_ascii_without_format_keeps_the_custom_values_raw():
    attrs = decode(frame_of("atrack-019")).records[0].attributes
    assert attrs["atrack.custom_unknown"] is True
    assert attrs["atrack.custom"].startswith("1575,0,0,0,124")


def test_readable_time_binary_with_never_fixed_gps():
    # Readable mode writes 7 zero bytes for a GPS time never fixed (spec 0.6).
    base = frame_of("atrack-004")[16:]
    rtc = struct.pack(">HBBBBB", 2020, 4, 1, 7, 59, 31)
    payload = b"\x00" * 7 + rtc + rtc + base[12:]
    record = decode(binary(b"\x02\x03", 4, 358887095935894, payload)).records[0]
    assert record.latitude is None and record.valid is False
    assert record.time.isoformat() == "2020-04-01T07:59:31+00:00"
    assert record.speed_kmh == 11 and record.attributes["odometer_m"] == 416400


def readable(seconds: int) -> bytes:
    t = datetime.fromtimestamp(seconds, timezone.utc)
    return struct.pack(">HBBBBB", t.year, t.month, t.day, t.hour, t.minute, t.second)


def test_readable_time_binary_decodes_like_unix_time():
    # Spec 5.2: the same record with 7-byte times (AT$FORM time format 1),
    # under a prefix that is not '@' (atrack-007 uses 0x0203).
    frame = frame_of("atrack-009")  # two records with in-band %CI
    unix = decode(frame).records
    body, at = b"", 16
    for _ in unix:
        times = struct.unpack_from(">III", frame, at)
        end = frame.index(b"%CI", at)
        # %CI%SA%MV%BV%GQ%AT: the form, then 1 + 2 + 2 + 1 + 4 bytes.
        end = frame.index(b"\x00", end) + 1 + 10
        body += b"".join(readable(t) for t in times) + frame[at + 12:end]
        at = end
    assert at == len(frame)
    converted = decode(binary(b"\x02\x03", 5, 357543057991638, body)).records
    assert [r.to_json() for r in converted] == [r.to_json() for r in unix]


def test_never_fixed_readable_time_with_zero_rtc_is_found_by_the_exact_fit():
    # GPS and RTC both zero leave only the send time: readable it is, since
    # only 7-byte times make the records end at the frame's end.
    base = frame_of("atrack-004")[16:]
    payload = b"\x00" * 14 + readable(1381944669) + base[12:]
    frame = binary(b"@P", 4, 352964052096642, payload)
    for settings in ({}, {"atrack.time_format": "1"}):
        [record] = decode(frame, settings).records
        assert "atrack.custom_unknown" not in record.attributes
        assert record.latitude is None and record.time is None
        assert record.speed_kmh == 11 and record.attributes["odometer_m"] == 416400


def test_a_stale_time_format_setting_does_not_cost_the_records():
    # A non-zero GPS time says which format the unit uses now.
    frame = frame_of("atrack-004")
    assert [r.to_json() for r in decode(frame, {"atrack.time_format": "1"}).records] == \
        [r.to_json() for r in decode(frame).records]


def test_ascii_decimal_degree_coordinates_are_read_as_degrees():
    # notes.md, Traccar issue #411: a legacy firmware prints degrees.
    original = frame_of("atrack-033")
    after_length = original[original.index(b",", 8):].replace(
        b"30550901,30375463", b"-4.551878,36.737155")
    body = b"," + str(len(after_length)).encode() + after_length
    record = decode(b"@p," + b"%04X" % crc16_arc(body) + body).records[0]
    assert (record.longitude, record.latitude) == (-4.551878, 36.737155)
    assert record.time.isoformat() == "2015-02-04T08:29:03+00:00"


def test_alarm_map_setting_and_fixed_jamming_id():
    frame = frame_of("atrack-009")  # report ids 101 and 2
    records = decode(frame, {"atrack.alarm_map": "101:sos,102:nonsense"}).records
    assert [r.alarm for r in records] == [("sos",), ()]
    assert [r.event for r in records] == ["101", "2"]
    jam = frame_of("atrack-004")[16:]
    jam = jam[:22] + b"\x0d" + jam[23:]
    assert decode(binary(b"@P", 1, 352964052096642, jam)).records[0].alarm == ("jamming",)


def test_harsh_driving_flags_are_alarms():
    frame = frame_of("atrack-011")  # %HA%HB%HC in band, all zero
    assert all(r.alarm == () for r in decode(frame).records)
    record = bytearray(frame[16:])
    form_end = record.index(b"%AT\x00") + 4
    # Fields after the format: MV2 RP2 VN1 MF2 EL TR ET2 FL ML FC4 SM2 IN0 HA HB HC AT4
    record[form_end + 21] = 1  # HB
    result = decode(binary(b"@P", 9, 865291043347821, bytes(record)))
    assert result.records[0].alarm == ("harsh_braking",)


def test_photo_chunks_are_acked_and_assembled():
    jpeg = b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"
    halves = [jpeg[:100], jpeg[100:]]
    chunks = [binary(b"@R", 30 + i, 352964052096642,
                     struct.pack(">IBBH", 1423038543, i, 2, len(part)) + part)
              for i, part in enumerate(halves)]
    state = {}
    first = decode(chunks[0], state=state)
    last = decode(chunks[1], state=state)
    assert first.records == () and first.reply[-2:] == b"\x00\x1e"
    [picture] = last.records
    assert base64.b64decode(picture.attributes["atrack.photo_jpeg"]) == jpeg
    assert picture.latitude is None and picture.event == "photo"


# -- command replies ------------------------------------------------------------

def test_ok_and_error_replies_confirm_the_oldest_command():
    ok = decode(b"$OK\r\n").confirmations
    error = decode(b"$ERROR=101\r\n").confirmations
    assert [(c.token, c.success) for c in ok] == [(None, True)]
    assert [(c.token, c.success, c.reply) for c in error] == [
        (None, False, "$ERROR=101 (invalid command)")]


def test_tagged_reply_carries_the_encoders_token():
    encoded = atrack.encode(Command(1, "1", "custom", {"text": "AT$INFO+T42=?"}), Context())
    reply = decode(b"$INFO+T42=358683066267395,AX7,Rev.0.61\r\n").confirmations[0]
    assert encoded.token == reply.token == "T42"
    assert reply.command_type == "custom"


def test_info_names_the_unit_only_when_the_session_has_none():
    line = frame_of("atrack-047", 1)
    assert decode(line).device_id == "358683066267395"
    assert decode(line, device_id="352964052096642").device_id is None


def test_replies_reach_the_command_queue_and_get_no_ack():
    records, sent, hub = run([frame_of("atrack-048", 0), frame_of("atrack-048", 1)])
    assert records == [] and sent == [frame_of("atrack-048", 0)]
    assert {device_id for device_id, _ in hub.commands.confirmed_} == {"352964052096642"}
    assert sum(len(c) for _, c in hub.commands.confirmed_) == 17
    tagged = [c for _, cs in hub.commands.confirmed_ for c in cs if c.token]
    assert [c.token for c in tagged] == ["SOMETAG"]


def test_position_request_is_answered_by_report_id_0():
    result = decode(frame_of("atrack-019"))
    assert [c.command_type for c in result.confirmations] == ["position_request"]
    assert decode(frame_of("atrack-004")).confirmations == ()


# -- commands ---------------------------------------------------------------

# From the ATrack Protocol Document rev 1.3.4 and Traccar's encoder.
@pytest.mark.parametrize("kind, params, data", [
    ("engine_stop", {}, bytes.fromhex("4154244f5554433d312c312c302c302c300d0a")),
    ("engine_resume", {}, bytes.fromhex("4154244f5554433d312c302c302c302c300d0a")),
    ("position_request", {}, bytes.fromhex("41542447504f533d300d0a")),
    ("reboot", {}, bytes.fromhex("415424524553543d312c300d0a")),
    ("set_interval", {"seconds": "60"}, bytes.fromhex("415424545241433d312c36300d0a")),
    ("custom", {"text": "AT$INFO=?"}, bytes.fromhex("415424494e464f3d3f0d0a")),
    ("custom", {"text": "AT$FORM=?\r\n"}, bytes.fromhex("415424464f524d3d3f0d0a")),
    ("custom", {"text": "AT$UNID=?"}, bytes.fromhex("415424554e49443d3f0d0a")),
    ("custom", {"hex": "415424554e49443d3f0d0a"}, b"AT$UNID=?\r\n"),
])
def test_encoder_bytes(kind, params, data):
    encoded = atrack.encode(Command(1, "352964052096642", kind, params), Context())
    assert encoded.data == data
    assert encoded.token is None and encoded.expects_reply


def test_relay_output_polarity_and_password_settings():
    settings = {"atrack.relay_output": "2", "atrack.relay_active": "0", "atrack.password": "1234"}
    context = Context(lookup=lambda _: settings)
    stop = atrack.encode(Command(1, "1", "engine_stop", {}), context)
    resume = atrack.encode(Command(2, "1", "engine_resume", {}), context)
    assert (stop.data, resume.data) == (b"AT$OUTC=1234,2,0,0,0,0\r\n", b"AT$OUTC=1234,2,1,0,0,0\r\n")


@pytest.mark.parametrize("kind, params, settings", [
    ("set_interval", {"seconds": "0"}, {}),
    ("set_interval", {"seconds": "70000"}, {}),
    ("set_interval", {}, {}),
    ("custom", {}, {}),
    ("custom", {"text": "AT$A=1\r\nAT$B=2"}, {}),
    ("custom", {"text": "AT$TEXT=caf\u00e9"}, {}),
    ("custom", {"hex": "zz"}, {}),
    ("engine_stop", {}, {"atrack.relay_active": "on"}),
    ("engine_stop", {}, {"atrack.relay_output": "x"}),
    ("fly", {}, {}),
])
def test_encode_errors(kind, params, settings):
    with pytest.raises(EncodeError):
        atrack.encode(Command(1, "1", kind, params), Context(lookup=lambda _: settings))


# -- robustness ----------------------------------------------------------------

REAL_FRAMES = [bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]]


def exercise(data: bytes, transport: str) -> None:
    """
    Frame C{data} to the end and decode every frame: only L{DecodeError} may
    come out, framing always progresses or asks for more.
    """
    frame_and_decode(atrack, data, transport, Context(transport=transport, state={}))


def mutate(frame: bytes, how: str, where: int, value: int) -> bytes:
    if not frame:
        return frame
    where %= len(frame)
    if how == "truncate":
        return frame[:where]
    if how == "flip":
        return frame[:where] + bytes([frame[where] ^ (1 << (value % 8))]) + frame[where + 1:]
    if how == "length":
        # Lie about the binary length (or the ASCII Length digits).
        if frame[2:3] == b"," and b"," in frame[8:]:
            return frame[:8] + str(value).encode() + frame[frame.index(b",", 8):]
        return frame[:4] + struct.pack(">H", value & 0xFFFF) + frame[6:]
    if how == "crc-fixed-flip":
        # A flipped byte behind a CRC that still holds: exercises the parser.
        flipped = bytearray(frame)
        if flipped[2:3] == b"," and len(flipped) > 40:
            flipped[40 + where % (len(flipped) - 40)] ^= 1 << (value % 8)
            flipped[3:7] = b"%04X" % crc16_arc(bytes(flipped[7:]))
            return bytes(flipped)
        if len(flipped) > 16 and flipped[:2] != b"\xfe\x02":
            flipped[16 + where % (len(flipped) - 16)] ^= 1 << (value % 8)
            body = bytes(flipped[4:])
            return bytes(flipped[:2]) + struct.pack(">H", crc16_arc(body)) + body
        return frame
    return frame + frame[:where]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(["tcp", "udp"]))
def test_random_bytes(data, transport):
    exercise(data, transport)
    assert atrack.detect(data, transport).outcome in (Outcome.NO, Outcome.MORE, Outcome.MATCH)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REAL_FRAMES),
       st.sampled_from(["truncate", "flip", "length", "crc-fixed-flip", "repeat"]),
       st.integers(0, 10 ** 6), st.integers(0, 70000), st.sampled_from(["tcp", "udp"]))
def test_mutated_real_frames(frame, how, where, value, transport):
    data = mutate(frame, how, where, value)
    exercise(data, transport)
    exercise(b"\xfe\x02" + data, transport)


def test_endless_garbage_stays_bounded():
    chunks = [frame_of("atrack-001")] + [b"\x41" * 70000] * 5 + [frame_of("atrack-004")]
    records, sent, hub = run(chunks)
    assert len(records) == 1 and sent == [frame_of("atrack-001"), ack(frame_of("atrack-004"))]
    # A '$' without its line end is dropped once longer than any reply line.
    got, consumed = atrack.frame(b"$" + b"A" * 5000, "tcp")
    assert got is None and consumed > 0


def test_decoding_is_fast():
    frames = [frame_of(i) for i in ("atrack-004", "atrack-010", "atrack-013", "atrack-030",
                                    "atrack-031")]
    per_frame = mean_decode_seconds(atrack, frames, Context(state={}), 50)
    # Generous against slow CI machines; typical is well under 1 ms.
    assert per_frame < 0.005
