"""Where a stack lives: the repository's ``.state/`` and ``.cache/`` folders, and
:class:`StackConfig` (run directory, ports, persistence, topic prefix, broker extras).

The two modes of the package differ only here: :meth:`StackConfig.product` (``mab up``:
``.state/``, ports from ``MAB_*_PORT``, data kept across restarts) and
:meth:`StackConfig.throwaway` (tests and benchmarks: a temp dir, free ports, nothing
persisted). Everything else takes a config and behaves the same in both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stack.ports import Ports

REPO_ROOT = Path(__file__).resolve().parents[2]
#: ``mab up``'s run dir: pid files, logs, secrets, Kafka and Redis data (git-ignored).
STATE_DIR = REPO_ROOT / ".state"
#: Downloads kept between runs (the Kafka jars), so a second start needs no network.
CACHE_DIR = REPO_ROOT / ".cache"


@dataclass(frozen=True, slots=True)
class KafkaExtras:
    """What a broker needs beyond the plain one: more listeners (security protocol ->
    port, the listener named after its protocol), broker properties (appended, so they
    win), and arguments of the storage format (e.g. ``--add-scram`` users, which KRaft
    takes at format time).

    The PLAINTEXT listener always stays: inter-broker traffic and the stack's own
    readiness checks use it. Tests start a SASL_SSL broker this way.
    """

    listeners: Mapping[str, int] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)
    format_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Where a stack keeps its files, which ports it uses and whether data must persist."""

    run_dir: Path
    ports: Ports
    persistent: bool
    topic_prefix: str = ""
    #: A maximum, not a reservation. 512m ran out (OutOfMemoryError in the metadata
    #: loader) on a long-lived development broker holding ~14,000 partitions of test
    #: topics: every test namespace creates its own topics.
    kafka_heap: str = "1g"
    #: Listeners, properties and format-time arguments on top of the plain broker.
    kafka_extras: KafkaExtras = field(default_factory=KafkaExtras)

    @property
    def kafka_dir(self) -> Path:
        return self.run_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.run_dir / "redis"

    @classmethod
    def product(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        return cls(
            run_dir=STATE_DIR,
            ports=Ports.from_env(env),
            persistent=True,
            topic_prefix=env.get("MAB_TOPIC_PREFIX", ""),
        )

    @classmethod
    def throwaway(cls, base: Path | None = None) -> StackConfig:
        run_dir = Path(tempfile.mkdtemp(prefix="mab-stack-", dir=base))
        return cls(run_dir=run_dir, ports=Ports.free(), persistent=False)
