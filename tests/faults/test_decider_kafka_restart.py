"""Fault injection: Kafka is stopped and restarted while clients POST rewards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from deploy.stack.topics import create_topics
from schemas.topics import TopicNames, topic_specs
from services.decider.settings import DeciderSettings
from tests.faults.conftest import StackFactory
from tests.fixtures.faults import (
    Answer,
    counts,
    decider_and_consumer,
    logged_event_ids,
    post_rewards,
    service_env,
    stats_pulls,
    wait_stats_pulls,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

EXP = "outage-shop"
ARMS = ("a", "b", "c")
CLIENTS = 4
#: How long the broker stays down before it is started again (its start adds more).
DOWN_S = 10.0
#: The decider's bound on waiting for Kafka's ack (the product default).
SEND_TIMEOUT_S = DeciderSettings.model_fields["kafka_send_timeout_s"].default
#: On top of it: the wait for librdkafka's own verdict (1.5 s, services/decider/producer.py)
#: and slack for a loaded two-core machine (event loop, HTTP, GC).
SLACK_S = 3.0
REFUSED = {"detail": "reward not recorded: event log unavailable, retry"}


async def test_kafka_stop_and_restart_while_clients_post_rewards(
    private_stack: StackFactory, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """Scenario: a private broker (the shared one is never stopped), the decider and the
    reward consumer as processes, 4 clients POSTing distinct rewards back to back (client
    timeout 30 s). After a few seconds the broker is stopped (SIGTERM), stays down 10 s,
    and is started again on the same data; the clients keep posting throughout and for
    a few seconds after it is back.
    We expect: only 200 and 503 answers (no 500, no hang, no transport error); every 503
    carries the documented body and arrives within the decider's send timeout (5 s) plus
    the wait for librdkafka's verdict and slack (3 s in all); every reward answered 200 is
    in the rewards topic, and after the consumer catches up the stats count exactly the
    distinct rewards in the topic (so every 200); a 503 reward that landed anyway (a
    narrow race at the timeout) is counted once, never twice. The consumer survives the
    outage and stops cleanly."""
    stack = private_stack(False)
    await asyncio.to_thread(stack.start_kafka)
    create_topics(stack.bootstrap, topic_specs(ns))
    names = TopicNames.with_prefix(ns)
    env = service_env(stack.bootstrap, redis_url, ns, LOG_LEVEL="INFO")
    answers: list[Answer] = []
    stop = asyncio.Event()
    try:
        async with decider_and_consumer(env, tmp_path, EXP, ARMS) as services:
            client = services.client
            posters = [
                asyncio.create_task(post_rewards(client, EXP, ARMS, stop, answers, pause_s=0.02))
                for _ in range(CLIENTS)
            ]
            await asyncio.sleep(4)
            down_at = time.monotonic()
            assert await asyncio.to_thread(stack.stop, "kafka")
            stopped_at = time.monotonic()
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(stack.start_kafka)
            back_at = time.monotonic()
            await asyncio.sleep(5)
            stop.set()
            await asyncio.gather(*posters)

            logged = await logged_event_ids(stack.bootstrap, names.rewards)
            distinct = set(logged)
            await wait_stats_pulls(client, EXP, len(distinct))
            await asyncio.sleep(1.0)  # a doubled reward would show up now
            assert await stats_pulls(client, EXP) == len(distinct)
            consumer, decider = services.consumer, services.decider
            assert consumer.alive(), consumer.tail()
            assert consumer.terminate() == 0, consumer.tail()
            assert decider.terminate() == 0, decider.tail()
    finally:
        stop.set()

    tally = counts(answers)
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    outage = [a for a in answers if down_at <= a.sent_at <= back_at]
    assert set(tally) <= {200, 503}, (tally, [a for a in answers if a.status not in (200, 503)])
    assert refused, "the outage was not visible to clients"
    assert ok[0].sent_at < down_at < back_at < ok[-1].sent_at, "no 200 before or after"
    assert all(orjson.loads(a.body) == REFUSED for a in refused)
    slowest = max(a.elapsed for a in answers)
    assert slowest <= SEND_TIMEOUT_S + SLACK_S, slowest
    missing = {a.key for a in ok} - distinct
    assert not missing, f"{len(missing)} rewards answered 200 are not in the log"
    landed_anyway = {a.key for a in refused} & distinct
    assert len(logged) == len(distinct), "a reward was logged twice"

    print(
        f"\nbroker down {back_at - down_at:.1f}s (stop {stopped_at - down_at:.1f}s, "
        f"{DOWN_S:.0f}s down, start {back_at - stopped_at - DOWN_S:.1f}s); "
        f"{CLIENTS} clients posted {len(answers)} rewards ({len(outage)} during the outage)"
        f"\nanswers: {tally}; slowest answer {slowest:.2f}s "
        f"(bound {SEND_TIMEOUT_S:.0f}s + {SLACK_S:.0f}s slack); "
        f"503 latency max {max(a.elapsed for a in refused):.2f}s"
        f"\naccounted for: {len(ok)} of {len(ok)} acked rewards in the topic and the stats; "
        f"{len(landed_anyway)} refused rewards landed anyway (counted once); "
        f"stats pulls = {len(distinct)} distinct logged rewards"
    )
