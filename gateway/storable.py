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


def _clean_value(value, depth: int) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= ATTRIBUTE_TEXT_MAX and _search(value) is None
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is float:
        return value - value == 0.0  # false for NaN and infinities
    if value is None or kind is bool:
        return True
    if depth >= ATTRIBUTE_DEPTH_MAX:
        return False
    if kind is dict:
        return _clean(value, depth + 1)
    if kind is list or kind is tuple:
        for v in value:
            if not _clean_value(v, depth + 1):
                return False
        return True
    return False


def _clean(value: dict, depth: int) -> bool:
    # The common case, checked without building anything: this runs for
    # every record on the reactor thread.
    for k, v in value.items():
        if type(k) is not str or len(k) > ATTRIBUTE_KEY_MAX or _search(k) is not None:
            return False
        kind = type(v)
        if kind is str:
            if len(v) > ATTRIBUTE_TEXT_MAX or _search(v) is not None:
                return False
        elif kind is float:
            if v - v != 0.0:
                return False
        elif kind is int:
            if not -_INT64 <= v < _INT64:
                return False
        elif not (v is None or kind is bool or _clean_value(v, depth)):
            return False
    return True


def _clean_number(value) -> bool:
    return value is None or (type(value) is float and value - value == 0.0)


def position(record):
    """
    C{record} (a L{gateway.model.Position}) as every database stores it: the
    record itself when it is already storable, else a copy made so by the rules
    above.
    """
    event = record.event
    given = record.attributes
    if ((event is None or (type(event) is str and len(event) <= EVENT_MAX and _search(event) is None))
            and _clean_number(record.latitude) and _clean_number(record.longitude)
            and _clean_number(record.speed_kmh) and _clean_number(record.course)
            and _clean_number(record.altitude_m)
            and _clean(given if type(given) is dict else dict(given), 0)):
        return record
    extra = attributes(record.attributes)
    if event is not None:
        event = text(event)
        if len(event) > EVENT_MAX:
            extra["event_text"] = event[:ATTRIBUTE_TEXT_MAX]
            event = event[:EVENT_MAX]
    return attrs.evolve(
        record, event=event, attributes=extra, latitude=number(record.latitude),
        longitude=number(record.longitude), speed_kmh=number(record.speed_kmh),
        course=number(record.course), altitude_m=number(record.altitude_m))
