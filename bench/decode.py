"""
Decode benchmark: the CPU a decoder spends per frame and per record, in
process, without sockets, threads or a database.

For every protocol with traffic in C{bench/traffic/} (the same frames the
ingest benchmarks send), N frames are generated, then cut and decoded one
after the other the way L{gateway.session.Session} does it: C{decoder.frame}
on the buffer, C{decoder.decode} with one real L{gateway.context.Context} per
session (its login, if the protocol has one, decoded first and not counted).
A protocol whose UDP datagrams differ from its TCP frames gets a second row.
Time is C{time.process_time} around the whole batch, after one untimed batch;
the collector is tuned as the gateway tunes it (L{gateway.service.tune_gc}).
Each row prints the best and the median of the repetitions, in µs per frame
and µs per record.

A/B: C{--compare REV} exports C{REV} (C{git archive}) to a temporary directory and
measures it and this checkout alternately (old, new, old, new...: one
process per round and side, C{--rounds} rounds), with this checkout's
harness and traffic for both, so only the decoders and the helpers they use
differ. Two checkouts can also be compared by hand with C{--root}::

    .venv/bin/python bench/decode.py                     # this checkout
    .venv/bin/python bench/decode.py --compare main      # main against this checkout
    .venv/bin/python bench/decode.py --root /other/checkout --protocol gosafe

Numbers from different runs are not comparable on a shared machine; numbers
from one interleaved run are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The one simulated device.
IMEI = "860000000000019"


def cases(names):
    """
    C{(label, traffic, transport)} for every protocol in C{names}, and a UDP
    row where a protocol's datagrams differ from its TCP frames.
    """
    from bench import traffic as registry

    for name in names:
        traffic = registry.load(name)
        yield name, traffic, "tcp"
        if traffic.udp is not None:
            yield f"{name} udp", traffic.udp, "udp"


def measure(decoder, traffic, transport, frames, repetitions):
    """
    Seconds of CPU for each repetition of cutting and decoding C{frames}, and
    the records one pass makes.
    """
    from gateway.context import Context

    def session():
        context = Context(transport=transport, peer="bench", seconds=time.time)
        if traffic.hello is not None:
            one(context, traffic.hello(IMEI))
        return context

    def one(context, data):
        records = 0
        while data:
            frame, consumed = decoder.frame(data, transport)
            if consumed <= 0:
                raise RuntimeError(f"{traffic.name}: unframed bytes {data[:32].hex()}")
            data = data[consumed:]
            if frame:
                result = decoder.decode(frame, context)
                if result.withheld is not None:
                    raise RuntimeError(f"{traffic.name}: withheld: {result.withheld}")
                if result.device_id:
                    context.device_id = result.device_id
                records += len(result.records)
        return records

    def batch():
        context = session()
        records = 0
        start = time.process_time()
        for data in frames:
            records += one(context, data)
        return time.process_time() - start, records

    _, records = batch()
    if records != traffic.records_per_frame * len(frames):
        raise RuntimeError(f"{traffic.name}: {records} records from {len(frames)} frames")
    return [batch()[0] for _ in range(repetitions)], records


def run(args):
    """
    Measure this process's decoders (those of C{--root}); one result per case.
    """
    from gateway.registry import discover
    from gateway.service import tune_gc

    decoders = discover()
    work = []
    for label, traffic, transport in cases(args.protocol):
        frames = [traffic.frame(IMEI, n) for n in range(args.frames)]
        work.append((label, traffic, transport, frames))
    tune_gc()
    out = []
    for label, traffic, transport, frames in work:
        seconds, records = measure(decoders[traffic.name], traffic, transport, frames,
                                   args.repetitions)
        out.append({"case": label, "frames": len(frames), "records": records, "seconds": seconds})
    return out


def rows(results):
    """
    Per case: best and median µs per frame and per record over every
    repetition in C{results} (one list of L{run} outputs).
    """
    by_case = {}
    for result in results:
        for case in result:
            entry = by_case.setdefault(case["case"], {"frames": case["frames"],
                                                      "records": case["records"], "seconds": []})
            entry["seconds"] += case["seconds"]
    out = {}
    for label, entry in by_case.items():
        per_frame = [s * 1e6 / entry["frames"] for s in entry["seconds"]]
        out[label] = {"records_per_frame": entry["records"] / entry["frames"],
                      "best": min(per_frame), "median": statistics.median(per_frame)}
    return out


def table(columns):
    """
    Print a Markdown table; C{columns} maps a heading to L{rows} output.
    """
    names = list(columns)
    first = columns[names[0]]
    head = ["protocol", "rec/frame"]
    for name in names:
        prefix = f"{name} " if name else ""
        head += [f"{prefix}µs/frame (best)", f"{prefix}µs/record"]
    if len(names) == 2:
        head.append("change")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, row in first.items():
        cells = [label, f"{row['records_per_frame']:g}"]
        for name in names:
            r = columns[name][label]
            cells += [f"{r['median']:.1f} ({r['best']:.1f})",
                      f"{r['median'] / r['records_per_frame']:.1f}"]
        if len(names) == 2:
            a, b = (columns[n][label]["median"] for n in names)
            cells.append(f"{(b - a) / a * 100:+.0f} %")
        print("| " + " | ".join(cells) + " |")


def worker(args, root):
    argv = [sys.executable, os.path.abspath(__file__), "--json", "--root", root,
            "--frames", str(args.frames), "--repetitions", str(args.repetitions),
            "--protocol", *args.protocol]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def compare(args):
    old = tempfile.mkdtemp(prefix="decode-bench-")
    try:
        # An export, not a worktree: the repository is left as it was.
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.compare], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        results = {args.compare: [], "this checkout": []}
        for _ in range(args.rounds):
            results[args.compare].append(worker(args, old))
            results["this checkout"].append(worker(args, ROOT))
        print(f"{args.rounds} rounds x {args.repetitions} repetitions x {args.frames} frames,"
              f" interleaved; medians, best in brackets")
        table({name: rows(r) for name, r in results.items()})
    finally:
        shutil.rmtree(old, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", nargs="+", help="protocols to measure (default: all with traffic)")
    ap.add_argument("--frames", type=int, default=500, help="frames a repetition")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="--compare: processes per side")
    ap.add_argument("--compare", metavar="REV", help="A/B against git revision REV, interleaved")
    ap.add_argument("--root", default=ROOT, help="the checkout whose decoders are measured")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # The harness and the traffic are always this checkout's (the traffic
    # package is imported before --root joins the path); the code under test
    # is --root's.
    sys.path.insert(0, ROOT)
    from bench import traffic as registry

    args.root = os.path.abspath(args.root)
    sys.path.insert(0, args.root)
    import decoders
    import gateway

    for package in (gateway, decoders):
        if not os.path.abspath(package.__file__).startswith(args.root + os.sep):
            raise SystemExit(f"{package.__name__} comes from {package.__file__}, not {args.root}")

    args.protocol = args.protocol or registry.names()
    if args.compare:
        compare(args)
    elif args.json:
        json.dump(run(args), sys.stdout)
    else:
        print(f"{args.repetitions} repetitions x {args.frames} frames; medians, best in brackets")
        table({"": rows([run(args)])})


if __name__ == "__main__":
    main()
