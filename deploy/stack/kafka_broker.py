"""The local Kafka broker: one KRaft node (broker and controller) on 127.0.0.1, run from
the jars of :mod:`deploy.stack.jars` with the JDK on the PATH.

Its storage is formatted once per data dir, with a cluster id kept next to the data, so a
restart reuses the log and every record written before. It counts as started once it
serves a metadata request; the "Kafka Server started" log line is only the fast path.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.stack.config import KafkaExtras, StackConfig
from deploy.stack.errors import StackError
from deploy.stack.jars import ensure_kafka_jars, require_java
from deploy.stack.ports import PORT_ENV, require_port_free, wait_port_open
from deploy.stack.process import ManagedProcess, log_tail

if TYPE_CHECKING:
    from stream_runtime.kafka_connection import KafkaTarget

KAFKA_READY_LINE = "Kafka Server started"


def local_bootstrap(port: int) -> str:
    """The bootstrap servers of a local broker's PLAINTEXT listener."""
    return f"127.0.0.1:{port}"


def new_cluster_id() -> str:
    """A Kafka-style cluster id: URL-safe base64 of a random UUID, never starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def kafka_server_properties(
    data_dir: Path, port: int, controller_port: int, extras: KafkaExtras | None = None
) -> str:
    """Single-node KRaft broker+controller on 127.0.0.1 (see GUIDE §3 for each essential)."""
    extras = extras or KafkaExtras()
    listeners = {"PLAINTEXT": port, **extras.listeners}
    bound = ",".join(f"{name}://127.0.0.1:{p}" for name, p in listeners.items())
    protocols = ",".join(f"{name}:{name}" for name in listeners)
    return "\n".join(
        [
            "# Written by deploy/stack/kafka_broker.py on every start; edit there, not here.",
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners={bound},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners={bound}",
            f"listener.security.protocol.map={protocols},CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"log.dirs={data_dir / 'logs'}",
            "num.partitions=4",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            *(f"{key}={value}" for key, value in extras.properties.items()),
            "",
        ]
    )


def kafka_metadata_ok(kafka: KafkaTarget, timeout: float = 3.0) -> bool:
    """True when the broker answers a metadata request (the real readiness signal)."""
    from confluent_kafka.admin import AdminClient

    from stream_runtime.kafka_connection import (
        KafkaConnectionError,
        new_client,
        wait_until_reachable,
    )

    try:
        admin, errors = new_client(AdminClient, kafka)
        wait_until_reachable(admin, errors, timeout)
    except KafkaConnectionError:
        return False
    return True


def start_kafka(broker: ManagedProcess, config: StackConfig, timeout: float = 90.0) -> int:
    """Start the broker (formatting storage on first use) and wait until it serves metadata.

    Returns at once when ``broker`` already runs. The cluster id is persisted next to the
    data, so a restart on the same data dir reuses the formatted log and every record
    written before.
    """
    pid = broker.pid()
    if pid is not None:
        return pid
    ports = config.ports
    require_port_free(ports.kafka, PORT_ENV["kafka"])
    require_port_free(ports.controller, PORT_ENV["controller"])
    extras = config.kafka_extras
    for name, port in extras.listeners.items():
        require_port_free(port, f"the {name} listener's port")
    java = require_java()
    libs = ensure_kafka_jars()
    data = config.kafka_dir
    data.mkdir(parents=True, exist_ok=True)
    props = data / "server.properties"
    props.write_text(kafka_server_properties(data, ports.kafka, ports.controller, extras))
    classpath = f"{libs}/*"
    if not (data / "logs" / "meta.properties").exists():
        id_file = data / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        fmt = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                id_file.read_text().strip(),
                "-c",
                str(props),
                "--standalone",
                *extras.format_args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            tail = "\n".join((fmt.stdout + fmt.stderr).splitlines()[-20:])
            raise StackError(f"kafka StorageTool format failed:\n{tail}")
    argv = [
        java,
        f"-Xmx{config.kafka_heap}",
        "-Djava.awt.headless=true",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
        # Throwaway brokers live for seconds: the C1 JIT alone starts them faster.
        *([] if config.persistent else ["-XX:TieredStopAtLevel=1"]),
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]
    pid, offset = broker.spawn(argv, port=ports.kafka)
    _wait_kafka(broker, ports.kafka, pid, offset, timeout)
    return pid


def _wait_kafka(broker: ManagedProcess, port: int, pid: int, offset: int, timeout: float) -> None:
    def started() -> bool:
        logged = False
        with contextlib.suppress(FileNotFoundError), broker.log_file.open("rb") as fh:
            fh.seek(offset)
            logged = KAFKA_READY_LINE.encode() in fh.read()
        # The log line is the fast path; a metadata answer alone also counts, so a broker
        # whose logging is misconfigured still comes up.
        return (logged or wait_port_open(port, 0.2)) and kafka_metadata_ok(
            local_bootstrap(port), timeout=5.0
        )

    if broker.wait_ready(pid, offset, started, timeout, what="Kafka", interval=0.25):
        return
    broker.stop(timeout=10)
    raise StackError(
        f"Kafka not ready after {timeout:.0f}s; log {broker.log_file}:\n"
        + log_tail(broker.log_file, start=offset)
    )
