"""Rejection labels are stable wire values, each with its text, and they reach the wire
(DLQ headers, API errors) as the same bytes as plain strings."""

from __future__ import annotations

import orjson
import pytest

from bandit_core.fold import rejection_text, reward_rejection
from schemas.dead_letter import H_REASON, dead_letter_headers
from schemas.events import ExperimentConfig, RewardObserved
from schemas.rejections import Rejection
from tests.fixtures.events import config_of

pytestmark = pytest.mark.unit

#: The labels readers already depend on (DLQ headers, metrics, ``POST /rewards`` errors):
#: renaming one is a breaking change of the contract, not a refactoring.
STABLE = (
    "oversize",
    "bad_json",
    "not_an_object",
    "non_finite_reward",
    "reward_out_of_range",
    "wrong_type",
    "missing_field",
    "unknown_field",
    "bad_id",
    "bad_user_context",
    "invalid",
    "bad_schema_version",
    "unknown_schema_version",
    "wrong_event_type",
    "empty",
    "unknown_topic",
    "unknown_experiment",
    "unknown_arm",
    "bad_decision_id",
    "arm_mismatch",
    "no_assignment",
    "unknown_allocation",
    "arm_not_assigned",
    "bad_metric",
)


def test_labels_are_stable_and_each_has_a_text() -> None:
    assert [r.value for r in Rejection] == list(STABLE)
    for reason in Rejection:
        assert reason.text.strip(), reason
        assert Rejection.text_of(str(reason)) == reason.text
    assert Rejection.text_of("unlabelled") == ""


def test_a_reason_is_its_label_on_the_wire() -> None:
    reason = Rejection.UNKNOWN_ARM
    assert f"{reason}" == str(reason) == "unknown_arm"
    assert orjson.dumps({"type": reason}) == b'{"type":"unknown_arm"}'
    headers = dead_letter_headers(
        reason=reason,
        detail="d",
        topic="t",
        partition=0,
        offset=1,
        timestamp=2,
        rejected_by="g",
        rejected_at_ms=3,
    )
    assert dict(headers)[H_REASON] == b"unknown_arm"


def _config() -> ExperimentConfig:
    return config_of("exp", ("a", "b"), ts=0.0)


@pytest.mark.parametrize(
    ("arm", "decision_id", "reason", "says"),
    [
        ("zz", None, Rejection.UNKNOWN_ARM, "arm 'zz' is not in experiment 'exp'"),
        ("a", "f" * 32 + ".1", Rejection.ARM_MISMATCH, "served arm 'b'"),
        ("a", "f" * 32 + ".x", Rejection.BAD_DECISION_ID, "was not issued by this service"),
    ],
)
def test_the_fold_names_the_reason_and_explains_it(
    arm: str, decision_id: str | None, reason: Rejection, says: str
) -> None:
    event = RewardObserved(experiment_id="exp", arm_id=arm, reward=1.0, decision_id=decision_id)
    assert reward_rejection(_config(), event) is reason
    assert says in rejection_text(reason, event, _config())
    missing = reward_rejection(None, event)
    assert missing is Rejection.UNKNOWN_EXPERIMENT
    assert rejection_text(missing, event, None) == "experiment 'exp' does not exist"


@pytest.mark.parametrize("reward", [1.0001, 42.5, 1e6])
def test_an_amount_on_a_binary_experiment_names_the_setting(reward: float) -> None:
    """A reward above 1 on a binary experiment: the label a reward above 1 always got
    (reward_out_of_range), with a text naming the experiment's ``reward_type``; the same
    reward on a continuous experiment is applied."""
    event = RewardObserved(experiment_id="exp", arm_id="a", reward=reward)
    binary = _config()
    assert reward_rejection(binary, event) is Rejection.REWARD_OUT_OF_RANGE
    assert rejection_text(Rejection.REWARD_OUT_OF_RANGE, event, binary) == (
        f"reward {reward!r} is outside [0, 1] for a binary experiment (reward_type=binary)"
    )
    amounts = config_of("exp", ("a", "b"), ts=0.0, reward_type="continuous")
    assert reward_rejection(amounts, event) is None
