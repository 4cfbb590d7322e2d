"""The engine suites of tests/integration/ on the memory store: the engine with both
processors (test_runtime_engine.py) and its snapshot cache (test_runtime_engine_cache.py).

Each suite is written once; collected here, its tests take the unit tier's ``stores``
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
from tests.integration.test_runtime_engine_cache import (
    test_a_duplicate_record_is_caught_by_the_write,
    test_an_arm_added_after_the_cache_was_filled,
    test_another_consumer_wrote_the_experiment,
    test_decisions_and_rewards_folded_by_two_consumers_lose_nothing,
    test_steady_state_skips_the_read_and_stores_what_a_read_would,
    test_the_cache_keeps_to_its_byte_budget,
)

pytestmark = pytest.mark.unit

__all__ = [
    "test_a_duplicate_record_is_caught_by_the_write",
    "test_an_arm_added_after_the_cache_was_filled",
    "test_an_unknown_experiment_writes_nothing",
    "test_another_consumer_wrote_the_experiment",
    "test_dead_letters_before_the_write_and_change_points_after_it",
    "test_decisions_and_rewards_folded_by_two_consumers_lose_nothing",
    "test_steady_state_skips_the_read_and_stores_what_a_read_would",
    "test_the_buckets_are_the_pure_projection_under_any_batch_split",
    "test_the_cache_keeps_to_its_byte_budget",
    "test_the_dedupe_guard_keeps_keys_for_the_horizon_of_event_time",
    "test_the_fold_is_the_pure_fold_under_any_batch_split",
    "test_zombie_write_conflicts_and_reloads",
]
