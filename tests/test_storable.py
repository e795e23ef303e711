"""
The rules that make what a device sends storable, the same on every database.
"""

from datetime import datetime, timezone

from gateway import storable
from gateway.model import Position


def test_device_ids():
    assert storable.is_device_id("353327020115804")
    assert storable.is_device_id("A-b_c.9!~")
    assert storable.is_device_id("x" * 64)
    assert not storable.is_device_id("x" * 65)
    assert not storable.is_device_id("1" * 100)
    assert not storable.is_device_id("1\x00477583")
    assert not storable.is_device_id("has space")
    assert not storable.is_device_id("esc\x1b[2J")
    assert not storable.is_device_id("caf\u00e9")
    assert not storable.is_device_id("")
    assert not storable.is_device_id(12345)
    assert not storable.is_device_id(None)


def test_text_escapes_what_databases_refuse_and_cuts():
    assert storable.text("a\x00b") == "a\\x00b"
    assert storable.text("bell\x07 esc\x1b del\x7f c1\x85") == "bell\\x07 esc\\x1b del\\x7f c1\\x85"
    assert storable.text("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    # Whitespace a database stores as it is, and any printable text, stay.
    assert storable.text("tab\tnl\ncr\r caf\u00e9 \u4e2d") == "tab\tnl\ncr\r caf\u00e9 \u4e2d"
    assert storable.text("x" * 100, 64) == "x" * 64
    assert storable.text(None) is None
    assert storable.text(12) == "12"


def test_numbers():
    assert storable.number(1.5) == 1.5
    assert storable.number(3) == 3.0
    assert storable.number(float("nan")) is None
    assert storable.number(float("inf")) is None
    assert storable.number(-float("inf")) is None
    assert storable.number(10 ** 400) is None
    assert storable.number("12.5") == 12.5
    assert storable.number("x") is None
    assert storable.number(None) is None


def test_attributes_recursively():
    deep = current = {}
    for _ in range(40):
        current["d"] = {}
        current = current["d"]
    out = storable.attributes({
        "k\x00": "v\x00", "n": [1, "\x01", {"x\x02": float("nan")}], 1: "int key",
        "big": 2 ** 64, "neg": -(2 ** 63), "inf": float("inf"), "b": b"\x00\xff", "ok": True,
        "none": None, "deep": deep, "long": "y" * (storable.ATTRIBUTE_TEXT_MAX + 10),
    })
    assert out["k\\x00"] == "v\\x00"
    assert out["n"] == [1, "\\x01", {"x\\x02": "nan"}]
    assert out["1"] == "int key"
    assert out["big"] == str(2 ** 64) and out["neg"] == -(2 ** 63)
    assert out["inf"] == "inf" and out["b"] == "00ff" and out["ok"] is True and out["none"] is None
    assert len(out["long"]) == storable.ATTRIBUTE_TEXT_MAX
    depth, node = 0, out["deep"]
    while isinstance(node, dict):
        node, depth = node["d"], depth + 1
    assert depth == storable.ATTRIBUTE_DEPTH_MAX - 1 and isinstance(node, str)


def test_storable_position_is_the_same_object():
    p = Position(time=datetime(2024, 1, 1, tzinfo=timezone.utc), latitude=1.0, longitude=2.0,
                 event="ev", attributes={"a": 1, "b": [1.5, "x"], "c": {"d": None}})
    assert storable.position(p) is p


def test_position_made_storable():
    p = Position(time=None, latitude=float("nan"), longitude=float("inf"), speed_kmh=10 ** 400,
                 course=1.0, event="E\x00" + "x" * 100, attributes={"a": "\x00"})
    q = storable.position(p)
    assert q.latitude is None and q.longitude is None and q.speed_kmh is None and q.course == 1.0
    assert q.event == ("E\\x00" + "x" * 100)[:storable.EVENT_MAX]
    assert q.attributes["event_text"] == "E\\x00" + "x" * 100
    assert q.attributes["a"] == "\\x00"
    # The same raw record re-sent is made the same: it is still stored once.
    assert storable.position(p).fingerprint() == q.fingerprint()


# -- the fast paths give exactly what the reference paths give -------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from gateway.model import canonical_json, isoformat  # noqa: E402

_keys = st.one_of(st.text(max_size=8), st.sampled_from(["speed", "io1", "gosafe.model", "k" * 129]))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 62, max_value=2 ** 65),
    st.floats(), st.floats(min_value=-1e-3, max_value=1e-3), st.floats(min_value=1e15, max_value=1e17),
    st.text(), st.text(alphabet=st.characters(max_codepoint=0xa0)), st.binary(max_size=4))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6), st.one_of(st.none(), st.text(max_size=80)),
       st.one_of(st.none(), st.floats()))
def test_prepared_is_position_and_canonical_json(attributes, event, latitude):
    """
    L{storable.prepared} (orjson where it writes the same bytes) gives what
    L{storable.position} and L{canonical_json} give: fingerprints of stored
    records depend on that text.
    """
    record = Position(time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), latitude=latitude,
                      event=event, attributes=attributes)
    reference = storable.position(record)
    made, text = storable.prepared(record)
    assert made == reference and made.attributes == reference.attributes
    assert text == canonical_json(reference.attributes)


@given(st.datetimes(timezones=st.one_of(st.none(), st.timezones())))
def test_isoformat_text(value):
    try:
        utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        return
    expected = utc.replace(tzinfo=None, microsecond=0).isoformat()
    if utc.microsecond:
        expected += ".%03d" % (utc.microsecond // 1000)
    assert isoformat(value) == expected + "Z"


def test_printable_ascii_attributes_take_the_fast_writer(monkeypatch):
    """
    Where orjson is installed (CPython), it writes the JSON of the common
    record; text it would write differently goes to C{json}.
    """
    import pytest

    orjson = pytest.importorskip("orjson")
    calls = []
    monkeypatch.setattr(storable, "_orjson", lambda *a, **kw: calls.append(a) or orjson.dumps(*a, **kw))
    record = Position(time=None, attributes={"b": "G3SC;V3.37", "a": 1.5, "io": [1, None, True]})
    assert storable.prepared(record)[1] == '{"a":1.5,"b":"G3SC;V3.37","io":[1,null,true]}'
    assert len(calls) == 1
    for slow in ({"t": "caf\u00e9"}, {"t": "tab\t"}, {"x": 1e-05}, {"k\u00e9": 1}):
        record = Position(time=None, attributes=slow)
        assert storable.prepared(record)[1] == canonical_json(slow)
    assert len(calls) == 1
