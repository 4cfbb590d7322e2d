"""Redis over TLS: Debian's redis-server 7.0 (built with TLS, linked to OpenSSL 3) on a
TLS-only port with a password, certificates from a private CA made in the test
(trustme). The decider, the reward consumer and the projector run real traffic through
it with a real Kafka: ``rediss://`` with ``ssl_ca_certs`` in the URL, the password from
``REDIS_PASSWORD``."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import trustme

from deploy.stack.ports import free_port
from deploy.stack.process import ManagedProcess, log_tail
from deploy.stack.redis_server import ensure_redis_server, redis_auth_config
from deploy.stack.secrets import write_private
from schemas.redis_keys import RedisKeys
from stream_runtime.redis_client import redis_from_url
from tests.fixtures.in_process import in_process

pytestmark = pytest.mark.integration

EXP = "tls-shop"
VISITS = 200


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    password: str

    @property
    def url(self) -> str:
        """No password in it: the services take it from REDIS_PASSWORD."""
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """redis-server with ``port 0`` (no plain listener) and ``tls-port``, requiring a
    password, its server certificate signed by a CA only this test trusts."""
    run_dir = tmp_path_factory.mktemp("tls-redis")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(run_dir / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(run_dir / "server.pem"))
    server.private_key_pem.write_to_path(str(run_dir / "server.key"))
    password = secrets.token_urlsafe(24)
    conf = run_dir / "redis.conf"
    write_private(conf, redis_auth_config(password))
    port = free_port()
    node = ManagedProcess("redis-tls", run_dir)
    node.spawn(
        [
            ensure_redis_server(),
            str(conf),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(run_dir / "server.pem"),
            "--tls-key-file",
            str(run_dir / "server.key"),
            "--tls-ca-cert-file",
            str(run_dir / "ca.pem"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(run_dir),
        ],
        port=port,
    )
    tls = TlsRedis(port, run_dir / "ca.pem", password)
    deadline = time.monotonic() + 20
    try:
        while True:
            client = redis.Redis.from_url(tls.url, password=password, socket_timeout=1)
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if node.pid() is None or time.monotonic() > deadline:
                    raise AssertionError(
                        "TLS redis-server did not start:\n" + log_tail(node.log_file)
                    ) from None
                time.sleep(0.1)
            finally:
                client.close()
        yield tls
    finally:
        node.stop(timeout=5)
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_untrusted_plain_or_passwordless_clients_are_refused(tls_redis: TlsRedis) -> None:
    """What an operator sees for each mistake (and never the password)."""
    no_ca = redis_from_url(
        f"rediss://127.0.0.1:{tls_redis.port}/0", env={"REDIS_PASSWORD": tls_redis.password}
    )
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED") as untrusted:
        await no_ca.ping()
    await no_ca.aclose()
    plain = redis_from_url(
        f"redis://127.0.0.1:{tls_redis.port}/0",
        env={"REDIS_PASSWORD": tls_redis.password},
        socket_timeout=2,
    )
    with pytest.raises(redis.ConnectionError):  # a TLS server hangs up on plain RESP
        await plain.ping()
    await plain.aclose()
    nopass = redis_from_url(tls_redis.url, env={})
    with pytest.raises(redis.AuthenticationError):
        await nopass.ping()
    await nopass.aclose()
    assert tls_redis.password not in str(untrusted.value)


async def test_decisions_rewards_fold_and_projection_run_over_tls(
    tls_redis: TlsRedis,
    kafka_bootstrap: str,
    ns: str,
    topics: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario: the decider (config store, snapshot cache, readiness), the reward
    consumer and the projector, in process on the real Kafka, all given
    ``REDIS_URL=rediss://...?ssl_ca_certs=...`` and ``REDIS_PASSWORD``; 200 visits get a
    decision and a reward joined to it. We expect the experiment created and served,
    /ready green, and every reward folded into the snapshot and projected into the hour
    bucket exactly once."""
    monkeypatch.setenv("REDIS_PASSWORD", tls_redis.password)
    services = in_process(kafka_bootstrap, tls_redis.url, ns)
    decider, consumer, projector = services.decider, services.consumer, services.projector
    await consumer.start()
    await projector.start()
    reader = redis_from_url(tls_redis.url)
    try:
        async with (
            decider.api.router.lifespan_context(decider.api),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=decider), base_url="http://decider", timeout=30
            ) as c,
        ):
            assert (await c.get("/ready")).status_code == 200
            r = await c.post("/experiments", json={"experiment_id": EXP, "arm_ids": ["a", "b"]})
            assert r.status_code == 201, r.text
            rewarded = 0.0
            for i in range(VISITS):
                d = (await c.get("/decision", params={"experiment_id": EXP})).json()
                reward = float(i % 3 == 0)
                rewarded += reward
                body = {
                    "experiment_id": EXP,
                    "arm_id": d["arm_id"],
                    "reward": reward,
                    "decision_id": d["decision_id"],
                }
                assert (await c.post("/reward", json=body)).status_code == 200

            keys = RedisKeys(ns).experiment(EXP)

            async def projected() -> int:
                total = 0
                async for key in reader.scan_iter(match=keys.bucket_pattern("hour")):
                    for field, n in (await reader.hgetall(key)).items():
                        name = field.decode() if isinstance(field, bytes) else field
                        total += int(n) if name.endswith("|r") else 0
                return total

            deadline = time.monotonic() + 60
            while True:
                stats = (await c.get(f"/experiments/{EXP}/stats")).json()
                pulls = sum(a["pulls"] for a in stats["arms"])
                if pulls == VISITS and await projected() == VISITS:
                    break
                assert time.monotonic() < deadline, (pulls, await projected())
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # a doubled record would show up now
            stats = (await c.get(f"/experiments/{EXP}/stats")).json()
            assert sum(a["pulls"] for a in stats["arms"]) == VISITS
            assert sum(a["reward_sum"] for a in stats["arms"]) == rewarded
            assert sum(a["decisions"] for a in stats["arms"]) == VISITS
            assert await projected() == VISITS
    finally:
        await consumer.stop()
        await projector.stop()
        await reader.aclose()
