"""The cycle collector's policy of the long-running services (apex.gcpolicy)."""

from __future__ import annotations

import gc

from apex import gcpolicy


def test_a_service_freezes_its_startup_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        gcpolicy.tune_for_service()
        assert gc.get_freeze_count() > 0  # startup's objects are out of the collector's walk
        assert gc.get_threshold() == gcpolicy.SERVICE_THRESHOLDS
        assert gc.get_threshold()[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
