"""Adaptive statistics, adaptive strategies and the fold's change points."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_core.adaptive import (
    DAY,
    GLR_DETECTOR,
    GLR_MAX_BLOCKS,
    MAX_HALF_LIFE,
    MIN_HALF_LIFE,
    RESTART_KEEP,
    decayed,
    glr_split,
    observe,
    restart_others,
    windowed,
)
from bandit_core.adaptive_shape import HALF_LIVES
from bandit_core.fold import DERIVED, ChangePoint, fold_batch
from bandit_core.simulate import parse_scenario, run_once
from bandit_core.state import ArmStats, ExperimentState
from bandit_core.strategies import (
    STRATEGIES,
    InvalidParamsError,
    StrategyParams,
    get_strategy,
    params_for,
    validate_params,
)
from bandit_core.strategies.daypart_thompson import _part_weights
from schemas.events import (
    ChangePointDetected,
    ExperimentConfig,
    ExperimentCreated,
    RewardObserved,
)
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

ADAPTIVE = ("discounted_thompson", "sw_ucb", "glr_thompson", "glr_ucb", "daypart_thompson")
ARMS = ("a", "b", "c")


def _config() -> ExperimentConfig:
    return config_of("exp", ARMS, ts=0.0)


def _created() -> ExperimentCreated:
    return ExperimentCreated(experiment_id="exp", ts=0.0, config=_config())


def _reward(i: int, arm: str, reward: float, ts: float) -> RewardObserved:
    return RewardObserved(experiment_id="exp", event_id=f"e{i}", arm_id=arm, reward=reward, ts=ts)


def test_decay_halves_after_one_half_life() -> None:
    s = ArmStats()
    observe(s, 1.0, 100.0)
    for h in HALF_LIVES:
        n, r = decayed(s, h, 100.0 + h)
        assert n == pytest.approx(0.5)
        assert r == pytest.approx(0.5)


def test_interpolated_half_life_lies_between_rungs() -> None:
    s = ArmStats()
    observe(s, 1.0, 0.0)
    lo, _ = decayed(s, HALF_LIVES[1], 100.0)
    mid, _ = decayed(s, math.sqrt(HALF_LIVES[1] * HALF_LIVES[2]), 100.0)
    hi, _ = decayed(s, HALF_LIVES[2], 100.0)
    assert lo < mid < hi


def test_out_of_order_event_decays_itself_and_is_order_free() -> None:
    a, b = ArmStats(), ArmStats()
    observe(a, 1.0, 10.0)
    observe(a, 0.0, 50.0)
    observe(b, 0.0, 50.0)
    observe(b, 1.0, 10.0)  # late: must not blow up nor move last_reward_ts back
    assert b.last_reward_ts == 50.0
    for x, y in zip(a.dpulls + a.dsum, b.dpulls + b.dsum, strict=True):
        assert x == pytest.approx(y)
    n, _ = decayed(b, MIN_HALF_LIFE, 40.0)  # now before last ts: treated as dt = 0
    assert math.isfinite(n)


def test_window_counts_only_recent_buckets() -> None:
    s = ArmStats()
    for t in range(0, 2000, 10):
        observe(s, 1.0, float(t))
    n_all, _ = windowed(s, 960.0, 1999.0)
    n_short, r_short = windowed(s, 128.0, 1999.0)
    assert 0 < n_short < n_all <= 200
    assert r_short == n_short
    assert windowed(s, 960.0, 10_000.0) == (0.0, 0.0)


def test_glr_detects_a_drop_and_restarts_since_change_stats() -> None:
    rng = random.Random(1)
    s = ArmStats()
    alarms = [observe(s, float(rng.random() < 0.3), float(t)) for t in range(1000)]
    assert all(a is None for a in alarms), "false alarm on a stationary arm"
    assert len(s.glr_n) <= GLR_MAX_BLOCKS
    assert sum(s.glr_n) == 1000
    assert s.cp_pulls == 1000
    t_change = 1000
    detected = None
    for t in range(t_change, t_change + 2000):
        if observe(s, float(rng.random() < 0.05), float(t)) is not None:
            detected = t
            break
    assert detected is not None
    assert detected - t_change < 300
    assert s.change_points == 1
    assert s.last_change_ts == float(detected)
    assert s.pulls == detected + 1
    # only the blocks after the estimated change point are kept: post-change evidence
    after = detected - t_change + 1
    assert 0 < s.cp_pulls <= after
    assert s.cp_pulls == sum(s.glr_n)
    assert s.cp_sum == pytest.approx(sum(s.glr_s))
    assert s.cp_sum / s.cp_pulls < 0.15


def test_soft_restart_shrinks_the_other_arms() -> None:
    a, b, c = ArmStats(), ArmStats(), ArmStats()
    for t in range(200):
        observe(a, 1.0, float(t))
        observe(b, float(t % 4 == 0), float(t))
        if t < RESTART_KEEP // 2:
            observe(c, 1.0, float(t))
    restart_others([a, b, c], a)
    assert a.cp_pulls == 200, "the alarmed arm is not touched"
    assert b.cp_pulls == RESTART_KEEP
    assert b.cp_sum == pytest.approx(RESTART_KEEP / 4)
    assert b.glr_n == [float(RESTART_KEEP)]
    assert b.pulls == 200
    assert c.cp_pulls == RESTART_KEEP // 2, "fewer than the cap: counts kept"
    assert c.glr_n == [float(RESTART_KEEP // 2)]


def _kl(p: float, q: float) -> float:
    eps = 1e-12
    q = min(max(q, eps), 1.0 - eps)
    out = 0.0
    if p > 0.0:
        out += p * math.log(p / q)
    if p < 1.0:
        out += (1.0 - p) * math.log((1.0 - p) / (1.0 - q))
    return out


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.tuples(st.integers(0, 6), st.floats(0.0, 1.0)), min_size=1, max_size=30))
def test_glr_split_equals_the_kl_form(blocks: list[tuple[int, float]]) -> None:
    """The entropy identity used for speed gives Besson & Kaufmann's Eq. (2) exactly."""
    counts = [float(2**e) for e, _ in blocks]
    sums = [float(round(c * f)) for c, (_, f) in zip(counts, blocks, strict=True)]
    total_n, total_s = sum(counts), sum(sums)
    mu = total_s / total_n
    want, n1, s1 = 0.0, 0.0, 0.0
    for i in range(len(counts) - 1):
        n1 += counts[i]
        s1 += sums[i]
        n2 = total_n - n1
        v = n1 * _kl(s1 / n1, mu) + n2 * _kl((total_s - s1) / n2, mu)
        if v > want + 1e-9:
            want = v
    got, split = glr_split(counts, sums)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-7)
    if want > 1e-6:
        assert 1 <= split < len(counts)


def test_daypart_weights_borrow_from_neighbouring_hours() -> None:
    w = _part_weights(first=9, width=1, neighbour_weight=0.5)
    assert w[9] == 1.0
    assert w[8] == w[10] == 0.5
    assert w[7] == w[11] == 0.25
    assert w[21] == 0.5**12
    assert _part_weights(first=0, width=6, neighbour_weight=0.0) == [1.0] * 6 + [0.0] * 18
    assert _part_weights(first=0, width=6, neighbour_weight=0.5)[23] == 0.5


def test_daypart_buckets_follow_the_utc_hour() -> None:
    s = ArmStats()
    observe(s, 1.0, 3 * DAY + 14 * 3600 + 5)  # 14:00:05 UTC
    assert s.hour_pulls[14] == 1.0
    assert sum(s.hour_pulls) == 1.0
    observe(s, 0.0, 3 * DAY + 14 * 3600 + 5 - 7 * DAY)  # a week earlier, late: weight 1/2
    assert s.hour_pulls[14] == pytest.approx(1.5)
    assert s.hour_sum[14] == pytest.approx(1.0)


def test_daypart_thompson_serves_each_hours_winner() -> None:
    strategy = get_strategy("daypart_thompson")
    stats = [ArmStats(), ArmStats()]
    rng = random.Random(2)
    for day in range(3):
        for minute in range(0, 1440, 2):
            ts = day * DAY + minute * 60.0
            morning = minute < 720
            observe(stats[0], float(rng.random() < (0.6 if morning else 0.1)), ts)
            observe(stats[1], float(rng.random() < (0.1 if morning else 0.6)), ts)
    now = 3 * DAY
    hourly = params_for("daypart_thompson", {})
    p_morning = strategy.propensities(("m", "e"), stats, hourly, rng, now + 9 * 3600, 2000)
    p_evening = strategy.propensities(("m", "e"), stats, hourly, rng, now + 20 * 3600, 2000)
    assert p_morning[0] > 0.95
    assert p_evening[1] > 0.95
    one_part = params_for("daypart_thompson", {"buckets": 1})
    whole_day = strategy.propensities(("m", "e"), stats, one_part, rng, now, 2000)
    assert 0.05 < whole_day[0] < 0.95


def test_snapshot_layouts_round_trip_and_upcast() -> None:
    s = ArmStats()
    for t in range(40):
        observe(s, float(t % 3 == 0), float(t * 100))
    assert ArmStats.from_list(s.to_list()) == s
    cusum_era = [*s.to_list()[:12], 0.0, 0.0, 2, 5.0]  # 16 values, CUSUM statistics
    old = ArmStats.from_list(cusum_era)
    assert old.glr_n == [float(s.cp_pulls)]
    assert old.change_points == 2


def test_old_five_element_snapshot_loads() -> None:
    s = ArmStats.from_list([3, 2.0, 2.0, 4, 12.5])
    assert (s.pulls, s.reward_sum, s.decisions, s.last_reward_ts) == (3, 2.0, 4, 12.5)
    assert s.cp_pulls == 3
    assert s.dpulls == [0.0] * len(HALF_LIVES)
    observe(s, 1.0, 13.0)
    assert ArmStats.from_list(s.to_list()) == s
    with pytest.raises(ValueError, match="5, 16, 19, 20 or 21"):
        ArmStats.from_list([1, 2, 3, 4, 5, 6])


def test_fold_reports_change_points_and_ignores_their_events() -> None:
    rng = random.Random(3)
    events: list[RewardObserved] = []
    for t in range(3000):
        p = 0.4 if t < 1500 else 0.02
        events.append(_reward(t, "a", float(rng.random() < p), float(t + 1)))
    res = fold_batch(ExperimentState("exp"), [_created(), *events])
    assert res.change_points
    first = res.change_points[0]
    assert first.arm_id == "a"
    assert first.ts > 1500
    assert first.number == 1
    assert first.statistic > 0.0
    assert res.state.arms["a"].change_points == len(res.change_points)
    cp = ChangePointDetected(
        experiment_id="exp", arm_id="a", detector=GLR_DETECTOR, statistic=first.statistic
    )
    again = fold_batch(res.state, [cp])
    assert again.outcomes == [DERIVED]
    assert again.state.snapshot_bytes() == res.state.snapshot_bytes()


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from(ARMS), st.booleans(), st.floats(0.0, 300_000.0)),
        min_size=1,
        max_size=120,
    ),
    cuts=st.lists(st.integers(0, 120), max_size=5),
)
def test_any_batch_split_gives_the_same_snapshot(
    data: list[tuple[str, bool, float]], cuts: list[int]
) -> None:
    events = [_created()] + [_reward(i, a, float(r), ts) for i, (a, r, ts) in enumerate(data)]
    whole = fold_batch(ExperimentState("exp"), events)
    bounds = sorted({0, len(events), *(min(c, len(events)) for c in cuts)})
    state = ExperimentState("exp")
    cps: list[ChangePoint] = []
    for lo, hi in itertools.pairwise(bounds):
        res = fold_batch(state, events[lo:hi])
        cps += res.change_points
        # through the snapshot blob, as the consumer does between batches
        state = ExperimentState.from_snapshot(res.state.snapshot_bytes(), "exp")
        state.config, state.seen = res.state.config, res.state.seen
    assert state.snapshot_bytes() == whole.state.snapshot_bytes()
    assert cps == whole.change_points


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(STRATEGIES)),
    k=st.integers(1, 6),
    obs=st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 300_000)), max_size=60),
    now=st.floats(0.0, 400_000.0),
    seed=st.integers(0, 2**32),
)
def test_strategies_stay_inside_the_experiment_and_propensities_sum_to_one(
    name: str, k: int, obs: list[tuple[int, bool, float]], now: float, seed: int
) -> None:
    arm_ids = [f"arm{i}" for i in range(k)]
    stats = [ArmStats() for _ in arm_ids]
    for i, r, ts in obs:
        observe(stats[i % k], float(r), ts)
    strategy = get_strategy(name)
    defaults = params_for(name, {})
    rng = random.Random(seed)
    for _ in range(5):
        assert 0 <= strategy.choose(arm_ids, stats, defaults, rng, now) < k
    p = strategy.propensities(arm_ids, stats, defaults, rng, now, samples=200)
    assert len(p) == k
    assert all(x >= 0.0 for x in p)
    assert sum(p) == pytest.approx(1.0)
    index, prop = strategy.choose_with_propensity(arm_ids, stats, defaults, rng, now)
    assert 0 <= index < k
    assert 0.0 < prop <= 1.0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("discounted_thompson", {"half_life": MIN_HALF_LIFE / 2}),
        ("discounted_thompson", {"half_life": MAX_HALF_LIFE * 2}),
        ("discounted_thompson", {"gamma": 0.9}),
        ("sw_ucb", {"window": 1.0}),
        ("sw_ucb", {"c": -1.0}),
        ("glr_thompson", {"alpha": 0.9}),
        ("glr_ucb", {"c": -0.1}),
        ("glr_ucb", {"c": "0.3"}),
        ("glr_ucb", {"alpha": 0.6}),
        ("glr_ucb", {"half_life": MIN_HALF_LIFE / 2}),
        ("glr_ucb", {"half_life": math.inf}),
        ("glr_ucb", {"window": 960.0}),
        ("glr_ucb", {"d": -0.1}),
        ("glr_ucb", {"d": math.nan}),
        ("glr_ucb", {"restart_pulls": -1}),
        ("glr_ucb", {"restart_pulls": 1.5}),
        ("glr_ucb", {"restart_pulls": "48"}),
        ("glr_ucb", {"restart_pulls": 10**6}),
        ("daypart_thompson", {"buckets": 5}),
        ("daypart_thompson", {"buckets": 48}),
        ("daypart_thompson", {"prior_weight": -1.0}),
        ("daypart_thompson", {"neighbour_weight": 1.5}),
        ("daypart_thompson", {"period": 3600}),
    ],
)
def test_bad_params_are_rejected(name: str, params: dict[str, float]) -> None:
    with pytest.raises(InvalidParamsError):
        validate_params(name, params)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_defaults_validate(name: str) -> None:
    assert validate_params(name, {}) == {}


# --- glr_ucb ----------------------------------------------------------------------


def _pulled(rewards: list[tuple[float, float]]) -> ArmStats:
    s = ArmStats()
    for r, ts in rewards:
        observe(s, r, ts)
    return s


def glr_ucb(**given: float) -> StrategyParams:
    """glr_ucb's params with ``given`` set, the rest at their defaults."""
    return params_for("glr_ucb", given)


def test_glr_ucb_index_untried_first_then_optimism() -> None:
    ucb = get_strategy("glr_ucb")
    rng = random.Random(3)
    leader = _pulled([(float(t % 10 == 0), float(t)) for t in range(1000)])  # mean 0.1
    fresh = ArmStats()
    assert ucb.propensities(["a", "b"], [leader, fresh], glr_ucb(alpha=0.0), rng, 1000.0) == [
        0.0,
        1.0,
    ]
    # 5 pulls at 0.0: index 0 + c * sqrt(ln(1005) / 5) beats 0.1 + a tiny bonus ...
    few = _pulled([(0.0, 995.0 + t) for t in range(5)])
    assert ucb.choose(["a", "b"], [leader, few], glr_ucb(alpha=0.0), rng, 1000.0) == 1
    # ... but not when exploration is switched off (c = d = 0: the plain leader)
    off = glr_ucb(alpha=0.0, c=0.0, d=0.0)
    assert ucb.choose(["a", "b"], [leader, few], off, rng, 1000.0) == 0


def test_glr_ucb_small_sample_term_keeps_a_few_early_zeros_optimistic() -> None:
    """Four early zeros on the best arm: the Hoeffding bonus with the small ``c`` alone
    leaves it below a runner-up at 0.33 (how stationary runs got stuck); the ``d ln N /
    n`` term tries it again."""
    ucb = get_strategy("glr_ucb")
    rng = random.Random(4)
    runner_up = _pulled([(float(t % 3 == 0), float(t)) for t in range(250)])  # 0.336
    zeros = _pulled([(0.0, 250.0 + t) for t in range(4)])
    arms, stats, now = ["a", "b"], [runner_up, zeros], 254.0
    assert ucb.choose(arms, stats, glr_ucb(alpha=0.0), rng, now) == 1
    assert ucb.choose(arms, stats, glr_ucb(alpha=0.0, d=0.0), rng, now) == 0


def _false_alarm_on_the_best_arm() -> tuple[list[ArmStats], float]:
    """Two arms at 0.5 and 0.35, 600 rewards each, then a run of zeros on the best arm
    until its detector fires: it keeps only those few zeros, the other arm 48 rewards."""
    rng = random.Random(1)
    best, other = ArmStats(), ArmStats()
    t = 0.0
    for _ in range(600):
        observe(best, float(rng.random() < 0.5), t)
        observe(other, float(rng.random() < 0.35), t + 1.0)
        t += 2.0
    while observe(best, 0.0, t) is None:
        t += 1.0
    restart_others([best, other], best)
    return [best, other], t + 1.0


def test_glr_ucb_recovers_from_a_false_alarm_on_the_best_arm() -> None:
    """The stuck case in miniature: after the false alarm the old rule (no refill, no
    small-sample term) never serves the best arm again; the defaults refill its
    since-change statistics and serve it."""
    stats, t0 = _false_alarm_on_the_best_arm()
    best = stats[0]
    assert best.change_points == 1
    assert best.cp_sum == 0.0
    assert 0 < best.cp_pulls < RESTART_KEEP
    assert stats[1].cp_pulls == RESTART_KEEP
    ucb = get_strategy("glr_ucb")
    assert ucb.propensities(["a", "b"], stats, glr_ucb(alpha=0.0), random.Random(0), t0) == [
        1.0,
        0.0,
    ]

    def best_share_at_the_end(params: StrategyParams) -> float:
        arms = [s.clone() for s in stats]
        rng = random.Random(2)
        rewards = random.Random(3)
        picks: list[int] = []
        for step in range(1500):
            now = t0 + step
            i = ucb.choose(["a", "b"], arms, params, rng, now)
            picks.append(i)
            if observe(arms[i], float(rewards.random() < (0.5, 0.35)[i]), now) is not None:
                restart_others(arms, arms[i])
        return picks[-500:].count(0) / 500

    assert best_share_at_the_end(glr_ucb()) > 0.9
    assert best_share_at_the_end(glr_ucb(alpha=0.0, d=0.0, restart_pulls=0)) == 0.0


def test_glr_ucb_reexplores_an_arm_whose_counts_faded() -> None:
    """An arm measured long ago at a low rate fades (``half_life``) until its bonus makes
    the index try it again: how a losing arm that rises gets detected."""
    ucb = get_strategy("glr_ucb")
    rng = random.Random(5)
    params = glr_ucb(alpha=0.0)
    loser = _pulled([(float(t % 50 == 0), float(t)) for t in range(4700, 5000)])  # 0.02
    leader = _pulled([(float(t % 8 == 0), float(t)) for t in range(5000)])  # 0.125
    assert ucb.choose(["a", "b"], [loser, leader], params, rng, 5000.0) == 1
    for t in range(5000, 5000 + 6 * 1024):  # only the leader is served
        observe(leader, float(t % 8 == 0), float(t))
    assert ucb.choose(["a", "b"], [loser, leader], params, rng, 5000.0 + 6 * 1024) == 0


def test_glr_ucb_propensities_closed_form() -> None:
    ucb = get_strategy("glr_ucb")
    rng = random.Random(7)
    stats = [ArmStats(), ArmStats(), _pulled([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])]
    params = glr_ucb(alpha=0.3)
    p = ucb.propensities(["a", "b", "c"], stats, params, rng, 2.0)
    assert p == pytest.approx([0.1 + 0.35, 0.1 + 0.35, 0.1])
    # choose follows it: the untried arms share 1 - alpha, every arm gets alpha / K
    picks = Counter(ucb.choose(["a", "b", "c"], stats, params, rng, 2.0) for _ in range(6000))
    for i in range(3):
        assert picks[i] / 6000 == pytest.approx(p[i], abs=0.025)


def test_glr_ucb_follows_a_late_riser() -> None:
    """The worst arm jumps to best halfway: the default GLR-UCB serves it at the end."""
    env = parse_scenario(
        {
            "horizon": 4000,
            "arms": ["a", "b", "c"],
            "segments": [
                {"start": 0, "means": [0.1, 0.06, 0.02]},
                {"start": 2000, "means": [0.1, 0.06, 0.2]},
            ],
        }
    ).environments[0]
    shares = [
        run_once(env, "glr_ucb", glr_ucb(), seed).best_arm_share_last_10pct for seed in range(3)
    ]
    assert min(shares) > 0.8
