# -*- test-case-name: tests.test_fields -*-
"""
Checksums used by tracker protocols, implemented once for every decoder.

Each CRC is named by its catalogue name (as in the "Catalogue of parametrised
CRC algorithms") so a decoder says which one its vendor uses, not how it works.
"""

from __future__ import annotations

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


def crc16(data: bytes, poly: int, init: int, reflected: bool, xorout: int = 0) -> int:
    """
    A 16-bit CRC with the catalogue's parameters (C{refin == refout == reflected}).
    """
    table = _table(poly, reflected)
    crc = init
    if reflected:
        for b in data:
            crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    else:
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
    out = 0
    for b in data:
        out ^= b
    return out


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
