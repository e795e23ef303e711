"""
GT06 (Concox / Jimi IoT and clones): vectors, length-and-CRC framing through
the session, detection against the other C{78 78} protocols, acks and the time
reply, commands and their confirmations, where Traccar is wrong, robustness,
and one end-to-end run through a real C{twistd}.
"""

import json
import os
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from decoders.gt06 import (MAX_COMMAND_TEXT, MAX_FRAME, ack, command_frame, frame_bytes, gt06,
                           login_zone_minutes)
from gateway.checksums import crc16_x25
from gateway.context import Context
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (bit_flipped, feed, frame_and_decode, frame_of,
                           memory_hub, other_vectors_refused_test, run_session,
                           split_anywhere, tcp_connection, truncated, vector_replay_test)

VECTORS = vectorcheck.load("gt06")
BY_ID = {v["id"]: v for v in VECTORS}
HERE = os.path.dirname(os.path.abspath(__file__))

LOGIN = frame_of("gt06-001")            # 78 78 0D 01, IMEI 123456789012345, serial 1
LOGIN_ZONE_WEST = frame_of("gt06-007")  # 22-byte login, zone word 19 0A (GMT-4)
LOCATION_12 = frame_of("gt06-018")      # 0x12, 2017-08-08 17:20:36
LOCATION_22 = frame_of("gt06-026")      # 0x22 with the ACC/upload/re-upload trailer
ALARM_SOS = frame_of("gt06-021")        # 0x16 SOS, vendor document
HEARTBEAT_23 = frame_of("gt06-025")     # 0x23, vendor document
STATUS_13 = frame_of("gt06-019")
INFO_94 = frame_of("gt06-034")          # long 0x94, no reply
REPLY_21 = frame_of("gt06-046")         # long 0x21, UTF-16 text
REPLY_15_PADDED = frame_of("gt06-042")  # command length 0, NUL padded
REPLY_15_HFYD = frame_of("gt06-040")    # "HFYD=Success!", flag 0001A963
CRC_0D = frame_of("gt06-118", 1)        # a frame whose CRC ends in 0D right before 0D 0A
PAYLOAD_0D0A = frame_of("gt06-104")     # a 0x9B payload holding 0D 0A
MODULAR = frame_of("gt06-101")          # long 0x70, GPS + event modules
TIME_REQUEST = frame_of("gt06-033")     # 78 78 05 8A 00 06 ...

NOON = datetime(2026, 12, 5, 2, 3, 4, tzinfo=timezone.utc).timestamp()


def context(**device_settings):
    clock = Clock()
    clock.advance(NOON)
    return Context(lookup=lambda device_id: device_settings, seconds=clock.seconds)


def run(chunks, transport="tcp", settings=None):
    return run_session(gt06, chunks, transport, settings)


def serial(frame):
    return int.from_bytes(frame[-6:-4], "big")


def long_frame(kind, content, serial):
    body = (len(content) + 5).to_bytes(2, "big") + bytes([kind]) + content + serial.to_bytes(2, "big")
    return b"\x79\x79" + body + crc16_x25(body).to_bytes(2, "big") + b"\r\n"


def commands_reference():
    with open(os.path.join(HERE, "vectors", "commands", "gt06.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -- vectors -------------------------------------------------------------------

test_vector = vector_replay_test(VECTORS, without_errors=True)
test_claims_no_other_vector = other_vectors_refused_test(gt06, every_prefix=True)


def test_vector_file_is_the_shared_one():
    assert len(VECTORS) >= 86
    assert all(v.get("source") for v in VECTORS)


# -- detection -----------------------------------------------------------------


def test_every_prefix_of_a_login_waits_then_matches():
    for n in range(1, len(LOGIN)):
        assert gt06.detect(LOGIN[:n], "tcp").outcome.value == "more", n
        assert not gt06.detect(LOGIN[:n], "udp").matched, n
    assert gt06.detect(LOGIN, "tcp").score == 95
    assert gt06.detect(LOCATION_12, "tcp").score == 90


@pytest.mark.parametrize("head", [
    # Topin / 365GPS watch login: 15 bytes, no serial, no CRC (spec §3.3).
    bytes.fromhex("78780d01086471700328358800" "0d0a"),
    # Topin status whose length and terminator happen to fit: the CRC does not.
    bytes.fromhex("78780a13440604000201" "0000" "0d0a"),
    # Anytrek: little-endian length, 00 in the type's place.
    bytes.fromhex("7878270000383632323039303030303030303031") + bytes(30),
    # The vendor document's heartbeat with a length byte that does not fit.
    bytes.fromhex("787808134b040300010011061f0d0a"),
    # Text starting "xx" / "yy".
    b"xx hello world\r\n", b"yy" + b"\x00\x10" + bytes(20),
])
def test_other_78_78_protocols_are_not_claimed(head):
    assert not gt06.detect(head, "udp").matched
    assert gt06.detect(head, "tcp").outcome.value != "match"


def test_a_bad_crc_is_not_claimed():
    bad = LOGIN[:-4] + bytes([LOGIN[-4] ^ 1]) + LOGIN[-3:]
    assert not gt06.detect(bad, "tcp").matched


def test_a_long_first_frame_beyond_the_detection_cap_is_not_claimed():
    big = frame_bytes(0x94, b"\x04" + b"A" * 3000, 1)
    assert big[:2] == b"\x79\x79"
    assert not gt06.detect(big, "tcp").matched
    assert gt06.detect(frame_bytes(0x94, b"\x04" + b"A" * 1000, 1), "tcp").matched


# -- framing -------------------------------------------------------------------

STREAM = b"".join([LOGIN, LOCATION_12, STATUS_13, CRC_0D, PAYLOAD_0D0A, ALARM_SOS,
                   MODULAR, HEARTBEAT_23])


def test_one_read_many_frames_split_anywhere():
    whole, replies = split_anywhere(run, STREAM)
    assert [r[1]["time"] for r in whole] == [
        "2017-08-08T17:20:36Z", "2015-07-21T21:45:54Z", "2011-11-15T14:36:29Z",
        "2019-09-15T13:18:16Z"]
    assert all(device_id == "123456789012345" for device_id, _ in whole)
    # No reply to the long 0x9B; the 0x70 ack is a short frame.
    assert [r[3] for r in replies] == [0x01, 0x12, 0x13, 0x12, 0x16, 0x70, 0x23]


def test_byte_by_byte():
    whole, replies, _ = run([STREAM])
    got, sent, hub = run([bytes([b]) for b in STREAM])
    assert hub.errors == []
    assert got == whole and sent == replies


def test_0d_0a_inside_a_frame_is_not_a_boundary():
    assert CRC_0D[-4:-2] == b"\x2e\x0d" and b"\r\n" in PAYLOAD_0D0A[:-2]
    frames = frame_and_decode(gt06, CRC_0D + PAYLOAD_0D0A, "tcp", context())
    assert frames == [CRC_0D, PAYLOAD_0D0A]


def test_garbage_before_between_and_after_frames_is_skipped():
    stream = LOGIN + b"\x00\x78junk\x78" + b"\x78\x79\x0d\x0a" + LOCATION_12 + b"xx"
    got, sent, hub = run([stream])
    assert len(got) == 1 and got[0][1]["latitude"] == pytest.approx(36.843631)
    assert sent == [ack(0x01, 1), ack(0x12, serial(LOCATION_12))]
    assert hub.errors and all("skipped" in e or "incomplete" in e for e in hub.errors)


def test_a_wrong_length_byte_costs_only_that_frame():
    # The vendor document's heartbeat example: L = 08 for a 15-byte frame.
    wrong = bytes.fromhex("787808134b040300010011061f0d0a")
    got, sent, hub = run([LOGIN + wrong + LOCATION_12])
    assert len(got) == 1
    assert sent == [ack(0x01, 1), ack(0x12, serial(LOCATION_12))]


def test_a_false_header_does_not_stall_the_good_frames_behind_it():
    # "79 79 7F FF" promises 32 KiB; the whole login behind it proves it false.
    got, sent, hub = run([LOGIN, b"\x79\x79\x7f\xff\x01\x02", LOCATION_12])
    assert sent == [ack(0x01, 1), ack(0x12, serial(LOCATION_12))] and len(got) == 1


def test_waits_for_a_frame_announced_but_not_complete():
    assert gt06.frame(LOCATION_12[:20], "tcp") == (None, 0)
    assert gt06.frame(b"\x78", "tcp") == (None, 0)
    assert gt06.frame(b"\x79\x79\x00", "tcp") == (None, 0)


def test_lengths_no_frame_has_are_skipped():
    assert gt06.frame(b"\x78\x78\x04\x01\x02\x03\x04\x05", "tcp") == (None, 8)
    over = b"\x79\x79" + (MAX_FRAME + 1).to_bytes(2, "big") + b"\x78\x78"
    assert gt06.frame(over, "tcp") == (None, 4)


def test_a_bad_crc_on_a_bound_session_is_decoded_and_flagged():
    bad = LOCATION_12[:-4] + b"\x00\x00" + LOCATION_12[-2:]
    got, sent, hub = run([LOGIN, bad])
    assert len(got) == 1
    assert got[0][1]["attributes"]["gt06.crc_error"] is True
    assert got[0][1]["latitude"] == pytest.approx(36.843631)
    # Its ack carries a correct CRC of our own.
    assert sent[1] == ack(0x12, serial(LOCATION_12))


@pytest.mark.parametrize("frame", [LOGIN, REPLY_15_HFYD])
def test_a_bad_crc_never_names_a_device_or_confirms_a_command(frame):
    bad = frame[:-4] + bytes([frame[-4] ^ 0x40]) + frame[-3:]
    with pytest.raises(DecodeError):
        gt06.decode(bad, context())
    got, sent, hub = run([LOCATION_12, bad])
    assert len(hub.errors) == 1 and "CRC" in hub.errors[0]
    assert sent == [ack(0x12, serial(LOCATION_12))]


def test_udp_datagram_with_two_frames():
    got, sent, hub = run([LOGIN + LOCATION_12], transport="udp")
    assert len(got) == 1 and hub.errors == []
    assert sent == [ack(0x01, 1), ack(0x12, serial(LOCATION_12))]


# -- replies -------------------------------------------------------------------

@pytest.mark.parametrize("frame, reply", [
    # Worked examples of spec §6.1 (vendor captures and Traccar logs).
    (LOGIN, "787805010001d9dc0d0a"),
    (HEARTBEAT_23, "787805230008f29e0d0a"),
    (ALARM_SOS, None),
    (INFO_94, ""),
    (REPLY_21, ""),
    (PAYLOAD_0D0A, ""),
])
def test_reply_per_type(frame, reply):
    result = gt06.decode(frame, context())
    if reply is None:
        serial = int.from_bytes(frame[-6:-4], "big")
        assert result.reply == ack(frame[3], serial)
    else:
        assert result.reply.hex() == reply


def test_ack_examples_of_the_reference():
    assert ack(0x01, 2).hex() == "787805010002eb470d0a"
    assert ack(0x13, 5).hex() == "787805130005afd50d0a"
    assert ack(0x16, 0x36).hex() == "78780516003695700d0a"
    assert ack(0x12, 2).hex() == "78780512000281b60d0a"


def test_time_reply_is_utc_now_with_the_request_serial():
    reply = gt06.decode(TIME_REQUEST, context()).reply
    assert reply[:4] == b"\x78\x78\x0b\x8a"
    assert list(reply[4:10]) == [26, 12, 5, 2, 3, 4]
    assert reply[10:12] == b"\x00\x06"
    assert int.from_bytes(reply[12:14], "big") == crc16_x25(reply[2:12])


def test_the_vendor_time_reply_example():
    clock = Clock()
    clock.advance(datetime(2015, 12, 29, 0, 0, 21, tzinfo=timezone.utc).timestamp())
    reply = gt06.decode(TIME_REQUEST, Context(seconds=clock.seconds)).reply
    assert reply.hex() == "78780b8a0f0c1d0000150006f0860d0a"


def test_the_ack_waits_for_the_commit():
    hub = memory_hub(gt06)
    pending = Deferred()
    hub.store_.submit = lambda *args, **kwargs: pending
    sent = []
    from gateway.session import Session
    session = Session(hub, "tcp", "test", sent.append, lambda: None)
    session.data_received(LOGIN + LOCATION_12 + STATUS_13)
    # The login ack goes at once; the location's and the status's wait.
    assert sent == [ack(0x01, 1)]
    pending.callback(None)
    assert sent == [ack(0x01, 1), ack(0x12, serial(LOCATION_12)), ack(0x13, serial(STATUS_13))]


def test_tcp_connection_gets_its_acks():
    hub, protocol, transport = tcp_connection(gt06)
    protocol.dataReceived(LOGIN[:7])
    assert transport.value() == b""
    protocol.dataReceived(LOGIN[7:] + HEARTBEAT_23)
    assert transport.value() == ack(0x01, 1) + ack(0x23, 8)
    assert not transport.disconnecting


# -- records -------------------------------------------------------------------


def decoded(frame, **device_settings):
    ctx = context(**device_settings)
    return [p.to_json() for p in gt06.decode(frame, ctx).records]


def test_location_with_trailer():
    (rec,) = decoded(LOCATION_22)
    a = rec["attributes"]
    assert a["archive"] is True and a["ignition"] is False and a["gt06.upload_mode"] == 0
    assert (a["mcc"], a["mnc"], a["lac"], a["cell_id"]) == (460, 0, 10365, 8049)


def test_alarm_status_attributes_and_event():
    (rec,) = decoded(ALARM_SOS)
    assert rec["alarm"] == ["sos"] and rec["event"] == "01"
    a = rec["attributes"]
    assert a["gt06.gps_tracking"] is True and a["ignition"] is False
    assert isinstance(a["gt06.voltage_level"], int) and isinstance(a["gt06.gsm_level"], int)


def test_acc_alarm_codes_set_ignition_over_the_terminal_bit():
    content = bytearray(ALARM_SOS[4:-6])
    content[-2] = 0xFE           # alarm code: ACC on
    content[-5] &= 0b11000101    # terminal bit 1: ACC off, bits 3-5: no alarm
    (rec,) = decoded(frame_bytes(0x16, bytes(content), 7))
    assert rec["attributes"]["ignition"] is True and rec["event"] == "FE" and rec["alarm"] == []


def test_heartbeats_and_status_make_no_record_even_with_alarm_bits():
    sos_status = frame_bytes(0x13, bytes([0b00100000, 4, 4, 0, 2]), 9)
    assert decoded(sos_status) == [] and decoded(HEARTBEAT_23) == []


def test_empty_location_makes_no_record_but_an_ack():
    result = gt06.decode(bytes.fromhex("787805120099abec0d0a"), context())
    assert result.records == () and result.reply == ack(0x12, 0x99)


def test_lbs_alarm_has_no_time_and_no_position():
    (rec,) = decoded(frame_of("gt06-055"))
    assert rec["time"] is None and rec["latitude"] is None and rec["alarm"] == ["sos"]


def test_all_zero_fix_is_no_position():
    (rec,) = decoded(frame_of("gt06-071"))
    assert rec["latitude"] is None and rec["longitude"] is None and rec["valid"] is False


def test_unknown_types_are_framed_acked_and_make_no_record():
    short = frame_bytes(0x5A, b"\x01\x02\x03", 0x44)
    result = gt06.decode(short, context())
    assert result.records == () and result.reply == ack(0x5A, 0x44)
    long_ = long_frame(0xF1, b"\x00" * 20, 0x45)
    assert gt06.decode(long_, context()).reply == b""


def test_login_ids():
    assert gt06.decode(LOGIN, context()).device_id == "123456789012345"
    with pytest.raises(DecodeError):
        gt06.decode(frame_bytes(0x01, bytes.fromhex("0a23456789012345"), 1), context())


# -- time zones (spec §5) ----------------------------------------------------------


def test_login_zone_words():
    assert login_zone_minutes(0x3201) == 480
    assert login_zone_minutes(0x190A) == -240
    assert login_zone_minutes(0x12C1) == 180
    assert login_zone_minutes(0x0002) is None


def test_old_types_follow_the_login_zone_and_say_it_is_guessed():
    got, _, _ = run([LOGIN_ZONE_WEST, LOCATION_12, LOCATION_22])
    old, new = got[0][1], got[1][1]
    # 0x12 local GMT-4 -> +4 h; 0x22 is UTC and never shifted.
    assert old["time"] == "2017-08-08T21:20:36Z"
    assert old["attributes"]["gt06.guessed"] == ["time_zone_from_login"]
    assert new["time"] == "2015-12-29T02:51:05Z" and "gt06.guessed" not in new["attributes"]


def test_the_timezone_setting_wins_over_the_login():
    got, _, _ = run([LOGIN_ZONE_WEST, LOCATION_12], settings={"gt06.timezone": "+08:00"})
    assert got[0][1]["time"] == "2017-08-08T09:20:36Z"
    assert "gt06.guessed" not in got[0][1]["attributes"]


# -- where Traccar is wrong ------------------------------------------------------------


def test_lbs_only_0x11_is_no_bogus_fix():
    # Traccar reads it as GPS (issue #554).
    got, sent, _ = run([bytes.fromhex(h) for h in BY_ID["gt06-107"]["frames_hex"]])
    assert got == [] and len(sent) == 4


def test_4g_alarm_cell_is_4_byte_lac_and_8_byte_cell_id():
    # Traccar reads 2 + 3 bytes.
    (rec,) = decoded(frame_of("gt06-052"))
    assert (rec["attributes"]["lac"], rec["attributes"]["cell_id"]) == (9742, 102103041)


def test_two_byte_mnc_in_an_alarm_keeps_the_status_in_step():
    # Traccar skips one byte too many and reads ACC from the voltage byte.
    (rec,) = decoded(frame_of("gt06-082"))
    a = rec["attributes"]
    assert (a["mcc"], a["mnc"]) == (310, 260) and a["ignition"] is False
    assert "gt06.fence" not in a


def test_a_position_text_in_a_command_reply_is_no_record():
    # Traccar makes a position of a 0x21 "Current position!" text.
    text = b"Current position!Lat:N54.739332,Lon:E25.273270,Course:126.53,Speed:0.0000"
    frame = long_frame(0x21, b"\x00\x00\x00\x2a\x01" + text, 3)
    result = gt06.decode(frame, context())
    assert result.records == () and result.reply == b""
    (c,) = result.confirmations
    assert c.token == "0000002a" and c.command_type == "position_request"


# -- commands ------------------------------------------------------------------


@pytest.mark.parametrize("ref", commands_reference(), ids=lambda r: r["text"])
def test_command_bytes_of_the_reference(ref):
    p = ref["params"]
    language = bytes.fromhex(p.get("language", ""))
    assert command_frame(p["text"].encode(), int(p["server_flag"], 16), int(p["serial"], 16),
                         language).hex() == ref["bytes_hex"]


@pytest.mark.parametrize("style, stop, resume", [
    (None, "Relay,1#", "Relay,0#"),
    ("relay_upper", "RELAY,1#", "RELAY,0#"),
    ("dyd", "DYD,000000#", "HFYD,000000#"),
    ("dyd_nopwd", "DYD#", "HFYD#"),
])
def test_engine_stop_and_resume_per_relay_style(style, stop, resume):
    ctx = context(**({"gt06.relay_style": style} if style else {}))
    for kind, text in (("engine_stop", stop), ("engine_resume", resume)):
        encoded = gt06.encode(Command(id=0x1A958, device_id="1", type=kind), ctx)
        assert encoded.data == command_frame(text.encode(), 0x1A958, 0xA958)
        assert encoded.token == "0001a958"


def test_password_and_position_request():
    ctx = context(**{"gt06.relay_style": "dyd", "gt06.password": "123456"})
    stop = gt06.encode(Command(id=1, device_id="1", type="engine_stop"), ctx)
    assert b"DYD,123456#" in stop.data
    where = gt06.encode(Command(id=2, device_id="1", type="position_request"), ctx)
    assert b"DWXX,123456#" in where.data
    assert b"WHERE#" in gt06.encode(Command(id=3, device_id="1", type="position_request"),
                                    context()).data
    assert b"RESET#" in gt06.encode(Command(id=4, device_id="1", type="reboot"), context()).data


def test_language_word_setting():
    encoded = gt06.encode(Command(id=1, device_id="1", type="custom", params={"text": "sos#"}),
                          context(**{"gt06.language": "english"}))
    assert encoded.data == command_frame(b"sos#", 1, 1, b"\x00\x02")


def test_two_commands_in_flight_never_share_a_token():
    ctx = context()
    tokens = {gt06.encode(Command(id=None, device_id="1", type="reboot"), ctx).token
              for _ in range(3)}
    tokens |= {gt06.encode(Command(id=i, device_id="1", type="reboot"), ctx).token
               for i in (1, 2)}
    assert len(tokens) == 5 and "00000000" not in tokens


@pytest.mark.parametrize("params", [
    {"text": "RELAY,1#WHERE#"}, {"text": "A#B"}, {"text": "WHERE#\r\n"}, {"text": ""},
    {"text": "x" * (MAX_COMMAND_TEXT + 1)}, {"hex": "78780d0a"}, {"text": "caf\u00e9#"}, {},
])
def test_custom_is_exactly_one_command(params):
    with pytest.raises(EncodeError):
        gt06.encode(Command(id=1, device_id="1", type="custom", params=params), context())


def test_custom_text_and_set_interval():
    data = gt06.encode(Command(id=1, device_id="1", type="custom",
                               params={"text": "TIMER,30#"}), context()).data
    assert data == command_frame(b"TIMER,30#", 1, 1)
    with pytest.raises(EncodeError):
        gt06.encode(Command(id=1, device_id="1", type="set_interval",
                            params={"seconds": "30"}), context())


def test_bad_settings_refuse_the_command():
    with pytest.raises(EncodeError):
        gt06.encode(Command(id=1, device_id="1", type="engine_stop"),
                    context(**{"gt06.relay_style": "magic"}))


@pytest.mark.parametrize("key, good, normal, bad", [
    ("gt06.relay_style", "DYD", "dyd", "magic"),
    ("gt06.password", " 123456 ", "123456", "12,34#"),
    ("gt06.timezone", "-0400", "-04:00", "+25:00"),
    ("gt06.timezone", "utc", "+00:00", "8"),
    ("gt06.language", "English", "english", "klingon"),
])
def test_settings_spec(key, good, normal, bad):
    validate = gt06.settings_spec[key]
    assert validate(good) == normal
    with pytest.raises(ValueError):
        validate(bad)


# -- confirmations ---------------------------------------------------------------


def test_vendor_reply_confirms_by_server_flag():
    (c,) = gt06.decode(REPLY_15_HFYD, context()).confirmations
    assert c.token == "0001a963" and c.success and c.command_type == "engine_resume"
    assert c.reply == "HFYD=Success!"


def test_nul_padded_reply_with_length_zero():
    (c,) = gt06.decode(REPLY_15_PADDED, context()).confirmations
    assert c.reply == "DYD=Success!" and c.token is None and c.command_type == "engine_stop"


def test_utf16_long_reply():
    (c,) = gt06.decode(REPLY_21, context()).confirmations
    assert c.reply.startswith("Command") and c.token is None


@pytest.mark.parametrize("text, success", [
    ("DYD=Success!", True),
    ("Already in the state of fuel supply cut off,the command is not running!", True),
    ("DYD=Unvalued Fix", False),
    ("DYD=Speed Limit, Speed 40km/h", False),
])
def test_reply_success(text, success):
    content = bytes([4 + len(text)]) + bytes.fromhex("0000beef") + text.encode() + b"\x00\x02"
    (c,) = gt06.decode(frame_bytes(0x15, content, 3), context()).confirmations
    assert c.success is success and c.token == "0000beef" and c.command_type == "engine_stop"


def test_reply_names_the_command_the_session_sent_with_that_flag():
    ctx = context()
    sent = gt06.encode(Command(id=0x77, device_id="1", type="reboot"), ctx)
    content = b"\x0b" + bytes.fromhex(sent.token) + b"RESET OK" + b"\x00\x02"
    (c,) = gt06.decode(frame_bytes(0x15, content, 4), ctx).confirmations
    assert c.token == sent.token and c.command_type == "reboot" and c.success


def test_a_reply_names_what_was_sent_with_its_flag_over_what_the_text_suggests():
    ctx = context()
    sent = gt06.encode(Command(id=5, device_id="1", type="custom",
                               params={"text": "DYD,000000#"}), ctx)
    text = b"DYD=Success!"
    content = bytes([4 + len(text)]) + bytes.fromhex(sent.token) + text + b"\x00\x02"
    (c,) = gt06.decode(frame_bytes(0x15, content, 4), ctx).confirmations
    assert c.command_type == "custom"


def test_an_iccid_report_confirms_nothing():
    result = gt06.decode(frame_of("gt06-045"), context())
    assert result.confirmations == () and result.records == ()


def test_a_bad_timezone_setting_does_not_cost_the_records():
    got, _, hub = run([LOGIN, LOCATION_12], settings={"gt06.timezone": "Mars"})
    assert got[0][1]["time"] == "2017-08-08T17:20:36Z" and hub.errors == []


def test_modular_frame_without_time_has_none():
    module = bytes(4) + bytes([8]) + (31).to_bytes(2, "big") + (78677800).to_bytes(4, "big") \
        + (28656149).to_bytes(4, "big") + bytes([0]) + (0x1400 | 233).to_bytes(2, "big")
    frame = long_frame(0x70, b"\x00\x33\x00\x12" + module, 9)
    (rec,) = decoded(frame)
    assert rec["time"] is None and rec["valid"] is True and rec["altitude_m"] == 31


def test_confirmation_reaches_the_hub():
    got, sent, hub = run([LOGIN, REPLY_15_HFYD])
    assert hub.commands.confirmations == [
        ("123456789012345", gt06.decode(REPLY_15_HFYD, context()).confirmations[0])]


# -- robustness ------------------------------------------------------------------

REAL = st.sampled_from([bytes.fromhex(h) for v in VECTORS for h in v["frames_hex"]])
ANYTHING = st.one_of(st.binary(max_size=400), truncated(REAL, 300), bit_flipped(REAL),
                     st.lists(st.one_of(REAL, bit_flipped(REAL), st.binary(max_size=20)),
                              max_size=6).map(b"".join))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANYTHING, st.sampled_from(["tcp", "udp"]))
def test_random_and_mutated_frames(data, transport):
    gt06.detect(data, transport)
    frames = frame_and_decode(gt06, data, transport, context(), max_frame=MAX_FRAME + 6)
    assert sum(map(len, frames)) <= len(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(REAL, bit_flipped(REAL), st.binary(max_size=30)), min_size=1,
                max_size=8))
def test_a_good_frame_after_anything_gets_through(pieces):
    hub = memory_hub(gt06)
    sent = feed(hub, [LOGIN] + pieces + [b"\x78\x78" + bytes(300), LOGIN])
    # Whatever came before, the last login is framed and acked.
    assert sent and sent[-1] == ack(0x01, 1)


# -- end to end ------------------------------------------------------------------


def test_end_to_end_login_ack_command_and_confirmation(gateway, db_url):
    from tests.test_commands_e2e import send, wait_status
    from tests.test_e2e import positions, recv_exactly, tcp

    g = gateway(db_url)
    imei = "123456789012345"
    # The default relay style: a setting configured now would reach the
    # running gateway only at its next settings poll.
    stop = send(g, imei, "engine_stop")
    s = tcp(g.port)
    s.sendall(LOGIN)
    assert recv_exactly(s, 10) == ack(0x01, 1)
    want = command_frame(b"Relay,1#", stop, stop)
    # Generous: the queue reads the database on a thread of a loaded machine.
    assert recv_exactly(s, len(want), timeout=60) == want
    s.sendall(LOCATION_12)
    assert recv_exactly(s, 10) == ack(0x12, serial(LOCATION_12))
    assert len(positions(g, "--device", imei)) == 1
    text = b"Cut off the fuel supply: Success!"
    s.sendall(frame_bytes(0x15, bytes([4 + len(text)]) + stop.to_bytes(4, "big") + text
                          + b"\x00\x02", 0x18))
    assert recv_exactly(s, 10) == ack(0x15, 0x18)
    row = wait_status(g, imei, stop, "confirmed", timeout=60)
    assert row["reply"] == text.decode()
