"""The decider's edge on the real Kafka + Redis: API keys, limits, CORS, metrics, readiness.

Both serving paths are covered: ``GET /decision`` and ``POST /reward`` are answered by
the raw fast path, every other route by FastAPI, and each rule must hold on both.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from services.decider.settings import DeciderSettings
from tests.integration.conftest import SettingsFactory, both_paths, serve_decider

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
CLIENT_KEY = "client-key-0123456789abcdef"
OTHER_CLIENT = "client-key-fedcba9876543210"
READ_KEY = "read-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
READER = {"Authorization": f"Bearer {READ_KEY}"}
ARMS = ["blue", "green"]


async def _setup(c: httpx.AsyncClient, exp: str) -> None:
    r = await c.post("/experiments", json={"experiment_id": exp, "arm_ids": ARMS}, headers=ADMIN)
    assert r.status_code == 201, r.text


@pytest.fixture
def keyed(decider_settings: SettingsFactory) -> DeciderSettings:
    return decider_settings(
        admin_key=ADMIN_KEY, client_keys=f"{CLIENT_KEY},{OTHER_CLIENT}", read_keys=READ_KEY
    )


@pytest.fixture
async def api(keyed: DeciderSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_decider(keyed) as (c, _):
        yield c


async def test_admin_calls_need_the_admin_key(api: httpx.AsyncClient, ns: str) -> None:
    """Scenario: admin and client keys are configured. We expect no key → 401 with a
    Bearer challenge, an unknown key → 401 invalid_token, a client key → 403, and the
    admin key → the original API's status codes, on create, add arms and config alike."""
    exp = f"{ns}adm"
    body = {"experiment_id": exp, "arm_ids": ARMS}
    r = await api.post("/experiments", json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"detail": "missing API key: send 'Authorization: Bearer <key>'"}
    r = await api.post("/experiments", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = await api.post("/experiments", json=body, headers={"Authorization": f"Basic {ADMIN_KEY}"})
    assert r.status_code == 401
    assert (await api.post("/experiments", json=body, headers=CLIENT)).status_code == 403
    # nothing was stored by the refused calls
    assert (await api.get(f"/experiments/{exp}", headers=ADMIN)).status_code == 404
    lower = {"Authorization": f"bearer {ADMIN_KEY}"}  # the scheme is case-insensitive
    assert (await api.post("/experiments", json=body, headers=lower)).status_code == 201

    arms = {"arm_ids": ["red"]}
    url = f"/experiments/{exp}/arms"
    assert (await api.post(url, json=arms)).status_code == 401
    assert (await api.post(url, json=arms, headers=CLIENT)).status_code == 403
    assert (await api.post(url, json=arms, headers=ADMIN)).status_code == 200

    cfg = {"experiment_id": exp, "strategy": "ucb1"}
    assert (await api.post("/config", json=cfg)).status_code == 401
    assert (await api.post("/config", json=cfg, headers=CLIENT)).status_code == 403
    assert (await api.post("/config", json=cfg, headers=ADMIN)).status_code == 200


async def test_client_calls_take_a_client_or_the_admin_key(api: httpx.AsyncClient, ns: str) -> None:
    """Scenario: client keys are configured. We expect decisions, rewards (fast path) and
    reads (FastAPI) to refuse a missing or unknown key with 401 and accept any client key
    or the admin key."""
    exp = f"{ns}cli"
    await _setup(api, exp)
    q = {"experiment_id": exp}
    r = await api.get("/decision", params=q)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["detail"].startswith("missing API key")
    bad = {"Authorization": "Bearer " + "x" * 40}
    assert (await api.get("/decision", params=q, headers=bad)).status_code == 401
    for headers in (CLIENT, {"Authorization": f"Bearer {OTHER_CLIENT}"}, ADMIN):
        r = await api.get("/decision", params=q, headers=headers)
        assert r.status_code == 200, r.text
    decision = r.json()
    reward = {
        "experiment_id": exp,
        "arm_id": decision["arm_id"],
        "reward": 1.0,
        "decision_id": decision["decision_id"],
    }
    r = await api.post("/reward", json=reward)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await api.post("/reward", json=reward, headers=CLIENT)).status_code == 200
    for path in ("/experiments", f"/experiments/{exp}", f"/experiments/{exp}/stats"):
        assert (await api.get(path)).status_code == 401, path
        assert (await api.get(path, headers=CLIENT)).status_code == 200, path
    ts = f"/experiments/{exp}/timeseries"
    assert (await api.get(ts)).status_code == 401
    assert (await api.get(ts, headers=CLIENT)).status_code == 200
    # ops and docs stay open
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs"):
        assert (await api.get(path)).status_code == 200, path


async def test_client_scope_is_open_without_client_keys(
    decider_settings: SettingsFactory, ns: str
) -> None:
    """Scenario: only an admin key is set (what `mab up` does). We expect the original API's
    storefront calls to work without a header, and admin calls to still need the key."""
    async with serve_decider(decider_settings(admin_key=ADMIN_KEY)) as (c, _):
        exp = f"{ns}open"
        body = {"experiment_id": exp, "arm_ids": ARMS}
        assert (await c.post("/experiments", json=body)).status_code == 401
        await _setup(c, exp)
        r = await c.get("/decision", params={"experiment_id": exp})
        assert r.status_code == 200
        reward = {"experiment_id": exp, "arm_id": r.json()["arm_id"], "reward": 1}
        assert (await c.post("/reward", json=reward)).status_code == 200
        assert (await c.get(f"/experiments/{exp}/stats")).status_code == 200


async def test_read_key_reads_and_evaluates_but_never_writes(
    keyed: DeciderSettings, ns: str
) -> None:
    """Scenario: a read key (the dashboard's) on every kind of call, sent once to the
    served app (hot path in front) and once to the FastAPI app alone.
    We expect reads and evaluation to answer, and decisions, rewards and commands to be
    a 403 naming the key they need, byte-identical on both serving paths; a client key
    may not evaluate."""
    async with both_paths(keyed) as (served, routes):
        exp = f"{ns}rd"
        await _setup(served, exp)
        d = (await served.get("/decision", params={"experiment_id": exp}, headers=CLIENT)).json()
        reward = {"experiment_id": exp, "arm_id": d["arm_id"], "reward": 1.0}
        refused: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/decision", {"params": {"experiment_id": exp}}),
            ("POST", "/reward", {"json": reward}),
            ("POST", "/rewards", {"json": {"rewards": [reward]}}),
            ("POST", "/exposures", {"json": {"exposures": []}}),
            ("POST", "/experiments", {"json": {"experiment_id": f"{ns}x", "arm_ids": ARMS}}),
            ("POST", f"/experiments/{exp}/arms", {"json": {"arm_ids": ["red"]}}),
            ("POST", "/config", {"json": {"experiment_id": exp, "strategy": "ucb1"}}),
        ]
        for method, path, kw in refused:
            fast = await served.request(method, path, headers=READER, **kw)
            slow = await routes.request(method, path, headers=READER, **kw)
            assert fast.status_code == slow.status_code == 403, (path, fast.text, slow.text)
            assert fast.content == slow.content, path
            assert "www-authenticate" not in fast.headers
        decision = await served.get("/decision", params={"experiment_id": exp}, headers=READER)
        assert decision.json() == {
            "detail": "this call needs a client key or the admin key (a read key may only read)"
        }
        create = await served.post("/config", json={"experiment_id": exp}, headers=READER)
        assert create.json() == {"detail": "this call needs the admin key"}
        for path in ("/experiments", f"/experiments/{exp}", f"/experiments/{exp}/stats"):
            assert (await served.get(path, headers=READER)).status_code == 200, path
        ts = await served.get(f"/experiments/{exp}/timeseries", headers=READER)
        assert ts.status_code == 200
        evaluate = f"/experiments/{exp}/evaluate"
        q = {"strategy": "ucb1"}
        r = await served.get(evaluate, params=q, headers=READER)
        assert r.status_code == 200, r.text
        r = await served.get(evaluate, params=q, headers=CLIENT)
        assert r.status_code == 403
        assert r.json() == {"detail": "this call needs a read key or the admin key"}
        assert (await served.get(evaluate, params=q)).status_code == 401
        # nothing the read key tried was stored or logged
        stats = (await served.get(f"/experiments/{exp}/stats", headers=READER)).json()
        assert [a["arm_id"] for a in stats["arms"]] == ARMS
        assert stats["strategy"] == "thompson"


async def test_denials_are_identical_on_both_serving_paths(keyed: DeciderSettings, ns: str) -> None:
    """Scenario: no key, an unknown key and a read key on the two hot routes, through the
    hot path and through the FastAPI routes behind it. We expect the same status, body
    and WWW-Authenticate header from both."""
    async with both_paths(keyed) as (served, routes):
        exp = f"{ns}same"
        await _setup(served, exp)
        reward = {"experiment_id": exp, "arm_id": "blue", "reward": 1.0}
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/decision", {"params": {"experiment_id": exp}}),
            ("POST", "/reward", {"json": reward}),
        ]
        for headers in ({}, {"Authorization": "Bearer " + "y" * 32}, READER):
            for method, path, kw in calls:
                fast = await served.request(method, path, headers=headers, **kw)
                slow = await routes.request(method, path, headers=headers, **kw)
                assert fast.status_code == slow.status_code, (path, headers)
                assert fast.status_code in (401, 403)
                assert fast.content == slow.content, (path, headers)
                assert fast.headers.get("www-authenticate") == slow.headers.get("www-authenticate")


async def test_open_mode_serves_admin_calls_without_a_key_and_says_so(
    decider_settings: SettingsFactory, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: MAB_AUTH=open (the decider on loopback, no admin key), the mode of the
    original API's clients. We expect create, add arms, config and evaluation to answer
    without a key, a warning in the log at start and on /ready, and /ready's body to
    say so while the decider is ready."""
    settings = decider_settings()
    assert settings.auth == "open"
    with caplog.at_level(logging.WARNING, "services.decider"):
        async with serve_decider(settings) as (c, _):
            exp = f"{ns}open"
            body = {"experiment_id": exp, "arm_ids": ARMS}
            assert (await c.post("/experiments", json=body)).status_code == 201
            assert (await c.post("/experiments", json=body)).status_code == 409
            arms = await c.post(f"/experiments/{exp}/arms", json={"arm_ids": ["red"]})
            assert arms.status_code == 200
            cfg = {"experiment_id": exp, "strategy": "ucb1"}
            assert (await c.post("/config", json=cfg)).status_code == 200
            await c.get("/decision", params={"experiment_id": exp})
            r = await c.get(f"/experiments/{exp}/evaluate", params={"strategy": "thompson"})
            assert r.status_code == 200, r.text
            started = [r for r in caplog.records if "MAB_AUTH=open" in r.getMessage()]
            ready = await c.get("/ready")
            warned = [r for r in caplog.records if "MAB_AUTH=open" in r.getMessage()]
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["auth"]) == ("ready", "open")
    assert "without an API key" in body["warning"]
    assert len(started) == 1
    assert started[0].levelno == logging.WARNING
    assert len(warned) == 2  # at start, then on /ready


async def test_openapi_declares_the_bearer_scheme(api: httpx.AsyncClient) -> None:
    """Swagger's Authorize button needs a security scheme; 401/403 are documented."""
    spec = (await api.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    create = spec["paths"]["/experiments"]["post"]
    assert create["security"] == [{"apiKey": []}]
    assert {"401", "403"} <= set(create["responses"])
    decide = spec["paths"]["/decision"]["get"]
    assert decide["security"] == [{"apiKey": []}]
    assert "401" in decide["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


def _chunks(total: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            yield b" " * 4096
            sent += 4096

    return gen()


async def test_bodies_over_the_limit_get_413(decider_settings: SettingsFactory, ns: str) -> None:
    """Scenario: MAB_MAX_BODY_BYTES=4096. We expect 413 with a JSON detail for a larger
    declared body (not read) and for a larger chunked body, on FastAPI and fast-path
    routes, while a normal body still passes."""
    async with serve_decider(decider_settings(admin_key=ADMIN_KEY, max_body_bytes=4096)) as (c, _):
        exp = f"{ns}big"
        await _setup(c, exp)
        big = b'{"experiment_id": "' + b"x" * 5000 + b'"}'
        for path in ("/experiments", "/reward", "/config"):
            r = await c.post(
                path, content=big, headers={**ADMIN, "Content-Type": "application/json"}
            )
            assert r.status_code == 413, (path, r.text)
            assert r.json() == {"detail": "request body larger than 4096 bytes"}
        for path in ("/experiments", "/reward"):
            r = await c.post(
                path,
                content=_chunks(64 * 1024),
                headers={**ADMIN, "Content-Type": "application/json"},
            )
            assert r.status_code == 413, (path, r.text)
        r = await c.post("/reward", json={"experiment_id": exp, "arm_id": "blue", "reward": 1})
        assert r.status_code == 200


async def test_rate_limit_is_per_key(decider_settings: SettingsFactory, ns: str) -> None:
    """Scenario: 1 request/s with a burst of 3 per key. We expect the 4th immediate call
    of one key to get 429 with Retry-After (fast path and FastAPI routes share the
    bucket), another key to be unaffected, and /health never to be limited."""
    settings = decider_settings(
        admin_key=ADMIN_KEY, client_keys=CLIENT_KEY, rate_limit_per_s=1.0, rate_limit_burst=3
    )
    async with serve_decider(settings) as (c, _):
        exp = f"{ns}rl"
        await _setup(c, exp)  # admin: 1 token of 3
        q = {"experiment_id": exp}
        assert (await c.get("/decision", params=q, headers=CLIENT)).status_code == 200
        assert (await c.get(f"/experiments/{exp}", headers=CLIENT)).status_code == 200
        assert (await c.get("/decision", params=q, headers=CLIENT)).status_code == 200
        r = await c.get("/decision", params=q, headers=CLIENT)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["detail"].startswith("rate limit exceeded")
        assert (await c.get(f"/experiments/{exp}", headers=CLIENT)).status_code == 429
        assert (await c.get("/decision", params=q, headers=ADMIN)).status_code == 200
        for _ in range(5):
            assert (await c.get("/health")).status_code == 200


async def test_cors_only_for_configured_origins(decider_settings: SettingsFactory, ns: str) -> None:
    """Scenario: MAB_CORS_ORIGINS=https://shop.example. We expect the allow-origin header
    for that origin on fast-path and FastAPI responses and on a preflight, and none for
    another origin (the default configuration sends no CORS headers at all)."""
    shop = "https://shop.example"
    async with serve_decider(decider_settings(cors_origins=shop)) as (c, _):
        exp = f"{ns}cors"
        await _setup(c, exp)
        r = await c.get("/decision", params={"experiment_id": exp}, headers={"Origin": shop})
        assert r.headers["access-control-allow-origin"] == shop
        r = await c.get(f"/experiments/{exp}", headers={"Origin": shop})
        assert r.headers["access-control-allow-origin"] == shop
        r = await c.get(f"/experiments/{exp}", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = await c.options(
            "/reward",
            headers={
                "Origin": shop,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == shop
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
    async with serve_decider(decider_settings()) as (c, _):
        r = await c.get("/decision", params={"experiment_id": exp}, headers={"Origin": shop})
        assert "access-control-allow-origin" not in r.headers


async def test_metrics_count_requests_decisions_and_rewards(
    api: httpx.AsyncClient, ns: str
) -> None:
    """Scenario: 3 decisions, 1 accepted and 1 rejected reward, a 401 and a read. We expect
    /metrics to show them under bounded labels (strategy, outcome, route template)."""
    exp = f"{ns}met"
    await _setup(api, exp)
    for _ in range(3):
        r = await api.get("/decision", params={"experiment_id": exp}, headers=CLIENT)
    arm = r.json()["arm_id"]
    ok = {"experiment_id": exp, "arm_id": arm, "reward": 1}
    assert (await api.post("/reward", json=ok, headers=CLIENT)).status_code == 200
    bad = {"experiment_id": exp, "arm_id": "nope", "reward": 1}
    assert (await api.post("/reward", json=bad, headers=CLIENT)).status_code == 422
    assert (await api.get("/decision", params={"experiment_id": exp})).status_code == 401
    assert (await api.get(f"/experiments/{exp}/stats", headers=CLIENT)).status_code == 200
    text = (await api.get("/metrics")).text
    lines = set(text.splitlines())
    assert 'mab_decisions_total{strategy="thompson"} 3.0' in lines
    assert 'mab_rewards_total{outcome="accepted"} 1.0' in lines
    assert 'mab_rewards_total{outcome="unknown_arm"} 1.0' in lines
    assert 'mab_http_requests_total{method="GET",route="/decision",status="200"} 3.0' in lines
    assert 'mab_http_requests_total{method="GET",route="/decision",status="401"} 1.0' in lines
    assert (
        'mab_http_requests_total{method="GET",route="/experiments/{experiment_id}/stats",'
        'status="200"} 1.0'
    ) in lines
    assert 'mab_http_request_duration_seconds_count{method="GET",route="/decision"} 4.0' in lines
    assert 'mab_decision_events_total{result="enqueued"} 3.0' in lines
    assert exp not in text  # experiment ids are never labels


async def test_ready_verdict_is_cached(keyed: DeciderSettings) -> None:
    """Scenario: 20 probes in a burst. We expect one real Redis+Kafka check, not 20."""
    async with serve_decider(keyed) as (c, asgi):
        for _ in range(20):
            r = await c.get("/ready")
            assert r.status_code == 200
            assert r.json() == {"status": "ready", "redis": "ok", "kafka": "ok", "auth": "keys"}
        assert asgi.api.state.runtime.readiness.checks == 1


async def test_ready_names_the_failed_dependency(decider_settings: SettingsFactory) -> None:
    """Scenario: Redis is unreachable. We expect 503 naming Redis while Kafka is ok."""
    settings = decider_settings().model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "redis_socket_timeout_s": 0.2}
    )
    async with serve_decider(settings) as (c, _):
        r = await c.get("/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not_ready"
        assert body["kafka"] == "ok"
        assert body["redis"] != "ok"


#: Ids that stay invalid now that any printable text is an id (``a:b``, ``{a}``, ``..``
#: and accents are valid: tests/integration/test_decider_printable_ids.py).
HOSTILE = [
    "\u202eevil",  # right-to-left override: a format character
    "a\u200bb",
    "a\x00b",
    "a\nb",
    "a\x1b[31mred",
    "   ",
    "x" * 10_000,
]


@pytest.mark.parametrize("bad", HOSTILE)
async def test_hostile_ids_are_a_clean_422_everywhere(
    api: httpx.AsyncClient, ns: str, bad: str
) -> None:
    """Scenario: ids with control and format characters, blank ids and 10 kB strings in
    every place an id goes (body, path, query). We expect 422 with a short
    body that does not echo the input, never a 5xx, and nothing stored."""
    exp = f"{ns}h"
    await _setup(api, exp)
    seg = quote(bad, safe="")
    calls = [
        ("POST", "/experiments", {"experiment_id": bad, "arm_ids": ARMS}),
        ("POST", "/experiments", {"experiment_id": f"{ns}h2", "arm_ids": ["a", bad]}),
        ("POST", f"/experiments/{exp}/arms", {"arm_ids": [bad]}),
        ("POST", f"/experiments/{seg}/arms", {"arm_ids": ["c"]}),
        ("POST", "/config", {"experiment_id": bad, "strategy": "ucb1"}),
        ("GET", f"/experiments/{seg}", None),
        ("GET", f"/experiments/{seg}/stats", None),
        ("GET", f"/experiments/{seg}/timeseries", None),
        ("POST", "/reward", {"experiment_id": bad, "arm_id": "blue", "reward": 1}),
        ("POST", "/reward", {"experiment_id": exp, "arm_id": bad, "reward": 1}),
    ]
    for method, path, body in calls:
        r = await api.request(method, path, json=body, headers=ADMIN)
        assert r.status_code == 422, (method, path, r.status_code, r.text[:300])
        assert len(r.content) < 2000
        assert "detail" in r.json()
    r = await api.get("/decision", params={"experiment_id": bad}, headers=ADMIN)
    assert r.status_code == 422
    assert len(r.content) < 2000
    stored = (await api.get(f"/experiments/{exp}", headers=ADMIN)).json()
    assert stored["arm_ids"] == ARMS
    listed = (await api.get("/experiments", params={"limit": 1000}, headers=ADMIN)).json()
    assert [e["experiment_id"] for e in listed if e["experiment_id"].startswith(ns)] == [exp]


async def test_a_slash_in_an_id_never_reaches_a_route(api: httpx.AsyncClient, ns: str) -> None:
    """A ``/`` (even percent-encoded) splits the path: no route matches → 404, not 5xx."""
    for path in ("/experiments/a%2Fb", "/experiments/a%2Fb/stats", "/experiments/a/b/stats"):
        r = await api.get(path, headers=ADMIN)
        assert r.status_code == 404, path
