"""
twistd running a gateway with CPython's default garbage collector settings
(L{gateway.service.tune_gc} made a no-op): the other side of
C{bench/perf.py --default-gc}, which measures what the tuning buys in the same
interleaved run.

Usage: twistd_default_gc.py TWISTD-ARGUMENTS...
"""

import sys

from twisted.scripts.twistd import run

import gateway.service

gateway.service.tune_gc = lambda: None

if __name__ == "__main__":
    sys.exit(run())
