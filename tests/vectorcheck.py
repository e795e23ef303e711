"""
The project's vector files (C{tests/vectors/<protocol>.jsonl}), checked with
L{gateway.conformance}.
"""

from __future__ import annotations

import os

from gateway.conformance import check, run  # noqa: F401 (the tests' entry points)
from gateway.conformance import read

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def load(*protocols):
    """
    Vectors from C{tests/vectors/<file>.jsonl}; every file when none is named.
    """
    names = protocols or sorted(f[:-6] for f in os.listdir(HERE) if f.endswith(".jsonl"))
    return [vec for name in names for vec in read(os.path.join(HERE, name + ".jsonl"), name)]


def ids(vectors):
    return [v["id"] for v in vectors]
