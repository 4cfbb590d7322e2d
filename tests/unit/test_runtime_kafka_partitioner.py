"""The partitioner the off-policy reader uses to find an experiment's partition agrees
with the Java client's (its test vectors) and with aiokafka's, here playing an external
producer keyed by experiment id."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from offpolicy.reader import experiment_partition
from schemas.topics import partition_key
from stream_runtime.kafka_metadata import key_partition, murmur2

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


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=64))
def test_key_partition_matches_aiokafkas_default_partitioner(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert key_partition(key, partitions) == DefaultPartitioner()(key, every, every)


@given(experiment=st.text(min_size=1, max_size=40).filter(str.strip))
def test_experiment_partition_is_the_producers_partition(experiment: str) -> None:
    every = list(range(12))
    expected = DefaultPartitioner()(partition_key(experiment), every, every)
    assert experiment_partition(experiment, every) == expected
