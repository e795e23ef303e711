"""
L{gateway.conformance}: the vector checker plugin authors run without this
repository's test tree.
"""

import io
import json
import re

from gateway.conformance import check, main, run
from tests import vectorcheck

GOOD = vectorcheck.load("gosafe")[0]


def test_a_real_vector_passes():
    assert check(GOOD) == []


def test_a_wrong_expectation_is_reported():
    wrong = json.loads(json.dumps(GOOD))
    wrong["expect"]["positions"] = [{"lat": 0.5, "lon": 0.5}]
    bad = check(wrong)
    assert any("latitude" in b for b in bad) and any("longitude" in b for b in bad)


def test_main_prints_failures_and_a_summary(tmp_path):
    wrong = json.loads(json.dumps(GOOD))
    wrong["id"] = "broken"
    wrong["protocol"] = "h02"
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps(GOOD) + "\n# a comment\n\n" + json.dumps(wrong) + "\n")
    out = io.StringIO()
    assert main([str(path)], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("FAIL broken: protocol 'gosafe' != 'h02'")
    assert lines[-1] == "1 passed, 1 failed"


def test_main_without_files_is_usage():
    assert main([]) == 2


def test_dump_is_the_decode_output_and_the_fingerprints(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    out = io.StringIO()
    assert main(["--dump", str(path)], out) == 0
    [line] = out.getvalue().splitlines()
    dumped = json.loads(line)
    assert dumped["id"] == GOOD["id"]
    assert dumped["decode"] == json.loads(json.dumps(run(GOOD)))
    assert len(dumped["fingerprints"]) == len(dumped["decode"]["records"]) >= 1
    assert all(re.fullmatch("[0-9a-f]{32}", f) for f in dumped["fingerprints"])
