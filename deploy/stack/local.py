"""The orchestration: :class:`LocalStack` starts, checks and stops the Redis, the Kafka
broker and the registered services of one :class:`~deploy.stack.config.StackConfig`, in
dependency order; :func:`throwaway_stack` is the same on free ports in a temp dir.

What each step does lives in the module that owns it (broker, Redis, secrets, scale,
status); this class holds one stack's processes and choices together, so ``mab up``,
``mab down``, ``mab status``, the test fixtures and the benchmarks all drive the same
code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from deploy.stack.config import StackConfig
from deploy.stack.errors import StackError
from deploy.stack.kafka_broker import local_bootstrap, start_kafka
from deploy.stack.ports import free_port, require_port_free
from deploy.stack.process import ManagedProcess, log_tail, recorded_names
from deploy.stack.redis_server import local_redis_url, start_redis
from deploy.stack.scale import ScalePlan, instance_name
from deploy.stack.secrets import KEY_ENVS, KeyUse, StackSecrets
from deploy.stack.services import SERVICES, ServiceSpec, http_ok, metrics_url
from deploy.stack.status import ComponentStatus, kafka_row, redis_row, service_rows
from deploy.stack.topics import TopicSpecLike, create_topics, product_topic_specs


class LocalStack:
    """Starts, checks and stops Kafka, Redis and registered services of one :class:`StackConfig`.

    Every method is idempotent: ``start_*`` returns at once when our process already runs,
    ``stop`` only signals pids we recorded and that still run our argv.
    """

    def __init__(
        self,
        config: StackConfig,
        services: Sequence[ServiceSpec] | None = None,
        scale: Mapping[str, int] | None = None,
        open_auth: bool = False,
    ) -> None:
        """``scale`` maps a scalable service's name to its wanted instance count; names not
        given keep the count of the last ``up`` (``scale.json``), else 1. ``open_auth``
        runs the decider with ``MAB_AUTH=open`` (admin calls without a key, loopback)."""
        self.config = config
        self.services: list[ServiceSpec] = list(SERVICES if services is None else services)
        self.kafka = ManagedProcess("kafka", config.run_dir)
        self.redis = ManagedProcess("redis", config.run_dir)
        self.open_auth = open_auth
        self.secrets = StackSecrets(config.run_dir, open_auth)
        self.scale = ScalePlan(self.services, config.run_dir, scale)

    # -- instances ------------------------------------------------------------------------
    def service_argv(self, spec: ServiceSpec) -> list[str]:
        argv = spec.argv(self.config.ports)
        workers = self.scale.count(spec)
        if spec.scaling == "workers" and workers > 1:
            argv += ["--workers", str(workers)]
        if spec.keys == "serve" and self.open_auth:
            # On the command line, not only in the env: a later `mab up` in the other
            # mode then sees a different argv and restarts the decider.
            argv += ["--auth", "open"]
        return argv

    def expected(self, with_services: bool = True) -> list[str]:
        """Component rows that must be healthy after ``up(with_services=...)``."""
        return self.scale.expected(self.services, with_services)

    # -- endpoints ------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return local_bootstrap(self.config.ports.kafka)

    @property
    def redis_url(self) -> str:
        """With the password: what services and clients get, never what is printed."""
        return local_redis_url(self.config.ports.redis, self.secrets.redis_password().value)

    def service_env(self, keys: KeyUse = "none") -> dict[str, str]:
        """Environment a service gets: the stack's endpoints on top of ours, and only the
        keys it needs (``keys``); keys in our own environment reach no one else."""
        inherited = {k: v for k, v in os.environ.items() if k not in KEY_ENVS}
        return {
            **inherited,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "MAB_TOPIC_PREFIX": self.config.topic_prefix,
            "MAB_API_URL": f"http://127.0.0.1:{self.config.ports.api}",
            "PYTHONUNBUFFERED": "1",
            **self.secrets.keys_env(keys),
        }

    def _managed(self, name: str) -> ManagedProcess:
        if name == "kafka":
            return self.kafka
        if name == "redis":
            return self.redis
        return ManagedProcess(name, self.config.run_dir)

    # -- infrastructure -------------------------------------------------------------------
    def start_kafka(self, timeout: float = 90.0) -> int:
        """See :func:`deploy.stack.kafka_broker.start_kafka`."""
        return start_kafka(self.kafka, self.config, timeout)

    def start_redis(self, timeout: float = 20.0) -> int:
        """See :func:`deploy.stack.redis_server.start_redis`."""
        return start_redis(
            self.redis, self.config, lambda: self.secrets.redis_password().value, timeout
        )

    def create_topics(self, specs: Sequence[TopicSpecLike] | None = None) -> dict[str, int]:
        """The product's topics (with the stack's prefix) unless ``specs`` are given."""
        chosen = product_topic_specs(self.config.topic_prefix) if specs is None else specs
        return create_topics(self.bootstrap, chosen)

    # -- services -------------------------------------------------------------------------
    def start_service(self, spec: ServiceSpec, index: int = 1) -> int:
        """Start one instance of a service and wait for its health check (HTTP 200, or
        alive for a while). A running instance started with other arguments (another
        worker count) is restarted with the wanted ones."""
        proc = self._managed(instance_name(spec.name, index))
        argv = self.service_argv(spec)
        pid = proc.pid()
        if pid is not None:
            if proc.recorded_argv() == argv:
                return pid
            proc.stop(timeout=20)
        port = spec.port(self.config.ports) if spec.port is not None else None
        if port is not None:
            require_port_free(port, spec.port_env or f"the port of {spec.name}")
        env = {**self.service_env(spec.keys), **spec.env}
        url = spec.health_url(self.config.ports)
        if spec.metrics_port_env is not None:
            # A free port per start, recorded with the pid so `mab status` can show it;
            # healthy = its exporter answers: the same check `mab status` makes.
            port = free_port()
            env[spec.metrics_port_env] = str(port)
            url = metrics_url(port)
        pid, offset = proc.spawn(argv, env=env, port=port)
        # Without a health URL a service counts as healthy once it has stayed alive a while.
        ready = (lambda: False) if url is None else (lambda: http_ok(url, timeout=1.0))
        wait = spec.alive_seconds if url is None else spec.start_timeout
        what = f"service {proc.name}"
        if proc.wait_ready(pid, offset, ready, wait, what=what, interval=0.2) or url is None:
            return pid
        proc.stop(timeout=5)
        raise StackError(
            f"service {proc.name}: {url} not 200 within {spec.start_timeout:.0f}s; log:\n"
            + log_tail(proc.log_file, start=offset)
        )

    def scale_service(self, spec: ServiceSpec, note: Callable[[str], None] = print) -> None:
        """Bring ``spec`` to its wanted count: start missing instances, stop surplus ones."""
        indices = self.scale.instances(spec)
        for i in indices:
            name = instance_name(spec.name, i)
            proc = self._managed(name)
            pid = proc.pid()
            if pid is not None and proc.recorded_argv() == self.service_argv(spec):
                note(f"{name}: already running")
            else:
                note(f"{name}: {'restarting' if pid is not None else 'starting'}")
            self.start_service(spec, i)
        for i in self.scale.running(spec):
            if i > len(indices):
                name = instance_name(spec.name, i)
                note(f"{name}: stopping (scaled to {self.scale.count(spec)})")
                self.stop(name)

    def start_services(self, note: Callable[[str], None] = print) -> None:
        """Bring every registered service to its wanted count; remember the counts."""
        self.scale.save()
        for spec in self.services:
            if not spec.available():
                note(f"{spec.name}: skipped, module {spec.module} does not exist yet")
                continue
            self.scale_service(spec, note)

    # -- whole stack ----------------------------------------------------------------------
    def up(
        self,
        *,
        with_services: bool = True,
        with_topics: bool = True,
        note: Callable[[str], None] = print,
    ) -> list[ComponentStatus]:
        """Start whatever is not running yet, in dependency order, and return the status."""
        self.secrets.announce(note)
        note(f"redis: {'already running' if self.redis.pid() else 'starting'}")
        self.start_redis()
        note(f"kafka: {'already running' if self.kafka.pid() else 'starting'}")
        self.start_kafka()
        if with_topics:
            try:
                counts = self.create_topics()
                note("topics: " + ", ".join(f"{n}({p})" for n, p in counts.items()))
                for warning in self.idle_members(counts):
                    note(f"warning: {warning}")
            except StackError as exc:
                if "schemas.topics is not available" not in str(exc):
                    raise
                note(f"topics: skipped, {exc}")
        if with_services:
            self.start_services(note)
        return self.status()

    def idle_members(self, partitions: Mapping[str, int]) -> list[str]:
        """See :meth:`deploy.stack.scale.ScalePlan.idle_members`."""
        return self.scale.idle_members(self.services, partitions, self.config.topic_prefix)

    def stop(self, component: str, timeout: float | None = None) -> bool:
        """Stop one component we started (Kafka gets longer: controlled shutdown flushes logs)."""
        wait = timeout if timeout is not None else (30.0 if component == "kafka" else 10.0)
        return self._managed(component).stop(timeout=wait)

    def down(self) -> list[str]:
        """Stop services first (they hold clients), then Kafka, then Redis. Returns what stopped."""
        stopped: list[str] = []
        names = [s.name for s in reversed(self.services)]
        known = {*names, "kafka", "redis"}
        # Instances beyond the first, and services of an earlier registry version.
        names += [n for n in recorded_names(self.config.run_dir) if n not in known]
        for name in [*names, "kafka", "redis"]:
            if self.stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        """Health of everything; a running server is probed on the port it was started with."""
        rows = [redis_row(self.redis, self.config), kafka_row(self.kafka, self.config)]
        for spec in self.services:
            rows += service_rows(spec, self.config, self.scale)
        return rows


@contextlib.contextmanager
def throwaway_stack(base: Path | None = None) -> Iterator[LocalStack]:
    """A stack in a temp dir on free ports; everything it started is stopped and deleted after."""
    stack = LocalStack(StackConfig.throwaway(base), services=[])
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.config.run_dir, ignore_errors=True)
