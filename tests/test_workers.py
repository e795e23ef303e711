"""
C{--workers N} against real processes on PostgreSQL: the devices spread over
the workers, a worker killed with SIGKILL is restarted, its devices reconnect
and lose no acked record, and a command reaches a device whichever worker
holds it.
"""

import os
import re
import signal
import socket
import subprocess

from sqlalchemy import text

from gateway.store import engine_for
from gateway.workers import worker_argv
from tests.test_commands_e2e import send, wait_status
from tests.test_e2e import TOY, ToyDevice, recv_exactly, wait_until


def test_worker_options():
    argv = ["--port", "8888", "--workers", "3", "--http=8080", "--db", "sqlite:///x.db", "--map-tiles", ""]
    assert worker_argv(argv, 0) == ["--port", "8888", "--http=8080", "--db", "sqlite:///x.db",
                                    "--map-tiles", "", "--reuse-port"]
    assert worker_argv(argv, 2) == ["--port", "8888", "--db", "sqlite:///x.db", "--reuse-port"]
    assert worker_argv(["--workers=2", "--reuse-port"], 1) == ["--reuse-port"]


def _pids(g):
    return {int(i): int(p) for i, p in re.findall(r"worker (\d+) ready \(pid (\d+)\)", g.output())}


def _worker_of(pids, server_port, client_port):
    """
    The worker holding the server side of the connection from C{client_port}
    (C{ss} asks the kernel with a filter: quick however many sockets the
    machine has).
    """
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{server_port} and "
                          f"dport = :{client_port} )"], capture_output=True, text=True).stdout
    found = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    return next((index for index, pid in pids.items() if pid in found), None)



def test_workers_share_the_port_survive_a_kill_and_route_commands(gateway, pg_url):
    g = gateway(pg_url, extra_env=TOY, args=["--workers", "2"])
    pids = wait_until(lambda: len(_pids(g)) == 2 and _pids(g))
    assert set(pids) == {0, 1}
    devices = [ToyDevice(g.port, f"w{i}") for i in range(16)]
    for d in devices:
        d.report()
    # (Worker 0 is falsy: wait for a one-element list.)
    owners = {d.name: wait_until(lambda d=d: [w for w in [_worker_of(pids, g.port, d.local_port)]
                                              if w is not None])[0] for d in devices}
    assert set(owners.values()) == {0, 1}, owners   # 16 connections on one worker: 1 chance in 2**15

    # A command reaches a device on each worker (LISTEN/NOTIFY between them).
    for worker in (0, 1):
        d = next(d for d in devices if owners[d.name] == worker)
        command = send(g, d.name, "engine_stop")
        want = f"RELAY,1,{command}\n".encode()
        assert recv_exactly(d.sock, len(want)) == want
        wait_status(g, d.name, command, "sent")

    # UDP: each device's datagrams stay with one worker (the kernel hashes
    # its address), which answers from the shared port; a command queued for
    # a UDP device goes out after its next datagram.
    udp = []
    for i in range(6):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(20)
        u.sendto(f"TOY,u{i},1,0\n".encode(), ("127.0.0.1", g.port))
        data, source = u.recvfrom(100)
        assert (data, source[1]) == (f"ACK,u{i}\n".encode(), g.port)
        udp.append(u)
    command = send(g, "u3", "engine_stop")
    udp[3].sendto(b"PING,u3\n", ("127.0.0.1", g.port))
    got = {udp[3].recvfrom(100)[0], udp[3].recvfrom(100)[0]}
    assert got == {b"PING,u3\n", f"RELAY,1,{command}\n".encode()}

    victim = 1
    os.kill(pids[victim], signal.SIGKILL)
    assert wait_until(lambda: "worker 1 ended (signal 9)" in g.output() or "worker 1 ended" in g.output())
    assert wait_until(lambda: _pids(g).get(victim) not in (None, pids[victim]), timeout=30)
    # The victim's devices see their connection end; they reconnect (the
    # kernel may hand them to either worker) and keep reporting.
    for d in devices:
        for attempt in range(3):
            try:
                d.report()
                break
            except (ConnectionError, OSError):
                d.sock.close()
                d.connect()
        else:
            raise AssertionError(f"{d.name} could not report after the kill")
        d.report()

    engine = engine_for(pg_url)
    with engine.connect() as connection:
        stored = {(r.device_id, r.n) for r in connection.execute(
            text("SELECT device_id, attributes->'extra'->>0 AS n FROM positions WHERE device_id LIKE 'w%'"))}
    engine.dispose()
    for d in devices:
        for n in d.acked:
            assert (d.name, str(n)) in stored, (d.name, n)
    assert len(stored) == sum(len(d.acked) for d in devices)
    for d in devices:
        d.sock.close()
