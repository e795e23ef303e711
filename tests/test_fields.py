"""
The shared helpers every decoder relies on.
"""

from datetime import datetime, timezone

import pytest

from gateway import checksums
from gateway.encoding import custom_command_bytes
from gateway.fields import (
    bcd_int, bit, bits, ddmmyy_hhmmss, gps_time, hemisphere, nmea_degrees, optional_float,
    optional_int, utc,
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


def _bitwise_crc16(data, poly, init, reflected, xorout):
    # The textbook definition, one bit at a time; crc16 takes the init of a
    # reflected CRC as the reflected register holds it.
    def reflect(value, width):
        return int(format(value, f"0{width}b")[::-1], 2)

    crc = reflect(init, 16) if reflected else init
    for byte in data:
        crc ^= (reflect(byte, 8) if reflected else byte) << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return (reflect(crc, 16) if reflected else crc) ^ xorout


@pytest.mark.parametrize("poly, init, reflected, xorout", [
    (0x8005, 0x0000, True, 0), (0x8005, 0xFFFF, True, 0), (0x1021, 0x0000, False, 0),
    (0x1021, 0xFFFF, False, 0), (0x1021, 0xFFFF, True, 0xFFFF), (0x1021, 0x1D0F, True, 0),
    (0x8BB7, 0x0000, False, 0), (0x3D65, 0x0000, True, 0xFFFF),
])
def test_crc16_every_path_against_the_bitwise_definition(poly, init, reflected, xorout):
    # Even and odd lengths (the word table's last byte), and every byte value.
    data = bytes(range(256)) + bytes(range(255, -1, -3))
    for size in (0, 1, 2, 3, 8, 9, 255, 256, len(data)):
        expected = _bitwise_crc16(data[:size], poly, init, reflected, xorout)
        assert checksums.crc16(data[:size], poly, init, reflected, xorout) == expected
        assert checksums.crc16(bytearray(data[:size]), poly, init, reflected, xorout) == expected


def test_xor_any_length():
    data = bytes((i * 37 + 11) & 0xFF for i in range(300))
    for size in range(0, 300, 7):
        expected = 0
        for byte in data[:size]:
            expected ^= byte
        assert checksums.xor8(data[:size]) == expected


@pytest.mark.parametrize("text, value", [
    ("12.5", 12.5), (" 12.5\t", 12.5), ("-0", -0.0), ("1e3", 1000.0), ("", None), ("  ", None),
])
def test_optional_float(text, value):
    assert repr(optional_float(text)) == repr(value)


@pytest.mark.parametrize("text", ["nan", " inf", "-Infinity", "1e999", "1.2.3", "x"])
def test_optional_float_refuses(text):
    with pytest.raises(DecodeError):
        optional_float(text)


@pytest.mark.parametrize("text, value", [("42", 42), (" -7 ", -7), ("", None), (" ", None)])
def test_optional_int(text, value):
    assert optional_int(text) == value


@pytest.mark.parametrize("text", ["4.2", "0x10", "ab"])
def test_optional_int_refuses(text):
    with pytest.raises(DecodeError):
        optional_int(text)


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
    assert ddmmyy_hhmmss("010100", "000000.250").tzinfo is timezone.utc
    for date, time in (("310222", "105759"), ("280122", "246000"), ("28012x", "105759"),
                       ("280122", "10575")):
        with pytest.raises(DecodeError):
            ddmmyy_hhmmss(date, time)
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
