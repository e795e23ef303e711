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
