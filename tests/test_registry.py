"""
Decoder discovery through twisted.plugin, including a plugin shipped outside
this repository.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gateway.registry import DuplicateProtocol, index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer
from gateway.interfaces import IDecoder, Verdict
from gateway.model import DecodeResult, Position


@implementer(IPlugin, IDecoder)
class Zed:
    name = "zed"
    transports = frozenset({"tcp", "udp"})

    def detect(self, head, transport):
        return Verdict.match(90) if head.startswith(b"ZED!") else Verdict.no()

    def frame(self, buffer, transport):
        return (buffer, len(buffer))

    def decode(self, frame, context):
        return DecodeResult(device_id=frame[4:].decode(), reply=b"OK",
                            records=[Position(time=None, valid=False)])


zed = Zed()
'''


def test_a_plugin_installed_elsewhere_is_found(tmp_path):
    # A separate distribution ships decoders/zed.py (no __init__.py), the way
    # twisted/plugins/ works; putting its root on sys.path is what installing
    # it does.
    (tmp_path / "decoders").mkdir()
    (tmp_path / "decoders" / "zed.py").write_text(textwrap.dedent(PLUGIN))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "decode", b"ZED!unit7".hex()],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["protocol"] == "zed"
    assert result["device_id"] == "unit7"
    assert result["responses_hex"] == [b"OK".hex()]
    assert len(result["records"]) == 1
    # And without it on the path, nobody claims those bytes.
    env["PYTHONPATH"] = ROOT
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "decode", b"ZED!unit7".hex()],
                         env=env, capture_output=True, text=True, timeout=60, cwd=str(elsewhere))
    assert out.returncode == 1
    assert json.loads(out.stdout)["protocol"] is None


def test_duplicate_names_are_refused():
    class A:
        name = "same"

    class B:
        name = "same"

    with pytest.raises(DuplicateProtocol):
        index([A(), B()])
