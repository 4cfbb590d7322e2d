"""The engine-cache suite of tests/integration/test_runtime_engine_cache.py on the memory store.

The suite is written once; collected here, its tests take the unit tier's ``stores``
(tests/unit/conftest.py), so the memory store answers to the same checks as Redis.
"""

from __future__ import annotations

import pytest

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
    "test_another_consumer_wrote_the_experiment",
    "test_decisions_and_rewards_folded_by_two_consumers_lose_nothing",
    "test_steady_state_skips_the_read_and_stores_what_a_read_would",
    "test_the_cache_keeps_to_its_byte_budget",
]
