"""
The service's process-wide settings.
"""

import gc
import platform

import pytest

from gateway.service import GC_THRESHOLD, tune_gc


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's collector")
def test_tune_gc_freezes_start_up_objects_and_collects_less_often():
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD,) + threshold[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.skipif(platform.python_implementation() == "CPython", reason="not CPython's collector")
def test_tune_gc_leaves_another_collector_alone():
    tune_gc()
    assert gc.isenabled()


def test_udp_peers_defaults_to_the_endpoint_s_limit_and_must_be_positive(tmp_path):
    import argparse

    from twisted.python import usage

    from gateway.cli_run import register
    from gateway.server import MAX_PEERS
    from gateway.tap import Options

    options = Options()
    options.parseOptions(["--db", f"sqlite:///{tmp_path}/t.db"])
    assert options["udp-peers"] == MAX_PEERS
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["serve"]).udp_peers == MAX_PEERS
    with pytest.raises(usage.UsageError, match="--udp-peers must be at least 1"):
        Options().parseOptions(["--db", f"sqlite:///{tmp_path}/t.db", "--udp-peers", "0"])
