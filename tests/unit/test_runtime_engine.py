"""The engine suite of tests/integration/test_runtime_engine.py on the memory store.

The suite is written once; collected here, its tests take the unit tier's ``stores``
(tests/unit/conftest.py), so the memory store answers to the same checks as Redis.
"""

from __future__ import annotations

import pytest

from tests.integration.test_runtime_engine import (
    test_an_unknown_experiment_writes_nothing,
    test_dead_letters_before_the_write_and_change_points_after_it,
    test_the_buckets_are_the_pure_projection_under_any_batch_split,
    test_the_dedupe_guard_keeps_keys_for_the_horizon_of_event_time,
    test_the_fold_is_the_pure_fold_under_any_batch_split,
    test_zombie_write_conflicts_and_reloads,
)

pytestmark = pytest.mark.unit

__all__ = [
    "test_an_unknown_experiment_writes_nothing",
    "test_dead_letters_before_the_write_and_change_points_after_it",
    "test_the_buckets_are_the_pure_projection_under_any_batch_split",
    "test_the_dedupe_guard_keeps_keys_for_the_horizon_of_event_time",
    "test_the_fold_is_the_pure_fold_under_any_batch_split",
    "test_zombie_write_conflicts_and_reloads",
]
