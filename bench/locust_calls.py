"""The calls both Locust scenarios make, each checked the same way (one place).

``bench/locustfile.py`` (the project's, with keys) and ``bench/locustfile_original_api.py``
(clients of the original API, no key) differ in who they are, not in how a create that
races, a decision or a reward is judged: a create is fine as 201 or 409, a decision must
name one of the experiment's arms, a reward must be a 200. Failures carry the status and
the start of the body, so a refused key or a validation error shows in Locust's report.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from locust.clients import HttpSession


def _why(what: str, status: int, text: str) -> str:
    return f"{what}: HTTP {status} {text[:200]}"


def _post(
    client: HttpSession,
    path: str,
    body: Mapping[str, Any],
    ok: Collection[int],
    headers: Mapping[str, str] | None,
) -> None:
    with client.post(path, json=body, name=path, headers=headers, catch_response=True) as resp:
        if resp.status_code in ok:
            resp.success()
        else:
            resp.failure(_why(path.strip("/"), resp.status_code, resp.text))


def create_experiment(
    client: HttpSession, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    """``POST /experiments`` by a user among many racing to create the same experiment."""
    _post(client, "/experiments", body, (201, 409), headers)


def decide(
    client: HttpSession,
    experiment_id: str,
    arms: Collection[str],
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """``GET /decision``: the decision, or ``None`` (recorded as a failure)."""
    with client.get(
        "/decision",
        params={"experiment_id": experiment_id},
        name="/decision",
        headers=headers,
        catch_response=True,
    ) as resp:
        if resp.status_code != 200:
            resp.failure(_why("decision", resp.status_code, resp.text))
            return None
        decision: dict[str, Any] = resp.json()
        if decision.get("arm_id") not in arms:
            resp.failure(f"decision: arm {decision.get('arm_id')!r} is not one of {list(arms)}")
            return None
        return decision


def reward(
    client: HttpSession, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    """``POST /reward``: 200 or a failure."""
    _post(client, "/reward", body, (200,), headers)
