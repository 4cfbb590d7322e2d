"""Strategy-independent *adaptive* statistics of one arm: the only update math.

The fold must depend on events alone (never on an experiment's current strategy params),
so replay and the live consumer agree; the simulator calls the very same
:func:`observe`. Every constant here is therefore FIXED, and each adaptive strategy reads
the summary it needs at decision time ``now``:

* **Exponentially time-decayed (pulls, reward_sum)** at a fixed geometric ladder of
  half-lives :data:`HALF_LIVES` (time units: one simulator step, or one unix second in
  the service). They are stored decayed to the arm's ``last_reward_ts`` and decayed
  further to ``now`` when read, so an arm that is not pulled "forgets" and its posterior
  widens again (Discounted Thompson sampling, Raj & Kalyani 2017). A half-life between
  two rungs is read as a log-linear interpolation of the two rungs.
  An out-of-order event (``ts < last_reward_ts``) is decayed itself instead of the stored
  sums, so the sums equal ``sum_i 2**(-(t_ref - t_i)/h)`` whatever the arrival order.
* **A sliding window** of :data:`WINDOW_BUCKETS` time buckets of :data:`WINDOW_BUCKET`
  units (counts and sums per bucket): SW-UCB (Garivier & Moulines, ALT 2011) reads the
  last ``window`` units out of it.
* **A two-sided Bernoulli CUSUM change detector** (Page 1954; used as in CUSUM-UCB, Liu,
  Lee & Shroff, AAAI 2018) on the rewards observed since the arm's last change point.
  The reference rate is the running mean since the last change; the alternatives are
  ``p0 +- d`` with ``d = max(CUSUM_MIN_SHIFT, CUSUM_REL_SHIFT * min(p0, 1 - p0))`` (a
  relative shift suits conversion rates of 1-20 %). When a statistic exceeds
  :data:`CUSUM_THRESHOLD` the arm's "since change" statistics restart and the alarm is
  counted (``change_points``, ``last_change_ts``).

All of it is O(1) per arm (2*8 + 2*16 + 8 numbers), pure Python floats: no numpy and no
object creation per event, so the fold stays fast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from bandit_core.state import ArmStats

#: Half-lives of the decayed sums (time units), geometric with ratio 4 (16 steps .. 3 days);
#: the ratio 4 is relied on by :func:`observe` (rung factors are successive 4th powers).
HALF_LIVES: Final[tuple[float, ...]] = (
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
)
_LN2: Final = math.log(2.0)
_RATES: Final[tuple[float, ...]] = tuple(_LN2 / h for h in HALF_LIVES)
_TOP: Final = len(HALF_LIVES) - 1
_LOG_LADDER: Final[tuple[float, ...]] = tuple(math.log(h) for h in HALF_LIVES)
MIN_HALF_LIFE: Final = HALF_LIVES[0]
MAX_HALF_LIFE: Final = HALF_LIVES[-1]

#: Sliding-window summary: WINDOW_BUCKETS buckets of WINDOW_BUCKET time units each.
WINDOW_BUCKET: Final = 64.0
WINDOW_BUCKETS: Final = 16
MIN_WINDOW: Final = WINDOW_BUCKET
MAX_WINDOW: Final = WINDOW_BUCKET * (WINDOW_BUCKETS - 1)

#: CUSUM detector constants (fixed: the fold may not depend on strategy params).
CUSUM_WARMUP: Final = 20
CUSUM_THRESHOLD: Final = 8.0
CUSUM_REL_SHIFT: Final = 0.6
CUSUM_MIN_SHIFT: Final = 0.02
CUSUM_DETECTOR: Final = "bernoulli_cusum"
_P_MIN: Final = 1e-3
_P_MAX: Final = 1.0 - 1e-3


def observe(stats: ArmStats, reward: float, ts: float) -> bool:
    """Fold one reward into ``stats`` in place; ``True`` when the detector raised an alarm.

    The five base counters are updated too, so this is the whole per-reward update.
    """
    stats.pulls += 1
    stats.reward_sum += reward
    stats.reward_sq_sum += reward * reward
    # --- decayed ladder ---
    dp = stats.dpulls
    ds = stats.dsum
    last = stats.last_reward_ts
    if ts >= last:
        # one exp for the longest half-life; each shorter rung (ratio 4) is its 4th power
        f = math.exp(-_RATES[_TOP] * (ts - last))
        for i in range(_TOP, -1, -1):
            dp[i] = dp[i] * f + 1.0
            ds[i] = ds[i] * f + reward
            f *= f
            f *= f
        stats.last_reward_ts = ts
    else:  # late event: decay the observation, not the sums
        f = math.exp(-_RATES[_TOP] * (last - ts))
        for i in range(_TOP, -1, -1):
            dp[i] += f
            ds[i] += reward * f
            f *= f
            f *= f
    # --- sliding-window buckets ---
    epoch = int(ts // WINDOW_BUCKET)
    wp = stats.win_pulls
    ws = stats.win_sum
    cur = stats.win_epoch
    if epoch > cur:
        for e in range(max(cur + 1, epoch - WINDOW_BUCKETS + 1), epoch + 1):
            j = e % WINDOW_BUCKETS
            wp[j] = 0.0
            ws[j] = 0.0
        stats.win_epoch = cur = epoch
    if epoch > cur - WINDOW_BUCKETS:
        j = epoch % WINDOW_BUCKETS
        wp[j] += 1.0
        ws[j] += reward
    # --- CUSUM on the since-change statistics ---
    n = stats.cp_pulls
    if n >= CUSUM_WARMUP:
        p0 = (stats.cp_sum + 0.5) / (n + 1.0)
        p0 = _P_MIN if p0 < _P_MIN else (_P_MAX if p0 > _P_MAX else p0)
        d = max(CUSUM_MIN_SHIFT, CUSUM_REL_SHIFT * min(p0, 1.0 - p0))
        up = min(p0 + d, _P_MAX)
        dn = max(p0 - d, _P_MIN)
        log = math.log
        q0 = 1.0 - p0
        llr_up = reward * log(up / p0) + (1.0 - reward) * log((1.0 - up) / q0)
        llr_dn = reward * log(dn / p0) + (1.0 - reward) * log((1.0 - dn) / q0)
        gp = stats.cusum_pos + llr_up
        gn = stats.cusum_neg + llr_dn
        stats.cusum_pos = gp if gp > 0.0 else 0.0
        stats.cusum_neg = gn if gn > 0.0 else 0.0
        if gp > CUSUM_THRESHOLD or gn > CUSUM_THRESHOLD:
            stats.cp_pulls = 0
            stats.cp_sum = 0.0
            stats.cusum_pos = 0.0
            stats.cusum_neg = 0.0
            stats.change_points += 1
            stats.last_change_ts = ts
            return True
    stats.cp_pulls = n + 1
    stats.cp_sum += reward
    return False


def decayed(stats: ArmStats, half_life: float, now: float) -> tuple[float, float]:
    """The arm's ``(pulls, reward_sum)`` discounted with ``half_life`` as seen at ``now``.

    ``half_life`` must lie in ``[MIN_HALF_LIFE, MAX_HALF_LIFE]`` (the params validate it).
    """
    dt = now - stats.last_reward_ts
    if dt < 0.0:
        dt = 0.0
    x = math.log(half_life)
    i = 0
    last = len(HALF_LIVES) - 1
    while i < last - 1 and x > _LOG_LADDER[i + 1]:
        i += 1
    w = (x - _LOG_LADDER[i]) / (_LOG_LADDER[i + 1] - _LOG_LADDER[i])
    w = 0.0 if w < 0.0 else (1.0 if w > 1.0 else w)
    f0 = math.exp(-_RATES[i] * dt)
    f1 = math.exp(-_RATES[i + 1] * dt)
    dp, ds = stats.dpulls, stats.dsum
    n = (1.0 - w) * dp[i] * f0 + w * dp[i + 1] * f1
    s = (1.0 - w) * ds[i] * f0 + w * ds[i + 1] * f1
    return n, s


def windowed(stats: ArmStats, window: float, now: float) -> tuple[float, float]:
    """The arm's ``(pulls, reward_sum)`` in the last ``window`` time units before ``now``.

    Resolution is one bucket: the current (partial) bucket plus the ``ceil(window /
    WINDOW_BUCKET) - 1`` before it are counted.
    """
    now_epoch = int(now // WINDOW_BUCKET)
    nb = max(1, math.ceil(window / WINDOW_BUCKET))
    lo = max(now_epoch - nb + 1, stats.win_epoch - WINDOW_BUCKETS + 1)
    hi = min(now_epoch, stats.win_epoch)
    n = 0.0
    s = 0.0
    wp, ws = stats.win_pulls, stats.win_sum
    for e in range(lo, hi + 1):
        j = e % WINDOW_BUCKETS
        n += wp[j]
        s += ws[j]
    return n, s
