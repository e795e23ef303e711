"""
What a simulated device sends, per protocol, for the benchmarks.

One module per protocol in this package, each holding C{TRAFFIC}, a L{Traffic}.
The load generator (C{bench/ingest.py --protocol NAME}) and the bare ceiling
server (C{bench/bare_server.py}) both take it from here, so a protocol added to
trackport is benchmarked by adding one module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Optional, Tuple

import attrs


@attrs.frozen
class Traffic:
    """
    @ivar records_per_frame: records in one frame made by L{frame}.
    @ivar frame: C{frame(device_id, n)}: the device's C{n}th report, its records
        all distinct (times step per record) so none is deduplicated away.
    @ivar ack_size: C{ack_size(buffer)}: the length of the complete reply at the
        head of C{buffer} (what the gateway sends a device for one frame), or 0
        while it is incomplete.
    @ivar hello: C{hello(device_id)}: what the device sends once when it
        connects before any report (a login), or L{None}; its reply is read with
        L{ack_size} and not counted.
    @ivar split: for the bare server: C{split(buffer)} cuts C{(frame, consumed)}
        off the head of a stream, C{(None, 0)} when more bytes are needed.
    @ivar reply: for the bare server: the bytes that answer one frame (hello
        included).
    """

    name: str
    records_per_frame: int
    frame: Callable[[str, int], bytes]
    ack_size: Callable[[bytes], int]
    split: Callable[[bytes], Tuple[Optional[bytes], int]]
    reply: Callable[[bytes], bytes]
    hello: Optional[Callable[[str], bytes]] = None


def names():
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> Traffic:
    return importlib.import_module(f"{__name__}.{name}").TRAFFIC
