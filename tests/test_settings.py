"""
Settings checked by the protocol that owns them, and custom commands that are
exactly one command (issue 12, "must not smuggle"), for every decoder.
"""

import glob
import os
import re

import pytest
from twisted.internet.task import Clock

from gateway.context import Context
from gateway.interfaces import EncodeError
from gateway.model import Command
from gateway.registry import discover
from gateway.settings import validate

from tests.conftest import ROOT

DECODERS = discover()


def test_every_setting_a_decoder_reads_is_declared():
    declared = {k for d in DECODERS.values() for k in (getattr(d, "settings_spec", None) or {})}
    read = set()
    for path in glob.glob(os.path.join(ROOT, "decoders", "*.py")):
        with open(path) as fh:
            source = fh.read()
        read |= set(re.findall(r'(?:setting|_udp_reply|_number_setting|_enabled)\((?:context, )?'
                               r'"([a-z0-9_]+\.[a-z0-9_]+)"', source))
    assert read and read <= declared, read - declared


@pytest.mark.parametrize("settings, why", [
    ({"atrack.password": "x\r\nAT$REST=1,0"}, "bad value for atrack.password"),
    ({"atrack.bogus": "1"}, "unknown setting 'atrack.bogus'"),
    ({"nosuch.key": "1"}, "unknown setting 'nosuch.key'"),
    ({"gotop.relay_polarity": "sideways"}, "bad value for gotop.relay_polarity"),
    ({"gotop.password": "12345"}, "bad value for gotop.password"),
    ({"astra.pin": "12;34"}, "bad value for astra.pin"),
    ({"gosafe.stop_level": "2"}, "bad value for gosafe.stop_level"),
    ({"h02.ignition": "sometimes"}, "bad value for h02.ignition"),
    ({"skypatrol.mask": "xyz"}, "bad value for skypatrol.mask"),
    ({"atrack.alarm_map": "101:nonsense"}, "bad value for atrack.alarm_map"),
])
def test_bad_settings_are_refused_with_the_reason(settings, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        validate(DECODERS, settings)


def test_good_settings_are_normalised_and_empty_removes():
    assert validate(DECODERS, {"h02.time_sync": "yes", "enfora.udp_ack": "TRUE", "gotop.utc_offset": "-05:30",
                               "atrack.password": ""}) == {
        "h02.time_sync": "1", "enfora.udp_ack": "true", "gotop.utc_offset": "-05:30",
        "atrack.password": None}


def test_a_setting_of_another_protocol_is_refused_for_a_known_device():
    with pytest.raises(ValueError, match="the device speaks atrack"):
        validate(DECODERS, {"gotop.password": "123456"}, protocol="atrack")


def _encode(protocol, kind, params, settings=None):
    context = Context(device_id="123456789012345", lookup=lambda _: settings or {},
                      seconds=Clock().seconds)
    return DECODERS[protocol].encode(Command(1, "123456789012345", kind, params), context)


def test_a_password_with_a_line_end_set_before_validation_is_refused_by_the_encoder():
    with pytest.raises(EncodeError):
        _encode("atrack", "engine_resume", {}, {"atrack.password": "x\r\nAT$REST=1,0"})


SMUGGLED = [
    ("atrack", {"text": "AT$GPOS=0\r\nAT$REST=1,0"}),
    ("atrack", {"hex": b"AT$GPOS=0\r\nAT$OUTC=1,1,0,0,0\r\n".hex()}),
    ("astra", {"text": "$POLL$IMOB,4"}),
    ("astra", {"hex": b"$POLL\r$BOOT".hex()}),
    ("h02", {"text": "*HQ,1,S20,120000,1,0#*HQ,1,S20,120000,1,1#"}),
    ("h02", {"text": "CXZT#*HQ,1,S20,120000,1,1#"}),
    ("gosafe", {"text": "*GS06,RST#*GS06,DOO0;0#"}),
    ("gosafe", {"text": "*GS06,RST$DOO0;0#"}),
    ("gotop", {"text": ":123456T0#:123456T1#"}),
    ("gotop", {"text": "F#:123456T1"}),
    ("gotop", {"hex": b"T1".hex()}),
    ("enfora", {"text": "AT$IOGP3=0;$IOGP3=1"}),
    ("skypatrol", {"text": "AT\r\nAT$TTTRGEV=18,0,2"}),
]


@pytest.mark.parametrize("protocol, params", SMUGGLED)
def test_custom_holding_two_commands_is_refused(protocol, params):
    with pytest.raises(EncodeError):
        _encode(protocol, "custom", params)


@pytest.mark.parametrize("protocol, params, data", [
    ("atrack", {"text": "AT$GPOS=0"}, b"AT$GPOS=0\r\n"),
    ("astra", {"text": "$PASS,1234$IMOB,0"}, b"$PASS,1234$IMOB,0"),
    ("h02", {"text": "*HQ,1,S20,120000,1,0#"}, b"*HQ,1,S20,120000,1,0#"),
    ("gosafe", {"text": "*GS06,DOO0;1#"}, b"*GS06,DOO0;1#"),
    ("gotop", {"text": "CCMNET,119.122.101.91:7289"}, b":123456CCMNET,119.122.101.91:7289#"),
    ("enfora", {"text": "AT$IOGP3=0"}, None),
])
def test_one_command_passes(protocol, params, data):
    encoded = _encode(protocol, "custom", params)
    if data is not None:
        assert encoded.data == data
