# -*- test-case-name: tests.test_forward -*-
"""
What a sink is (L{ISink}), the messages it carries, and the C{NAME=URL} syntax
of C{--forward} that picks its kind.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

import attr
from zope.interface import Attribute, Interface

#: A sink's name: what C{trackport forward list|replay} call it.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ISink(Interface):
    """
    A target that confirms what it received.
    """

    kind = Attribute("C{webhook}, C{mqtt} or C{amqp}.")
    batch_size = Attribute("Messages handed to L{deliver} at most at once.")

    def deliver(messages):
        """
        Send C{messages} (a list of L{Message}, in commit order); the
        L{Deferred} fires once the target confirmed every one of them, or
        fails (nothing is then taken as delivered).
        """

    def close():
        """
        Drop any connection; may return a L{Deferred}.
        """


@attr.s(frozen=True, slots=True)
class Message:
    """
    One thing to forward: a record (C{kind="position"}, C{body} the
    C{positions --json} object) or a command status change
    (C{kind="command_status"}).
    """

    kind: str = attr.ib()
    device_id: Optional[str] = attr.ib()
    protocol: Optional[str] = attr.ib()
    body: dict = attr.ib(eq=False)

    def payload(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


def expand(template: str, message: Message, safe=lambda text: text) -> str:
    """
    A topic or routing key: C{{device_id}} and C{{protocol}} replaced by the
    message's (C{safe} makes a device's text fit the target's syntax).
    """
    return (template.replace("{device_id}", safe(message.device_id or "unknown"))
            .replace("{protocol}", safe(message.protocol or "unknown")))


def redact(url: str) -> str:
    """
    C{url} fit for a log line or C{forward list}: no password, no secret.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = re.sub(r"(^|&)(secret)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def target(name: str, url: str, default_port: Optional[int] = None):
    """
    C{url} split, with its port (C{default_port} when it names none).

    @raise ValueError: naming the sink, when the URL has no host or a bad port.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"sink {name}: {url!r} names no host")
    try:
        port = parts.port or default_port
    except ValueError as e:
        raise ValueError(f"sink {name}: {e}") from None
    return parts, port


def make_sink(name: str, url: str, reactor=None) -> ISink:
    """
    The sink C{url} describes; L{ValueError} says what is wrong with it.
    """
    if not NAME.match(name):
        raise ValueError(f"sink name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    if "#" in url:
        raise ValueError(f"sink {name}: '#' would end the URL (a fragment); write it %23")
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        from gateway.forward.webhook import WebhookSink
        return WebhookSink(name, url, reactor)
    if scheme == "mqtt":
        from gateway.forward.mqtt import MqttSink
        return MqttSink(name, url, reactor)
    if scheme == "amqp":
        from gateway.forward.amqp import AmqpSink
        return AmqpSink(name, url, reactor)
    raise ValueError(f"sink {name}: URL scheme must be http, https, mqtt or amqp, not {scheme!r}")


def parse_forwards(values: List[str]) -> Dict[str, str]:
    """
    C{--forward NAME=URL} values as {name: url}, each URL checked by building
    its sink; L{ValueError} on the first bad one.
    """
    out: Dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not url:
            raise ValueError(f"--forward expects NAME=URL, got {value!r}")
        if name in out:
            raise ValueError(f"--forward {name} given twice")
        make_sink(name, url)
        out[name] = url
    return out
