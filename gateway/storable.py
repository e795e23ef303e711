# -*- test-case-name: tests.test_storable -*-
"""
What a device sends, made storable before the writer sees it: one rule for
SQLite and PostgreSQL, so a value one database refuses never reaches either.

A refused row costs every device whose records share its batch, and a device
whose frame is never acked sends it again forever; the rules here keep such
values out of the batch in the first place:

  - a device id is printable ASCII without spaces, 1 to L{DEVICE_ID_MAX}
    characters; anything else is not an id (L{is_device_id});
  - text loses what a database refuses or a terminal acts on: NUL and the other
    control characters (tab, newline and carriage return excepted), DEL, C1
    controls and lone surrogates are written as C{\\xNN} / C{\\uNNNN} escapes
    (L{text});
  - text longer than its column is cut to it; a record's whole event, when cut,
    is kept in the attribute C{event_text} (L{position});
  - a number a column holds is a finite float or null: NaN, infinities and
    integers no float can hold become null (L{number});
  - in attributes (JSON), a NaN or infinite float and an integer outside 64
    bits become their text (C{"nan"}, C{"123..."}); keys are text; bytes are hex;
    anything else is its text; strings are cut at L{ATTRIBUTE_TEXT_MAX} and
    nesting at L{ATTRIBUTE_DEPTH_MAX} (L{attributes}).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import attrs

from gateway.model import canonical_json

try:
    from orjson import OPT_SORT_KEYS as _SORT_KEYS
    from orjson import dumps as _orjson
except ImportError:  # optional: json writes the same text, slower (PyPy has no orjson)
    _orjson = None

#: Longest device id (the width of C{devices.id}).
DEVICE_ID_MAX = 64
#: Widths of the text columns of C{positions} and C{devices}.
EVENT_MAX = 64
PROTOCOL_MAX = 32
PEER_MAX = 128
TRANSPORT_MAX = 8
#: Longest attribute key and string value kept.
ATTRIBUTE_KEY_MAX = 128
ATTRIBUTE_TEXT_MAX = 65536
#: Deepest nesting of lists and objects kept in attributes.
ATTRIBUTE_DEPTH_MAX = 16

_INT64 = 2 ** 63

_ID = re.compile(r"[!-~]{1,%d}" % DEVICE_ID_MAX)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_search = _UNSAFE.search


def is_device_id(value) -> bool:
    """
    Whether C{value} may be a device id: printable ASCII, no spaces, at most
    L{DEVICE_ID_MAX} characters.
    """
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _escape(match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def text(value, limit: Optional[int] = None) -> Optional[str]:
    """
    C{value} as text a database stores as it is: unsafe characters escaped,
    cut at C{limit} characters. L{None} stays L{None}.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(_escape, value)
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return value


def number(value) -> Optional[float]:
    """
    C{value} as a float column holds it: a finite float, else L{None}.
    """
    if value is None:
        return None
    if type(value) is float:
        return value if math.isfinite(value) else None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _value(value, depth: int):
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if kind is str:
        return text(value, ATTRIBUTE_TEXT_MAX)
    if kind is int:
        return value if -_INT64 <= value < _INT64 else str(value)
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if depth >= ATTRIBUTE_DEPTH_MAX:
        return text(repr(value), ATTRIBUTE_TEXT_MAX)
    if isinstance(value, Mapping):
        return {text(k, ATTRIBUTE_KEY_MAX): _value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_value(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _value(int(value), depth)
    if isinstance(value, float):
        return _value(float(value), depth)
    return text(value, ATTRIBUTE_TEXT_MAX)


def attributes(value: Mapping[str, Any]) -> dict:
    """
    A record's attributes as JSON every database stores the same way.
    """
    return _value(dict(value), 0)


#: What L{_scan} finds: a value that is not storable as it is; one that is,
#: and whose canonical JSON orjson writes byte for byte as C{json} does; one
#: that is, but whose JSON only C{json} writes that way.
DIRTY, FAST, CLEAN = 0, 1, 2

#: Keys found clean already (decoders use a few hundred names): a set lookup
#: instead of three checks, for every attribute of every record.
_clean_keys: set = set()
_CLEAN_KEYS_MAX = 20000


def _scan_value(value, depth: int) -> int:
    kind = type(value)
    if kind is str:
        if len(value) > ATTRIBUTE_TEXT_MAX:
            return DIRTY
        if value.isascii() and value.isprintable():
            return FAST
        return CLEAN if _search(value) is None else DIRTY
    if kind is int:
        return FAST if -_INT64 <= value < _INT64 else DIRTY
    if kind is float:
        if value - value != 0.0:  # NaN and infinities
            return DIRTY
        # orjson writes |x| < 1e-4 without json's two-digit exponent.
        return CLEAN if -1e-4 < value < 1e-4 and value else FAST
    if value is None or kind is bool:
        return FAST
    if depth >= ATTRIBUTE_DEPTH_MAX:
        return DIRTY
    if kind is dict:
        return _scan(value, depth + 1)
    if kind is list or kind is tuple:
        found = FAST
        for v in value:
            status = _scan_value(v, depth + 1)
            if status == DIRTY:
                return DIRTY
            if status == CLEAN:
                found = CLEAN
        return found
    return DIRTY


def _scan(value: dict, depth: int) -> int:
    # The common case, checked without building anything: this runs for every
    # record. Printable ASCII needs no regular expression.
    found = FAST
    for k, v in value.items():
        if type(k) is not str:
            return DIRTY
        if k not in _clean_keys:
            if len(k) > ATTRIBUTE_KEY_MAX:
                return DIRTY
            if k.isascii() and k.isprintable():
                if len(_clean_keys) < _CLEAN_KEYS_MAX:
                    _clean_keys.add(k)
            elif _search(k) is not None:
                return DIRTY
            else:
                found = CLEAN
        kind = type(v)
        if kind is str:
            if len(v) > ATTRIBUTE_TEXT_MAX:
                return DIRTY
            if not (v.isascii() and v.isprintable()):
                if _search(v) is not None:
                    return DIRTY
                found = CLEAN
        elif kind is float:
            if v - v != 0.0:
                return DIRTY
            if -1e-4 < v < 1e-4 and v:
                found = CLEAN
        elif kind is int:
            if not -_INT64 <= v < _INT64:
                return DIRTY
        elif not (v is None or kind is bool):
            status = _scan_value(v, depth)
            if status == DIRTY:
                return DIRTY
            if status == CLEAN:
                found = CLEAN
    return found


def _clean_number(value) -> bool:
    return value is None or (type(value) is float and value - value == 0.0)


def _status(record) -> int:
    event = record.event
    given = record.attributes
    if ((event is None or (type(event) is str and len(event) <= EVENT_MAX and _search(event) is None))
            and _clean_number(record.latitude) and _clean_number(record.longitude)
            and _clean_number(record.speed_kmh) and _clean_number(record.course)
            and _clean_number(record.altitude_m)):
        return _scan(given if type(given) is dict else dict(given), 0)
    return DIRTY


def _made_storable(record):
    extra = attributes(record.attributes)
    event = record.event
    if event is not None:
        event = text(event)
        if len(event) > EVENT_MAX:
            extra["event_text"] = event[:ATTRIBUTE_TEXT_MAX]
            event = event[:EVENT_MAX]
    return attrs.evolve(
        record, event=event, attributes=extra, latitude=number(record.latitude),
        longitude=number(record.longitude), speed_kmh=number(record.speed_kmh),
        course=number(record.course), altitude_m=number(record.altitude_m))


def prepared(record) -> tuple:
    """
    C{(position(record), canonical JSON of its attributes)}: the JSON text is
    exactly L{gateway.model.canonical_json}'s (fingerprints depend on it),
    written by orjson when it writes the same bytes, which it does for
    printable ASCII text and every number but the smallest floats.
    """
    status = _status(record)
    if status == DIRTY:
        record = _made_storable(record)
        status = CLEAN
    if status == FAST and _orjson is not None:
        return record, _orjson(record.attributes, option=_SORT_KEYS).decode()
    return record, canonical_json(record.attributes)


def position(record):
    """
    C{record} (a L{gateway.model.Position}) as every database stores it: the
    record itself when it is already storable, else a copy made so by the rules
    above.
    """
    return record if _status(record) != DIRTY else _made_storable(record)
