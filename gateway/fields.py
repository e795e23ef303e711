# -*- test-case-name: tests.test_fields -*-
"""
Field parsers shared by decoders: BCD, bit fields, NMEA-style coordinates and
device clocks.

Every function raises L{DecodeError} on input that cannot be what it claims to
be, so a decoder can call them without wrapping each in its own checks.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Optional

from gateway.interfaces import DecodeError

#: Start of GPS time (seconds since this moment, no leap seconds applied).
GPS_EPOCH = datetime(1980, 1, 6, tzinfo=timezone.utc)


def digits(text: str) -> bool:
    """
    C{True} when C{text} is one or more ASCII digits (C{str.isdigit} also
    accepts digits of other scripts, which C{int} then refuses).
    """
    return text.isascii() and text.isdigit()


# -- BCD ---------------------------------------------------------------------

def is_bcd(data: bytes) -> bool:
    """
    C{True} when every nibble of C{data} is a decimal digit.
    """
    return all((b >> 4) < 10 and (b & 0x0F) < 10 for b in data)


def bcd(data: bytes) -> str:
    """
    The digits of packed BCD C{data}, as text (C{b'\\x12\\x34'} -> C{'1234'}).

    Nibbles above 9 are kept as hex letters; use L{is_bcd} to reject them.
    """
    return data.hex()


def bcd_int(data: bytes) -> int:
    """
    The value of packed BCD C{data}.

    @raise DecodeError: when a nibble is not a decimal digit.
    """
    if not is_bcd(data):
        raise DecodeError(f"not BCD: {data.hex()}")
    return int(data.hex()) if data else 0


# -- bits --------------------------------------------------------------------

def bit(value: int, index: int) -> bool:
    """
    Bit C{index} (0 = least significant) of C{value}.
    """
    return bool((value >> index) & 1)


def bits(value: int, index: int, count: int) -> int:
    """
    C{count} bits of C{value} starting at bit C{index} (0 = least significant).
    """
    return (value >> index) & ((1 << count) - 1)


# -- coordinates -------------------------------------------------------------

def nmea_degrees(text: str) -> float:
    """
    Degrees from an NMEA-style C{[d]ddmm.mmmm} value.

    The minutes are the last two integer digits and what follows the point; all
    digits before them are degrees. That also reads firmware that drops leading
    zeros (C{'537.5'} is 5 degrees 37.5 minutes) or the point itself
    (C{'22351777'} read with L{nmea_degrees_implied}).

    @raise DecodeError: when C{text} is not a number or the minutes exceed 60.
    """
    text = text.strip()
    negative = text.startswith("-")
    if negative:
        text = text[1:]
    whole, _, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (
            fraction and not (fraction.isascii() and fraction.isdigit())):
        raise DecodeError(f"not a coordinate: {text!r}")
    degrees = int(whole[:-2] or "0")
    minutes = float(whole[-2:] + "." + (fraction or "0"))
    if minutes >= 60:
        raise DecodeError(f"minutes out of range in coordinate {text!r}")
    value = degrees + minutes / 60.0
    return -value if negative else value


#: The letters as they come, without L{hemisphere}'s strip() and upper().
_HEMISPHERES = {"N": True, "E": True, "S": False, "W": False,
                "n": True, "e": True, "s": False, "w": False}


def hemisphere(value: float, letter: str) -> float:
    """
    Apply an NMEA hemisphere letter (C{N}/C{S}/C{E}/C{W}) to a magnitude.

    @raise DecodeError: for any other letter.
    """
    positive = _HEMISPHERES.get(letter)
    if positive is not None:
        return abs(value) if positive else -abs(value)
    letter = letter.strip().upper()
    if letter in ("N", "E"):
        return abs(value)
    if letter in ("S", "W"):
        return -abs(value)
    raise DecodeError(f"not a hemisphere: {letter!r}")


def check_coordinates(latitude: float, longitude: float) -> None:
    """
    @raise DecodeError: when the pair is outside the globe.
    """
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        raise DecodeError(f"coordinates out of range: {latitude}, {longitude}")


# -- time --------------------------------------------------------------------

_UTC = timezone.utc


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    """
    A UTC time from device fields; two-digit years are 20xx.

    @raise DecodeError: when the fields are not a real date and time.
    """
    if year < 100:
        year += 2000
    try:
        # Positional: the C constructor parses keywords at twice the cost.
        return datetime(year, month, day, hour, minute, second, 0, _UTC)
    except ValueError as e:
        raise DecodeError(
            f"bad date/time {year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
        ) from e


def ddmmyy_hhmmss(date: str, time: str) -> datetime:
    """
    A UTC time from NMEA-style C{DDMMYY} and C{HHMMSS[.sss]} strings.
    """
    # Every record of a text protocol comes through here: the checks are
    # inlined and the datetime built directly, L{utc} only words the error.
    if len(date) != 6 or not (date.isascii() and date.isdigit()):
        raise DecodeError(f"bad date {date!r}")
    whole = time.partition(".")[0]
    if len(whole) != 6 or not (whole.isascii() and whole.isdigit()):
        raise DecodeError(f"bad time {time!r}")
    day_month, year = divmod(int(date), 100)
    day, month = divmod(day_month, 100)
    hour_minute, second = divmod(int(whole), 100)
    hour, minute = divmod(hour_minute, 100)
    try:
        return datetime(2000 + year, month, day, hour, minute, second, 0, _UTC)
    except ValueError:
        return utc(year, month, day, hour, minute, second)


def unix_time(seconds: float) -> datetime:
    """
    A UTC time from seconds since 1970.
    """
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError) as e:
        raise DecodeError(f"bad unix time {seconds}") from e


def gps_time(seconds: float) -> datetime:
    """
    A UTC time from seconds since the GPS epoch (1980-01-06).
    """
    try:
        return GPS_EPOCH + timedelta(seconds=seconds)
    except OverflowError as e:
        raise DecodeError(f"bad GPS time {seconds}") from e


def knots_to_kmh(knots: float) -> float:
    return knots * 1.852


_INFINITY = math.inf


def optional_float(text: str) -> Optional[float]:
    """
    A float from a text field; L{None} when empty, L{DecodeError} when garbage
    or not finite (C{nan}, C{inf}: no record can hold them).
    """
    # Fast path for the usual number: float() skips the same surrounding
    # whitespace as str.strip(), and NaN fails both comparisons.
    if text:
        try:
            value = float(text)
        except ValueError:
            pass
        else:
            if -_INFINITY < value < _INFINITY:
                return value
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as e:
        raise DecodeError(f"not a number: {text!r}") from e
    if not math.isfinite(value):
        raise DecodeError(f"not a finite number: {text!r}")
    return value


def optional_int(text: str) -> Optional[int]:
    """
    A decimal integer from a text field; L{None} when empty, L{DecodeError}
    when garbage.
    """
    # Fast path: int() skips the same surrounding whitespace as str.strip().
    if text:
        try:
            return int(text)
        except ValueError:
            pass
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError as e:
        raise DecodeError(f"not an integer: {text!r}") from e


def optional_number(text: str):
    """
    An C{int} when the text field has no decimal point, else a C{float} (see
    L{optional_float}); L{None} when empty.
    """
    return optional_float(text) if "." in text else optional_int(text)


def nmea_degrees_implied(text: str, decimals: int = 4) -> float:
    """
    Degrees from an NMEA-style coordinate written without its decimal point:
    the last C{decimals} digits are the fraction of the minutes
    (C{'37573392'} is 37 degrees 57.3392 minutes).

    @raise DecodeError: when C{text} is not digits or the minutes exceed 60.
    """
    text = text.strip()
    if not digits(text) or len(text) < decimals + 2:
        raise DecodeError(f"not an implied-point coordinate: {text!r}")
    return nmea_degrees(text[:-decimals] + "." + text[-decimals:])
