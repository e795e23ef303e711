"""
H02 (SinoTrack ST-907L and family): vectors, framing through the session,
detection, commands and their confirmations, robustness.
"""

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from decoders.h02 import BINARY_LENGTHS, MAX_TEXT, h02
from gateway.context import Context
from gateway.interfaces import DecodeError, EncodeError, Outcome
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (each_vector, feed, frame_and_decode, frame_of,
                           memory_hub, tcp_connection, vector_head, vector_replay_test)

VECTORS = vectorcheck.load("h02")


# Real frames from the vector file (sources there).
TEXT_V1 = frame_of("h02-094")          # *HQ,4300250680,V1,...
BINARY_32 = frame_of("h02-095")        # the same device 10 s later, 32-byte $ frame
NBR = frame_of("h02-090")              # *HQ,4206119130,NBR,...
BINARY_45 = frame_of("h02-091")        # the same device, 45-byte $ frame
X_FRAME = frame_of("h02-093")
HTBT = frame_of("h02-008")
SMS = frame_of("h02-086")
V4_ERROR = frame_of("h02-066")

NOON = datetime(2024, 5, 6, 12, 34, 56, tzinfo=timezone.utc).timestamp()


def context(settings=None, transport="tcp"):
    clock = Clock()
    clock.advance(NOON)
    values = dict(settings or {})
    return Context(transport=transport, lookup=lambda device_id: values, seconds=clock.seconds)


def hub_at_noon():
    """
    An h02-only hub in memory whose clock reads L{NOON} (the time in R12 acks).
    """
    hub = memory_hub(h02)
    hub.clock.advance(NOON)
    return hub


def run(chunks, transport="tcp"):
    """
    Feed C{chunks} to one session of a L{hub_at_noon}: C{(records, written,
    errors)}, the records as L{Position}s.
    """
    hub = hub_at_noon()
    written = feed(hub, chunks, transport)
    return [r for _, _, r in hub.store_.records], written, hub.errors


def summary(records):
    return [(r.time, r.latitude, r.longitude, r.valid, r.alarm, r.event) for r in records]


# -- vectors -------------------------------------------------------------------

test_vector = vector_replay_test(VECTORS, without_errors=True)


# -- types the decoder does not read (spec section 0.11) ------------------------

#: A real session opening: ICCID report of a SinoTrack unit, a type no list has.
ICCID = b"*HQ,4206119130,ICCID,89860012345678901234#"


@pytest.mark.parametrize("opening", [ICCID, b"*hq,862061045678901,IMSI,460001234567890#",
                                     b"*HQ,4206119130,NEWTYPE7#"])
def test_any_type_token_after_hq_opens_a_session(opening):
    assert h02.detect(opening, "tcp").score == 90
    assert h02.detect(opening, "udp").score == 90
    records, written, errors = run([opening, TEXT_V1])
    assert len(records) == 1 and errors == []
    # No reply for the unknown type: the only bytes written are none at all
    # (a V1 gets no reply unless time sync is on).
    assert written == []


def test_unknown_type_binds_the_device_without_record_or_reply():
    result = h02.decode(ICCID, context())
    assert (result.device_id, result.records, result.reply) == ("4206119130", (), b"")


def test_hq_opening_waits_for_its_type_token_on_tcp():
    for cut in range(1, ICCID.index(b",", 16) + 1):
        assert h02.detect(ICCID[:cut], "tcp").outcome is not Outcome.NO, ICCID[:cut]


def test_other_maker_codes_still_need_a_known_type():
    # EasyTrack and similar share the *XX, shape: only HQ is open-ended.
    assert not h02.detect(b"*ET,135790246811220,MQ#", "udp").matched
    assert not h02.detect(b"*XX,4206119130,ICCID,8986#", "udp").matched


def test_vector_file_is_the_shared_one():
    """
    The project's copy keeps every line with its source.
    """
    assert len(VECTORS) >= 74
    assert all(v.get("source") for v in VECTORS)


# -- framing -----------------------------------------------------------------

STREAM_FRAMES = [TEXT_V1, BINARY_32, TEXT_V1 + b"\r\n", BINARY_32, HTBT + b"\r\n", SMS, BINARY_32]
STREAM = b"".join(STREAM_FRAMES)


def test_one_read_many_frames():
    records, written, errors = run([STREAM])
    assert errors == []
    assert len(records) == 5
    assert [r.time.second for r in records] == [18, 28, 18, 28, 28]
    # R12 for each $ frame, the HTBT echo in frame order.
    assert written == [b"*HQ,4300250680,R12,123456#"] * 2 + [b"*HQ,135790246811220,HTBT#"] + [
        b"*HQ,4300250680,R12,123456#"]


def test_split_at_every_byte_boundary():
    whole, replies, _ = run([STREAM])
    for cut in range(1, len(STREAM)):
        records, written, errors = run([STREAM[:cut], STREAM[cut:]])
        assert errors == [], cut
        assert summary(records) == summary(whole), cut
        assert written == replies, cut


def test_byte_by_byte():
    whole, replies, _ = run([STREAM])
    records, written, errors = run([bytes([b]) for b in STREAM])
    assert errors == []
    assert summary(records) == summary(whole)
    assert written == replies


def test_45_byte_frame_split_anywhere_but_at_a_shorter_frame_length():
    stream = NBR + BINARY_45 + NBR
    whole, _, _ = run([stream])
    assert len(whole) == 3 and whole[1].latitude == pytest.approx(55.67045)
    start = len(NBR)
    for cut in range(1, len(stream)):
        if cut - start in BINARY_LENGTHS:
            # The buffer then ends exactly where a shorter frame would: with no
            # length field the framer takes it (devices write a frame in one
            # segment, so this split does not happen in practice).
            continue
        records, _, errors = run([stream[:cut], stream[cut:]])
        assert errors == [], cut
        assert summary(records) == summary(whole), cut


def test_garbage_before_and_between_frames():
    # Issue #428: a device appended " ??" after "#".
    stream = TEXT_V1 + b"\x00\xffGET /" + TEXT_V1 + b" ??" + BINARY_32 + b"zz" + TEXT_V1
    records, written, errors = run([stream])
    assert len(records) == 4
    assert all(r.latitude == pytest.approx(47.029205) for r in records)
    # "zz" after the binary frame stays with it (binary frames have no
    # length); the rest is skipped and logged.
    assert len(errors) == 2 and all("skipped" in e for e in errors)


def test_cr_lf_after_frames_is_not_garbage():
    records, _, errors = run([TEXT_V1 + b"\r\n" + HTBT + b"\r\n" + TEXT_V1 + b"\n"])
    assert errors == [] and len(records) == 2


def test_cr_lf_around_binary_frames():
    records, written, errors = run([b"\r\n" + BINARY_32 + b"\r\n", BINARY_32 + b"\r\n"])
    assert errors == [] and len(records) == 2 and len(written) == 2


def test_line_feeds_inside_an_sms_frame_do_not_split_it():
    hub, protocol, _ = tcp_connection(h02)
    protocol.dataReceived(SMS[:40])
    protocol.dataReceived(SMS[40:])
    assert hub.errors == []
    assert protocol.session.device_id == "5226073533"


def test_text_frame_cut_off_by_a_new_frame():
    records, _, errors = run([TEXT_V1[:30] + TEXT_V1])
    assert len(records) == 1 and records[0].latitude == pytest.approx(47.029205)
    assert len(errors) == 1


def test_binary_frame_glued_to_a_text_frame():
    records, written, errors = run([BINARY_32 + TEXT_V1 + BINARY_32 + NBR])
    assert errors == []
    assert [r.event for r in records] == [None, "V1", None, "NBR"]
    assert len(written) == 2


def test_x_frame_between_binary_frames():
    records, written, errors = run([BINARY_45 + X_FRAME + BINARY_45])
    assert errors == []
    assert len(records) == 3
    assert len(written) == 2  # no R12 for the X frame


def test_udp_datagram_with_a_batch_of_frames():
    records, written, errors = run([TEXT_V1 + BINARY_32 + HTBT], transport="udp")
    assert errors == []
    assert len(records) == 2
    assert written == [b"*HQ,4300250680,R12,123456#", b"*HQ,135790246811220,HTBT#"]


def test_udp_truncated_remainder_is_reported():
    records, _, errors = run([TEXT_V1 + BINARY_32[:20]], transport="udp")
    assert len(records) == 1
    assert len(errors) == 1 and "truncated" in errors[0]


def test_text_without_terminator_is_dropped_after_the_cap():
    frame, consumed = h02.frame(b"*HQ,1," + b"A" * MAX_TEXT, "tcp")
    assert frame is None and consumed > 0


def test_line_ends_between_frames_are_consumed_quietly():
    """
    The framer's contract for bytes allowed between frames: C{(b"", n)}.
    """
    assert h02.frame(b"\r\n" + TEXT_V1, "tcp") == (b"", 2)


def _with_trailer(frame, offset, data):
    """
    A real frame with trailer bytes from C{offset} replaced by C{data}: the
    trailer of the 45-byte form carries the cell id at bytes 42-43 (spec
    section 6), which may hold any value.
    """
    return frame[:offset] + data + frame[offset + len(data):]


@pytest.mark.parametrize("offset, data", [
    (42, b"\x58\x21"),     # cell id 0x5821: "X", the first byte of an X frame
    (44, b"$"),             # last byte "$", the first byte of the next frame
    (44, b"*"),             # last byte "*", the first byte of a text frame
])
def test_trailer_bytes_like_a_frame_start_do_not_hold_the_frame(offset, data):
    """
    A byte in the trailer that could open another frame is waited on only
    where a frame can end (a known length): elsewhere the frame and its R12
    go out at once, and the decode command does not lose it.
    """
    frame = _with_trailer(BINARY_45, offset, data)
    records, written, errors = run([frame])
    assert errors == []
    assert summary(records) == summary(run([BINARY_45])[0])
    assert written == [b"*HQ,4206119130,R12,123456#"]
    # Followed by the device's next frame, the split is the same.
    records, written, errors = run([frame + frame])
    assert errors == [] and len(records) == 2 and len(written) == 2


def test_cell_id_from_the_45_byte_trailer():
    records, _, _ = run([_with_trailer(BINARY_45, 42, b"\x58\x21")])
    assert records[0].attributes["cell_id"] == 0x5821


# -- Traccar decodes these wrongly ----------------------------------------------

def _longer(frame, extra):
    """
    A real frame with its trailer lengthened: the 47/48-byte firmwares add
    bytes after the same 29-byte core (spec section 6).
    """
    return frame + extra


def test_47_byte_frames_are_not_split_at_32_bytes():
    """
    Traccar cuts binary frames every 32 bytes unless the first read is 45
    bytes, and turns 47-byte frames into garbage (issue #3884: year 2000,
    longitude -514). Splitting on structure keeps every record whole.
    """
    f47 = _longer(BINARY_45, b"\x00\x07")
    records, written, errors = run([f47 + f47 + f47])
    assert errors == []
    assert len(records) == 3
    for r in records:
        assert r.time == datetime(2017, 1, 11, 10, 24, 3, tzinfo=timezone.utc)
        assert (r.latitude, r.longitude) == (pytest.approx(55.67045), pytest.approx(12.536117))
    assert len(written) == 3
    # What a fixed 32-byte cut would decode next is no frame at all.
    with pytest.raises(DecodeError):
        h02.decode(f47[32:] + f47[:19], context())


def test_42_byte_frame_with_an_imei():
    """
    The 42-byte variant carries a 15-digit IMEI in 8 bytes; the 5-byte
    reading fails the time check, so the IMEI reading is taken (spec 0.4).
    """
    imei = bytes.fromhex("3524830841932930")
    f42 = b"$" + imei + BINARY_45[6:29] + bytes(10)
    assert len(f42) == 42
    assert h02.detect(f42, "tcp").matched
    result = h02.decode(f42, context())
    assert result.device_id == "352483084193293"
    assert result.records[0].latitude == pytest.approx(55.67045)
    assert result.reply == b"*HQ,352483084193293,R12,123456#"

    # Traccar reads the IMEI form only when a read is exactly 42 bytes; two in
    # one read are split on the repeated "$" + IMEI.
    records, written, errors = run([f42 + f42 + TEXT_V1])
    assert errors == []
    assert [r.latitude for r in records[:2]] == [pytest.approx(55.67045)] * 2
    assert written == [b"*HQ,352483084193293,R12,123456#"] * 2


def test_r12_is_sent_for_every_binary_frame():
    """
    Traccar answers $ frames only when h02.ack is configured; ST-901L units
    then resend their history forever (PR #5597).
    """
    for vec in VECTORS:
        raw = bytes.fromhex(vec["frames_hex"][0])
        if raw[0] == 0x24:
            result = h02.decode(raw, context())
            assert result.reply == f"*HQ,{result.device_id},R12,123456#".encode()


def test_x_frame_is_decoded_without_reply():
    result = h02.decode(X_FRAME, context())
    assert result.device_id == "0000981499"
    assert result.records[0].latitude == pytest.approx(55.67045)
    assert result.reply == b""


def test_no_fix_placeholder_is_no_position():
    """
    ST-901L-4G writes 9999.9999 without a fix (Traccar's test for it was
    reverted); that is no position, not 99.99 degrees.
    """
    frame = TEXT_V1.replace(b"A,4701.7523,N,02848.1853,E", b"V,9999.9999,N,99999.9999,E")
    (record,) = h02.decode(frame, context()).records
    assert record.latitude is None and record.longitude is None and not record.valid
    assert record.time == datetime(2014, 8, 16, 16, 24, 18, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    (b"38.6508,W", -0.644180),            # ST-901L V8: all leading zeros dropped
    (b"954.9490,E", 9.915817),            # one-digit degrees
    (b"-48-2.8926,W", -48.04821),         # dashed, the dash is no sign
    (b"145037022,E", 145.061703),         # no decimal point
])
def test_longitude_encodings(text, expected):
    frame = TEXT_V1.replace(b"02848.1853,E", text)
    (record,) = h02.decode(frame, context()).records
    assert record.longitude == pytest.approx(expected, abs=2e-6)


# -- decoding ----------------------------------------------------------------

def test_status_word_alarms_and_ignition():
    # Bits 0, 2, 10 and 18 clear (negative logic).
    frame = TEXT_V1.replace(b"FFE7FBFF", b"FFFBFBFA")
    (record,) = h02.decode(frame, context()).records
    assert set(record.alarm) == {"vibration", "sos", "overspeed"}
    assert record.attributes["h02.status"] == "FFFBFBFA"
    assert record.attributes["ignition"] is True
    high = h02.decode(frame, context({"h02.ignition": "high"})).records[0]
    assert high.attributes["ignition"] is False
    assert "ignition" not in h02.decode(frame, context({"h02.ignition": "none"})).records[0].attributes


def test_optional_battery_before_the_date():
    frame = b"*HQ,355488020533263,V1,121536,A,4459.4700,N,07605.1200,W,000.00,047,4,080918,FFFFFBFF#"
    (record,) = h02.decode(frame, context()).records
    assert record.attributes["h02.battery"] == 4
    assert record.time == datetime(2018, 9, 8, 12, 15, 36, tzinfo=timezone.utc)
    assert record.course == 47


def test_vp1_fix_has_a_date_but_no_time():
    frame = b"*hq,356327080425330,VP1,A,2702.7245,N,08200.8916,E,0.13,358.20,260716#"
    result = h02.decode(frame, context())
    (record,) = result.records
    assert record.time is None
    assert record.attributes["date"] == "2016-07-26"
    assert record.latitude == pytest.approx(27.045408)


def test_empty_time_gives_no_time():
    frame = TEXT_V1.replace(b"162418", b"").replace(b"160814", b"")
    (record,) = h02.decode(frame, context()).records
    assert record.time is None and record.latitude == pytest.approx(47.029205)


def test_binary_battery_byte_is_binary():
    frame = bytearray(BINARY_32)
    frame[16] = 0x60
    (record,) = h02.decode(bytes(frame), context()).records
    assert record.attributes["battery_level_pct"] == 96


@pytest.mark.parametrize("byte, level", [
    (0x03, 20), (0x06, 100), (0x07, 7), (0x64, 100), (0xF3, 3), (0x00, None), (0xFF, None),
])
def test_binary_battery_levels(byte, level):
    """
    Spec section 6: 1-3 are 0/10/20 %, 4-6 are 60/80/100 %, 7-100 are percent,
    F1-F6 are 1-6 %; anything else is kept raw only.
    """
    frame = bytearray(BINARY_32)
    frame[16] = byte
    (record,) = h02.decode(bytes(frame), context()).records
    assert record.attributes["h02.battery"] == byte
    assert record.attributes.get("battery_level_pct") == level


def test_ignition_of_a_sinotrack_unit_on_the_move():
    """
    Bit 10 clear while an ST-90x drives at 35 km/h (eusonlito's log): on
    SinoTrack the bit is negative logic like the others, so the default
    reads it clear = on, where Traccar's current decoder says off.
    """
    (record,) = h02.decode(frame_of("h02-115"), context()).records
    assert record.speed_kmh == pytest.approx(35.077, abs=0.01)
    assert record.attributes["h02.status"] == "FFFFBBFF"
    assert record.attributes["ignition"] is True


def test_empty_device_id():
    """
    Spec 0.2: C{*HQ,,V1,...} is decoded with no device id; a session bound
    to a device attributes the record to it.
    """
    frame = frame_of("h02-015")
    result = h02.decode(frame, context())
    assert result.device_id is None
    assert result.records[0].time == datetime(2018, 4, 29, 17, 32, 12, tzinfo=timezone.utc)
    hub = hub_at_noon()
    feed(hub, [TEXT_V1 + frame])
    assert [d for d, _, _ in hub.store_.records] == ["4300250680", "4300250680"]


def test_time_sync_reply_only_when_configured():
    assert h02.decode(TEXT_V1, context()).reply == b""
    reply = h02.decode(TEXT_V1, context({"h02.time_sync": "1"})).reply
    assert reply == b"*HQ,4300250680,V4,V1,20240506123456#"


def test_heartbeat_echo_keeps_the_device_prefix():
    result = h02.decode(b"*TH,2020916012,HTBT,100#", context())
    assert result.reply == b"*TH,2020916012,HTBT#"
    assert result.records == ()


# -- commands and confirmations -------------------------------------------------

# Bytes from Traccar's H02ProtocolEncoderTest.
COMMANDS = [
    ("engine_stop", {"time_hhmmss": "010203"}, {},
     "2a48512c3132333435363738393031323334352c5332302c3031303230332c312c3123"),
    ("engine_resume", {"time_hhmmss": "010203"}, {},
     "2a48512c3132333435363738393031323334352c5332302c3031303230332c312c3023"),
    ("set_interval", {"time_hhmmss": "010203", "seconds": "10"}, {},
     "2a48512c3132333435363738393031323334352c5337312c3031303230332c32322c313023"),
    ("set_interval", {"time_hhmmss": "010203", "seconds": "10"}, {"h02.interval_command": "D1"},
     "2a48512c3132333435363738393031323334352c44312c3031303230332c313023"),
    ("custom", {"text": "CXZT"}, {}, "43585a54"),
    ("custom", {"hex": "43585a54"}, {}, "43585a54"),
]


@pytest.mark.parametrize("kind, params, device_settings, hex_bytes", COMMANDS)
def test_encode_exact_bytes(kind, params, device_settings, hex_bytes):
    encoded = h02.encode(Command(1, "123456789012345", kind, params), context(device_settings))
    assert encoded.data.hex() == hex_bytes
    if kind != "custom":
        assert encoded.token == "010203" and encoded.expects_reply


def test_encode_takes_the_token_from_the_clock():
    encoded = h02.encode(Command(1, "9001000002", "engine_stop", {}), context())
    assert encoded.data == b"*HQ,9001000002,S20,123456,1,1#"
    assert encoded.token == "123456"


@pytest.mark.parametrize("kind, params", [
    ("position_request", {}), ("reboot", {}), ("set_interval", {"seconds": "x"}),
    ("custom", {}), ("custom", {"hex": "zz"}), ("engine_stop", {"time_hhmmss": "1:2:3"}),
])
def test_encode_refuses(kind, params):
    with pytest.raises(EncodeError):
        h02.encode(Command(1, "9001000002", kind, params), context())


def test_encode_refuses_a_device_id_that_would_break_the_frame():
    with pytest.raises(EncodeError):
        h02.encode(Command(1, "90,01#", "engine_stop", {}), context())


def test_confirmation_matches_the_command_token():
    encoded = h02.encode(Command(1, "2020916012", "engine_stop", {}), context())
    reply = (b"*HQ,2020916012,V4,S20,DONE," + encoded.token.encode()
             + b",050316,A,2212.8745,N,11346.6574,E,14.28,028,220902,F7FFFBFF#")
    result = h02.decode(reply, context())
    (confirmation,) = result.confirmations
    assert confirmation.token == encoded.token
    assert confirmation.success
    assert confirmation.reply == "S20,DONE," + encoded.token
    assert result.records[0].attributes["h02.status"] == "F7FFFBFF"


def test_confirmation_echoing_parameters():
    """
    Vendor example (spec 5.2): the echoed parameters sit between the command
    code and the echoed time token.
    """
    frame = (b"*TH,2020916012,V4,S14,100,10,1,3,130305,050316,A,2212.8745,N,11346.6574,E,"
             b"14.28,028,220902,FFFFFBFF#")
    result = h02.decode(frame, context())
    (confirmation,) = result.confirmations
    assert confirmation.token == "130305" and confirmation.success
    assert confirmation.reply == "S14,100,10,1,3,130305"
    (record,) = result.records
    assert record.time == datetime(2002, 9, 22, 5, 3, 16, tzinfo=timezone.utc)
    assert record.latitude == pytest.approx(22.214575)


def test_confirmation_survives_an_unreadable_position():
    """
    An engine stop confirmed with a position this decoder cannot read (here
    a corrupted latitude, minutes 75) still confirms the command (spec 5.2:
    the reply words and the echoed token come before the position).
    """
    frame = (b"*HQ,9001000002,V4,S20,DONE,010203,050316,A,2275.8745,N,11346.6574,E,"
             b"14.28,028,220902,F7FFFBFF#")
    result = h02.decode(frame, context())
    assert result.records == ()
    (confirmation,) = result.confirmations
    assert confirmation.token == "010203" and confirmation.success
    assert confirmation.reply.startswith("S20,DONE,010203,050316,A,")


def test_confirmation_with_error():
    (confirmation,) = h02.decode(V4_ERROR, context()).confirmations
    assert confirmation.token == "130305" and not confirmation.success


def test_custom_h02_command_token():
    encoded = h02.encode(Command(1, "1", "custom", {"text": "*HQ,1,S71,101010,22,30#"}), context())
    assert encoded.token == "101010"


def test_sms_reply_is_a_confirmation_without_position():
    result = h02.decode(SMS, context())
    assert result.records == ()
    (confirmation,) = result.confirmations
    assert confirmation.token is None and confirmation.command_type == "custom"
    assert "VOLT:12.9V\n" in confirmation.reply


# -- detection ----------------------------------------------------------------

@each_vector(vectorcheck.load())
def test_claims_its_own_vectors_and_no_other(vec):
    transport, head = vector_head(vec)
    assert h02.detect(head, transport).matched == (vec["protocol"] == "h02")




def test_prefixes_ask_for_more():
    for vec in VECTORS:
        head = bytes.fromhex(vec["frames_hex"][0])
        for n in range(1, min(len(head), 33)):
            verdict = h02.detect(head[:n], "tcp")
            assert verdict.matched or verdict == verdict.more(), (vec["id"], n)


@pytest.mark.parametrize("head", [
    b"*HQ2000000000,...#",                       # Upro: no comma after the maker
    b"*ET,354660046140927,HB,A,110929#",          # EasyTrack
    b"*GS06,356449068350122,013519070819,,#",     # GoSafe
    b"*SCOR,OM,123456789123456,D0#",              # Xrb28
    b"$GPRMC,123519,A,4807.038,N,01131.000,E*6A",  # NMEA
    b"$$\x00\x11\x12\x34\x56\xff\xff\xff\xff\x99\x55\x12\x34\x56\x78\r\n",  # Meiligao
    b"$$A25,864507032323403,AAA,35,#",            # Meitrack
    b"X\x002\x01\x05!\x96\x88\x1a\xe0\xce\x1f\x00\x00\x00\x00\x00\x03S\xd3\xd4\x9e\x00\x10 \x00\x00\t=#S",
])
def test_look_alikes_are_not_claimed(head):
    assert not h02.detect(head, "tcp").matched
    assert not h02.detect(head, "udp").matched


# -- robustness ------------------------------------------------------------------

REAL = [bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]]


@st.composite
def mutated(draw):
    frame = draw(st.sampled_from(REAL))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "splice", "random"]))
    if how == "truncate":
        return frame[:draw(st.integers(0, len(frame)))]
    if how == "flip":
        data = bytearray(frame)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "insert":
        # Lengths lied about: fields and separators added or moved.
        i = draw(st.integers(0, len(frame)))
        piece = draw(st.sampled_from([b",", b"#", b"$", b"*HQ,", b"-", b"."] + REAL[:3]))
        return frame[:i] + piece + frame[i:]
    if how == "splice":
        other = draw(st.sampled_from(REAL))
        return frame[:draw(st.integers(0, len(frame)))] + other[draw(st.integers(0, len(other))):]
    return draw(st.binary(max_size=200))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=4), st.sampled_from(["tcp", "udp"]))
def test_mutated_frames_raise_only_decode_error(pieces, transport):
    data = b"".join(pieces)
    ctx = context(transport=transport)
    h02.detect(data, transport)
    frames = frame_and_decode(h02, data, transport, ctx, MAX_TEXT)
    assert all(len(frame) <= max(MAX_TEXT, BINARY_LENGTHS[-1]) for frame in frames)
    for piece in pieces:
        try:
            h02.decode(piece, ctx)
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_through_a_session(data):
    hub = hub_at_noon()
    feed(hub, [b"*HQ,1,V1,", data])         # the first chunk binds the session to h02 at once
    assert not any("failed" in e for e in hub.errors)
