"""
The ceiling for bench/ingest.py: a bare Twisted server that cuts one protocol's
frames off the stream and answers each at once with the bytes the device
expects — no detection, decoding or storage.

Usage: bare_server.py PORT [PROTOCOL]   (a module of bench/traffic/, default gosafe)
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import traffic as registry  # noqa: E402

TRAFFIC = registry.load(sys.argv[2] if len(sys.argv) > 2 else "gosafe")


class Split(Protocol):
    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        replies = []
        while True:
            frame, consumed = TRAFFIC.split(self.buffer)
            if not consumed:
                break
            self.buffer = self.buffer[consumed:]
            if frame:
                replies.append(TRAFFIC.reply(frame))
        if replies:
            self.transport.write(b"".join(replies))


class Datagrams(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(TRAFFIC.reply(data), addr)


if __name__ == "__main__":
    port = int(sys.argv[1])
    factory = Factory.forProtocol(Split)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.listenUDP(port, Datagrams(), interface="127.0.0.1")
    print("bare server ready", flush=True)
    reactor.run()
