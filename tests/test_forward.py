"""
Forwarding pieces on their own: the C{--forward} syntax, what a sink's URL
means, the record's JSON shape, the store's commit notification, and
C{forward list|replay} on a real database.
"""

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from twisted.python import usage

from gateway import schema
from gateway.forward import cli as forward_cli
from gateway.forward.amqp import AmqpSink, key_safe
from gateway.forward.mqtt import MqttSink, topic_safe
from gateway.forward.outbox import read_batch, register
from gateway.forward.sinks import Message, expand, redact
from gateway.forward.webhook import WebhookSink
from gateway.model import Position
from gateway.ordering import serialize_ids
from gateway.queries import positions as query_positions
from gateway.tap import Options
from tests.test_store import store, wait_for  # noqa: F401 (store: the fixture)


def test_forward_option_checks_every_url_before_start():
    options = Options()
    options.parseOptions(["--db", "sqlite:///unused.db", "--forward", "a=http://127.0.0.1:9/x",
                          "--forward", "b=mqtt://127.0.0.1/t/{device_id}",
                          "--forward", "c=amqp://u:p@127.0.0.1:5672/ex?routing_key={protocol}"])
    assert list(options["forwards"]) == ["a", "b", "c"]
    for bad in ("nourl", "a=ftp://host/x", "a=http:///nohost", "a b=http://h/", "a=mqtt://h/t/#",
                "a=mqtt://h:99999/t"):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--forward", bad])
    with pytest.raises(usage.UsageError, match="twice"):
        Options().parseOptions(["--forward", "a=http://h/", "--forward", "a=http://g/"])


def test_sink_urls():
    hook = WebhookSink("h", "http://127.0.0.1:8080/in?x=1&secret=k")
    assert hook.url == "http://127.0.0.1:8080/in?x=1" and hook.secret == b"k"
    mq = MqttSink("m", "mqtt://me:pw@127.0.0.1:1884/fleet/%7Bdevice_id%7D")
    assert (mq.host, mq.port, mq.topic, mq.username, mq.password) == \
        ("127.0.0.1", 1884, "fleet/{device_id}", "me", "pw")
    rb = AmqpSink("r", "amqp://127.0.0.1/tracks?routing_key={protocol}.{device_id}")
    assert (rb.exchange, rb.routing_key, rb.username, rb.port) == \
        ("tracks", "{protocol}.{device_id}", "guest", 5672)
    assert AmqpSink("r", "amqp://127.0.0.1/").exchange == ""
    assert redact("amqp://u:pw@h/x?routing_key=k") == "amqp://u:***@h/x?routing_key=k"
    assert redact("http://h/p?a=1&secret=s") == "http://h/p?a=1&secret=***"


def test_topics_and_keys_from_hostile_device_ids():
    m = Message("position", "a/b+c#d", "toy", {})
    assert expand("t/{protocol}/{device_id}", m, topic_safe) == "t/toy/a_b_c_d"
    assert expand("{protocol}.{device_id}", Message("position", "x.y*", None, {}), key_safe) == \
        "unknown.x_y_"


def test_webhook_signature():
    hook = WebhookSink("h", "http://127.0.0.1/in?secret=k")
    body = hook.body([Message("position", "d", "toy", {"id": 1})])
    headers = hook._headers(body, "position")
    assert body == b'[{"id":1}]'
    assert headers.getRawHeaders(b"X-Trackport-Signature") == [
        ("sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()).encode()]
    assert headers.getRawHeaders(b"X-Trackport-Kind") == [b"position"]


def rec(second, **attributes):
    return Position(time=datetime(2024, 5, 1, 12, 0, second, tzinfo=timezone.utc), latitude=1.0,
                    longitude=2.0, valid=True, attributes=attributes)


def test_commit_listener_and_the_record_shape(store):
    calls = []
    store.add_commit_listener(lambda: calls.append(1))
    wait_for(store.submit("dev1", "toy", "peer", [rec(0), rec(1, archive=True)]))
    assert calls == [1]
    store.touch("dev1", "toy", "tcp", "peer")
    wait_for(store.submit("dev1", "toy", "peer", []))
    assert calls == [1]
    with store.engine.begin() as connection:
        register(connection, "s", "http://h/")
    with store.engine.connect() as connection:
        batch = read_batch(connection, "s", 10)
    # A sink registered now starts after what is stored.
    assert batch.messages == [] and batch.position_id == 2
    shown = query_positions(store.engine)
    assert [(r["id"], r["archive"]) for r in shown] == [(1, False), (2, True)]
    assert shown[1]["attributes"] == {"archive": True}


def test_list_and_replay(store):
    with store.engine.begin() as connection:
        register(connection, "s", "http://h/")
    wait_for(store.submit("dev1", "toy", "peer", [rec(0), rec(1), rec(2)]))
    with store.engine.begin() as connection:
        serialize_ids(connection)
        connection.execute(schema.command_events.insert().values(
            command_id=3, device_id="dev1", type="engine_stop", status="sent",
            at=datetime.now(timezone.utc)))
    with store.engine.connect() as connection:
        batch = read_batch(connection, "s", 2)
    assert [(m.kind, m.body["id"]) for m in batch.messages] == [
        ("position", 1), ("position", 2), ("command_status", 1)]
    assert batch.messages[2].protocol == "toy" and batch.messages[2].body["status"] == "sent"
    [status] = forward_cli.sink_status(store.engine)
    assert (status["waiting"], status["waiting_events"], status["position_id"]) == (3, 1, 0)
    assert status["lag_s"] >= 0
    with store.engine.begin() as connection:
        connection.execute(schema.forward_sinks.update().values(position_id=3, event_id=1))
    assert forward_cli.replay(store.engine, "s", from_id=2)["position_id"] == 1
    # A replay never moves a cursor forward.
    assert forward_cli.replay(store.engine, "s", from_id=3)["position_id"] == 1
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    done = forward_cli.replay(store.engine, "s", since=since)
    assert (done["position_id"], done["event_id"], done["waiting"]) == (0, 0, 3)
    with pytest.raises(KeyError):
        forward_cli.replay(store.engine, "nope", from_id=1)
    generation = store.engine.connect().execute(schema.forward_sinks.select()).mappings().one()["generation"]
    assert generation == 3
