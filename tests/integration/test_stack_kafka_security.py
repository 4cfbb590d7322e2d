"""Every Kafka client of the product against a SASL_SSL listener (SCRAM-SHA-512, TLS with
a CA made in the test): it connects with the right settings, and a wrong password or an
untrusted CA ends its start with one error naming the setting, instead of the endless
reconnect librdkafka would otherwise do in the background.

Scenario: each client is started with a wrong password, then with a CA that did not sign
the broker's certificate, while ``KAFKA_START_TIMEOUT_S`` is 120 s.
We expect: the exact error text, well before that timeout (the error is permanent, so
waiting it out would only delay the operator).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from deploy.stack.errors import StackError
from deploy.stack.kafka_broker import kafka_metadata_ok
from deploy.stack.ports import free_port
from deploy.stack.topics import create_topics, product_topic_specs
from offpolicy.reader import LogUnavailableError, read_experiment_log
from schemas.dead_letter import dead_letter_headers
from schemas.topics import TopicNames
from services.decider.producer import EventProducer
from services.projector.consumer import Projector
from services.projector.settings import ProjectorSettings
from services.reward_consumer.consumer import RewardConsumer
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.acked_producer import OutRecord
from stream_runtime.dead_letter import dead_letter_producer, read_dead_letters
from stream_runtime.kafka_connection import KafkaConnection, KafkaConnectionError
from stream_runtime.kafka_metadata import partition_counts
from stream_runtime.partition_reader import read_chunks
from tests.fixtures.secure_kafka import SecureKafka

pytestmark = pytest.mark.integration

WRONG_PASSWORD = (
    "KAFKA_SASL_PASSWORD: the broker rejected SASL/SCRAM-SHA-512 authentication for user "
    "'mab' (wrong password, or no such user)"
)
#: Far longer than any assertion waits: only the permanent-error path can pass in time.
START_TIMEOUT_S = 120.0
#: What "at once" means on a loaded 2-core machine (measured: ~1 s, one metadata round).
FAIL_FAST_S = 30.0


def untrusted(kafka: SecureKafka) -> str:
    return (
        f"KAFKA_SSL_CA_LOCATION: the broker's certificate is not trusted by {kafka.other_ca} "
        "(certificate verify failed)"
    )


def refused(kafka: SecureKafka, case: str) -> tuple[KafkaConnection, str]:
    """A connection the broker refuses, and the exact error it must give."""
    if case == "wrong password":
        conn = kafka.connection(
            kafka_sasl_password="not-the-password", kafka_start_timeout_s=START_TIMEOUT_S
        )
        return conn, WRONG_PASSWORD
    conn = kafka.connection(
        kafka_ssl_ca_location=kafka.other_ca, kafka_start_timeout_s=START_TIMEOUT_S
    )
    return conn, untrusted(kafka)


CASES = ["wrong password", "untrusted CA"]


async def _metadata(conn: KafkaConnection) -> None:
    partition_counts(conn, ["any"])


async def _reader(conn: KafkaConnection) -> None:
    async for _ in read_chunks(conn, {}, {"any:0": 0}, 10):
        pass


async def _dlq_writer(conn: KafkaConnection) -> None:
    await dead_letter_producer(conn, "test-dlq").start()


async def _decider_producer(conn: KafkaConnection) -> None:
    await EventProducer(
        conn, TopicNames.with_prefix("x-"), send_timeout_s=5, enqueue_timeout_s=1, linger_ms=5
    ).start(conn.kafka_start_timeout_s)


async def _reward_consumer(conn: KafkaConnection) -> None:
    settings = ConsumerSettings(**conn.model_dump(), redis_url="redis://127.0.0.1:1/0")
    await RewardConsumer(settings).start()


async def _projector(conn: KafkaConnection) -> None:
    settings = ProjectorSettings(**conn.model_dump(), redis_url="redis://127.0.0.1:1/0")
    await Projector(settings).start()


CLIENTS: dict[str, Callable[[KafkaConnection], Awaitable[None]]] = {
    "metadata (replay, DLQ reader)": _metadata,
    "partition reader (replay, DLQ reader)": _reader,
    "DLQ writer": _dlq_writer,
    "decider producer": _decider_producer,
    "reward consumer": _reward_consumer,
    "projector": _projector,
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("client", sorted(CLIENTS))
async def test_a_refused_connection_is_one_error_naming_the_setting(
    secure_kafka: SecureKafka, client: str, case: str
) -> None:
    conn, expected = refused(secure_kafka, case)
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError) as caught:
        await CLIENTS[client](conn)
    assert str(caught.value) == expected
    assert time.monotonic() - started < FAIL_FAST_S


@pytest.mark.parametrize("case", CASES)
async def test_the_offpolicy_reader_reports_the_setting(
    secure_kafka: SecureKafka, case: str
) -> None:
    """The decider's evaluate endpoint answers 503 with this text; `mab evaluate` prints it."""
    conn, expected = refused(secure_kafka, case)
    with pytest.raises(LogUnavailableError) as caught:
        await read_experiment_log(conn, TopicNames.with_prefix("x-"), "exp", timeout_s=60)
    assert str(caught.value) == expected


@pytest.mark.parametrize("case", CASES)
def test_topic_creation_and_the_stack_check_report_the_setting(
    secure_kafka: SecureKafka, case: str
) -> None:
    conn, expected = refused(secure_kafka, case)
    with pytest.raises(StackError) as caught:
        create_topics(conn, product_topic_specs("never-"))
    assert str(caught.value) == expected
    assert kafka_metadata_ok(conn, timeout=60) is False


def test_a_mechanism_the_listener_does_not_offer_names_the_mechanism(
    secure_kafka: SecureKafka,
) -> None:
    conn = secure_kafka.connection(
        kafka_sasl_mechanism="SCRAM-SHA-256", kafka_start_timeout_s=START_TIMEOUT_S
    )
    with pytest.raises(KafkaConnectionError) as caught:
        partition_counts(conn, ["any"])
    assert str(caught.value) == (
        "KAFKA_SASL_MECHANISM: the broker does not offer SASL/SCRAM-SHA-256 "
        "(it offers SCRAM-SHA-512)"
    )


def test_tls_against_a_plaintext_listener_names_the_protocol(
    secure_kafka: SecureKafka,
) -> None:
    conn = secure_kafka.connection(
        kafka_bootstrap_servers=secure_kafka.plaintext_bootstrap,
        kafka_start_timeout_s=START_TIMEOUT_S,
    )
    with pytest.raises(KafkaConnectionError) as caught:
        partition_counts(conn, ["any"])
    assert str(caught.value) == (
        f"KAFKA_SECURITY_PROTOCOL: SASL_SSL is set, but {secure_kafka.plaintext_bootstrap} "
        "is a PLAINTEXT listener"
    )


def test_plaintext_against_the_tls_listener_waits_then_hints_at_the_protocol(
    secure_kafka: SecureKafka,
) -> None:
    """The broker just closes the connection: librdkafka reports only "brokers down",
    which a starting broker also gives, so this one waits out the start timeout."""
    conn = KafkaConnection.plaintext(secure_kafka.bootstrap).model_copy(
        update={"kafka_start_timeout_s": 2.0}
    )
    with pytest.raises(KafkaConnectionError) as caught:
        partition_counts(conn, ["any"])
    assert str(caught.value) == (
        f"KAFKA_BOOTSTRAP_SERVERS: no broker at {secure_kafka.bootstrap} answered within 2 s "
        "(1/1 brokers are down); if the listener uses TLS or SASL, set KAFKA_SECURITY_PROTOCOL"
    )


def test_no_broker_at_all_is_reported_after_the_start_timeout() -> None:
    port = free_port()
    conn = KafkaConnection.plaintext(f"127.0.0.1:{port}").model_copy(
        update={"kafka_start_timeout_s": 2.0}
    )
    with pytest.raises(KafkaConnectionError) as caught:
        partition_counts(conn, ["any"])
    assert str(caught.value) == (
        f"KAFKA_BOOTSTRAP_SERVERS: no broker at 127.0.0.1:{port} answered within 2 s "
        f"(Connect to ipv4#127.0.0.1:{port} failed: Connection refused); if the listener "
        "uses TLS or SASL, set KAFKA_SECURITY_PROTOCOL"
    )


def test_a_pem_file_librdkafka_cannot_parse_names_its_variable(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(KafkaConnectionError) as caught:
        partition_counts(secure_kafka.connection(kafka_ssl_ca_location=garbage), ["any"])
    assert caught.value.setting == "KAFKA_SSL_CA_LOCATION"
    assert "librdkafka cannot use it" in str(caught.value)


async def test_topics_dead_letters_and_reads_work_over_sasl_ssl(
    secure_kafka: SecureKafka, ns: str
) -> None:
    """Scenario: with the right settings, create the product's topics, write two dead
    letters and read them back through the SASL_SSL listener only.
    We expect: the topics exist with their partitions and both letters come back."""
    conn = secure_kafka.connection()
    counts = create_topics(conn, product_topic_specs(ns))
    names = TopicNames.with_prefix(ns)
    assert counts[names.rewards] == 6
    producer = dead_letter_producer(conn, "test-secure")
    await producer.start()
    try:
        await producer.send(
            [
                OutRecord(names.rewards_dlq, value, b"k", letter_headers(names.rewards, offset))
                for offset, value in enumerate((b"one", b"two"))
            ]
        )
    finally:
        await producer.stop()
    letters = await read_dead_letters(conn, names.rewards_dlq)
    assert [(d.value, d.reason, d.source_offset) for d in letters] == [
        (b"one", "unknown_arm", 0),
        (b"two", "unknown_arm", 1),
    ]


def letter_headers(topic: str, offset: int) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        reason="unknown_arm",
        detail="arm 'z' is not in the experiment",
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        rejected_by="test",
        rejected_at_ms=0,
    )
