"""Fault injection: a corpus of hostile Kafka records streams past the running processors."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from bandit_core.decision_ids import make_decision_id
from bandit_core.state import ExperimentState
from schemas.codec import encode
from schemas.dead_letter import dedupe
from schemas.events import RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import partition_key
from stream_runtime.dead_letter import read_dead_letters
from tests.fixtures.faults import (
    Outgoing,
    ServiceProcess,
    committed_offsets,
    stream_records,
    wait_until,
)
from tests.fixtures.streams import LiveNamespace, put_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

EXP = "hostile-shop"
ARMS = ("a", "b", "c")
GOOD = 5_000


def corpus(rng: random.Random) -> list[tuple[str, str, bytes | None]]:
    """(topic kind, expected DLQ reason, value): what a broken or hostile producer sends."""
    ok = {"experiment_id": EXP, "arm_id": "a", "reward": 1.0}
    text = orjson.dumps(ok)
    return [
        ("rewards", "bad_json", bytes(rng.randrange(256) for _ in range(512))),
        ("rewards", "bad_json", b"\xef\xbb\xbf" + text),  # a UTF-8 byte order mark
        (
            "rewards",
            "bad_json",
            '{"experiment_id":"hostile-shop","arm_id":"\xe9"}'.encode("cp1252"),
        ),
        ("rewards", "bad_json", b""),
        ("rewards", "empty", None),  # a tombstone
        ("rewards", "oversize", orjson.dumps({**ok, "pad": "x" * 900_000})),  # ~0.9 MB
        ("rewards", "bad_json", b"[" * 30_000 + b"]" * 30_000),  # nested past any parser
        ("rewards", "bad_json", b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
        ("rewards", "unknown_field", text[:-1] + b',"m":' + b'{"a":' * 200 + b"1" + b"}" * 201),
        ("rewards", "non_finite_reward", text.replace(b"1.0", b"NaN")),
        ("rewards", "non_finite_reward", text.replace(b"1.0", b"-Infinity")),
        ("rewards", "non_finite_reward", text.replace(b"1.0", b"1e999")),
        ("rewards", "unknown_schema_version", orjson.dumps({**ok, "schema_version": 99})),
        ("rewards", "bad_schema_version", orjson.dumps({**ok, "schema_version": "1"})),
        ("rewards", "not_an_object", orjson.dumps([ok])),
        ("rewards", "not_an_object", b"null"),
        ("rewards", "wrong_event_type", orjson.dumps({**ok, "type": "decision_made"})),
        ("rewards", "bad_id", orjson.dumps({**ok, "arm_id": "a\x1b[2J"})),  # a control character
        ("rewards", "bad_id", orjson.dumps({**ok, "experiment_id": " \t "})),
        ("rewards", "unknown_arm", orjson.dumps({**ok, "arm_id": "a}{*:"})),  # valid, not in it
        ("rewards", "bad_user_context", orjson.dumps({**ok, "user_context": {"x": "y" * 4000}})),
        ("rewards", "bad_user_context", orjson.dumps({**ok, "user_context": ["seg"]})),
        (
            "rewards",
            "bad_user_context",
            text[:-1] + b',"user_context":' + b'{"a":' * 300 + b"1" + b"}" * 301,
        ),
        ("rewards", "unknown_arm", orjson.dumps({**ok, "arm_id": "zz"})),
        ("rewards", "unknown_experiment", orjson.dumps({**ok, "experiment_id": "Free Shipping"})),
        ("rewards", "arm_mismatch", orjson.dumps({**ok, "decision_id": make_decision_id(1)})),
        # a superscript digit as the arm index: str.isdigit() took it, int() then raised
        ("rewards", "bad_decision_id", orjson.dumps({**ok, "decision_id": "a" * 32 + ".\u00b2"})),
        ("rewards", "unknown_experiment", orjson.dumps({**ok, "experiment_id": "ghost"})),
        ("decisions", "bad_json", bytes(rng.randrange(256) for _ in range(64))),
        ("decisions", "missing_field", text),  # a minimal reward: no event type
        ("decisions", "wrong_event_type", encode(RewardObserved(**ok))),  # type: ignore[arg-type]
    ]


async def test_hostile_records_go_to_the_dlq_and_the_processors_live_on(
    live: LiveNamespace,
    tmp_path: Path,
) -> None:
    """Scenario: the reward consumer and the projector run as processes while 5,000 valid
    rewards stream in with 31 hostile records at seeded random places: binary garbage,
    a byte order mark, cp1252 text, empty values, a tombstone, a 0.9 MB record, JSON
    nested 30,000 and 5,000 deep (and 200 deep inside an unknown field), NaN, -Infinity
    and 1e999 rewards, schema_version 99 and "1", arrays and null, a decision on the
    rewards topic and rewards on the decisions topic, ids with control characters or only
    whitespace, user contexts that are too large, not an object or nested 300 deep, an
    unknown arm (one with braces, a valid id), an arm that contradicts its decision and
    unknown experiments.
    We expect: each hostile record in the DLQ exactly once with its stable reason and its
    original bytes; both processes alive, caught up (committed offsets at the end of the
    log) and exiting 0 on SIGTERM; the snapshot counts exactly the 5,000 valid rewards."""
    rng = random.Random(23)
    keys = RedisKeys(live.ns).experiment(EXP)
    await put_config(live.redis, live.ns, EXP, ARMS)
    key = partition_key(EXP)
    items = [
        Outgoing(
            live.names.rewards,
            key,
            orjson.dumps({"experiment_id": EXP, "arm_id": ARMS[i % 3], "reward": float(i % 2)}),
        )
        for i in range(GOOD)
    ]
    bad = corpus(rng)
    expected: dict[bytes | None, str] = {}
    for kind, reason, value in bad:
        topic = live.names.rewards if kind == "rewards" else live.names.decisions
        items.insert(rng.randrange(len(items) + 1), Outgoing(topic, key, value))
        expected[value] = reason
    assert len(expected) == len(bad)

    env = live.env(MAB_POLL_TIMEOUT_MS="100")
    consumer = ServiceProcess("services.reward_consumer", env, tmp_path / "consumer.log")
    projector = ServiceProcess("services.projector", env, tmp_path / "projector.log")
    consumer.start()
    projector.start()
    try:
        landed = await asyncio.to_thread(
            stream_records, live.kafka_bootstrap, items, rate_per_s=2_000, chunk=200
        )
        ends: dict[tuple[str, int], int] = {}
        for r in landed:
            ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), 0), r.offset + 1)

        async def committed(group: str) -> bool:
            assert consumer.alive(), consumer.tail()
            assert projector.alive(), projector.tail()
            got = await asyncio.to_thread(
                committed_offsets, live.kafka_bootstrap, group, list(ends)
            )
            return got == ends

        await wait_until(
            lambda: committed(live.ns + "reward-consumer"), 90, "the consumer", every=0.5
        )
        await wait_until(lambda: committed(live.ns + "projector"), 90, "the projector", every=0.5)
        assert consumer.terminate() == 0, consumer.tail()
        assert projector.terminate() == 0, projector.tail()
    finally:
        consumer.stop_quietly()
        projector.stop_quietly()

    letters = dedupe(await read_dead_letters(live.kafka_bootstrap, live.names.rewards_dlq))
    by_value = {letter.value: letter for letter in letters}
    got = {value: by_value[value].reason for value in expected if value in by_value}
    assert got == expected, {v[:40] if v else v: r for v, r in got.items()}
    assert len(letters) == len(bad), "a valid record was dead-lettered, or one twice"
    position = {(r.topic, r.partition, r.offset): r.value for r in landed}
    assert all(position[letter.position] == letter.value for letter in letters)

    state = ExperimentState.from_snapshot(await live.redis.get(keys.snapshot), EXP)
    pulls = sum(a.pulls for a in state.arms.values())
    assert pulls == GOOD
    assert sum(a.reward_sum for a in state.arms.values()) == GOOD // 2

    print(
        f"\nrecords sent: {len(landed)} ({GOOD} valid rewards, {len(bad)} hostile)"
        f"\naccounted for: {pulls} valid rewards in the snapshot + {len(letters)} dead letters"
        f" (reasons: {sorted(set(expected.values()))}); consumer and projector alive, exit 0"
    )
