"""
The ceiling for bench/ingest.py: a bare Twisted server that splits GoSafe frames
on '#' and acks each with '1234' at once — no detection, decoding or storage.
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol


class Split(Protocol):
    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        *frames, self.buffer = self.buffer.split(b"#")
        if frames:
            self.transport.write(b"1234" * len(frames))


class Datagrams(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(b"1234", addr)


if __name__ == "__main__":
    port = int(sys.argv[1])
    factory = Factory.forProtocol(Split)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.listenUDP(port, Datagrams(), interface="127.0.0.1")
    print("bare server ready", flush=True)
    reactor.run()
