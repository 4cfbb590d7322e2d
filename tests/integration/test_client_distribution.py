"""The SDK as a storefront installs it: ``pip install ./clients/python`` into a clean venv.

Scenario: a fresh ``python -m venv`` gets only the SDK's distribution (and what pip
resolves for it: httpx, pydantic); a script run by that venv's interpreter creates an
experiment, takes a decision and rewards it against a real decider (a process on the
real Kafka + Redis).
We expect the round trip to work, the reward to land on the rewards topic joined to its
decision, and none of the server's dependencies to be importable in that venv: the SDK
distribution must never pull the server in.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from schemas.topics import TopicNames
from tests.fixtures.faults import (
    REPO,
    ServiceProcess,
    read_topics,
    service_env,
    start_decider,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Modules of the server distribution that a storefront back end must not get (orjson:
#: the SDK's request models measure a user_context without the server's encoder; the
#: server's own packages: the id rule and the models live in the SDK).
SERVER_ONLY = (
    "numpy",
    "confluent_kafka",
    "granian",
    "fastapi",
    "aiokafka",
    "pyarrow",
    "orjson",
    "schemas",
    "services",
    "bandit_core",
)

#: Run by the clean venv's interpreter: one decision and its reward through the SDK.
ROUND_TRIP = """
import importlib.util, json, sys
from mab_client import InvalidRequestError, MabClient

url, exp = sys.argv[1], sys.argv[2]
with MabClient(url) as mab:
    created = mab.create_experiment(exp, ["a", "b"], strategy="thompson")
    d = mab.decide(exp)
    receipt = mab.reward_for(d, 1.0)
    try:  # refused by the SDK's own models, never sent (the topic holds one reward)
        mab.reward(exp, "a\tb", 1.0, user_context={"n": 1})
        refused = None
    except InvalidRequestError as exc:
        refused = exc.errors
print(json.dumps({
    "refused": refused,
    "created": created.experiment_id,
    "arm": d.arm_id,
    "arms": d.arms,
    "decision_id": d.decision_id,
    "event_id": receipt.event_id,
    "importable": {m: importlib.util.find_spec(m) is not None for m in sys.argv[3:]},
}))
"""


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with nothing but the SDK distribution, installed the way a user would."""
    venv = tmp_path_factory.mktemp("sdk-venv") / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    print(f"clean venv with the SDK in {time.monotonic() - started:.1f}s")
    return python


@pytest.fixture
def decider(
    kafka_bootstrap: str, redis_url: str, ns: str, topics: dict[str, int], tmp_path: Path
) -> Iterator[tuple[ServiceProcess, str]]:
    process, url = start_decider(
        service_env(kafka_bootstrap, redis_url, ns), tmp_path / "decider.log"
    )
    try:
        yield process, url
    finally:
        process.stop_quietly()


async def test_sdk_installs_alone_and_round_trips(
    sdk_python: Path,
    decider: tuple[ServiceProcess, str],
    kafka_bootstrap: str,
    ns: str,
) -> None:
    process, url = decider
    await wait_ready(process, url)
    exp = f"{ns}sdk"
    run = await asyncio.to_thread(
        subprocess.run,
        [str(sdk_python), "-c", ROUND_TRIP, url, exp, *SERVER_ONLY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=sdk_python.parent,  # not the repo: its packages must not be on the path
    )
    assert run.returncode == 0, run.stdout + run.stderr + process.tail()
    out = json.loads(run.stdout)
    assert out["created"] == exp
    assert out["arm"] in ("a", "b")
    assert out["arms"] == ["a", "b"]
    assert out["importable"] == dict.fromkeys(SERVER_ONLY, False)
    assert [(e["loc"], e["type"]) for e in out["refused"]] == [(["arm_id"], "invalid_id")]

    landed = read_topics(kafka_bootstrap, [TopicNames.with_prefix(ns).rewards])
    rewards = [orjson.loads(r.value or b"null") for r in landed]
    assert [(r["event_id"], r["decision_id"], r["arm_id"]) for r in rewards] == [
        (out["event_id"], out["decision_id"], out["arm"])
    ]
