# -*- test-case-name: tests.test_forward -*-
"""
Webhook sink: a batch of records is one HTTP POST of a JSON array; any 2xx
answer means delivered.

Records and command status changes go in separate POSTs, told apart by the
C{X-Trackport-Kind} header (C{position} or C{command_status}). With
C{?secret=S} in the URL, C{X-Trackport-Signature: sha256=<hex>} carries the
HMAC-SHA256 of the body keyed with S; the parameter itself is not sent.
"""

from __future__ import annotations

import hashlib
import hmac
from io import BytesIO
from urllib.parse import parse_qsl, urlencode, urlunsplit

from twisted.internet import defer
from twisted.web.client import (
    Agent, FileBodyProducer, HTTPConnectionPool, PartialDownloadError, _HTTP11ClientFactory, readBody,
)
from twisted.web.http_headers import Headers
from zope.interface import implementer

from gateway.forward.sinks import ISink, target


class TargetRefused(Exception):
    """
    The target answered, but not with a success.
    """


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class _Pool(HTTPConnectionPool):
    """
    Persistent connections, without a log line for each one opened.
    """

    _factory = _QuietFactory


@implementer(ISink)
class WebhookSink:
    kind = "webhook"
    batch_size = 500
    #: Seconds an answer may take.
    timeout = 30.0

    def __init__(self, name: str, url: str, reactor=None):
        parts, _ = target(name, url)
        if parts.scheme == "https":
            from importlib.util import find_spec

            if find_spec("OpenSSL") is None or find_spec("service_identity") is None:
                raise ValueError(f"sink {name}: https needs TLS support "
                                 "(pip install 'twisted[tls]')")
        query = parse_qsl(parts.query, keep_blank_values=True)
        secrets = [v for k, v in query if k == "secret"]
        self.secret = secrets[-1].encode("utf-8") if secrets else None
        rest = urlencode([(k, v) for k, v in query if k != "secret"])
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", rest, ""))
        self.name = name
        self.reactor = reactor
        self._agent = None
        self._pool = None

    def _headers(self, body: bytes, kind: str) -> Headers:
        headers = Headers({b"Content-Type": [b"application/json"],
                           b"User-Agent": [b"trackport"],
                           b"X-Trackport-Kind": [kind.encode("ascii")]})
        if self.secret is not None:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers.addRawHeader(b"X-Trackport-Signature", f"sha256={digest}".encode("ascii"))
        return headers

    @staticmethod
    def body(messages) -> bytes:
        return b"[" + b",".join(m.payload() for m in messages) + b"]"

    @defer.inlineCallbacks
    def deliver(self, messages):
        if self._agent is None:
            self._pool = _Pool(self.reactor, persistent=True)
            self._agent = Agent(self.reactor, pool=self._pool, connectTimeout=10)
        kinds = []
        for m in messages:
            if not kinds or kinds[-1][0] != m.kind:
                kinds.append((m.kind, []))
            kinds[-1][1].append(m)
        for kind, group in kinds:
            body = self.body(group)
            d = self._agent.request(b"POST", self.url.encode("ascii"), self._headers(body, kind),
                                    FileBodyProducer(BytesIO(body)))
            d.addTimeout(self.timeout, self.reactor)
            response = yield d
            try:
                answer = yield readBody(response).addTimeout(self.timeout, self.reactor)
            except PartialDownloadError as e:
                answer = e.response  # a body ended by closing the connection
            if not 200 <= response.code < 300:
                raise TargetRefused(f"HTTP {response.code} {answer[:200]!r}")

    def close(self):
        if self._pool is not None:
            pool, self._pool, self._agent = self._pool, None, None
            return pool.closeCachedConnections()
