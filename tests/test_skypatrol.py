"""
Legacy SkyPatrol binary reports (the C{skypatrol} plugin of L{decoders.enfora}):
shared vectors, detection (never TT8850 or the ASCII Enfora variant), TCP length
framing, commands and AT replies, robustness.
"""

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.enfora import MAX_FRAME, UDP_ACK, _layout, _Message, skypatrol
from gateway.context import Context
from gateway.interfaces import EncodeError
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (device_context, each_vector, frame_and_decode, frame_of, length_prefixed,
                           mean_decode_seconds, mutated_api_messages, other_vectors_refused_test,
                           run_session, split_anywhere, tt8850_refused_test, vector_replay_test)

VECTORS = vectorcheck.load("skypatrol")

#: A message as it travels on TCP: behind its length, length bytes included.
tcp = length_prefixed

#: Feed chunks to one session of a skypatrol-only hub: (records, sent, hub).
run = functools.partial(run_session, skypatrol)


# -- vectors and detection -------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(VECTORS)
def test_claims_own_vectors_on_both_transports(vec):
    data = frame_of(vec["id"])
    assert skypatrol.detect(data, "udp").matched
    assert skypatrol.detect(tcp(data), "tcp").matched


test_claims_no_other_vector = other_vectors_refused_test(skypatrol)
test_tt8850_is_not_claimed = tt8850_refused_test(skypatrol)


def test_mask_must_predict_the_length():
    data = frame_of("skypatrol-001")
    assert not skypatrol.detect(data[:-3], "udp").matched
    assert not skypatrol.detect(data + b"\x01", "udp").matched


def test_tcp_detection_waits_for_the_whole_message():
    data = tcp(frame_of("skypatrol-001"))
    for n in range(1, len(data)):
        assert skypatrol.detect(data[:n], "tcp").outcome.value == "more", n


# -- decoding --------------------------------------------------------------------

def test_unit_id_comes_right_after_parm1():
    result = skypatrol.decode(frame_of("skypatrol-001"), Context(transport="udp"))
    assert result.device_id == "11477583"
    record = result.records[0]
    assert record.event == "13"
    # The RTC field agrees with the GPS time only if every field before it sits right.
    assert record.attributes["skypatrol.rtc"] == "2012-07-17T22:07:44Z"
    assert record.attributes["mcc"] == 310 and record.attributes["mnc"] == 260
    assert result.reply == b""


def test_negative_coordinates():
    record = skypatrol.decode(frame_of("skypatrol-001"), Context(transport="udp")).records[0]
    magnitude = 0xFFFFFFFF - 0xFB384137
    assert record.longitude == pytest.approx(-(magnitude // 10 ** 6 + magnitude % 10 ** 6 / 1e4 / 60))


def test_report_without_mask_is_recognised_not_guessed():
    result = skypatrol.decode(frame_of("skypatrol-005"), Context(transport="udp"))
    assert result.records == ()


def test_maskless_report_has_a_four_byte_header():
    # skypatrol-005 is "00 05 02 00" + payload (spec §2.1, §7): the byte after
    # the header is payload, not an option size.
    data = frame_of("skypatrol-005")
    message = _Message(data)
    assert message.message_type is None and message.payload == data[4:]
    # On API numbers other than 5 such a report is enfora's (Traccar's
    # skypatrol decoder takes binary on API 5 only).
    assert not skypatrol.detect(b"\x00\x04" + data[2:], "udp").matched


def test_configured_mask_is_not_applied_to_the_compressed_layout():
    # The 4-byte header's "compressed" layout is not the mask table (spec §4.1).
    context = Context(transport="udp", lookup=lambda d: {"skypatrol.mask": "ffffffff"})
    assert skypatrol.decode(frame_of("skypatrol-005"), context).records == ()


def test_gps_date_not_set_yet_falls_back_to_the_message_clock():
    data = bytearray(frame_of("skypatrol-001"))
    layout = {index: (offset, size) for index, offset, size in _layout(0xFFFFFFFF)[0]}
    start = 9 + layout[8][0]  # 5-byte header + 4-byte mask
    data[start:start + 3] = bytes(3)
    record = skypatrol.decode(bytes(data), Context(transport="udp")).records[0]
    assert record.time.isoformat() == "2012-07-17T22:07:44+00:00"


def test_configured_mask_for_reports_sent_without_one():
    data = frame_of("skypatrol-001")
    # The same report with option size 0 and the mask cut out.
    bare = data[:3] + b"\x10\x00" + data[9:]
    assert skypatrol.decode(bare, Context(transport="udp")).records == ()
    context = Context(transport="udp", lookup=lambda d: {"skypatrol.mask": "ffffffff"})
    records = skypatrol.decode(bare, context).records
    assert records[0].latitude == pytest.approx(25.80211, abs=1e-5)


def test_identity_option_header():
    data = frame_of("skypatrol-001")
    imei = b"357042061828790"
    framed = data[:4] + bytes([17]) + b"\x01" + imei + b"\x06" + data[5:]
    result = skypatrol.decode(framed, Context(transport="udp"))
    assert result.device_id == imei.decode()
    assert len(result.records) == 1


def test_status_only_message_names_the_device_but_has_no_position():
    # flespi's recommended keep-alive mask 7: binary flag, Parm1, modem id.
    keepalive = bytes.fromhex("000a080004" "00000007" "00000022") + b"%22s" % b"357042061828790"
    assert skypatrol.detect(keepalive, "udp").matched
    result = skypatrol.decode(keepalive, Context(transport="udp"))
    assert result.device_id == "357042061828790" and result.records == ()


def test_udp_ack_only_when_configured():
    data = frame_of("skypatrol-001")
    _, sent, _ = run([data], transport="udp")
    assert sent == []
    _, sent, _ = run([data], transport="udp", settings={"skypatrol.udp_ack": "true"})
    assert sent == [UDP_ACK]


def test_at_reply_is_a_confirmation():
    reply = bytes.fromhex("00010500") + b"\r\nOK\r\n"
    records, sent, hub = run([tcp(frame_of("skypatrol-001")), tcp(reply)])
    assert len(records) == 1 and sent == []
    [(device, (confirmation,))] = hub.commands.confirmed_
    assert device == "11477583" and confirmation.reply == "OK" and confirmation.success
    error = skypatrol.decode(tcp(bytes.fromhex("00010500") + b"\r\nERROR\r\n"), Context())
    assert not error.confirmations[0].success


# -- TCP framing -------------------------------------------------------------------

STREAM = tcp(frame_of("skypatrol-001")) + tcp(frame_of("skypatrol-005")) + tcp(frame_of("skypatrol-001"))


def test_split_at_every_byte():
    whole, sent = split_anywhere(run, STREAM)
    assert len(whole) == 2 and sent == []


def test_junk_between_messages_is_skipped():
    whole, _, _ = run([STREAM])
    records, _, hub = run([STREAM + b"\xff\xff" + STREAM])
    assert records == whole + whole
    assert hub.errors  # the junk was reported


# -- commands ------------------------------------------------------------------------

def command(kind, **params):
    return Command(id=1, device_id="11477583", type=kind, params=params)


def test_commands_exact_bytes():
    # commands.jsonl (TT8750+ 5-byte header, TCP).
    assert skypatrol.encode(command("engine_stop"), device_context()).data.hex() == \
        "00180001040000415424545454524745563d31382c302c32"
    assert skypatrol.encode(command("engine_resume"), device_context()).data.hex() == \
        "00180001040000415424545454524745563d31382c312c32"
    assert skypatrol.encode(command("position_request"), device_context()).data.hex() == \
        "0017000a04000041542454544c4f4752443d342c312c30"
    custom = skypatrol.encode(command("custom", text="AT$TTLOGCL=0&W"), device_context()).data
    assert custom == (7 + 14).to_bytes(2, "big") + bytes.fromhex("000a040000") + b"AT$TTLOGCL=0&W"


def test_commands_over_udp_have_no_length():
    assert skypatrol.encode(command("engine_stop"), device_context("udp")).data.hex() == \
        "0001040000415424545454524745563d31382c302c32"


def test_immobilizer_event_setting():
    data = skypatrol.encode(command("engine_stop"),
                            device_context(**{"skypatrol.immobilizer_event": "20"})).data
    assert data.endswith(b"AT$TTTRGEV=20,0,2")


def test_unsupported_commands():
    for kind, params in (("reboot", {}), ("set_interval", {"seconds": "60"}), ("custom", {})):
        with pytest.raises(EncodeError):
            skypatrol.encode(command(kind, **params), device_context())


# -- robustness ----------------------------------------------------------------------

REAL = [frame_of(v["id"]) for v in VECTORS] + [bytes.fromhex("00010500") + b"\r\nOK\r\n"]


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=mutated_api_messages(st.sampled_from(REAL)), transport=st.sampled_from(["tcp", "udp"]),
       mask=st.sampled_from([None, "ffffffff", "1fffffff", "00000001"]))
def test_only_decode_errors_escape(data, transport, mask):
    skypatrol.detect(data, transport)
    context = Context(transport=transport, lookup=lambda d: {"skypatrol.mask": mask} if mask else {})
    frame_and_decode(skypatrol, data, transport, context, MAX_FRAME)


def test_decode_is_fast():
    data = frame_of("skypatrol-001")
    assert mean_decode_seconds(skypatrol, [data], Context(transport="udp"), rounds=1000) < 0.001
