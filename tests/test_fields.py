"""
The shared helpers every decoder relies on.
"""

from datetime import datetime, timezone

import pytest

from gateway import checksums
from gateway.encoding import custom_command_bytes
from gateway.fields import (
    bcd_int, bit, bits, ddmmyy_hhmmss, gps_time, hemisphere, nmea_degrees, utc,
)
from gateway.interfaces import DecodeError, EncodeError

CHECK = b"123456789"


@pytest.mark.parametrize("function, value", [
    (checksums.crc16_arc, 0xBB3D),
    (checksums.crc16_modbus, 0x4B37),
    (checksums.crc16_xmodem, 0x31C3),
    (checksums.crc16_ccitt_false, 0x29B1),
    (checksums.crc16_x25, 0x906E),
])
def test_crc_catalogue_check_values(function, value):
    assert function(CHECK) == value


def test_xor():
    assert checksums.xor8(b"\x01\x02\x04") == 7


@pytest.mark.parametrize("text, degrees", [
    ("2235.1777", 22 + 35.1777 / 60), ("11357.8913", 113 + 57.8913 / 60),
    ("537.5", 5 + 37.5 / 60), ("0.0", 0.0), ("-4807.038", -(48 + 7.038 / 60)),
])
def test_nmea_degrees(text, degrees):
    assert nmea_degrees(text) == pytest.approx(degrees)


@pytest.mark.parametrize("text", ["22²5.1234", "abc", "12.3x", "2275.0", ""])
def test_nmea_degrees_refuses_garbage(text):
    with pytest.raises(DecodeError):
        nmea_degrees(text)


def test_hemisphere_and_bits():
    assert hemisphere(1.5, "S") == -1.5 and hemisphere(-1.5, "E") == 1.5
    with pytest.raises(DecodeError):
        hemisphere(1.0, "Q")
    assert bit(0b100, 2) and not bit(0b100, 1)
    assert bits(0xABCD, 4, 8) == 0xBC


def test_bcd_and_times():
    assert bcd_int(b"\x12\x34") == 1234
    with pytest.raises(DecodeError):
        bcd_int(b"\x1a")
    assert ddmmyy_hhmmss("280122", "105759") == datetime(2022, 1, 28, 10, 57, 59, tzinfo=timezone.utc)
    with pytest.raises(DecodeError):
        utc(22, 13, 1)
    assert gps_time(0) == datetime(1980, 1, 6, tzinfo=timezone.utc)


@pytest.mark.parametrize("params, data", [
    ({"hex": "415424494e464f3d3f0d0a"}, b"AT$INFO=?\r\n"),
    ({"hex": "41 54"}, b"AT"),
    ({"text": "AT$INFO=?"}, b"AT$INFO=?"),
    ({"hex": "4154", "text": "CXZT"}, b"AT"),   # hex wins
    ({"hex": ""}, b""),
    ({"text": ""}, b""),
])
def test_custom_command_bytes(params, data):
    assert custom_command_bytes(params) == data


@pytest.mark.parametrize("params", [
    {}, {"seconds": "60"}, {"hex": "zz"}, {"hex": "415"}, {"hex": "zz", "text": "CXZT"},
    {"text": "caf\u00e9"},
])
def test_custom_command_bytes_refuses(params):
    with pytest.raises(EncodeError):
        custom_command_bytes(params)
