"""Closing attribution windows: expired decisions become default rewards ON THE LOG.

The fold (:mod:`bandit_core.fold`) keeps each experiment's open windows (decision id ->
deadline, in event time) in the ``pending`` key. This module decides *when* a window
has closed and then appends a :class:`~schemas.events.RewardObserved` with the
experiment's ``default_reward``, ``source="attribution_default"``, ``ts`` = the deadline
and the deterministic event id ``ad-<decision id>`` to the rewards topic, keyed by the
experiment like every reward. The fold applies it when it reads it back.

Why the log and not the fold itself: the consumer reads decisions and rewards from two
topics, in whatever interleaving the broker delivers, and replay reads them in another.
A default applied inside the fold at "watermark passed the deadline" would land at a
different place among the rewards, and a reward racing it would be applied live but
late in replay (or the reverse). On the log, the default has one position in the
experiment's rewards partition: whichever of it and the real reward comes first wins,
live and in every replay alike. A default logged twice (two consumers, a restart) is a
duplicate by its event id; one logged after the real reward is a duplicate by its
decision id. So the trigger may be imprecise; the outcome never is.

When: the watermark is the newest event time this process has folded, on any partition
and any experiment (other experiments' traffic moves time on for an idle one), clamped
to the wall clock so one record from the far future cannot close every window. When
the whole deployment is idle, event time stands still; the wall clock minus
``idle_grace_s`` then takes over, so windows still close. Neither choice can change a
replay: replay only reads the defaults that were logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from bandit_core.decision_ids import arm_index_of
from bandit_core.fold import DEFAULT_SOURCE
from schemas.events import ExperimentConfig, RewardObserved
from schemas.redis_keys import RedisKeys
from stream_runtime.redis_client import AnyRedis

log = logging.getLogger("services.reward_consumer")

#: Expired windows handled per experiment and sweep (the next sweep takes the rest).
MAX_DUE_PER_SWEEP: Final = 5000

#: Where default rewards go (the consumer produces them to the rewards topic).
DefaultSink = Callable[[Sequence[RewardObserved]], Awaitable[None]]


def default_reward_event(
    config: ExperimentConfig, decision_id: str, deadline: float
) -> RewardObserved | None:
    """The default reward closing ``decision_id``'s window (``None``: not our id)."""
    index = arm_index_of(decision_id)
    if index is None or index >= len(config.arm_ids):
        return None
    return RewardObserved(
        event_id=f"ad-{decision_id}",
        ts=deadline,
        experiment_id=config.experiment_id,
        arm_id=config.arm_ids[index],
        reward=config.default_reward,
        decision_id=decision_id,
        source=DEFAULT_SOURCE,
    )


@dataclass(slots=True)
class SweepReport:
    experiments: int = 0
    defaults: int = 0


class AttributionSweeper:
    """Finds expired windows in Redis and hands their default rewards to ``sink``."""

    def __init__(
        self, redis: AnyRedis, keys: RedisKeys, sink: DefaultSink, idle_grace_s: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.sink = sink
        self.idle_grace_s = idle_grace_s
        #: Defaults handed to the sink and not yet seen closed, so a sweep does not log
        #: them again while the consumer has not folded them back (bounded by pending).
        self._logged: set[str] = set()

    def watermark(self, event_time: float, now: float | None = None) -> float:
        """Event time, clamped to the wall clock, or the idle fallback if that is later."""
        wall = time.time() if now is None else now
        return max(min(event_time, wall), wall - self.idle_grace_s)

    async def sweep(self, event_time: float, now: float | None = None) -> SweepReport:
        """Log the default reward of every window closed at the watermark."""
        report = SweepReport()
        watermark = self.watermark(event_time, now)
        experiments = [
            e.decode() if isinstance(e, bytes) else str(e)
            for e in await self.redis.zrange(self.keys.index, 0, -1)
        ]
        if not experiments:
            return report
        async with self.redis.pipeline(transaction=False) as pipe:
            for exp in experiments:
                k = self.keys.experiment(exp)
                pipe.zrangebyscore(
                    k.pending, "-inf", watermark, start=0, num=MAX_DUE_PER_SWEEP, withscores=True
                )
                pipe.get(k.config)
            replies = await pipe.execute()
        events: list[RewardObserved] = []
        still_due: set[str] = set()
        for i, exp in enumerate(experiments):
            due, raw_config = replies[2 * i], replies[2 * i + 1]
            if not due or raw_config is None:
                continue
            try:
                config = ExperimentConfig.model_validate_json(raw_config)
            except ValidationError:
                log.exception("unreadable config; its windows stay open", extra={"exp": exp})
                continue
            report.experiments += 1
            for member, deadline in due:
                decision_id = member.decode() if isinstance(member, bytes) else str(member)
                still_due.add(decision_id)
                if decision_id in self._logged:
                    continue
                event = default_reward_event(config, decision_id, float(deadline))
                if event is not None:
                    events.append(event)
        if events:
            await self.sink(events)
            self._logged.update(e.decision_id for e in events if e.decision_id is not None)
        # Forget what is no longer pending (its default, or its reward, was folded).
        self._logged &= still_due
        report.defaults = len(events)
        return report
