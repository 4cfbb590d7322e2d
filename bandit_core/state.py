"""Strategy-independent sufficient statistics of one experiment.

A strategy is a pure function of this state (plus an RNG), so changing strategy never
loses history and the simulator, the decider and replay share the exact same numbers.
The state is a plain mutable dataclass for speed, but it is only ever mutated inside
:func:`bandit_core.fold.fold_batch` on a private copy: callers see a pure fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from bandit_core.adaptive_shape import DAYPART_BUCKETS, HALF_LIVES, WINDOW_BUCKETS
from bandit_core.guardrails import GuardrailState
from bandit_core.uplift import Uplift
from schemas.events import ExperimentConfig

#: The integers a JSON snapshot holds as such (orjson refuses any beyond 64 bits).
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


def _json_int(value: int) -> int | float:
    """``value`` as orjson can encode it. ``win_epoch`` is ``int(ts // 64)`` of a float
    ``ts``, which exceeds 64 bits for a (valid but absurd) ``ts`` beyond ~5.9e20: then it
    is written as the float it came from, exact, and :meth:`ArmStats.from_list` reads it
    back with ``int``. Every other value keeps its snapshot bytes."""
    return value if _INT64_MIN <= value <= _UINT64_MAX else float(value)


def _ladder() -> list[float]:
    return [0.0] * len(HALF_LIVES)


def _ring() -> list[float]:
    return [0.0] * WINDOW_BUCKETS


def _hours() -> list[float]:
    return [0.0] * DAYPART_BUCKETS


def _empty() -> list[float]:
    return []


#: Most (allocation version, arm) cells of SRM counts a state keeps (see
#: :attr:`ExperimentState.srm`). At 3 arms and the default 60 s epochs that is the last
#: ~22 hours of versions (the allocation retention is 24 hours); with many arms fewer
#: versions. The version being counted is never dropped, so one version of a
#: 10,000-arm experiment may exceed it. About 20 bytes of snapshot per cell.
MAX_SRM_CELLS: Final = 4096


@dataclass(slots=True)
class ArmStats:
    """Per-arm counters. ``pulls`` counts observed rewards; ``decisions`` counts serves;
    ``units`` counts the decisions with a unit id (each decision id once), the pulls of
    the sticky and consistent modes.

    The first five fields are the stationary sufficient statistics. The rest are the
    fixed-constant adaptive summaries of :mod:`bandit_core.adaptive` (decayed sums at a
    ladder of half-lives, a bucketed sliding window, the statistics since the last change
    point with the GLR detector's exponential histogram, hour-of-day buckets); only
    :mod:`bandit_core.adaptive` updates them.

    The *value* statistics feed the strategies for continuous rewards (an order value
    per visitor): ``conv`` counts the rewards > 0 (conversions), ``log_sum`` and
    ``log_sq_sum`` sum the log of each converting reward and its square, and ``dconv``,
    ``dlog``, ``dlog_sq`` are the same three on the decayed ladder of ``dpulls``. While an
    arm has seen only rewards of exactly 0 or 1 they are implied by the other fields
    (``conv == reward_sum``, ``dconv == dsum`` bit for bit, every log is 0), so they are
    neither kept nor written: the ladders stay empty (:attr:`valued` is false) and a
    binary experiment's snapshot keeps its bytes. The first other reward materialises
    them (:func:`bandit_core.adaptive.observe`); read them through
    :mod:`bandit_core.strategies._value`, which knows the implied form.
    """

    pulls: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    decisions: int = 0
    last_reward_ts: float = 0.0
    dpulls: list[float] = field(default_factory=_ladder)
    dsum: list[float] = field(default_factory=_ladder)
    win_epoch: int = -(10**9)
    win_pulls: list[float] = field(default_factory=_ring)
    win_sum: list[float] = field(default_factory=_ring)
    cp_pulls: int = 0
    cp_sum: float = 0.0
    glr_n: list[float] = field(default_factory=_empty)
    glr_s: list[float] = field(default_factory=_empty)
    change_points: int = 0
    last_change_ts: float = 0.0
    hour_pulls: list[float] = field(default_factory=_hours)
    hour_sum: list[float] = field(default_factory=_hours)
    hour_ts: list[float] = field(default_factory=_hours)
    units: int = 0
    conv: int = 0
    log_sum: float = 0.0
    log_sq_sum: float = 0.0
    dconv: list[float] = field(default_factory=_empty)
    dlog: list[float] = field(default_factory=_empty)
    dlog_sq: list[float] = field(default_factory=_empty)

    @property
    def valued(self) -> bool:
        """Whether the value statistics are kept (a reward other than 0 or 1 was seen)."""
        return bool(self.dconv)

    @property
    def mean(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    def clone(self) -> ArmStats:
        """A deep copy (the list fields are copied, so folds never share them)."""
        return ArmStats(
            self.pulls,
            self.reward_sum,
            self.reward_sq_sum,
            self.decisions,
            self.last_reward_ts,
            self.dpulls[:],
            self.dsum[:],
            self.win_epoch,
            self.win_pulls[:],
            self.win_sum[:],
            self.cp_pulls,
            self.cp_sum,
            self.glr_n[:],
            self.glr_s[:],
            self.change_points,
            self.last_change_ts,
            self.hour_pulls[:],
            self.hour_sum[:],
            self.hour_ts[:],
            self.units,
            self.conv,
            self.log_sum,
            self.log_sq_sum,
            self.dconv[:],
            self.dlog[:],
            self.dlog_sq[:],
        )

    def to_list(self) -> list[Any]:
        """Compact snapshot form; the first five entries keep the original layout.
        ``units`` is a 20th entry only once non-zero, so an arm without unit decisions
        keeps its snapshot bytes; the value statistics are a 21st entry (one nested list)
        only once :attr:`valued`, so an arm of a binary experiment keeps them too."""
        values = [
            self.pulls,
            self.reward_sum,
            self.reward_sq_sum,
            self.decisions,
            self.last_reward_ts,
            self.dpulls,
            self.dsum,
            _json_int(self.win_epoch),
            self.win_pulls,
            self.win_sum,
            self.cp_pulls,
            self.cp_sum,
            self.glr_n,
            self.glr_s,
            self.change_points,
            self.last_change_ts,
            self.hour_pulls,
            self.hour_sum,
            self.hour_ts,
        ]
        if self.units or self.dconv:
            values.append(self.units)
        if self.dconv:
            values.append(
                [self.conv, self.log_sum, self.log_sq_sum, self.dconv, self.dlog, self.dlog_sq]
            )
        return values

    @classmethod
    def from_list(cls, values: list[Any]) -> ArmStats:
        """Inverse of :meth:`to_list`; older layouts load too.

        A 5-element list (before adaptive stats) loads with empty adaptive stats and its
        totals as the since-change statistics; a 16-element list (CUSUM era) keeps its
        ladder and window, and its since-change counts become one histogram block; a
        20-element list adds ``units``, a 21-element one the value statistics.
        """
        pulls, s, sq, decisions, last = values[:5]
        base = cls(int(pulls), float(s), float(sq), int(decisions), float(last))
        if len(values) == 5:
            base.cp_pulls = base.pulls
            base.cp_sum = base.reward_sum
            if base.pulls:
                base.glr_n, base.glr_s = [float(base.pulls)], [base.reward_sum]
            return base
        if len(values) not in (16, 19, 20, 21):
            raise ValueError(f"arm stats need 5, 16, 19, 20 or 21 values, got {len(values)}")
        dp, ds, epoch, wp, ws, cpn, cps = values[5:12]
        if len(dp) != len(HALF_LIVES) or len(ds) != len(HALF_LIVES):
            raise ValueError("decayed ladder of the wrong length")
        if len(wp) != WINDOW_BUCKETS or len(ws) != WINDOW_BUCKETS:
            raise ValueError("window ring of the wrong length")
        base.dpulls = [float(x) for x in dp]
        base.dsum = [float(x) for x in ds]
        base.win_epoch = int(epoch)
        base.win_pulls = [float(x) for x in wp]
        base.win_sum = [float(x) for x in ws]
        base.cp_pulls = int(cpn)
        base.cp_sum = float(cps)
        base.change_points = int(values[14])
        base.last_change_ts = float(values[15])
        if len(values) == 16:  # CUSUM era: values[12:14] were the CUSUM statistics
            if base.cp_pulls:
                base.glr_n, base.glr_s = [float(base.cp_pulls)], [base.cp_sum]
            return base
        gn, gs, hp, hs, ht = values[12], values[13], values[16], values[17], values[18]
        if len(gn) != len(gs):
            raise ValueError("GLR histogram counts and sums differ in length")
        if not (len(hp) == len(hs) == len(ht) == DAYPART_BUCKETS):
            raise ValueError("daypart buckets of the wrong length")
        base.glr_n = [float(x) for x in gn]
        base.glr_s = [float(x) for x in gs]
        base.hour_pulls = [float(x) for x in hp]
        base.hour_sum = [float(x) for x in hs]
        base.hour_ts = [float(x) for x in ht]
        if len(values) >= 20:
            base.units = int(values[19])
        if len(values) == 21:
            block = values[20]
            if not isinstance(block, list) or len(block) != 6:
                raise ValueError("value statistics must be a list of 6 entries")
            conv, ls, lsq, dc, dl, dlsq = block
            if not (len(dc) == len(dl) == len(dlsq) == len(HALF_LIVES)):
                raise ValueError("decayed value ladder of the wrong length")
            base.conv = int(conv)
            base.log_sum = float(ls)
            base.log_sq_sum = float(lsq)
            base.dconv = [float(x) for x in dc]
            base.dlog = [float(x) for x in dl]
            base.dlog_sq = [float(x) for x in dlsq]
        return base


@dataclass(slots=True)
class ExperimentState:
    """The folded state of one experiment.

    ``config`` is the highest-version configuration seen. ``seen`` maps dedupe keys
    (``d:<decision_id>``, ``e:<event_id>``, ``x:<decision_id>`` for a decision closed
    with the default reward, ``u:<decision_id>`` for a unit decision counted) to their
    event time; live consumers hold a per-batch *view*
    of it loaded from Redis, replay holds all of it. ``version`` counts applied events
    and lets the decider tell how fresh its cached snapshot is.

    Attribution windows (docs/attribution.md): ``pending`` maps each decision whose
    window is open to its deadline (event time). Like ``seen`` it is a view in the live
    consumer (the entries the batch's rewards name) and complete in replay, so its exact
    size is kept in ``pending_count``; it lives in its own Redis key, written in the same
    atomic step as the snapshot, so the decider never parses it. ``defaulted`` counts
    decisions folded with the default reward, ``late`` rewards that came after that, and
    ``untracked`` decisions not tracked because ``pending`` was full.

    Visitor assignment: ``srm`` counts new unit decisions per allocation version and
    arm (``{version: {arm_id: n}}``, sparse), what the sample-ratio-mismatch check
    compares with each version's weights. It keeps at most :data:`MAX_SRM_CELLS` cells,
    dropping the oldest versions first; ``srm_dropped`` counts the unit decisions whose
    cells were dropped. Both appear in the snapshot only once non-empty.

    Guardrails (docs/guardrails.md): ``guard`` holds each arm's confidence sequence per
    metric and the breaches proven so far (:class:`~bandit_core.guardrails.GuardrailState`);
    in the snapshot only once non-empty, so a snapshot written before guardrails existed
    loads with none.

    Holdout: ``uplift`` holds the two confidence sequences of the bandit's uplift over
    the holdout (:mod:`bandit_core.uplift`); in the snapshot only once it exists, as is
    ``winner``, the arm the stopping rule declared (:mod:`bandit_core.verdict`).
    """

    experiment_id: str
    config: ExperimentConfig | None = None
    arms: dict[str, ArmStats] = field(default_factory=dict)
    version: int = 0
    duplicates: int = 0
    seen: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    pending_count: int = 0
    defaulted: int = 0
    late: int = 0
    untracked: int = 0
    srm: dict[int, dict[str, int]] = field(default_factory=dict)
    srm_cells: int = 0
    srm_dropped: int = 0
    guard: GuardrailState = field(default_factory=GuardrailState.empty)
    #: The bandit's uplift over the holdout (:mod:`bandit_core.uplift`): ``None`` until
    #: an experiment with a holdout folds its first rewarded decision.
    uplift: Uplift | None = None
    #: The arm the stopping rule declared the winner (:mod:`bandit_core.verdict`), once.
    winner: str | None = None
    #: Rewards folded so far (the sum of the arms' ``pulls``, derived, never stored): the
    #: stopping rule checks at fixed counts of it.
    rewards: int = 0

    def arm(self, arm_id: str) -> ArmStats:
        stats = self.arms.get(arm_id)
        if stats is None:
            stats = self.arms[arm_id] = ArmStats()
        return stats

    def stats_for(self, arm_ids: tuple[str, ...] | list[str]) -> list[ArmStats]:
        """Stats aligned with ``arm_ids`` (zeros for arms never seen)."""
        empty = ArmStats()
        return [self.arms.get(a, empty) for a in arm_ids]

    def count_unit(self, version: int, arm_id: str) -> None:
        """One new unit decision of ``arm_id`` under allocation ``version`` (SRM).

        Beyond :data:`MAX_SRM_CELLS` cells the oldest versions go first, never the
        newest one (a decision logged late, under a version older than every kept one,
        is dropped at once); their unit decisions are counted in ``srm_dropped``. The
        fold sees a decision topic partition in log order, live and in replay, so both
        drop the same versions.
        """
        arms = self.srm.get(version)
        if arms is None:
            arms = self.srm[version] = {}
        if arm_id in arms:
            arms[arm_id] += 1
            return
        arms[arm_id] = 1
        self.srm_cells += 1
        while self.srm_cells > MAX_SRM_CELLS and len(self.srm) > 1:
            dropped = self.srm.pop(min(self.srm))
            self.srm_cells -= len(dropped)
            self.srm_dropped += sum(dropped.values())

    def copy(self) -> ExperimentState:
        return ExperimentState(
            experiment_id=self.experiment_id,
            config=self.config,
            arms={k: v.clone() for k, v in self.arms.items()},
            version=self.version,
            duplicates=self.duplicates,
            seen=dict(self.seen),
            pending=dict(self.pending),
            pending_count=self.pending_count,
            defaulted=self.defaulted,
            late=self.late,
            untracked=self.untracked,
            srm={v: dict(arms) for v, arms in self.srm.items()},
            srm_cells=self.srm_cells,
            srm_dropped=self.srm_dropped,
            guard=self.guard.copy(),
            uplift=None if self.uplift is None else self.uplift.clone(),
            winner=self.winner,
            rewards=self.rewards,
        )

    # --- snapshot blob (what Redis stores; config, seen and pending have their own keys) ---
    def snapshot_bytes(self) -> bytes:
        """The snapshot JSON. The attribution counters appear only once non-zero, so an
        experiment without a window keeps the original snapshot shape byte for byte."""
        obj: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "version": self.version,
            "duplicates": self.duplicates,
            "arms": {k: v.to_list() for k, v in self.arms.items()},
        }
        if self.pending_count or self.defaulted or self.late or self.untracked:
            obj["attribution"] = [self.pending_count, self.defaulted, self.late, self.untracked]
        if self.srm or self.srm_dropped:
            # Versions as JSON keys (strings), in the order they were first counted.
            obj["srm"] = {
                "dropped": self.srm_dropped,
                "versions": {str(v): arms for v, arms in self.srm.items()},
            }
        if self.guard:
            obj["guardrails"] = self.guard.to_json()
        if self.uplift is not None:
            obj["uplift"] = self.uplift.to_list()
        if self.winner is not None:
            obj["winner"] = self.winner
        return orjson.dumps(obj)

    @classmethod
    def from_snapshot(cls, raw: bytes | str | None, experiment_id: str) -> ExperimentState:
        if raw is None:
            return cls(experiment_id=experiment_id)
        obj = orjson.loads(raw)
        pending_count, defaulted, late, untracked = obj.get("attribution", (0, 0, 0, 0))
        srm_obj = obj.get("srm")
        srm: dict[int, dict[str, int]] = {}
        srm_dropped = 0
        if srm_obj is not None:
            srm_dropped = int(srm_obj["dropped"])
            srm = {
                int(v): {a: int(n) for a, n in arms.items()}
                for v, arms in srm_obj["versions"].items()
            }
        return cls(
            experiment_id=obj["experiment_id"],
            arms={k: ArmStats.from_list(v) for k, v in obj["arms"].items()},
            version=int(obj["version"]),
            duplicates=int(obj.get("duplicates", 0)),
            pending_count=int(pending_count),
            defaulted=int(defaulted),
            late=int(late),
            untracked=int(untracked),
            srm=srm,
            srm_cells=sum(len(arms) for arms in srm.values()),
            srm_dropped=srm_dropped,
            guard=GuardrailState.from_json(obj.get("guardrails", {})),
            uplift=None if "uplift" not in obj else Uplift.from_list(obj["uplift"]),
            winner=obj.get("winner"),
            rewards=sum(int(arm[0]) for arm in obj["arms"].values()),
        )
