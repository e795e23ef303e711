"""
House rules a reviewer would otherwise check by hand: module headers name test
modules that exist, and nothing in the repository points outside it.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(d, f) for d in ("gateway", "decoders") for f in sorted(os.listdir(os.path.join(ROOT, d)))
           if f.endswith(".py")]
HEADER = re.compile(r"test-case-name:\s*([\w.,]+)")


@pytest.mark.parametrize("path", SOURCES)
def test_test_case_name_names_real_modules(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        found = HEADER.search(fh.readline())
    if found is None:
        return
    for module in found.group(1).split(","):
        assert os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py"), module


def _texts():
    for top in ("gateway", "decoders", "docs", "tests", "bench", "twisted"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".py", ".md")) and name != "test_house.py":
                    yield os.path.join(folder, name)
    yield os.path.join(ROOT, "README.md")


def test_nothing_refers_outside_the_repository():
    outside = re.compile(r"\.\./shared|shared/(?:protocols|vectors|tools)|DESIGN\.md")
    offenders = []
    for path in _texts():
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if outside.search(line):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert offenders == []
