"""Redis memory per sticky unit: the ``INFO memory`` delta of N stored assignments.

Writes ``--units`` sticky assignments exactly as the decider stores them (the key of
:meth:`schemas.redis_keys.RedisKeys.unit` with the unit's hashed token, the value of
:meth:`services.decider.units.Assignment.encode`, ``EX`` the default 30-day TTL) into a
private, empty ``redis-server`` and reports ``used_memory`` after minus before, per
unit, and extrapolated to 1,000,000 units (docs/assignment.md states the figure).

    python -m bench.sticky_memory --units 200000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time

from redis import Redis

from deploy.stack.ports import free_port
from mab_client.assignment import Allocation
from mab_client.models import DEFAULT_STICKY_TTL_S
from schemas.redis_keys import RedisKeys
from services.decider import assignment_of

#: Keys written per pipeline round trip.
CHUNK = 5000


def measure(redis: Redis, units: int, experiment_id: str, ttl_s: int) -> tuple[int, int]:
    """``(used_memory before, after)`` of storing ``units`` sticky assignments."""
    rule = Allocation(
        experiment_id=experiment_id,
        version=29_613_160,
        arm_ids=("blue-button", "green-button"),
        weights=(0.37, 0.63),
        salt="5f0c1d2e3a4b6978",
    )
    keys = RedisKeys("")
    before = int(redis.info("memory")["used_memory"])
    now = time.time()
    for lo in range(0, units, CHUNK):
        pipe = redis.pipeline(transaction=False)
        for i in range(lo, min(lo + CHUNK, units)):
            unit = f"visitor-{i:08d}"
            value = assignment_of(rule.choose(unit), now).encode()
            pipe.set(keys.unit(experiment_id, rule.unit_token(unit)), value, nx=True, ex=ttl_s)
        pipe.execute()
    after = int(redis.info("memory")["used_memory"])
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--experiment-id", default="checkout-cta")
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            redis = Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            version = redis.info("server")["redis_version"]
            before, after = measure(redis, args.units, args.experiment_id, DEFAULT_STICKY_TTL_S)
            stored = int(redis.dbsize())
            per_unit = (after - before) / args.units
            print(f"redis {version}: {stored} keys, used_memory {before} -> {after} bytes")
            print(f"{per_unit:.1f} bytes per sticky unit (hashed token, TTL set)")
            print(f"1,000,000 units: {per_unit * 1e6 / 2**20:.0f} MiB")
            redis.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
