"""
The floor under trackport's cost per record: the least a Twisted server must do
to store GoSafe records durably on PostgreSQL before acking them, with the
gateway's own pieces and nothing else.

Each frame is cut off the stream and decoded by the GoSafe decoder; its records
are made storable and written as COPY lines by the store's own functions
(L{gateway.storable.prepared}, L{gateway.store.copy_lines}: the stored text and
fingerprints are trackport's); a writer thread COPYs what has queued and
commits, and the frames' acks are written once the commit returns. What it
leaves out is what trackport does besides: detection, sessions, identity,
commands, the hub, the database guard, last-seen data, limits, metrics, logs.

C{bench/perf.py --floor} runs it beside the bare server and trackport:
trackport's figure less this one is what its features cost; this one less the
bare server's is decoding and storing.

With C{--inline} there is no writer thread: the reactor thread COPYs and
commits itself once per turn, blocking (a gateway could not: a database that
stops answering would stop every device), which measures what handing the
batches to a second thread costs in CPU.

With C{--async} there is no writer thread either, and nothing blocks: the
reactor thread sends each batch as one multi-row INSERT (and its transaction)
on a psycopg2 asynchronous connection, whose socket the reactor watches. That
driver mode has no COPY, so the COPY lines are turned into VALUES rows (a field
of COPY text is already the body of an E'' literal once its quotes are
doubled); a gateway built this way would write the literals directly.

With C{--process} there is no writer thread, nothing blocks, and COPY stays:
the reactor thread sends each batch's COPY text down a pipe to a child process
of its own, which COPYs and commits it and answers on another pipe; the child's
CPU counts with the server's (C{bench/perf.py} adds a server's children).

With C{--piped} the writer thread stays, but hands each batch to that child
process and waits for its answer: what the thread costs when it no longer
calls the driver.

Usage: floor_server.py PORT DATABASE_URL [--inline | --async | --process | --piped]
"""

import io
import os
import sys
import threading

from zope.interface import implementer

from twisted.internet import reactor
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol, Protocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from decoders.gosafe import GoSafeProtocol  # noqa: E402
from gateway import storable  # noqa: E402
from gateway.context import Context  # noqa: E402
from gateway.ordering import ID_ORDER_STATEMENT  # noqa: E402
from gateway.store import _COLUMN_LIST, _PG_COPY, copy_lines, engine_for, migrate, now  # noqa: E402

DECODER = GoSafeProtocol()


def _commit(connection, lines):
    cursor = connection.cursor()
    cursor.copy_expert(_PG_COPY, io.StringIO("".join(lines)))
    cursor.close()
    connection.commit()


class Writer:
    """
    Batches of COPY lines and the acks that wait for them, committed by a
    thread of their own.
    """

    def __init__(self, url: str):
        self.connection = self._connect(url)
        self.lines, self.acks = [], []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _connect(self, url):
        import psycopg2

        return psycopg2.connect(url)  # a libpq URI: postgresql://...

    def add(self, lines, ack):
        with self.cond:
            self.lines += lines
            self.acks.append(ack)
            self.cond.notify()

    def _run(self):
        while True:
            with self.cond:
                while not self.acks:
                    self.cond.wait()
                lines, acks, self.lines, self.acks = self.lines, self.acks, [], []
            self.commit(lines)
            reactor.callFromThread(_acked, acks)

    def commit(self, lines):
        _commit(self.connection, lines)


class PipedWriter(Writer):
    """
    The writer thread of L{Writer}, but the COPY and commit are a child
    process's (the one of C{--process}): the thread only writes the batch to a
    pipe and waits, blocked in C{read}, for the child's answer. What the
    thread costs when it calls into the interpreter twice a batch, not a dozen
    times.
    """

    def __init__(self, url: str):
        import subprocess

        self.child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", url],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        super().__init__(None)

    def _connect(self, url):
        return None

    def commit(self, lines):
        self.child.stdin.write(_for_child(lines))
        self.child.stdin.flush()
        if self.child.stdout.read(1) != b"k":
            os._exit(1)  # the child failed: bench/perf.py sees the server gone


class _OneInFlight:
    """
    Batches written without a thread: one in flight at a time, sent by
    L{_write}, the next one made of what queued meanwhile.
    """

    def __init__(self):
        self.lines, self.acks = [], []
        self.flying = None
        self.scheduled = False

    def add(self, lines, ack):
        self.lines += lines
        self.acks.append(ack)
        if self.flying is None and not self.scheduled:
            self.scheduled = True
            reactor.callLater(0, self._send)

    def _send(self):
        self.scheduled = False
        lines, self.flying, self.lines, self.acks = self.lines, self.acks, [], []
        self._write(lines)

    def committed(self):
        acks, self.flying = self.flying, None
        _acked(acks)
        if self.acks:
            self._send()


class InlineWriter(_OneInFlight):
    """
    Batches committed by the reactor thread itself, blocking, once per turn.
    """

    def __init__(self, url: str):
        import psycopg2

        super().__init__()
        self.connection = psycopg2.connect(url)

    def _write(self, lines):
        _commit(self.connection, lines)
        self.committed()


@implementer(IReadDescriptor, IWriteDescriptor)
class AsyncWriter(_OneInFlight):
    """
    Batches written by the reactor thread on an asynchronous connection.
    """

    def __init__(self, url: str):
        import psycopg2
        from psycopg2.extras import wait_select

        super().__init__()
        self.connection = psycopg2.connect(url, async_=1)
        wait_select(self.connection)
        self.cursor = self.connection.cursor()

    def _write(self, lines):
        values = ",".join([_values(line) for line in lines])
        self.cursor.execute(f"BEGIN; {ID_ORDER_STATEMENT}; INSERT INTO positions ({_COLUMN_LIST}) VALUES {values}; COMMIT")
        self._poll()

    def _poll(self):
        from psycopg2.extensions import POLL_OK, POLL_READ

        state = self.connection.poll()
        if state == POLL_OK:
            reactor.removeReader(self)
            reactor.removeWriter(self)
            self.committed()
        elif state == POLL_READ:
            reactor.removeWriter(self)
            reactor.addReader(self)
        else:
            reactor.removeReader(self)
            reactor.addWriter(self)

    doRead = doWrite = _poll

    def fileno(self):
        return self.connection.fileno()

    def logPrefix(self):
        return "floor-async"

    def connectionLost(self, reason):
        pass


class _Child(ProcessProtocol):
    def __init__(self, writer):
        self.writer = writer

    def outReceived(self, data):
        for _ in range(len(data)):
            self.writer.committed()

    def processEnded(self, reason):
        if reactor.running:
            print(f"the writer process ended: {reason.value}", file=sys.stderr, flush=True)
            reactor.stop()


class ProcessWriter(_OneInFlight):
    """
    Batches written by a child process, which answers one byte per commit.
    """

    def __init__(self, url: str):
        super().__init__()
        self.child = _Child(self)
        reactor.spawnProcess(self.child, sys.executable, [sys.executable, os.path.abspath(__file__), "--child", url],
                             env=os.environ, childFDs={0: "w", 1: "r", 2: 2})

    def _write(self, lines):
        self.child.transport.write(_for_child(lines))


def _for_child(lines) -> bytes:
    # A batch as L{child} reads it: its length, a newline, its COPY text.
    text = "".join(lines).encode()
    return b"%d\n%s" % (len(text), text)


def child(url: str) -> None:
    """
    The writer process of C{--process}: batches of COPY text from standard
    input, committed one by one, a byte on standard output for each.
    """
    import psycopg2

    connection = psycopg2.connect(url)
    source, answer = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = source.readline()
        if not header:
            return
        cursor = connection.cursor()
        cursor.copy_expert(_PG_COPY, io.BytesIO(source.read(int(header))), 1 << 30)
        cursor.close()
        connection.commit()
        answer.write(b"k")
        answer.flush()


def _values(line: str) -> str:
    return "(" + ",".join(["NULL" if f == "\\N" else "E'" + f.replace("'", "''") + "'"
                           for f in line[:-1].split("\t")]) + ")"


def _acked(acks):
    for write, reply in acks:
        write(reply)


def _store(context, frame, write):
    result = DECODER.decode(frame, context)
    records = [storable.prepared(r) for r in result.records]
    WRITER.add(copy_lines(result.device_id, DECODER.name, records, now()), (write, result.reply))


class Split(Protocol):
    def connectionMade(self):
        self.buffer = b""
        self.context = Context(transport="tcp", peer=str(self.transport.getPeer()))

    def dataReceived(self, data):
        self.buffer += data
        while self.buffer:
            frame, consumed = DECODER.frame(self.buffer, "tcp")
            if not consumed:
                break
            self.buffer = self.buffer[consumed:]
            if frame:
                _store(self.context, frame, self.transport.write)


class Datagrams(DatagramProtocol):
    def datagramReceived(self, data, addr):
        _store(Context(transport="udp", peer=f"{addr[0]}:{addr[1]}"), data,
               lambda reply: self.transport.write(reply, addr))


if __name__ == "__main__" and sys.argv[1] == "--child":
    child(sys.argv[2])
elif __name__ == "__main__":
    port, url = int(sys.argv[1]), sys.argv[2]
    engine = engine_for(url)
    migrate(engine)
    engine.dispose()
    options = sys.argv[3:]
    WRITER = (AsyncWriter(url) if "--async" in options else ProcessWriter(url) if "--process" in options
              else PipedWriter(url) if "--piped" in options
              else InlineWriter(url) if "--inline" in options else Writer(url))
    reactor.listenTCP(port, Factory.forProtocol(Split), interface="127.0.0.1", backlog=1024)
    reactor.listenUDP(port, Datagrams(), interface="127.0.0.1")
    print("floor server ready", flush=True)
    reactor.run()
