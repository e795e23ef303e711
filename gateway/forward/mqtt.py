# -*- test-case-name: tests.test_forward -*-
"""
MQTT sink: one QoS 1 message per record on the topic of the URL's path
(C{{device_id}} and C{{protocol}} expand); the broker's PUBACK means delivered.

paho-mqtt is the maintained MQTT client (Eclipse); it runs its network loop
on a thread of its own, and every callback is handed to the reactor thread
with C{callFromThread}. A connection is used until it fails, then thrown
away: the next batch opens a new one with a clean session, so paho never
re-sends on its own what the outbox will send again from its cursor.
"""

from __future__ import annotations

import itertools
import os
from urllib.parse import unquote

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from zope.interface import implementer

from gateway.forward.sinks import ISink, expand, target

_connections = itertools.count(1)


class BrokerError(Exception):
    """
    The broker refused or dropped the connection, or a publish.
    """


def topic_safe(text: str) -> str:
    """
    Text from a device as one topic level: no wildcards, no level separator.
    """
    return "".join("_" if c in "+#/" or not " " < c <= "~" else c for c in text) or "_"


class _Connection:
    """
    One paho client, connected once; dead for good after its first failure.
    """

    def __init__(self, sink):
        import paho.mqtt.client as mqtt

        self.sink = sink
        self.reactor = sink.reactor
        self.dead = None
        self.stopped = None
        self.pending = {}
        self.ready = Deferred()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"trackport-{sink.name}-{os.getpid()}-{next(_connections)}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(sink.batch_size)
        client.reconnect_delay_set(1, 2)
        if sink.username is not None:
            client.username_pw_set(sink.username, sink.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    @defer.inlineCallbacks
    def open(self):
        try:
            yield threads.deferToThread(self.client.connect, self.sink.host, self.sink.port, 30)
        except Exception as e:
            self._lost(f"cannot connect: {e}")
        else:
            self.client.loop_start()
        yield self.ready.addTimeout(self.sink.timeout, self.reactor)

    # paho's thread
    def _on_connect(self, client, userdata, flags, reason, properties):
        self.reactor.callFromThread(self._connected, reason)

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.reactor.callFromThread(self._lost, f"disconnected ({reason})")

    def _on_publish(self, client, userdata, mid, reason, properties):
        self.reactor.callFromThread(self._acked, mid)

    # reactor thread
    def _connected(self, reason) -> None:
        if reason.is_failure:
            self._lost(f"connection refused ({reason})")
        elif not self.ready.called:
            self.ready.callback(None)

    def _acked(self, mid) -> None:
        d = self.pending.pop(mid, None)
        if d is not None:
            d.callback(None)

    def _lost(self, why: str) -> None:
        if self.dead is not None:
            return
        self.dead = why
        error = BrokerError(why)
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(error)
        if not self.ready.called:
            self.ready.errback(error)
        client = self.client

        def stop():
            client.disconnect()
            client.loop_stop()

        self.stopped = threads.deferToThread(stop)

    def publish(self, topic: str, payload: bytes) -> Deferred:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != 0:
            return defer.fail(BrokerError(f"publish refused (paho error {info.rc})"))
        d = self.pending[info.mid] = Deferred()
        return d

    def close(self) -> Deferred:
        self._lost("closed")
        return self.stopped


@implementer(ISink)
class MqttSink:
    kind = "mqtt"
    batch_size = 500
    #: Seconds to connect, and for a batch's PUBACKs.
    timeout = 30.0

    def __init__(self, name: str, url: str, reactor=None):
        parts, self.port = target(name, url, 1883)
        self.topic = unquote(parts.path[1:]) or "trackport/{device_id}"
        if "+" in self.topic or "#" in self.topic:
            raise ValueError(f"sink {name}: a topic to publish to has no wildcards ({self.topic!r})")
        self.host = parts.hostname
        self.username = unquote(parts.username) if parts.username is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.name = name
        self.reactor = reactor
        self._connection = None

    @defer.inlineCallbacks
    def deliver(self, messages):
        if self._connection is None or self._connection.dead is not None:
            self._connection = _Connection(self)
            try:
                yield self._connection.open()
            except Exception:
                self._connection.close()
                raise
        connection = self._connection
        acks = [connection.publish(expand(self.topic, m, topic_safe), m.payload()) for m in messages]
        done = defer.gatherResults(acks, consumeErrors=True)
        try:
            yield done.addTimeout(self.timeout, self.reactor)
        except defer.FirstError as e:
            connection.close()
            e.subFailure.raiseException()
        except Exception:
            connection.close()
            raise

    def close(self):
        if self._connection is not None:
            connection, self._connection = self._connection, None
            return connection.close()
