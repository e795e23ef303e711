"""
Legacy SkyPatrol / Enfora ASCII messages (the C{enfora} plugin of
L{decoders.enfora}): shared vectors, detection (never TT8850 or the binary
SkyPatrol variant), TCP length framing, keep-alives, commands and AT replies,
robustness.
"""

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.enfora import MAX_FRAME, UDP_ACK, enfora, skypatrol
from gateway.detector import Detector
from gateway.registry import discover
from gateway.context import Context
from gateway.interfaces import DecodeError, EncodeError
from gateway.model import Command
from tests import vectorcheck
from tests.harness import (device_context, each_vector, frame_and_decode, frame_of, length_prefixed,
                           mean_decode_seconds, mutated_api_messages, other_vectors_refused_test,
                           run_session, split_anywhere, tt8850_refused_test, vector_replay_test)

VECTORS = vectorcheck.load("enfora")
BY_ID = {v["id"]: v for v in VECTORS}

#: Traccar's enfora keep-alive shape: 00 0A 08 00 + a 20-character id.
KEEPALIVE = bytes.fromhex("000a0800") + b"     868789021568760"

#: A message as it travels on TCP: behind its length, length bytes included.
tcp = length_prefixed

#: Feed chunks to one session of an enfora-only hub: (records, sent, hub).
run = functools.partial(run_session, enfora)


def message_of(vector_id: str) -> bytes:
    """
    The API message of a vector, without the TCP length.
    """
    data = frame_of(vector_id)
    return data[2:] if BY_ID[vector_id]["transport"] == "tcp" else data


def decode(message: bytes, transport="udp"):
    return enfora.decode(message if transport == "udp" else tcp(message), Context(transport=transport))


# -- vectors and detection -------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(VECTORS)
def test_claims_own_vectors_on_both_transports(vec):
    message = message_of(vec["id"])
    assert enfora.detect(message, "udp").score == 90  # NMEA checksum verified
    assert enfora.detect(tcp(message), "tcp").score == 90


test_claims_no_other_vector = other_vectors_refused_test(enfora)
test_tt8850_is_not_claimed = tt8850_refused_test(enfora)


def test_tcp_detection_waits_for_the_whole_message():
    data = frame_of("enfora-009")
    for n in range(1, len(data)):
        assert enfora.detect(data[:n], "tcp").outcome.value == "more", n


def test_tcp_length_must_match():
    message = message_of("enfora-009")
    lied = (len(message) + 40).to_bytes(2, "big") + message
    assert enfora.detect(lied, "tcp").outcome.value == "more"
    assert not enfora.detect(b"\x10\x00" + message, "tcp").matched


# -- decoding --------------------------------------------------------------------

def test_status_other_than_a_keeps_the_record():
    message = message_of("enfora-009").replace(b",A,3509", b",9,3509")
    record = decode(message).records[0]
    assert record.valid is False
    assert record.latitude == pytest.approx(35.164343, abs=1e-5)


def test_gprmc_ending_at_the_date():
    # Magnetic variation and mode fields left out: the sentence still decodes.
    message = message_of("enfora-009")
    cut = message[:message.index(b",020612,") + 7] + b"\r\n"
    record = decode(cut).records[0]
    assert record.time.isoformat() == "2012-06-02T22:31:52+00:00"
    assert record.latitude == pytest.approx(35.164343, abs=1e-5)
    assert record.longitude == pytest.approx(33.379065, abs=1e-5)


def test_configured_fields_kept():
    record = decode(message_of("enfora-014")).records[0]
    assert record.event == "10"
    assert record.attributes["enfora.trailer"].split()[-1] == "0032"


def test_gpgga_adds_altitude_and_satellites():
    message = message_of("enfora-009").replace(
        b" $GPRMC", b" $GPGGA,223152.00,3509.860594,N,03322.743887,E,1,07,1.2,123.4,M,,,,*00\r\n$GPRMC")
    record = decode(message).records[0]
    assert record.altitude_m == 123.4
    assert record.attributes["satellites"] == 7 and record.attributes["hdop"] == 1.2
    assert record.event == "8" and record.attributes["enfora.fields"] == "13"


def test_identity_option_header():
    message = message_of("enfora-011")
    imei = b"357042061828790"
    framed = message[:4] + bytes([17]) + b"\x01" + imei + b"\x06" + message[5:]
    result = decode(framed)
    assert result.device_id == imei.decode() and len(result.records) == 1


def test_gprmc_behind_the_skypatrol_identity_header_with_binary_trailer():
    # Spec section 0.6: the name follows the payload. A GPRMC report behind the
    # 17-byte IMEI option header on API 5 (the binary SkyPatrol API), with
    # binary trailer bytes, is still an enfora report with its position.
    message = message_of("enfora-014")
    imei = b"868789021568760"
    framed = b"\x00\x05\x02\x10\x11\x01" + imei + b"\x06" + message[5:] + b"\xff\x00\x01"
    detection = Detector(discover().values()).detect(framed, "udp", final=True)
    assert detection.decoder is enfora
    result = decode(framed)
    assert result.device_id == imei.decode() and len(result.records) == 1
    assert result.records[0].latitude == pytest.approx(4.696361, abs=2e-5)
    assert result.records[0].attributes["enfora.trailer_hex"].endswith("ff0001")
    assert not skypatrol.detect(framed, "udp").matched


def test_non_ascii_status_is_no_gprmc_report():
    # Found by fuzzing once a GPRMC payload names the protocol: a status byte
    # outside ASCII must not make a report (nor escape as UnicodeDecodeError).
    framed = (bytes.fromhex("0000020000") + b"\x00" * 4 + b"GPRMC,000000.00,\x80,0000.0000,N,00000.0000,W,,0.0,000000")
    try:
        records = decode(framed).records
    except DecodeError:
        records = ()
    assert records == ()


def test_keepalive_has_no_position():
    assert enfora.detect(KEEPALIVE, "udp").matched
    result = decode(KEEPALIVE)
    assert result.device_id == "868789021568760" and result.records == ()
    assert result.reply == b""


def test_udp_ack_only_when_configured():
    message = message_of("enfora-014")
    _, sent, _ = run([message], transport="udp")
    assert sent == []
    _, sent, _ = run([message], transport="udp", settings={"enfora.udp_ack": "true"})
    assert sent == [UDP_ACK]


def test_at_reply_is_a_confirmation():
    # The Enfora integration guide's ATI answer.
    reply = bytes.fromhex("00010500") + b"\r\nEnfora, Inc.\r\n"
    assert enfora.detect(reply, "udp").matched
    records, _, hub = run([frame_of("enfora-009"), tcp(reply)])
    assert len(records) == 1
    [(device, (confirmation,))] = hub.commands.confirmed_
    assert device == "123456789012345" and confirmation.reply == "Enfora, Inc."


def test_maskless_binary_report_is_recognised_without_a_record():
    # A TT8750 "compressed" binary report behind the 4-byte header: its layout
    # is configured in the device (spec §4.1, §0.1). On API 5 it is skypatrol's
    # (Traccar's skypatrol decoder takes binary there only), on others enfora's.
    compressed = bytes.fromhex(BY_ID["enfora-006"]["frames_hex"][0])[:4] + bytes(range(1, 40))
    assert enfora.detect(compressed, "udp").matched
    assert enfora.detect(tcp(compressed), "tcp").matched
    result = decode(compressed)
    assert result.records == () and result.device_id is None
    on_api_5 = b"\x00\x05" + compressed[2:]
    assert not enfora.detect(on_api_5, "udp").matched


def test_masked_binary_payload_is_not_enfora():
    masked = bytes.fromhex("0004021004ffffffff") + bytes(range(1, 40))
    assert not enfora.detect(masked, "udp").matched
    with pytest.raises(DecodeError):
        decode(masked)


def test_masked_binary_message_with_printable_bytes_is_not_enfora():
    keepalive = bytes.fromhex("000a080004" "00000007" "00000022") + b"%22s" % b"357042061828790"
    assert not enfora.detect(keepalive, "udp").matched


# -- TCP framing -------------------------------------------------------------------

STREAM = frame_of("enfora-009") + frame_of("enfora-010") + frame_of("enfora-011")


def test_split_at_every_byte():
    whole, sent = split_anywhere(run, STREAM)
    assert len(whole) == 3 and sent == []


def test_junk_between_messages_is_skipped():
    whole, _, _ = run([STREAM])
    records, _, hub = run([STREAM + b"\xff\xff" + STREAM])
    assert records == whole + whole and hub.errors


# -- commands ------------------------------------------------------------------------

def command(kind, **params):
    return Command(id=1, device_id="123456789012345", type=kind, params=params)


def test_commands_exact_bytes():
    # commands.jsonl (Traccar's encoder, TCP).
    assert enfora.encode(command("engine_stop"), device_context()).data.hex() == \
        "001000000400415424494f4750333d31"
    assert enfora.encode(command("engine_resume"), device_context()).data.hex() == \
        "001000000400415424494f4750333d30"


def test_custom_over_udp_is_the_integration_guide_example():
    assert enfora.encode(command("custom", text="ATI"), device_context("udp")).data.hex() == "00010400415449"


def test_relay_gpio_setting():
    data = enfora.encode(command("engine_stop"), device_context(**{"enfora.gpio": "2"})).data
    assert data.endswith(b"AT$IOGP2=1")


def test_unsupported_commands():
    for kind, params in (("position_request", {}), ("reboot", {}), ("custom", {}),
                         ("custom", {"text": "AT\u00e9"})):
        with pytest.raises(EncodeError):
            enfora.encode(command(kind, **params), device_context())


# -- robustness ----------------------------------------------------------------------

REAL = [message_of(v["id"]) for v in VECTORS] + [KEEPALIVE]


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=mutated_api_messages(st.sampled_from(REAL)), transport=st.sampled_from(["tcp", "udp"]))
def test_only_decode_errors_escape(data, transport):
    enfora.detect(data, transport)
    frame_and_decode(enfora, data, transport, Context(transport=transport), MAX_FRAME)


def test_decode_is_fast():
    data = message_of("enfora-014")
    assert mean_decode_seconds(enfora, [data], Context(transport="udp"), rounds=1000) < 0.001
