"""Audit export and off-policy evaluation against a real Kafka (and the real decider).

Events are produced into the ``ns``-prefixed topics exactly as the product writes them
(keyed by experiment id), then read back through ``mab audit export`` (CSV and Parquet,
every row checked), ``mab evaluate --json`` (must equal the pure estimator on the same
events) and ``GET /experiments/{id}/evaluate``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from bandit_core.decision_ids import make_decision_id
from mab_cli.main import app as cli
from offpolicy.evaluate import EvaluationOptions, evaluate_log
from offpolicy.log import COLUMNS, ExperimentLog, join
from offpolicy.reader import experiment_partition, read_experiment_log
from offpolicy.timeline import fold_timeline
from schemas.codec import encode
from schemas.events import AnyEvent, RewardObserved
from schemas.topics import DEFAULT_PARTITIONS, TopicNames
from services.decider.app import create_asgi
from services.decider.evaluation import NICENESS, evaluation_lock
from services.decider.settings import DeciderSettings
from tests.fixtures.offpolicy_logs import config_event, simulate_log
from tests.integration.conftest import SettingsFactory, serve_decider

pytestmark = pytest.mark.integration

N = 150


async def produce(bootstrap: str, records: Sequence[tuple[str, str, bytes]]) -> None:
    """``(topic, key, value)`` records, in order, acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k.encode()) for t, k, v in records]
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()


def records_of(topics: TopicNames, events: Sequence[AnyEvent]) -> list[tuple[str, str, bytes]]:
    out = []
    for e in events:
        if e.type in ("experiment_created", "arms_added", "strategy_changed"):
            topic = topics.experiments
        elif e.type == "decision_made":
            topic = topics.decisions
        else:
            topic = topics.rewards
        out.append((topic, e.experiment_id, encode(e)))
    return out


def neighbour(exp: str) -> str:
    """Another experiment id whose records share ``exp``'s partitions."""
    mine = experiment_partition(exp, list(range(DEFAULT_PARTITIONS)))
    for k in range(1000):
        other = f"{exp}-other{k}"
        if experiment_partition(other, list(range(DEFAULT_PARTITIONS))) == mine:
            return other
    raise AssertionError("no neighbour found")


def _dump(log: ExperimentLog) -> dict[str, list[dict[str, Any]]]:
    return {
        "config_events": [e.model_dump() for e in log.config_events],
        "decisions": [e.model_dump() for e in log.decisions],
        "rewards": [e.model_dump() for e in log.rewards],
    }


def _parse(column: str, cell: str) -> object:
    """A CSV cell back to the value the export wrote."""
    if cell == "":
        return None
    if column in ("decision_ts", "propensity", "reward", "reward_ts"):
        return float(cell)
    if column == "config_version":
        return int(cell)
    return cell


def test_audit_export_and_evaluate_cli(
    kafka_bootstrap: str, ns: str, topics: dict[str, int], tmp_path: Path
) -> None:
    names = TopicNames.with_prefix(ns)
    exp = f"{ns}shop"
    sim = simulate_log(
        [0.2, 0.35, 0.5],
        N,
        seed=11,
        target="ucb1",
        target_params={"c": 0.5},
        exp=exp,
    )
    base = sim.log
    last_ts = base.decisions[-1].ts + 10
    first = base.decisions[0]
    unlinked = RewardObserved(experiment_id=exp, ts=last_ts, arm_id="arm-1", reward=1.0)
    orphan = RewardObserved(
        experiment_id=exp,
        ts=last_ts + 1,
        arm_id="arm-0",
        reward=0.0,
        decision_id=make_decision_id(0),
        source="bulk",
    )
    duplicate = RewardObserved(
        experiment_id=exp,
        ts=last_ts + 2,
        arm_id=first.arm_id,
        reward=1.0,
        decision_id=first.decision_id,
    )
    other = neighbour(exp)
    other_events: list[AnyEvent] = [
        config_event(other, ["x", "y"], "thompson", base.decisions[0].ts),
        RewardObserved(experiment_id=other, ts=last_ts, arm_id="x", reward=1.0),
    ]
    events: list[AnyEvent] = [
        *base.config_events,
        *base.decisions,
        *base.rewards,
        unlinked,
        orphan,
        duplicate,
    ]
    records = records_of(names, events) + records_of(names, other_events)
    records.append((names.rewards, exp, b"{not json"))
    asyncio.run(produce(kafka_bootstrap, records))
    expected_log = ExperimentLog(
        experiment_id=exp,
        config_events=base.config_events,
        decisions=base.decisions,
        rewards=(*base.rewards, unlinked, orphan, duplicate),
    )

    # the reader returns exactly what was produced for this experiment
    read = asyncio.run(read_experiment_log(kafka_bootstrap, names, exp))
    assert _dump(read) == _dump(expected_log)
    assert [r.reason for r in read.rejected] == ["bad_json"]
    assert read.other_experiments == 2

    runner = CliRunner()
    common = ["--experiment", exp, "--bootstrap", kafka_bootstrap, "--topic-prefix", ns]
    outcomes = fold_timeline(expected_log).outcomes
    expected = [row.as_tuple() for row in join(expected_log, outcomes).rows]
    for name in ("audit.csv", "audit.parquet"):
        out = tmp_path / name
        result = runner.invoke(cli, ["audit", "export", *common, "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["rows"] == N + 3
        assert summary["records_rejected"] == 1
        if name.endswith(".csv"):
            with out.open(newline="") as fh:
                reader = csv.reader(fh)
                assert tuple(next(reader)) == COLUMNS
                got = [
                    tuple(_parse(c, cell) for c, cell in zip(COLUMNS, row, strict=True))
                    for row in reader
                ]
        else:
            table = pq.read_table(out)
            assert tuple(table.column_names) == COLUMNS
            got = [tuple(row[c] for c in COLUMNS) for row in table.to_pylist()]
        assert got == expected
        # independent checks of every row against what was produced
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for row in got:
            d = dict(zip(COLUMNS, row, strict=True))
            by_kind.setdefault(str(d["row_kind"]), []).append(d)
        assert len(by_kind["joined"]) == N + 1
        assert "decision" not in by_kind
        assert [d["reward_event_id"] for d in by_kind["reward_unlinked"]] == [unlinked.event_id]
        assert [d["reward_event_id"] for d in by_kind["reward_orphan"]] == [orphan.event_id]
        assert by_kind["reward_orphan"][0]["source"] == "bulk"
        reward_of = {r.event_id: r for r in expected_log.rewards}
        decision_of = {d.decision_id: d for d in base.decisions}
        for d in by_kind["joined"]:
            decision = decision_of[str(d["decision_id"])]
            reward = reward_of[str(d["reward_event_id"])]
            assert reward.decision_id == decision.decision_id
            assert (d["decision_ts"], d["arm_id"], d["propensity"], d["strategy"]) == (
                decision.ts,
                decision.arm_id,
                decision.propensity,
                "epsilon_greedy",
            )
            assert (d["reward"], d["reward_ts"], d["source"]) == (
                reward.reward,
                reward.ts,
                "api",
            )
            want = "duplicate" if reward.event_id == duplicate.event_id else "applied"
            assert d["reward_outcome"] == want
        assert {str(d["decision_id"]) for d in by_kind["joined"]} == set(decision_of)

    # mab evaluate --json gives exactly the pure estimator's numbers on the same events
    result = runner.invoke(
        cli, ["evaluate", *common, "--strategy", "ucb1", "--params", '{"c": 0.5}', "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    pure = evaluate_log(expected_log, "ucb1", {"c": 0.5}).to_dict()
    pure["records_rejected"] = 1
    pure["warnings"].append("1 undecodable records were skipped")
    assert report == json.loads(json.dumps(pure))
    assert report["decisions_evaluated"] == N
    assert report["rewards_unlinked"] == 1
    assert report["rewards_orphan"] == 1

    table = runner.invoke(cli, ["evaluate", *common, "--strategy", "ucb1"])
    assert table.exit_code == 0, table.output
    assert "SNIPS" in table.stdout
    assert "effective sample size" in table.stdout


def test_cli_errors_are_one_line(kafka_bootstrap: str, ns: str, topics: dict[str, int]) -> None:
    runner = CliRunner()
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", ns]
    bad = runner.invoke(cli, ["evaluate", "--experiment", "x", *common, "--strategy", "nope"])
    assert bad.exit_code == 2
    assert "unknown strategy" in bad.output
    bad = runner.invoke(
        cli, ["audit", "export", "--experiment", "x", *common, "--out", "/tmp/x.txt"]
    )
    assert bad.exit_code == 2
    assert "unknown extension" in bad.output
    missing = runner.invoke(
        cli,
        [
            *("evaluate", "--experiment", "x", "--bootstrap", kafka_bootstrap),
            *("--topic-prefix", f"{ns}nothing-", "--strategy", "ucb1", "--timeout", "5"),
        ],
    )
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    empty = runner.invoke(
        cli, ["evaluate", "--experiment", "never-used", *common, "--strategy", "ucb1"]
    )
    assert empty.exit_code == 1
    assert "has no events" in empty.output


async def test_evaluate_endpoint(client: httpx.AsyncClient, kafka_bootstrap: str, ns: str) -> None:
    exp = f"{ns}endpoint"
    arms = ["arm-0", "arm-1", "arm-2"]
    resp = await client.post(
        "/experiments",
        json={"experiment_id": exp, "arm_ids": arms, "strategy": "epsilon_greedy"},
    )
    assert resp.status_code == 201, resp.text
    sim = simulate_log(
        [0.2, 0.35, 0.5],
        N,
        seed=5,
        target="ucb1",
        target_params={},
        exp=exp,
        t0=time.time() + 5.0,
    )
    names = TopicNames.with_prefix(ns)
    await produce(kafka_bootstrap, records_of(names, [*sim.log.decisions, *sim.log.rewards]))

    resp = await client.get(
        f"/experiments/{exp}/evaluate", params={"strategy": "ucb1", "params": '{"c": 0.5}'}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    log = await read_experiment_log(kafka_bootstrap, names, exp)
    assert len(log.config_events) == 1
    assert len(log.decisions) == N
    fields = DeciderSettings.model_fields  # the client fixture runs with the defaults
    options = EvaluationOptions(
        max_decisions=fields["evaluate_max_decisions"].default,
        samples=fields["evaluate_samples"].default,
    )
    pure = evaluate_log(log, "ucb1", {"c": 0.5}, options)
    assert body["decisions_evaluated"] == N
    assert body["estimates"] == [
        {
            "estimator": e.estimator,
            "value": e.value,
            "std_error": e.std_error,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
        }
        for e in pure.result.estimates
    ]
    assert body["ess"] == pure.result.ess
    assert body["warnings"] == pure.warnings
    assert [a["arm_id"] for a in body["arms"]] == arms

    missing = await client.get("/experiments/nope-x/evaluate", params={"strategy": "ucb1"})
    assert missing.status_code == 404
    bad = await client.get(f"/experiments/{exp}/evaluate", params={"strategy": "nope"})
    assert bad.status_code == 422
    assert "unknown strategy" in bad.json()["detail"]
    bad = await client.get(
        f"/experiments/{exp}/evaluate", params={"strategy": "ucb1", "params": "{"}
    )
    assert bad.status_code == 422
    assert "not JSON" in bad.json()["detail"]
    bad = await client.get(
        f"/experiments/{exp}/evaluate", params={"strategy": "ucb1", "params": '{"c": -1}'}
    )
    assert bad.status_code == 422
    assert "strategy_params.c" in bad.json()["detail"]


async def test_evaluate_endpoint_is_single_flight_and_bounded(
    decider_settings: SettingsFactory, ns: str
) -> None:
    """Scenario: an evaluation is already running, then a log beyond the record bound.
    We expect 429 for the concurrent request and 422 naming `mab evaluate` for the big
    log, with nothing read in the first case."""
    settings = decider_settings(evaluate_max_records=10)
    asgi = create_asgi(settings)
    async with (
        asgi.api.router.lifespan_context(asgi.api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://decider", timeout=30
        ) as c,
    ):
        exp = f"{ns}bounded"
        created = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
        assert created.status_code == 201, created.text
        for _ in range(12):
            assert (await c.get("/decision", params={"experiment_id": exp})).status_code == 200
        async with evaluation_lock:
            busy = await c.get(f"/experiments/{exp}/evaluate", params={"strategy": "ucb1"})
        assert busy.status_code == 429
        assert "another evaluation" in busy.json()["detail"]
        deadline = time.monotonic() + 20
        while True:  # decisions are produced without waiting for the ack
            big = await c.get(f"/experiments/{exp}/evaluate", params={"strategy": "ucb1"})
            if big.status_code == 422 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert big.status_code == 422, big.text
        assert "mab evaluate" in big.json()["detail"]


async def test_evaluations_run_outside_the_serving_process(
    decider_settings: SettingsFactory,
) -> None:
    """Scenario: an evaluation through the endpoint of a started decider, then the
    decider stops.
    We expect: the answer was computed in the decider's evaluation process (another
    process than the one serving decisions, at a lower priority), which stops with the
    decider."""
    settings = decider_settings()
    async with serve_decider(settings) as (c, asgi):
        exp = f"{settings.mab_topic_prefix}elsewhere"
        created = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ["a", "b"]})
        assert created.status_code == 201, created.text
        assert (await c.get("/decision", params={"experiment_id": exp})).status_code == 200
        evaluator = asgi.api.state.runtime.evaluator
        assert evaluator.pid is None  # started by the first evaluation, not before
        answer = await c.get(f"/experiments/{exp}/evaluate", params={"strategy": "ucb1"})
        assert answer.status_code == 200, answer.text
        pid = evaluator.pid
        assert pid is not None
        assert pid != os.getpid()
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + NICENESS)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
