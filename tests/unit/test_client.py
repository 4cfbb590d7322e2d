"""The SDK's request shapes, retry rules, backoff and typed errors, against a scripted
transport (``httpx.MockTransport``): every answer and failure is chosen by the test."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mab_client import (
    AsyncMabClient,
    AuthError,
    ConflictError,
    InvalidRequestError,
    MabClient,
    MabError,
    MabTransportError,
    NotFoundError,
    RequestValidationError,
    RetryPolicy,
    RewardItem,
    UnavailableError,
    UnexpectedResponseError,
)

pytestmark = pytest.mark.unit

#: An experiment as POST /experiments answers it.
CREATED: dict[str, Any] = {
    "experiment_id": "exp",
    "arm_ids": ["a", "b"],
    "strategy": "ucb1",
    "strategy_params": {},
    "version": 1,
}

DECISION = {
    "experiment_id": "exp",
    "arm_id": "b",
    "strategy": "thompson",
    "metadata": {"arms": ["a", "b"]},
    "decision_id": "9f1c0e5a7b3d4c2e8f6a1b0c9d8e7f6a.1",
    "propensity": 0.4,
}
RECEIPT = {"status": "ok", "experiment_id": "exp", "arm_id": "b", "strategy": "thompson"}


class Script:
    """Answers requests from a list of responses/exceptions and records what was sent."""

    def __init__(self, *steps: httpx.Response | Exception) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return step

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def ok(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def err(status: int, detail: Any = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


def client(script: Script, sleeps: list[float], **kw: Any) -> MabClient:
    return MabClient(
        "http://mab",
        transport=httpx.MockTransport(script),
        sleep=sleeps.append,
        seed=1,
        **kw,
    )


def test_decision_and_reward_carry_the_decision_id_and_api_key() -> None:
    script = Script(ok(DECISION), ok({**RECEIPT, "event_id": "e1"}))
    with client(script, [], api_key="k-123") as mab:
        d = mab.decide("exp")
        receipt = mab.reward_for(d, 1.0)
    assert d.decision_id == DECISION["decision_id"]
    assert d.propensity == 0.4
    assert d.arms == ["a", "b"]
    assert receipt.event_id == "e1"
    get, post = script.requests
    assert get.url.params["experiment_id"] == "exp"
    assert all(r.headers["authorization"] == "Bearer k-123" for r in script.requests)
    body = json.loads(post.content)
    assert body["decision_id"] == DECISION["decision_id"]
    assert (body["experiment_id"], body["arm_id"], body["reward"]) == ("exp", "b", 1.0)
    assert len(body["event_id"]) == 32


def test_reward_retried_on_503_keeps_its_event_id_and_backs_off_exponentially() -> None:
    script = Script(err(503), err(503), err(503), ok({**RECEIPT, "event_id": "x"}))
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff_base_s=0.1, backoff_max_s=10)
    with client(script, sleeps, retry=policy) as mab:
        mab.reward("exp", "b", 0.0)
    assert len(script.requests) == 4
    assert len({b["event_id"] for b in script.bodies()}) == 1
    # Equal jitter: wait n lies in [cap/2, cap] with cap = 0.1 * 2**(n-1).
    for n, wait in enumerate(sleeps, start=1):
        cap = 0.1 * 2 ** (n - 1)
        assert cap / 2 <= wait <= cap
    assert sleeps[2] > sleeps[0]


def test_backoff_is_capped_and_honours_retry_after() -> None:
    script = Script(err(503, **{"Retry-After": "1.5"}), ok({**RECEIPT, "event_id": "x"}))
    sleeps: list[float] = []
    with client(script, sleeps, retry=RetryPolicy(backoff_base_s=0.01, backoff_max_s=1.0)) as m:
        m.reward("exp", "b", 0.0)
    assert sleeps == [1.0]  # the server's 1.5 s, capped at backoff_max_s


def test_503_after_all_attempts_is_unavailable() -> None:
    script = Script(err(503, "event log unavailable"))
    sleeps: list[float] = []
    with (
        client(script, sleeps, retry=RetryPolicy(max_attempts=3)) as mab,
        pytest.raises(UnavailableError) as info,
    ):
        mab.stats("exp")
    assert len(script.requests) == 3
    assert len(sleeps) == 2
    assert info.value.status == 503
    assert info.value.detail == "event log unavailable"


def test_idempotent_calls_retry_timeouts_and_connection_errors() -> None:
    request = httpx.Request("POST", "http://mab/reward")
    script = Script(
        httpx.ReadTimeout("slow", request=request),
        httpx.ConnectError("refused", request=request),
        ok({**RECEIPT, "event_id": "x"}),
    )
    with client(script, []) as mab:
        mab.reward("exp", "b", 1.0, decision_id="d.1")
    assert len(script.requests) == 3
    assert len({b["event_id"] for b in script.bodies()}) == 1


def test_commands_are_not_resent_after_a_timeout_but_are_after_503() -> None:
    request = httpx.Request("POST", "http://mab/experiments")
    script = Script(httpx.ReadTimeout("slow", request=request))
    with client(script, []) as mab, pytest.raises(MabTransportError, match="may have been"):
        mab.create_experiment("exp", ["a", "b"])
    assert len(script.requests) == 1

    created = CREATED
    script = Script(err(503, "not applied: event log unavailable, retry"), ok(created, 201))
    with client(script, []) as mab:
        exp = mab.create_experiment("exp", ["a", "b"], strategy="ucb1")
    assert exp.version == 1
    assert len(script.requests) == 2


def test_transport_errors_give_up_after_max_attempts() -> None:
    request = httpx.Request("GET", "http://mab/decision")
    script = Script(httpx.ConnectError("refused", request=request))
    with (
        client(script, [], retry=RetryPolicy(max_attempts=2)) as mab,
        pytest.raises(MabTransportError, match="after 2 attempts"),
    ):
        mab.decide("exp")
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, AuthError), (404, NotFoundError), (409, ConflictError)],
)
def test_client_errors_are_typed_and_never_retried(status: int, error: type[Exception]) -> None:
    script = Script(err(status))
    with client(script, []) as mab, pytest.raises(error):
        mab.get_experiment("exp")
    assert len(script.requests) == 1


def test_422_keeps_the_servers_field_errors() -> None:
    detail = [{"loc": ["body", "reward"], "msg": "too big", "type": "less_than_equal"}]
    script = Script(err(422, detail))
    with client(script, []) as mab, pytest.raises(RequestValidationError) as info:
        mab.reward("exp", "b", 1.0)
    assert info.value.errors == detail


def test_bulk_rewards_send_one_batch_with_an_event_id_per_item() -> None:
    script = Script(ok({"accepted": 3}))
    items = [RewardItem(experiment_id="exp", arm_id="a", reward=float(i % 2)) for i in range(3)]
    with client(script, []) as mab:
        assert mab.bulk_rewards(items) == 3
    (body,) = script.bodies()
    assert script.requests[0].url.path == "/rewards"
    assert [r["reward"] for r in body["rewards"]] == [0.0, 1.0, 0.0]
    assert len({r["event_id"] for r in body["rewards"]}) == 3
    assert all("decision_id" not in r for r in body["rewards"])


def test_bulk_rejection_lists_the_bad_items_and_empty_batches_are_refused() -> None:
    per_item = {"errors": [{"index": 1, "msg": "arm 'zz' is not in experiment 'exp'"}]}
    script = Script(err(422, per_item))
    items = [RewardItem(experiment_id="exp", arm_id=a, reward=1.0) for a in ("a", "zz")]
    with client(script, []) as mab:
        with pytest.raises(RequestValidationError) as info:
            mab.bulk_rewards(items)
        assert info.value.errors == per_item["errors"]
        with pytest.raises(ValueError, match="at least one"):
            mab.bulk_rewards([])


def test_ready_returns_the_body_on_503() -> None:
    body = {
        "status": "not_ready",
        "redis": "ok",
        "kafka": "no metadata within 1.0s",
        "auth": "keys",
    }
    script = Script(ok(body, 503))
    with client(script, []) as mab:
        assert mab.ready().status == "not_ready"
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("experiment_id", "raw_path"),
    [
        ("cta-button-test", b"/experiments/cta-button-test"),
        ("../ready", b"/experiments/..%2Fready"),
        ("..", b"/experiments/%2E%2E"),
        (".", b"/experiments/%2E"),
        ("a/b", b"/experiments/a%2Fb"),
        ("10% off", b"/experiments/10%25%20off"),
        ("x?y#z", b"/experiments/x%3Fy%23z"),
        ("Livraison gratuite été", b"/experiments/Livraison%20gratuite%20%C3%A9t%C3%A9"),
    ],
)
def test_an_id_is_one_encoded_path_segment(experiment_id: str, raw_path: bytes) -> None:
    """Any id the server accepts reaches its own experiment, never another route."""
    script = Script(err(404, "not found"))
    with client(script, []) as mab:
        with pytest.raises(NotFoundError):
            mab.get_experiment(experiment_id)
        with pytest.raises(NotFoundError):
            mab.stats(experiment_id)
    assert [r.url.raw_path for r in script.requests] == [raw_path, raw_path + b"/stats"]


def test_an_empty_id_is_refused_before_sending() -> None:
    script = Script(err(404))
    with client(script, []) as mab, pytest.raises(ValueError, match="must not be empty"):
        mab.stats("")
    assert script.requests == []


def test_a_reward_carries_its_user_context() -> None:
    script = Script(ok({**RECEIPT, "event_id": "e1"}))
    context = {"segment": "returning", "cart": None}
    with client(script, []) as mab:
        mab.reward("exp", "a", 1.0, user_context=context)
    assert json.loads(script.requests[0].content)["user_context"] == context


def test_timeseries_reads_the_from_alias_and_query() -> None:
    body = {
        "experiment_id": "exp",
        "bucket": "minute",
        "from": 60,
        "to": 180,
        "arm_ids": ["a"],
        "points": [
            {
                "bucket_start": 60,
                "arm_id": "a",
                "decisions": 2,
                "rewards": 1,
                "reward_sum": 1.0,
                "conversion_rate": 1.0,
                "traffic_share": 1.0,
            }
        ],
        "change_points": [],
        "winner_changes": [],
    }
    script = Script(ok(body))
    with client(script, []) as mab:
        ts = mab.timeseries("exp", bucket="minute", start=60, end="1970-01-01T00:03:00Z")
    assert (ts.from_, ts.to, ts.points[0].decisions) == (60, 180, 2)
    params = script.requests[0].url.params
    assert (params["bucket"], params["from"], params["to"]) == (
        "minute",
        "60",
        "1970-01-01T00:03:00Z",
    )


async def test_async_client_retries_like_the_sync_one() -> None:
    script = Script(err(502), ok(DECISION))
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with AsyncMabClient(
        "http://mab", transport=httpx.MockTransport(script), sleep=sleep, api_key="k"
    ) as mab:
        d = await mab.decide("exp")
        script.steps = [err(404)]
        with pytest.raises(NotFoundError):
            await mab.stats("exp")
    assert d.arm_id == "b"
    assert len(sleeps) == 1
    assert script.requests[0].headers["authorization"] == "Bearer k"


def test_timeouts_are_bounded_by_default() -> None:
    handler: Callable[[httpx.Request], httpx.Response] = lambda r: ok({})  # noqa: E731
    with MabClient("http://mab", transport=httpx.MockTransport(handler)) as mab:
        t = mab._http.timeout
    assert (t.connect, t.read) == (2.0, 10.0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_unusable_answers_are_errors_not_results() -> None:
    """A proxy's HTML page with 200, or a body of another shape, is never a result; a
    misconfigured URL is not retried."""
    script = Script(httpx.Response(200, text="<html>maintenance</html>"))
    with client(script, []) as mab, pytest.raises(UnexpectedResponseError, match="maintenance"):
        mab.decide("exp")
    script = Script(ok({"arm_id": "b"}))
    with client(script, []) as mab, pytest.raises(UnexpectedResponseError):
        mab.decide("exp")
    request = httpx.Request("GET", "http://mab/decision")
    script = Script(httpx.UnsupportedProtocol("ftp", request=request))
    with client(script, []) as mab, pytest.raises(MabTransportError):
        mab.decide("exp")
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("send", "loc"),
    [
        (lambda mab: mab.create_experiment("a\tb", ["x", "y"]), ["experiment_id"]),
        (lambda mab: mab.create_experiment("exp", ["x", "x"]), ["arm_ids"]),
        (lambda mab: mab.create_experiment("exp", ["x", "y\x00z"]), ["arm_ids", 1]),
        (lambda mab: mab.add_arms("exp", ["ok", "zero\u200bwidth"]), ["arm_ids", 1]),
        (lambda mab: mab.set_strategy("x" * 121, "ucb1"), ["experiment_id"]),
        (lambda mab: mab.reward("exp", "a", 2e6), ["reward"]),  # above REWARD_CEILING
        (lambda mab: mab.reward("exp", "a", 1.0, event_id="a:b"), ["event_id"]),
        (lambda mab: mab.reward("exp", "a", 1.0, user_context={"n": 2**64}), ["user_context"]),
        (lambda mab: mab.decide(" "), ["experiment_id"]),
        (lambda mab: mab.stats("a\x1bb"), ["experiment_id"]),
        (lambda mab: mab.bulk_rewards([]), ["rewards"]),
    ],
)
def test_a_request_the_server_would_refuse_fails_before_sending(
    send: Callable[[MabClient], object], loc: list[object]
) -> None:
    """Bodies are built with the API's request models and ids pass the server's rule: a
    bad request is an InvalidRequestError (a MabError and a ValueError) naming the field,
    and nothing reaches the network."""
    script = Script(ok({}))
    with client(script, []) as mab, pytest.raises(InvalidRequestError) as info:
        send(mab)
    assert script.requests == []
    assert isinstance(info.value, MabError)
    assert isinstance(info.value, ValueError)
    assert [e["loc"] for e in info.value.errors] == [loc]
    assert str(loc[0]) in str(info.value)


def test_bodies_are_sent_as_the_models_write_them() -> None:
    """Ids trimmed as the server trims them; fields the caller left out stay out."""
    created = CREATED
    script = Script(ok(created, 201), ok(created), ok({**created, "version": 2}))
    with client(script, []) as mab:
        mab.create_experiment(" exp ", [" a", "b "])
        mab.add_arms("exp", ["c"])
        mab.set_strategy("exp", "ucb1", {"c": 2.0})
    assert script.bodies() == [
        {"experiment_id": "exp", "arm_ids": ["a", "b"]},
        {"arm_ids": ["c"]},
        {"experiment_id": "exp", "strategy": "ucb1", "strategy_params": {"c": 2.0}},
    ]
