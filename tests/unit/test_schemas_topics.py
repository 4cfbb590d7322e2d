"""The partition an experiment's records land in, computed without a Kafka client.

The references: the Java client's ``Utils.murmur2`` test vectors, and aiokafka's port
of it and its default partitioner, here playing an external producer keyed by
experiment id.
"""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from offpolicy.reader import experiment_partition
from schemas.topics import murmur2, partition_key, partition_of

pytestmark = pytest.mark.unit

#: Kafka's ``UtilsTest.testMurmur2`` vectors (signed 32-bit, as Java returns them).
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected & 0xFFFFFFFF


@given(st.binary(max_size=64))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(st.text(min_size=1, max_size=120), st.integers(min_value=1, max_value=64))
def test_partition_is_the_default_partitioners(experiment_id: str, partitions: int) -> None:
    every = list(range(partitions))
    expected = DefaultPartitioner()(partition_key(experiment_id), every, every)
    assert partition_of(experiment_id, partitions) == expected


@given(experiment=st.text(min_size=1, max_size=40).filter(str.strip))
def test_the_offpolicy_reader_reads_the_producers_partition(experiment: str) -> None:
    every = list(range(12))
    expected = DefaultPartitioner()(partition_key(experiment), every, every)
    assert experiment_partition(experiment, every) == expected
