"""
The service's process-wide settings.
"""

import gc

from gateway.service import GC_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_collects_less_often():
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD,) + threshold[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
