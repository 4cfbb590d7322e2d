"""The processor contract: what a stream processor supplies, what the engine does for it.

A processor is the pure part of a stream processor. Per batch, for each experiment:

1. **decode** -- :attr:`Processor.decoders`: one decoder per topic it reads; the engine
   decodes a whole poll batch at once into per-experiment columns
   (:func:`stream_runtime.batch.decode_batch`), so replay can decode once for several
   processors;
2. **plan** -- :meth:`Processor.plan`: what it must read of the experiment's state for
   these events (:class:`Reads`: string keys, members of sorted sets, and the dedupe
   keys to look up in the engine's ``seen`` set);
3. **load** -- the engine reads all experiments of the batch in one round trip of its
   state store, or predicts the read from its cache;
4. **apply** -- :meth:`Processor.apply`: pure; the events beyond the stored offsets and
   what was loaded become :class:`Applied` (state changes, new dedupe keys, counts,
   skipped records, side outputs);
5. **write** -- the engine writes the changes, the new offsets and the new dedupe keys
   in one atomic compare-and-set per experiment.

The engine owns everything that makes this exactly once: the applied-offsets guard
(records at or below the offsets stored with the state are dropped before ``plan``'s
events reach ``apply``; the write compares the whole offsets hash), the ``seen``
dedupe set (looked up for ``plan``'s keys, extended with ``apply``'s new keys and
their event times, pruned by :data:`~bandit_core.fold.DEDUPE_HORIZON_S`), the cache
and its checks, the retries of refused writes, dead letters, and the Kafka commit after
the write. A processor never touches a store, a clock other than the ``now`` it is
given, or Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

import orjson
from pydantic import ValidationError

from schemas.events import AnyEvent, ExperimentConfig
from schemas.redis_keys import RedisKeys
from schemas.rejections import Rejection
from schemas.topics import TopicNames
from stream_runtime.batch import BatchReport, Decoder


@dataclass(frozen=True, slots=True)
class Guard:
    """The keys of one experiment the engine guards for a processor."""

    offsets: str  # hash "<topic>:<partition>" -> last applied offset
    seen: str  # sorted set dedupe key -> event time


@dataclass(frozen=True, slots=True)
class Reads:
    """What :meth:`Processor.apply` needs of one experiment's state beyond the guard."""

    get: tuple[str, ...] = ()  # string keys, read as bytes (None: missing)
    members: Mapping[str, Sequence[str]] = field(default_factory=dict)  # zset -> members
    seen: Sequence[str] = ()  # dedupe keys to look up in the guard's seen set


@dataclass(frozen=True, slots=True)
class Loaded:
    """One experiment's state as :meth:`Processor.apply` sees it."""

    offsets: Mapping[str, int]  # the whole applied-offsets hash
    values: Mapping[str, bytes | None]  # every key of ``Reads.get``
    seen: Mapping[str, float] = field(default_factory=dict)  # looked-up keys present
    found: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # zset -> present


@dataclass(frozen=True, slots=True)
class ZAdd:
    """Members (member -> score) to add to a sorted set; with ``horizon_s``, members older
    than that before the newest added one (clamped to the wall clock) are forgotten."""

    members: Mapping[str, float]
    horizon_s: float | None = None


@dataclass(slots=True)
class Changes:
    """One experiment's state change, written atomically with its offsets."""

    set: dict[str, bytes] = field(default_factory=dict)
    zadd: dict[str, ZAdd] = field(default_factory=dict)
    zrem: dict[str, Sequence[str]] = field(default_factory=dict)
    hincr: dict[str, Mapping[str, int]] = field(default_factory=dict)  # hash -> increments
    expireat: dict[str, int] = field(default_factory=dict)  # unix seconds
    publish: list[tuple[str, str]] = field(default_factory=list)  # (channel, message)


class Skip(NamedTuple):
    """A record :meth:`Processor.apply` does not apply: its position among the events,
    the reason (a dead-letter reason) and a short detail."""

    at: int
    reason: Rejection
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TableRow:
    """One row of a table a processor projects *outside* its experiment's namespace: a
    string key written once (``SET NX``, expiring at ``expires_at``; ``None``: never).

    Such a table (the decider's sticky units) is too large for the namespace's one
    ``MULTI`` swap, and its live keys have a writer of their own whose first write wins,
    so a processor hands its rows over as side outputs (:attr:`Applied.outputs`) and
    replay writes or compares them itself (:mod:`stream_runtime.replay`). A later row
    for the same key replaces an earlier one: the log's order.
    """

    key: str
    value: bytes
    expires_at: float | None


ReportT = TypeVar("ReportT", bound=BatchReport)


@dataclass(slots=True)
class Applied(Generic[ReportT]):
    """What one experiment's fresh events do (see :meth:`Processor.apply`).

    ``changes`` ``None`` writes nothing, not even the offsets: the experiment does not
    exist, so every record is skipped and a redelivery skips them again.
    """

    report: ReportT
    changes: Changes | None
    new_seen: dict[str, float] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)


def unknown_experiment(report: ReportT, count: int, detail: str = "") -> Applied[ReportT]:
    """What a processor makes of ``count`` events of an experiment without a config key.

    The decider writes the config before any event of the experiment, so such events
    name an experiment that does not exist: every one is skipped as
    :attr:`~schemas.rejections.Rejection.UNKNOWN_EXPERIMENT` and nothing is written, not
    even the offsets, so a flood of made-up ids creates no keys and a redelivery is
    skipped again. ``detail`` is the text of the skips' dead letters.
    """
    skipped = [Skip(i, Rejection.UNKNOWN_EXPERIMENT, detail) for i in range(count)]
    return Applied(report, None, skipped=skipped)


class Processor(Protocol[ReportT]):
    """A stream processor's pure part (see the module docstring)."""

    #: Human name in log lines and the replay report ("reward consumer", "projector").
    name: str

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        """Topic -> decoder of every topic the processor reads."""
        ...

    def guard(self, experiment_id: str) -> Guard:
        """The offsets hash and dedupe set the engine keeps for this processor."""
        ...

    def new_report(self) -> ReportT:
        """An empty report (the engine fills in its own counts)."""
        ...

    def plan(self, experiment_id: str, events: Sequence[AnyEvent]) -> Reads:
        """What to read for ``events`` (the engine may plan before the offset guard, so
        ``events`` may include records that turn out to be applied already)."""
        ...

    def apply(
        self, experiment_id: str, events: Sequence[AnyEvent], loaded: Loaded, now: float
    ) -> Applied[ReportT]:
        """Apply ``events`` (all beyond the stored offsets, in log order per partition)
        to the ``loaded`` state. Pure: the same inputs give the same :class:`Applied`."""
        ...


@runtime_checkable
class TableProjection(Processor[ReportT], Protocol):
    """A processor whose side outputs are :class:`TableRow` s, and which says when a live
    row and a rebuilt one are the same assignment (``mab replay --verify``)."""

    def same_row(self, live: bytes, rebuilt: bytes) -> bool:
        """Whether the live value and the value rebuilt from the log agree."""
        ...


class ConfigMemo:
    """Parsed experiment configs by the bytes of their key (a processor parses the same
    config for every batch of an experiment; a parse is tens of microseconds, and far
    more for a catalogue of arms). Bounded: emptied when it holds ``max_entries``."""

    def __init__(self, log: logging.Logger, max_entries: int = 4096) -> None:
        self.log = log
        self.max_entries = max_entries
        self._parsed: dict[bytes, ExperimentConfig] = {}

    def __call__(self, raw: bytes | None) -> ExperimentConfig | None:
        """The experiment's config, or ``None`` if missing or unreadable (logged)."""
        if raw is None:
            return None
        config = self._parsed.get(raw)
        if config is not None:
            return config
        try:
            config = ExperimentConfig.model_validate(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValidationError):
            self.log.exception("unreadable config key; treating experiment as unknown")
            return None
        if len(self._parsed) >= self.max_entries:
            self._parsed.clear()
        self._parsed[raw] = config
        return config


@dataclass
class ExperimentProcessor:
    """The part the processors share (the snapshot fold, the bucket projection, the
    sticky table): the topic and key names, and the experiment's config, which each
    reads for every batch, if only to tell an experiment that does not exist
    (:func:`unknown_experiment`). A subclass names the logger of unreadable configs in
    :attr:`config_log`. Picklable: replay's worker processes get one each."""

    topics: TopicNames
    keys: RedisKeys
    _configs: ConfigMemo = field(init=False, repr=False)

    config_log: ClassVar[logging.Logger]

    def __post_init__(self) -> None:
        self._configs = ConfigMemo(self.config_log)

    def config(self, experiment_id: str, loaded: Loaded) -> ExperimentConfig | None:
        """The experiment's config from its loaded config key (which :meth:`plan` must
        read), ``None`` if missing or unreadable."""
        return self._configs(loaded.values[self.keys.experiment(experiment_id).config])
