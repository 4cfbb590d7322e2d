"""Exposures: a locally made decision, reported, judged and turned into its ``DecisionMade``.

An SDK in local mode decides from an allocation it fetched (``GET /experiments/{id}/
allocation``) and reports what it showed, either to ``POST /exposures`` or as a record
on the exposures topic. Both paths judge a report with :func:`judge_exposure` (pure, no
I/O: the caller reads the config and the stored allocation record), so a record on Kafka
is refused for exactly the reasons the API gives a 422.

Nothing the client computed is trusted: the arm is re-derived with the assignment rule
(:mod:`mab_client.assignment`) from the *server's* stored record of that version, and
the logged propensity is that record's weight. A forged or edited allocation therefore
yields rejections, never a wrong propensity.

The decision is deterministic per exposure: its ``decision_id`` is the rule's id of
(unit, version) and its ``event_id`` a digest of (experiment, exposure id). The same
exposure judged twice (a retried request, a redelivered record, both paths) yields the
same event, and the fold counts a unit decision id once, so a duplicate that slips past
the exposure marks still is not a second pull.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final, NamedTuple

from bandit_core.allocation import AllocationRecord
from mab_client.assignment import Allocation
from mab_client.models import ExposureCreate
from schemas.events import DecisionMade, ExperimentConfig
from schemas.rejections import Rejection

#: Domain separation of the event ids derived from exposure ids.
_EVENT_ID_PREFIX: Final = b"mab-exposure-v1\x00"
#: Rule objects kept (one per experiment and allocation version in use).
_RULES_CACHED: Final = 256


class ExposureRejected(NamedTuple):
    """Why an exposure is refused: the stable label (422 ``type``, DLQ reason) and the
    sentence naming its ids."""

    reason: Rejection
    detail: str


def exposure_event_id(experiment_id: str, exposure_id: str) -> str:
    """The ``event_id`` of an exposure's decision: 32 hex digits of a digest of the
    experiment and the exposure id, the shape of every other event id, the same on
    every path and every retry."""
    raw = _EVENT_ID_PREFIX + experiment_id.encode() + b"\x00" + exposure_id.encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@functools.lru_cache(maxsize=_RULES_CACHED)
def _rule(
    experiment_id: str, salt: str, storage: str, record: AllocationRecord
) -> Allocation | None:
    """The assignment rule over one stored version (its hash state prepared once);
    ``None`` for a record no decision can be made from (then every exposure naming it
    is refused, as it would be had it never been stored)."""
    try:
        return Allocation(
            experiment_id=experiment_id,
            version=record.version,
            arm_ids=record.arm_ids,
            weights=record.weights,
            salt=salt,
            unit_id_storage="raw" if storage == "raw" else "hashed",
            min_arm_share=record.min_arm_share,
        )
    except ValueError:
        return None


def judge_exposure(
    config: ExperimentConfig | None,
    record: AllocationRecord | None,
    exposure: ExposureCreate,
) -> DecisionMade | ExposureRejected:
    """The ``DecisionMade`` an exposure becomes, or why it is refused.

    ``record``: the stored allocation of ``exposure.allocation_version`` (``None``: never
    stored, or expired). The checks, in order: the experiment exists, the arm is one of
    its arms, the version is stored, and the arm is the one the rule gives this unit
    under that version (an arm added after the version was stored cannot be).
    """
    experiment_id = exposure.experiment_id
    if config is None:
        return ExposureRejected(
            Rejection.UNKNOWN_EXPERIMENT, f"experiment {experiment_id!r} does not exist"
        )
    if exposure.arm_id not in config.arm_ids:
        return ExposureRejected(
            Rejection.UNKNOWN_ARM,
            f"arm {exposure.arm_id!r} is not in experiment {experiment_id!r}; "
            f"arms: {list(config.arm_ids)}",
        )
    version = exposure.allocation_version
    rule = (
        None
        if record is None or record.version != version
        else _rule(config.experiment_id, config.salt, config.unit_id_storage, record)
    )
    if rule is None:
        return ExposureRejected(
            Rejection.UNKNOWN_ALLOCATION,
            f"allocation version {version} of experiment {experiment_id!r} was never "
            "stored or is past its retention; fetch the current allocation",
        )
    chosen = rule.choose(exposure.unit_id)
    if chosen.arm_id != exposure.arm_id:
        return ExposureRejected(
            Rejection.ARM_NOT_ASSIGNED,
            f"under allocation version {version} unit {exposure.unit_id!r} gets arm "
            f"{chosen.arm_id!r}, not {exposure.arm_id!r}",
        )
    return DecisionMade(
        event_id=exposure_event_id(experiment_id, exposure.exposure_id),
        experiment_id=experiment_id,
        ts=exposure.ts,
        assignment="local",
        decision_id=chosen.decision_id,
        arm_id=chosen.arm_id,
        propensity=chosen.propensity,
        allocation_version=version,
        unit_id=rule.unit_token(exposure.unit_id),
        exposure_id=exposure.exposure_id,
        strategy=config.strategy,
        strategy_params=config.strategy_params,
        config_version=config.version,
        # No snapshot was read: the weights are the stored version's (allocation_version).
        snapshot_version=0,
        attribution_window_s=config.attribution_window_s,
    )
