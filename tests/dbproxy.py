"""
A TCP proxy on 127.0.0.1 in front of the test database server, for the fault
tests: it forwards, black-holes or refuses on demand.
"""

import select
import socket
import threading
import time

from sqlalchemy.engine import make_url


class Proxy:
    """
    A TCP proxy on 127.0.0.1 in front of PostgreSQL that forwards, black-holes
    (stops forwarding without closing anything; new connections are accepted
    and held) or refuses (drops every connection, refuses new ones).
    """

    def __init__(self, host, port):
        self.target = (host, port)
        self.mode = "forward"
        self.pipes = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, pg_url):
        return make_url(pg_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.pipes += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                if self.mode == "blackhole":
                    time.sleep(0.05)
                    continue
                if not select.select([a], [], [], 0.05)[0] or self.mode == "blackhole":
                    continue
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except (OSError, ValueError):
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def blackhole(self):
        self.mode = "blackhole"
        time.sleep(0.2)  # a pump in select() forwards what it reads next, then stops

    def forward(self):
        self.mode = "forward"

    def refuse(self):
        self.mode = "refuse"
        for s in self.pipes:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pipes = []

    def close(self):
        self.refuse()
        self.listener.close()
