"""Fixtures of the unit tier: the engine's memory state store (no I/O)."""

from __future__ import annotations

import pytest

from tests.fixtures.engines import Stores


@pytest.fixture
def stores() -> Stores:
    """The processor suites' state on the memory store, held to the Redis store's
    semantics by the same suites in tests/integration/ (their ``stores`` is the real Redis)."""
    return Stores("memory")
