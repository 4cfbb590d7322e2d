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
* **A Bernoulli GLR change detector** (Besson & Kaufmann, "Efficient change-point
  detection for tackling piecewise-stationary bandits", JMLR 2022) on the rewards since
  the arm's last change point. It tests every split of the recent past, so it needs no
  guess of the shift size (a CUSUM does, and a wrong guess makes it slow or
  trigger-happy). The past is summarised by an exponential histogram (<=
  :data:`GLR_MAX_BLOCKS` blocks), so the test costs O(log n) and is run every
  :data:`GLR_EVERY` rewards. On an alarm the arm keeps the blocks after the estimated
  change point (as ADWIN does, Bifet & Gavalda 2007: the post-change rewards are
  evidence about the new mean, throwing them away makes the strategy re-explore an arm
  it has just measured), and the alarm is counted (``change_points``, ``last_change_ts``).
  The other arms get a *soft* restart (:func:`restart_others`).
* **Daypart buckets**: :data:`DAYPART_BUCKETS` hour-of-the-UTC-day buckets of decayed
  (pulls, sum), for traffic whose winner follows the clock (``ts`` in seconds).

* **Value statistics** for continuous rewards (order values): the count, log-sum and
  log-square-sum of the converting rewards (> 0), overall and on the decayed ladder
  (:func:`observe_value`). Kept only once an arm sees a reward other than 0 or 1; before
  that they are implied by the counts above (see :class:`~bandit_core.state.ArmStats`).

All of it is bounded per arm (2*8 + 2*16 + 3*24 numbers + at most 2*44 histogram blocks, and
3 + 3*8 value statistics),
pure Python floats, no numpy: the fold stays fast.
"""

from __future__ import annotations

import math
from typing import Final

from bandit_core.adaptive_shape import DAYPART_BUCKETS, HALF_LIVES, WINDOW_BUCKETS
from bandit_core.state import ArmStats

_LN2: Final = math.log(2.0)
_RATES: Final[tuple[float, ...]] = tuple(_LN2 / h for h in HALF_LIVES)
_TOP: Final = len(HALF_LIVES) - 1
_LOG_LADDER: Final[tuple[float, ...]] = tuple(math.log(h) for h in HALF_LIVES)
MIN_HALF_LIFE: Final = HALF_LIVES[0]
MAX_HALF_LIFE: Final = HALF_LIVES[-1]

#: Sliding-window summary: WINDOW_BUCKETS buckets of WINDOW_BUCKET time units each.
WINDOW_BUCKET: Final = 64.0
MIN_WINDOW: Final = WINDOW_BUCKET
MAX_WINDOW: Final = WINDOW_BUCKET * (WINDOW_BUCKETS - 1)

#: Bernoulli GLR change detector (fixed constants: the fold may not depend on params).
#: Threshold ``beta(n) = ln(3 n^{3/2} / GLR_DELTA)`` (Besson & Kaufmann 2022, Eq. (3), the
#: practical form of their Theorem 6). Their ``delta`` is a false-alarm probability and
#: their experiments use ``1/sqrt(T)``; the service has no horizon, and detection delay
#: costs more regret than the occasional false alarm (which, with the post-split data
#: kept and a soft restart, costs little), so the constant is tuned like a threshold:
#: ``GLR_DELTA = 10`` lowers ``beta`` by ln 10 = 2.3 nats against ``delta = 1``
#: (1, 3, 5, 10, 30, 100 tried on the repository's abrupt scenarios, then checked on the
#: training problems of :mod:`bandit_core.scenario_gen`: 30 is worse, and from 3 n^1.5 <
#: delta, i.e. 100 at n = 8, ``beta`` is negative and every test alarms).
GLR_DELTA: Final = 10.0
#: The statistic is evaluated every ``GLR_EVERY`` observations of an arm (their "Delta n"
#: downsampling): detection is at most that many rewards late, the fold 8x cheaper.
GLR_EVERY: Final = 8
#: Upper bound on the exponential-histogram blocks kept per arm (2 per size class covers
#: ~2**23 rewards since a change; beyond that the two oldest blocks are merged).
GLR_MAX_BLOCKS: Final = 44
GLR_DETECTOR: Final = "bernoulli_glr"
#: After an alarm the *other* arms keep at most this many since-change observations (at
#: their mean): a soft global restart. 0 would be the global restart of M-UCB and
#: GLR-klUCB, infinity their local restart; the global one throws away what the
#: unchanged arms taught, the local one trusts stale means of the changed ones.
RESTART_KEEP: Final = 48

#: Daypart statistics: DAYPART_BUCKETS buckets of the UTC day (by ``ts`` in seconds),
#: each with exponentially decayed (pulls, sum) of half-life DAYPART_HALF_LIFE.
DAY: Final = 86400.0
DAYPART_WIDTH: Final = DAY / DAYPART_BUCKETS
#: One week: long enough that each hour keeps several days of data, short enough that
#: a seasonal drift (weekday vs weekend, a new campaign) is forgotten within weeks.
DAYPART_HALF_LIFE: Final = 7 * DAY
_DAYPART_RATE: Final = _LN2 / DAYPART_HALF_LIFE


def glr_threshold(n: float) -> float:
    """``beta(n, delta)`` of the Bernoulli GLR test after ``n`` observations."""
    return math.log(3.0 * n**1.5 / GLR_DELTA)


def _nll(n: float, s: float) -> float:
    """``s ln(s/n) + (n-s) ln((n-s)/n)``: minus ``n`` times the Bernoulli entropy of
    ``s/n`` (0 ln 0 = 0)."""
    f = n - s
    out = 0.0
    if s > 0.0:
        out += s * math.log(s / n)
    if f > 0.0:
        out += f * math.log(f / n)
    return out


def glr_split(counts: list[float], sums: list[float]) -> tuple[float, int]:
    """Max over the block boundaries ``s`` of the two-segment Bernoulli GLR statistic

    ``n_1 kl(mu_1, mu) + n_2 kl(mu_2, mu)`` (Besson & Kaufmann 2022, Eq. (2)), with the
    blocks' pooled counts before/after ``s``, and the number of blocks before the best
    split (the estimated change point). O(number of blocks) = O(log n). Computed as
    ``nll(n_1) + nll(n_2) - nll(n)`` (the identity ``sum n_i kl(mu_i, mu) = sum n_i
    H(mu) - n_i H(mu_i)``), two logs per side and no clipping.
    """
    total_n = 0.0
    total_s = 0.0
    for i in range(len(counts)):
        total_n += counts[i]
        total_s += sums[i]
    if total_n <= 0.0:
        return 0.0, 0
    base = _nll(total_n, total_s)
    log = math.log
    best = 0.0
    split = 0
    n1 = 0.0
    s1 = 0.0
    for i in range(len(counts) - 1):
        n1 += counts[i]
        s1 += sums[i]
        n2 = total_n - n1
        s2 = total_s - s1
        f1 = n1 - s1
        f2 = n2 - s2
        v = -base
        if s1 > 0.0:
            v += s1 * log(s1 / n1)
        if f1 > 0.0:
            v += f1 * log(f1 / n1)
        if s2 > 0.0:
            v += s2 * log(s2 / n2)
        if f2 > 0.0:
            v += f2 * log(f2 / n2)
        if v > best:
            best = v
            split = i + 1
    return best, split


def glr_statistic(counts: list[float], sums: list[float]) -> float:
    """The GLR statistic of :func:`glr_split` alone."""
    return glr_split(counts, sums)[0]


def _histogram_add(counts: list[float], sums: list[float], reward: float) -> None:
    """Append one observation to an exponential histogram (Datar et al. 2002; the block
    layout of ADWIN, Bifet & Gavalda 2007): block sizes are powers of two, non-increasing
    from oldest to newest, at most two of each, so recent data keeps fine resolution."""
    counts.append(1.0)
    sums.append(reward)
    i = len(counts) - 1
    while i >= 2 and counts[i - 2] == counts[i]:
        # three blocks of one size: merge the two oldest of them
        counts[i - 2] += counts[i - 1]
        sums[i - 2] += sums[i - 1]
        del counts[i - 1]
        del sums[i - 1]
        i -= 2
    if len(counts) > GLR_MAX_BLOCKS:
        counts[0] += counts[1]
        sums[0] += sums[1]
        del counts[1]
        del sums[1]


def restart_at(stats: ArmStats, split: int) -> None:
    """Drop the histogram blocks before ``split`` (the estimated change point): the arm's
    since-change statistics are then the rewards after it, as in ADWIN."""
    del stats.glr_n[:split]
    del stats.glr_s[:split]
    n = 0.0
    r = 0.0
    for i in range(len(stats.glr_n)):
        n += stats.glr_n[i]
        r += stats.glr_s[i]
    stats.cp_pulls = int(n)
    stats.cp_sum = r


def restart(stats: ArmStats) -> None:
    """Forget an arm's "since change" statistics (its detector starts afresh)."""
    stats.cp_pulls = 0
    stats.cp_sum = 0.0
    stats.glr_n.clear()
    stats.glr_s.clear()


def observe(stats: ArmStats, reward: float, ts: float) -> float | None:
    """Fold one reward into ``stats`` in place.

    Returns the GLR statistic when the arm's detector raised an alarm (the arm's since-
    change statistics were restarted and ``change_points`` counts it), else ``None``.
    The caller then restarts the *other* arms with :func:`restart_others`: a global
    restart, as in M-UCB (Cao et al., AISTATS 2019) and GLR-klUCB (Besson & Kaufmann),
    because when the best arm changes the other arms' old statistics are suspect too.
    The five base counters are updated too, so this is the whole per-reward update.

    The Bernoulli GLR detector gets ``min(reward, 1)``: its statistic is a sum of
    Bernoulli KL terms, defined only for means in [0, 1] (a failure count ``n - s``
    below 0 would make it meaningless). For rewards in [0, 1] that is the reward itself,
    so binary experiments and their replays are unchanged; for an order value of at
    least one currency unit it is the conversion indicator, so a continuous experiment's
    detector watches the conversion rate, which is what most changes of winner move
    (the value statistics have the decayed ladder for drift in order values).
    """
    last = stats.last_reward_ts
    late = ts < last
    # one exp for the longest half-life; each shorter rung (ratio 4) is its 4th power
    f = math.exp(-_RATES[_TOP] * (last - ts if late else ts - last))
    if stats.dconv or (reward != 0.0 and reward != 1.0):
        observe_value(stats, reward, f, late)
    stats.pulls += 1
    stats.reward_sum += reward
    stats.reward_sq_sum += reward * reward
    # --- decayed ladder ---
    dp = stats.dpulls
    ds = stats.dsum
    if not late:
        for i in range(_TOP, -1, -1):
            dp[i] = dp[i] * f + 1.0
            ds[i] = ds[i] * f + reward
            f *= f
            f *= f
        stats.last_reward_ts = ts
    else:  # late event: decay the observation, not the sums
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
    # --- daypart buckets (hour of the UTC day), each decayed to its own last time ---
    h = int((ts % DAY) // DAYPART_WIDTH)
    hts = stats.hour_ts[h]
    if ts >= hts:
        f = math.exp(-_DAYPART_RATE * (ts - hts))
        stats.hour_pulls[h] = stats.hour_pulls[h] * f + 1.0
        stats.hour_sum[h] = stats.hour_sum[h] * f + reward
        stats.hour_ts[h] = ts
    else:
        f = math.exp(-_DAYPART_RATE * (hts - ts))
        stats.hour_pulls[h] += f
        stats.hour_sum[h] += reward * f
    # --- GLR change detector on the rewards since the last change ---
    n = stats.cp_pulls + 1
    stats.cp_pulls = n
    g = reward if reward <= 1.0 else 1.0
    stats.cp_sum += g
    _histogram_add(stats.glr_n, stats.glr_s, g)
    if n % GLR_EVERY == 0:
        stat, split = glr_split(stats.glr_n, stats.glr_s)
        if stat > glr_threshold(n):
            restart_at(stats, split)
            stats.change_points += 1
            stats.last_change_ts = ts
            return stat
    return None


def observe_value(stats: ArmStats, reward: float, f: float, late: bool) -> None:
    """Fold one reward into the arm's value statistics; called by :func:`observe` with
    the decay factor ``f`` of the longest half-life between the reward and the ladder's
    reference time (``late``: the reward is older, so it is decayed, not the ladder).

    The first call on an arm materialises the statistics from the counts, which up to
    then held only 0/1 rewards: ``conv = reward_sum`` and ``dconv = dsum`` exactly, every
    log 0. Log values, because order values are skewed and roughly lognormal (the
    revenue sampler's model, :mod:`bandit_core.strategies.revenue_thompson`).
    """
    if not stats.dconv:
        stats.conv = int(stats.reward_sum)
        stats.dconv = stats.dsum[:]
        stats.dlog = [0.0] * len(HALF_LIVES)
        stats.dlog_sq = [0.0] * len(HALF_LIVES)
    if reward > 0.0:
        c = 1.0
        x = math.log(reward)
        xx = x * x
        stats.conv += 1
        stats.log_sum += x
        stats.log_sq_sum += xx
    else:
        c = x = xx = 0.0
    dc = stats.dconv
    dl = stats.dlog
    dq = stats.dlog_sq
    for i in range(_TOP, -1, -1):
        keep, add = (1.0, f) if late else (f, 1.0)
        dc[i] = dc[i] * keep + c * add
        dl[i] = dl[i] * keep + x * add
        dq[i] = dq[i] * keep + xx * add
        f *= f
        f *= f


def soft_restart(stats: ArmStats, keep: int) -> None:
    """Shrink an arm's since-change statistics to at most ``keep`` observations at their
    mean (one histogram block), restarting its detector on that one block."""
    n = stats.cp_pulls
    if n <= keep:
        if n:
            stats.glr_n[:] = [float(n)]
            stats.glr_s[:] = [stats.cp_sum]
        return
    if keep <= 0:
        restart(stats)
        return
    s = stats.cp_sum * keep / n
    stats.cp_pulls = keep
    stats.cp_sum = s
    stats.glr_n[:] = [float(keep)]
    stats.glr_s[:] = [s]


def restart_others(arms: list[ArmStats] | tuple[ArmStats, ...], alarmed: ArmStats) -> None:
    """The global restart after ``alarmed`` raised an alarm (see :func:`observe`)."""
    keep = RESTART_KEEP
    for s in arms:
        if s is not alarmed:
            soft_restart(s, keep)


def decayed(stats: ArmStats, half_life: float, now: float) -> tuple[float, float]:
    """The arm's ``(pulls, reward_sum)`` discounted with ``half_life`` as seen at ``now``.

    ``half_life`` must lie in ``[MIN_HALF_LIFE, MAX_HALF_LIFE]`` (the params validate it).
    """
    n, s = decayed_ladders(stats, half_life, now, (stats.dpulls, stats.dsum))
    return n, s


def decayed_ladders(
    stats: ArmStats, half_life: float, now: float, ladders: tuple[list[float], ...]
) -> list[float]:
    """Each of the arm's decayed ``ladders`` (``dpulls``, ``dsum``, the value ladders)
    read at ``half_life`` and ``now``: decayed from ``last_reward_ts`` to ``now``,
    log-linearly interpolated between the two rungs around ``half_life``."""
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
    v = 1.0 - w
    f0 = math.exp(-_RATES[i] * dt)
    f1 = math.exp(-_RATES[i + 1] * dt)
    return [v * ladder[i] * f0 + w * ladder[i + 1] * f1 for ladder in ladders]


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
