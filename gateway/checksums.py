# -*- test-case-name: tests.test_fields -*-
"""
Checksums used by tracker protocols, implemented once for every decoder.

Each CRC is named by its catalogue name (as in the "Catalogue of parametrised
CRC algorithms") so a decoder says which one its vendor uses, not how it works.
"""

from __future__ import annotations

import array
import binascii
import struct
from functools import lru_cache


def _reflect(value: int, width: int) -> int:
    out = 0
    for _ in range(width):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


@lru_cache(maxsize=None)
def _table(poly: int, reflected: bool) -> tuple:
    table = []
    for byte in range(256):
        if reflected:
            crc = byte
            rpoly = _reflect(poly, 16)
            for _ in range(8):
                crc = (crc >> 1) ^ rpoly if crc & 1 else crc >> 1
        else:
            crc = byte << 8
            for _ in range(8):
                crc = ((crc << 1) ^ poly) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table.append(crc)
    return tuple(table)


#: Each byte with its bits in reverse order, for C{bytes.translate}.
_REVERSED = bytes(_reflect(b, 8) for b in range(256))


def _reflect16(value: int) -> int:
    return (_REVERSED[value & 0xFF] << 8) | _REVERSED[value >> 8]


@lru_cache(maxsize=None)
def _word_table(poly: int) -> array.array:
    """
    For a reflected CRC: the register after 16 bits, for every register value
    it starts from (the input word already XORed in).

    A 16-bit register takes a 16-bit word in one lookup, half the Python loop
    of a byte table. An array (128 KiB), not a tuple of int objects (2.4 MB):
    the lookups of a real frame are scattered, and the tuple's misses in the
    processor's cache cost more than the loop saves.
    """
    table = _table(poly, True)
    half = [(x >> 8) ^ table[x & 0xFF] for x in range(65536)]
    return array.array("H", [(y >> 8) ^ table[y & 0xFF] for y in half])


def _reflected_words(data: bytes, poly: int, init: int) -> int:
    crc = init
    even = len(data) & ~1
    if even:
        table = _word_table(poly)
        words = struct.unpack(f"<{even >> 1}H", data if even == len(data) else data[:even])
        for word in words:
            crc = table[crc ^ word]
    if even != len(data):
        crc = (crc >> 8) ^ _table(poly, True)[(crc ^ data[-1]) & 0xFF]
    return crc


def crc16(data: bytes, poly: int, init: int, reflected: bool, xorout: int = 0) -> int:
    """
    A 16-bit CRC with the catalogue's parameters (C{refin == refout == reflected}).
    """
    # Every frame of several protocols is checked here, so the common
    # polynomials take a C path: binascii.crc_hqx is poly 0x1021 unreflected,
    # and reflected 0x1021 is the same on bit-reversed bytes, bit-reversed.
    if poly == 0x1021:
        if not reflected:
            return binascii.crc_hqx(data, init) ^ xorout
        crc = binascii.crc_hqx(bytes(data).translate(_REVERSED), _reflect16(init))
        return _reflect16(crc) ^ xorout
    if reflected:
        return _reflected_words(data, poly, init) ^ xorout
    table = _table(poly, reflected)
    crc = init
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc ^ xorout


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (a.k.a. CRC-16, CRC-16/IBM): poly 0x8005, init 0, reflected."""
    return crc16(data, 0x8005, 0x0000, True)


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: poly 0x8005, init 0xFFFF, reflected."""
    return crc16(data, 0x8005, 0xFFFF, True)


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM: poly 0x1021, init 0, not reflected."""
    return crc16(data, 0x1021, 0x0000, False)


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (IBM-3740): poly 0x1021, init 0xFFFF, not reflected."""
    return crc16(data, 0x1021, 0xFFFF, False)


def crc16_x25(data: bytes) -> int:
    """CRC-16/X-25 (IBM-SDLC): poly 0x1021, init 0xFFFF, reflected, xorout 0xFFFF."""
    return crc16(data, 0x1021, 0xFFFF, True, 0xFFFF)


def xor8(data: bytes) -> int:
    """XOR of all bytes (NMEA-style checksums)."""
    # Folded in halves as one integer: a few big-integer operations instead
    # of a Python loop over every byte.
    size = len(data)
    value = int.from_bytes(data, "little")
    while size > 1:
        size = (size + 1) >> 1
        value = (value & ((1 << (size << 3)) - 1)) ^ (value >> (size << 3))
    return value


def luhn_valid(digits: str) -> bool:
    """
    C{True} when C{digits} (an IMEI, an ICCID) ends in a correct Luhn check
    digit; C{False} for anything but ASCII decimal digits.
    """
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# -- CRC-8 -------------------------------------------------------------------

@lru_cache(maxsize=None)
def _table8(poly: int) -> tuple:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


def crc8(data: bytes, poly: int, init: int, xorout: int = 0) -> int:
    """
    An 8-bit CRC with the catalogue's parameters, not reflected.
    """
    table = _table8(poly)
    crc = init
    for b in data:
        crc = table[crc ^ b]
    return crc ^ xorout


def crc8_nrsc5(data: bytes) -> int:
    """CRC-8/NRSC-5: poly 0x31, init 0xFF, not reflected, no final XOR."""
    return crc8(data, 0x31, 0xFF)
