"""The partition an experiment's records land in, computed without a Kafka client."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from schemas.topics import murmur2, partition_key, partition_of

pytestmark = pytest.mark.unit


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(data: bytes) -> None:
    """aiokafka's port of the Java client's ``Utils.murmur2`` is the reference here."""
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(st.text(min_size=1, max_size=120), st.integers(min_value=1, max_value=64))
def test_partition_is_the_default_partitioners(experiment_id: str, partitions: int) -> None:
    every = list(range(partitions))
    expected = DefaultPartitioner()(partition_key(experiment_id), every, every)
    assert partition_of(experiment_id, partitions) == expected
