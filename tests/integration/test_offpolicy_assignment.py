"""Propensity correctness under visitor assignment: off-policy evaluation of the logging
policy on logged sticky and consistent data recovers the observed mean within its CI.

The decisions are the fold-level events the sticky and consistent modes log
(``DecisionMade`` with the unit token, mode and allocation version), made with the
assignment rule itself (:class:`mab_client.assignment.Allocation`) under allocations that
move every version as the bandit learns; the propensity is the unit's weight in the
allocation it was assigned under. They go through the real Kafka and the real reward
consumer and decider (``/stats``: unique units, SRM), and the evaluator reads them back
with the log reader, which must count a consistent unit's repeated views once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import pytest

from bandit_core.allocation import AllocationRecord
from bandit_core.decision_ids import make_decision_id
from bandit_core.state import ArmStats
from bandit_core.strategies import get_strategy, params_for
from mab_client.assignment import Allocation
from mab_client.models import StatsPublic
from offpolicy.evaluate import evaluate_log
from offpolicy.log import ExperimentLog
from offpolicy.reader import read_experiment_log
from schemas.codec import encode
from schemas.events import AnyEvent, DecisionMade, RewardObserved
from schemas.redis_keys import RedisKeys
from schemas.topics import TopicNames
from stream_runtime.redis_client import AnyRedis
from tests.fixtures.in_process import in_process, wait_for
from tests.fixtures.streams import Outgoing, produce

pytestmark = pytest.mark.integration

ARMS = ("blue-button", "green-button", "Free Shipping")
MEANS = (0.2, 0.35, 0.5)
PARAMS = {"epsilon": 0.3}
INTERVAL = 60
VERSIONS = 20


#: The experiment's salt (see the test).
SALT = "5eed0ffa11ca7105"


@dataclass
class Logged:
    """What a simulated storefront logged, and the truth to compare with."""

    events: list[AnyEvent] = field(default_factory=list)
    allocations: list[AllocationRecord] = field(default_factory=list)
    repeats: int = 0
    #: Decisions (pulls): one per sticky unit, one per (unit, version) when consistent.
    pulls: int = 0
    #: Unique units by the arm of their first decision, and the versions they first came in.
    units_per_arm: list[int] = field(default_factory=lambda: [0] * len(ARMS))
    first_versions: set[int] = field(default_factory=set)
    seen_units: set[str] = field(default_factory=set)


def simulate(exp: str, salt: str, mode: str, seed: int, t0: float) -> Logged:
    """``VERSIONS`` allocation epochs of an ε-greedy experiment. Each version's weights
    are the strategy's propensities from the rewards applied before it (what the
    decider stores); units are assigned by the rule. Sticky: 60 new units a version,
    each assigned once (their later views log nothing); consistent: 80 returning units,
    each visiting about half of the versions 1-3 times, every view logged under the
    (unit, version) decision id. One reward per decision, 5 s after it."""
    rng = random.Random(seed)
    strategy = get_strategy("epsilon_greedy")
    params = params_for("epsilon_greedy", PARAMS)
    stats = [ArmStats() for _ in ARMS]
    out = Logged()
    for step in range(VERSIONS):
        start = t0 + step * INTERVAL
        version = int(start // INTERVAL)
        weights = strategy.propensities(ARMS, stats, params, rng, start, 1)
        total = sum(weights)
        weights = [w / total for w in weights]
        out.allocations.append(AllocationRecord(version, ARMS, tuple(weights), 0.0, start))
        allocation = Allocation(exp, version, ARMS, tuple(weights), salt)
        units = (
            [f"visitor-{step}-{i}" for i in range(60)]
            if mode == "sticky"
            else [f"regular-{i}" for i in range(80) if rng.random() < 0.5]
        )
        for n, unit in enumerate(units):
            ts = start + 0.5 * n
            choice = allocation.choose(unit)
            decision_id = (
                make_decision_id(choice.arm_index) if mode == "sticky" else choice.decision_id
            )
            views = 1 if mode == "sticky" else rng.randint(1, 3)
            for view in range(views):
                out.events.append(
                    DecisionMade(
                        experiment_id=exp,
                        decision_id=decision_id,
                        arm_id=choice.arm_id,
                        strategy="epsilon_greedy",
                        strategy_params=PARAMS,
                        propensity=choice.propensity,
                        config_version=1,
                        snapshot_version=step,
                        unit_id=allocation.unit_token(unit),
                        assignment=mode,  # type: ignore[arg-type]
                        allocation_version=version,
                        ts=ts + 0.1 * view,
                    )
                )
            out.repeats += views - 1
            out.pulls += 1
            if unit not in out.seen_units:
                out.seen_units.add(unit)
                out.units_per_arm[choice.arm_index] += 1
                out.first_versions.add(version)
            reward = 1.0 if rng.random() < MEANS[choice.arm_index] else 0.0
            out.events.append(
                RewardObserved(
                    experiment_id=exp,
                    arm_id=choice.arm_id,
                    reward=reward,
                    decision_id=decision_id,
                    ts=ts + 5.0,
                )
            )
            arm = stats[choice.arm_index]
            stats[choice.arm_index] = ArmStats(
                pulls=arm.pulls + 1, reward_sum=arm.reward_sum + reward
            )
    return out


def observed_mean(log: ExperimentLog) -> float:
    rewards = {r.decision_id: r.reward for r in log.rewards}
    return float(np.mean([rewards[d.decision_id] for d in log.decisions]))


async def store_allocations(redis: AnyRedis, ns: str, exp: str, logged: Logged) -> None:
    """The records the decider would have stored (first writer wins) for these versions."""
    keys = RedisKeys(ns)
    for record in logged.allocations:
        await redis.set(keys.allocation(exp, record.version), record.encode(), ex=7200)


@pytest.mark.parametrize("mode", ["sticky", "consistent"])
async def test_evaluating_the_logging_policy_recovers_the_observed_mean(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], mode: str
) -> None:
    """Scenario: an ε-greedy experiment's units assigned in ``mode`` under 20 moving
    allocations, rewarded, folded by the reward consumer and read back from Kafka.
    We expect: the reader keeps each decision id once (every repeated consistent view
    counted as a repeat); ``/stats`` counts the same unique units per arm and no SRM;
    and every estimator's CI for the logging policy itself (ε-greedy 0.3, replayed
    from the log) contains the observed mean reward. The same log with the sticky
    mistake of logging a unit's propensity as uniform does not pass that check."""
    exp = f"{ns}{mode} hero"
    services = in_process(kafka_bootstrap, redis_url, ns)
    names = TopicNames.with_prefix(ns)
    async with services.serving() as c:
        r = await c.post(
            "/experiments",
            json={
                "experiment_id": exp,
                "arm_ids": list(ARMS),
                "strategy": "epsilon_greedy",
                "strategy_params": PARAMS,
            },
        )
        assert r.status_code == 201, r.text
        redis = services.decider.api.state.runtime.redis
        # The mode as a config command would set it, and a fixed salt: the units' arms
        # are then the same on every run (a new experiment's salt is random), so the
        # estimators' intervals below are one computation, not a 95% chance.
        key = RedisKeys(ns).experiment(exp).config
        config = orjson.loads(await redis.get(key))
        await redis.set(key, orjson.dumps({**config, "assignment": mode, "salt": SALT}))
        salt = SALT
        # After the create (the config event must precede the decisions in event time).
        t0 = (time.time() // INTERVAL + 1) * INTERVAL
        logged = simulate(exp, salt, mode, 16, t0)
        await store_allocations(redis, ns, exp, logged)
        outgoing = [
            Outgoing(
                names.decisions if isinstance(e, DecisionMade) else names.rewards,
                exp,
                encode(e),
            )
            for e in logged.events
        ]
        await produce(kafka_bootstrap, outgoing)
        consumer = services.consumer
        await wait_for(lambda: consumer.stats.records >= len(outgoing), 60, "reward consumer")
        stats = StatsPublic.model_validate_json((await c.get(f"/experiments/{exp}/stats")).content)

    units = sum(logged.units_per_arm)
    assert [stats.arm(a).units for a in ARMS] == logged.units_per_arm
    assert stats.srm is not None
    assert stats.srm.units == units  # each unit once, under its first version
    assert stats.srm.versions == len(logged.first_versions)
    assert not stats.srm.alarm, stats.srm
    assert stats.srm.method == "pooled"
    assert stats.assignment == mode

    log = await read_experiment_log(kafka_bootstrap, names, exp)
    assert len(log.decisions) == logged.pulls
    assert log.repeated_decisions == logged.repeats
    if mode == "consistent":
        assert logged.repeats > logged.pulls / 2  # the dedupe had work to do
        assert logged.pulls > units  # returning units: several pulls each

    mean = observed_mean(log)
    report = evaluate_log(log, "epsilon_greedy", PARAMS)
    assert report.decisions_evaluated == logged.pulls
    checked = [e for e in report.result.estimates if e.ci_low is not None]
    assert {e.estimator for e in checked} >= {"ips", "snips"}
    for e in checked:
        assert e.ci_low is not None
        assert e.ci_high is not None
        assert e.ci_low <= mean <= e.ci_high, (e, mean)

    # Negative control: the propensities a broken sticky store would log (uniform).
    wrong = ExperimentLog(
        log.experiment_id,
        log.config_events,
        tuple(d.model_copy(update={"propensity": 1 / len(ARMS)}) for d in log.decisions),
        log.rewards,
    )
    ips = next(
        e
        for e in evaluate_log(wrong, "epsilon_greedy", PARAMS).result.estimates
        if e.estimator == "ips"
    )
    assert ips.ci_low is not None
    assert ips.ci_high is not None
    assert not ips.ci_low <= mean <= ips.ci_high, (ips, mean)
