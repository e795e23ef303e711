# -*- test-case-name: tests.test_forward -*-
"""
AMQP 0-9-1 sink (RabbitMQ): one persistent message per record, published to
the exchange named by the URL's path with the routing key of C{?routing_key=}
(C{{device_id}} and C{{protocol}} expand); the broker's publisher confirm
means delivered.

pika is the client RabbitMQ's own documentation uses, and it ships an adapter
that runs on the Twisted reactor itself (no thread): a publish on a channel in
confirm mode returns a Deferred that fires on the broker's ack and fails on a
nack or a lost connection. An exchange that does not exist yet is declared as
a durable topic exchange; the default exchange is the empty path.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

from twisted.internet import defer
from twisted.internet.protocol import ClientCreator
from zope.interface import implementer

from gateway.forward.sinks import ISink, expand, target


def key_safe(text: str) -> str:
    """
    Text from a device as one word of a routing key (C{.} separates words).
    """
    return "".join("_" if c in ".*#" or not " " < c <= "~" else c for c in text) or "_"


@implementer(ISink)
class AmqpSink:
    kind = "amqp"
    batch_size = 500
    #: Seconds to connect, and for a batch's confirms.
    timeout = 30.0

    def __init__(self, name: str, url: str, reactor=None):
        parts, self.port = target(name, url, 5672)
        query = parse_qs(parts.query)
        self.exchange = unquote(parts.path[1:])
        self.routing_key = query.get("routing_key", ["{device_id}"])[-1]
        self.vhost = query.get("vhost", ["/"])[-1]
        if len(self.exchange) > 127:
            raise ValueError(f"sink {name}: exchange name longer than 127 characters")
        self.host = parts.hostname
        self.username = unquote(parts.username) if parts.username is not None else "guest"
        self.password = unquote(parts.password) if parts.password is not None else "guest"
        self.name = name
        self.reactor = reactor
        self._connection = None
        self._channel = None

    @defer.inlineCallbacks
    def _open(self):
        import pika
        from pika.adapters.twisted_connection import TwistedProtocolConnection

        parameters = pika.ConnectionParameters(
            virtual_host=self.vhost, heartbeat=30,
            credentials=pika.PlainCredentials(self.username, self.password),
            client_properties={"connection_name": f"trackport forward {self.name}"})
        creator = ClientCreator(self.reactor, TwistedProtocolConnection, parameters)
        connection = yield creator.connectTCP(self.host, self.port, timeout=self.timeout)
        try:
            yield connection.ready.addTimeout(self.timeout, self.reactor)
            channel = yield connection.channel()
            if self.exchange:
                try:
                    yield channel.exchange_declare(self.exchange, passive=True)
                except Exception:
                    # A passive declaration of a missing exchange closes the
                    # channel (404): open another and create it.
                    channel = yield connection.channel()
                    yield channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            yield channel.confirm_delivery()
        except Exception:
            connection.transport.abortConnection()
            raise
        self._connection, self._channel = connection, channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.transport is not None:
            connection.transport.abortConnection()

    @defer.inlineCallbacks
    def deliver(self, messages):
        import pika

        if self._channel is None or not self._channel.is_open:
            self._drop()
            yield self._open()
        channel = self._channel
        confirms = []
        for m in messages:
            properties = pika.BasicProperties(
                content_type="application/json", delivery_mode=2, type=m.kind,
                message_id=f"{m.kind}:{m.body['id']}")
            confirms.append(channel.basic_publish(
                self.exchange, expand(self.routing_key, m, key_safe), m.payload(), properties))
        try:
            yield defer.gatherResults(confirms, consumeErrors=True).addTimeout(self.timeout, self.reactor)
        except defer.FirstError as e:
            self._drop()
            e.subFailure.raiseException()
        except Exception:
            self._drop()
            raise

    def close(self):
        self._drop()
