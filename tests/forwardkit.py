"""
Targets for the forwarding tests (and bench/forward.py), all on 127.0.0.1:
an HTTP receiver, a TCP proxy to unplug a broker without touching it, and
collectors reading what reached Mosquitto and RabbitMQ.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MQTT = ("127.0.0.1", 1883)
AMQP = ("127.0.0.1", 5672)


class Received:
    """
    What a target got, in arrival order: (arrival time, kind, JSON object).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.problems = []

    def add(self, kind, obj):
        with self.lock:
            self.items.append((time.time(), kind, obj))

    def of_kind(self, kind):
        with self.lock:
            return [obj for _, k, obj in self.items if k == kind]

    def count(self):
        with self.lock:
            return len(self.items)


class Receiver:
    """
    A webhook target that checks each POST's signature; C{stop()} and
    C{start()} take it down and up again on the same port.
    """

    def __init__(self, secret: bytes, port: int = 0):
        self.secret = secret
        self.received = Received()
        self.port = port
        self.server = None
        self.start()

    def start(self):
        received, secret = self.received, self.secret
        connections = self.connections = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                connections.add(self.connection)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                if self.headers.get("X-Trackport-Signature") != expected:
                    received.problems.append(f"bad signature {self.headers.get('X-Trackport-Signature')}")
                    self.send_response(401)
                else:
                    kind = self.headers.get("X-Trackport-Kind")
                    for obj in json.loads(body):
                        received.add(kind, obj)
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            block_on_close = False

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook?secret={self.secret.decode()}"


class Proxy:
    """
    A TCP proxy to C{upstream}: C{unplug()} closes it and every connection
    through it (the broker itself is not touched); C{plug()} opens it again.
    """

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.sockets = []
        self.listener = None
        self.port = 0
        self.plug()

    def plug(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def unplug(self):
        listener, self.listener = self.listener, None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in [listener] * (listener is not None) + sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MqttCollector:
    """
    Subscribed (QoS 1) to C{prefix/#} on the broker itself, not through a proxy.

    Messages are only queued on paho's thread and parsed when read: a
    subscriber that falls behind has messages dropped by the broker
    (Mosquitto's max_queued_messages), which would look like a loss.
    """

    def __init__(self, prefix: str):
        import paho.mqtt.client as mqtt

        self._received = Received()
        self._raw = collections.deque()
        self.prefix = prefix
        self.topics = []
        ready = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{prefix}",
                             clean_session=True)
        client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{prefix}/#", qos=1)
        client.on_subscribe = lambda c, u, mid, r, p: ready.set()
        client.on_message = self._message
        client.connect(*MQTT)
        client.loop_start()
        if not ready.wait(20):
            raise RuntimeError("no MQTT subscription")
        self.client = client

    def _message(self, client, userdata, message):
        self._raw.append((time.time(), message.topic, message.payload))

    @property
    def received(self) -> Received:
        while self._raw:
            arrived, topic, payload = self._raw.popleft()
            obj = json.loads(payload)
            self.topics.append(topic)
            with self._received.lock:
                self._received.items.append((arrived, obj.get("kind", "position"), obj))
        return self._received

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class AmqpCollector:
    """
    A queue bound to C{exchange} with key C{#}, drained with C{basic_get} on
    the test's thread (directly on the broker).
    """

    def __init__(self, exchange: str):
        import pika

        self.received = Received()
        self.exchange = exchange
        self.queue = exchange + ".q"
        self.keys = []
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(*AMQP, heartbeat=0))
        channel = self.connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(self.queue)
        channel.queue_bind(self.queue, exchange, routing_key="#")
        self.channel = channel

    def drain(self):
        while True:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.received
            obj = json.loads(body)
            if not (properties.delivery_mode == 2 and properties.message_id == f"{properties.type}:{obj['id']}"):
                self.received.problems.append(f"properties {properties}")
            self.keys.append(method.routing_key)
            self.received.add(properties.type, obj)

    def close(self):
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


class Device:
    """
    A toy-protocol device sending numbered records (C{TOY,<id>,1,<n>}), each
    waiting for its ack; a frame not acked is sent again on a new connection.
    """

    def __init__(self, device_id: str):
        self.device_id = device_id
        self.sock = None

    def send(self, port: int, numbers, deadline: float = 60.0):
        for n in numbers:
            frame = f"TOY,{self.device_id},1,{n}\n".encode()
            expected = f"ACK,{self.device_id}\n".encode()
            end = time.time() + deadline
            while True:
                try:
                    if self.sock is None:
                        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    self.sock.sendall(frame)
                    got = b""
                    while len(got) < len(expected):
                        chunk = self.sock.recv(len(expected) - len(got))
                        if not chunk:
                            raise OSError("closed")
                        got += chunk
                    assert got == expected, got
                    break
                except OSError:
                    self.close()
                    if time.time() > end:
                        raise
                    time.sleep(0.2)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def number(obj) -> int:
    """
    The device's record number of a forwarded toy record.
    """
    return int(obj["attributes"]["extra"][0])


def wait_for(predicate, timeout=60.0, interval=0.1):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
