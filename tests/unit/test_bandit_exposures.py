"""``bandit_core.exposures``: an exposure judged against a config and a stored allocation.

The rule is the SDK's (``Allocation.choose``); here it is checked that the judge uses the
server's stored record and nothing the client computed, refuses each case with its own
label, and turns the same exposure into the same event every time.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from bandit_core.allocation import AllocationRecord
from bandit_core.exposures import ExposureRejected, exposure_event_id, judge_exposure
from mab_client.assignment import Allocation
from mab_client.models import ExposureCreate
from schemas.codec import decode, encode
from schemas.events import DecisionMade, ExperimentConfig
from schemas.rejections import Rejection
from tests.fixtures.events import config_of
from tests.fixtures.exposures import ARMS, EXP, RECORD, SALT, VERSION

pytestmark = pytest.mark.unit


def config(**extra: Any) -> ExperimentConfig:
    return config_of(EXP, extra.pop("arm_ids", ARMS), salt=SALT, **extra)


def rule(cfg: ExperimentConfig, record: AllocationRecord = RECORD) -> Allocation:
    args = (cfg.experiment_id, record.version, record.arm_ids, record.weights, cfg.salt)
    return Allocation(*args, unit_id_storage=cfg.unit_id_storage)


def exposure(unit: str = "visitor-1", **fields: Any) -> ExposureCreate:
    arm = rule(config()).choose(unit).arm_id
    body = {
        "experiment_id": "cta",
        "unit_id": unit,
        "arm_id": arm,
        "allocation_version": VERSION,
        "exposure_id": "e-1",
        "ts": 1_776_189_612.5,
        **fields,
    }
    return ExposureCreate.model_validate(body)


def test_a_valid_exposure_is_the_rules_decision_with_the_stored_weight() -> None:
    cfg = config(attribution_window_s=600.0)
    item = exposure()
    local = rule(cfg).choose("visitor-1")
    event = judge_exposure(cfg, RECORD, item)
    assert isinstance(event, DecisionMade)
    assert event.decision_id == local.decision_id
    assert event.arm_id == local.arm_id
    assert event.propensity == RECORD.weights[ARMS.index(local.arm_id)]
    assert event.assignment == "local"
    assert event.allocation_version == VERSION
    assert event.exposure_id == "e-1"
    assert event.unit_id == rule(cfg).unit_token("visitor-1")  # hashed: not the id
    assert event.unit_id != "visitor-1"
    assert event.ts == item.ts
    assert (event.strategy, event.config_version) == ("thompson", cfg.version)
    assert event.attribution_window_s == 600.0
    assert event.event_id == exposure_event_id("cta", "e-1")
    assert decode(encode(event)) == event


def test_the_same_exposure_is_the_same_event_and_ids_are_scoped() -> None:
    """A retried or redelivered exposure yields an identical event; another exposure
    of the same unit and version has another event id but the same decision id (the
    fold counts that once)."""
    cfg = config()
    a = judge_exposure(cfg, RECORD, exposure())
    b = judge_exposure(cfg, RECORD, exposure())
    c = judge_exposure(cfg, RECORD, exposure(exposure_id="e-2"))
    assert isinstance(a, DecisionMade)
    assert isinstance(b, DecisionMade)
    assert isinstance(c, DecisionMade)
    assert a == b
    assert c.event_id != a.event_id
    assert c.decision_id == a.decision_id
    assert exposure_event_id("cta", "e-1") != exposure_event_id("other", "e-1")
    assert len(a.event_id) == 32


def test_raw_storage_logs_the_trimmed_unit_id() -> None:
    cfg = config(unit_id_storage="raw")
    event = judge_exposure(cfg, RECORD, exposure(unit=" visitor-1 "))
    assert isinstance(event, DecisionMade)
    assert event.unit_id == "visitor-1"


@pytest.mark.parametrize(
    ("cfg", "record", "fields", "reason", "says"),
    [
        (None, RECORD, {}, Rejection.UNKNOWN_EXPERIMENT, "does not exist"),
        (config(), RECORD, {"arm_id": "purple"}, Rejection.UNKNOWN_ARM, "'purple'"),
        (config(), None, {}, Rejection.UNKNOWN_ALLOCATION, f"version {VERSION}"),
        (
            config(),
            RECORD,
            {"allocation_version": VERSION - 1},
            Rejection.UNKNOWN_ALLOCATION,
            f"version {VERSION - 1}",
        ),
    ],
)
def test_rejections_name_their_reason(
    cfg: ExperimentConfig | None,
    record: AllocationRecord | None,
    fields: dict[str, Any],
    reason: Rejection,
    says: str,
) -> None:
    verdict = judge_exposure(cfg, record, exposure(**fields))
    assert isinstance(verdict, ExposureRejected)
    assert verdict.reason is reason
    assert says in verdict.detail


def test_an_arm_the_rule_does_not_give_is_refused() -> None:
    """Every other arm of the experiment, and an arm added after the version was stored
    (not in the record: it cannot have been drawn under it)."""
    cfg = config()
    given = rule(cfg).choose("visitor-1").arm_id
    for arm in ARMS:
        verdict = judge_exposure(cfg, RECORD, exposure(arm_id=arm))
        assert isinstance(verdict, DecisionMade) is (arm == given)
        if arm != given:
            assert isinstance(verdict, ExposureRejected)
            assert verdict.reason is Rejection.ARM_NOT_ASSIGNED
            assert repr(given) in verdict.detail
    grown = config(arm_ids=(*ARMS, "late"))
    verdict = judge_exposure(grown, RECORD, exposure(arm_id="late"))
    assert isinstance(verdict, ExposureRejected)
    assert verdict.reason is Rejection.ARM_NOT_ASSIGNED


def test_the_servers_weights_decide_not_the_clients() -> None:
    """A client that edited its allocation (all weight on one arm) reports that arm for
    units the stored weights give another: refused; the propensity logged for a
    matching unit is always the stored weight."""
    cfg = config()
    forged = Allocation(
        experiment_id="cta",
        version=VERSION,
        arm_ids=ARMS,
        weights=(1.0, 0.0, 0.0),
        salt=cfg.salt,
    )
    verdicts = [
        judge_exposure(cfg, RECORD, exposure(unit=f"u{i}", arm_id=forged.choose(f"u{i}").arm_id))
        for i in range(200)
    ]
    refused = [v for v in verdicts if isinstance(v, ExposureRejected)]
    accepted = [v for v in verdicts if isinstance(v, DecisionMade)]
    assert {v.reason for v in refused} == {Rejection.ARM_NOT_ASSIGNED}
    assert 100 < len(refused) < 200  # blue has 20% of the stored weight
    assert all(math.isclose(v.propensity, 0.2) for v in accepted)


def test_a_record_no_rule_can_use_is_an_unknown_version() -> None:
    """Weights that do not sum to 1 (a corrupted record) are refused as if never stored."""
    broken = AllocationRecord(
        version=VERSION, arm_ids=ARMS, weights=(0.5, 0.5, 0.5), min_arm_share=0.0, computed_at=1.0
    )
    verdict = judge_exposure(config(), broken, exposure())
    assert isinstance(verdict, ExposureRejected)
    assert verdict.reason is Rejection.UNKNOWN_ALLOCATION


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"unit_id": "a\tb"}, "unit_id"),
        ({"unit_id": "u" * 201}, "unit_id"),
        ({"exposure_id": "has space"}, "exposure_id"),
        ({"allocation_version": -1}, "allocation_version"),
        ({"allocation_version": "7"}, "allocation_version"),
        ({"ts": float("nan")}, "ts"),
        ({"extra": 1}, "extra"),
    ],
)
def test_the_request_model_refuses_bad_fields(fields: dict[str, Any], loc: str) -> None:
    body = {
        "experiment_id": "cta",
        "unit_id": "v",
        "arm_id": "blue",
        "allocation_version": 1,
        "exposure_id": "e",
        "ts": 1.0,
        **fields,
    }
    with pytest.raises(ValidationError) as err:
        ExposureCreate.model_validate(body)
    assert [e["loc"][0] for e in err.value.errors()] == [loc]
