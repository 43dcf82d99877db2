"""Where and how a node's agent publishes its flows to Kafka: brokers, topics, codec, batching,
the spool's bound, TLS and SASL.

One shape, from three places: the lab records its broker in cluster.json
(ClusterInfo.extra["kafka"], written by dataplane/lab/kafka.py: bootstrap, partitions, topics),
and a user points an agent at their own brokers with a file (`flowscope agent --kafka-config
FILE`, TOML or JSON, or $FLOWSCOPE_KAFKA_CONFIG) holding the same keys plus any of the others:

    bootstrap = ["broker-1:9093", "broker-2:9093"]    # or one "host:port[,host:port]" string
    partitions = 6               # for topics the agent creates when they are missing
    replication = 3
    create_topics = true
    compression = "lz4"          # zstd (default) | lz4 | none
    batch_flows = 2000           # stream records packed into one Kafka record
    batch_bytes = 524288         # ... and at most this many bytes of them
    linger_ms = 50               # how long a batch waits to fill
    request_timeout_ms = 30000
    spool_max_bytes = 268435456  # the on-disk spool's bound (oldest dropped beyond it)
    status_interval_s = 10       # node-status records on the nodes topic
    [topics]
    flows = "flowscope.flows"
    lost = "flowscope.lost"
    nodes = "flowscope.nodes"
    [tls]                        # TLS to the brokers (with cert and key: mTLS)
    ca = "/etc/flowscope/kafka-ca.pem"
    cert = "/etc/flowscope/agent.pem"
    key = "/etc/flowscope/agent-key.pem"
    [sasl]
    mechanism = "SCRAM-SHA-512"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    username = "flowscope"
    password_file = "/etc/flowscope/kafka-password"   # or password = "..."

Every value is checked when the config is read; an error names the offending key
("kafka.tls.ca: ...") and says what to do (KafkaConfigError, a FlowscopeError).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowscope.errors import FlowscopeError

CONFIG_ENV = "FLOWSCOPE_KAFKA_CONFIG"
EXTRA_KEY = "kafka"  # ClusterInfo.extra["kafka"] (dataplane.lab.kafka.EXTRA_KEY)
FLOWS_TOPIC = "flowscope.flows"
LOST_TOPIC = "flowscope.lost"
NODES_TOPIC = "flowscope.nodes"
COMPRESSIONS = ("lz4", "zstd", "none")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# a Kafka topic name: 1-249 of these characters (Kafka's own rule)
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
_KEYS = {
    "bootstrap",
    "partitions",
    "replication",
    "create_topics",
    "compression",
    "batch_flows",
    "batch_bytes",
    "linger_ms",
    "request_timeout_ms",
    "spool_max_bytes",
    "status_interval_s",
    "topics",
    "tls",
    "sasl",
}
# the producer refuses a record over its max_request_size (1 MiB by default): a batch stays
# well under it, encoded
MAX_BATCH_BYTES = 900 * 1024


class KafkaConfigError(FlowscopeError):
    """A config value that cannot be used; `field` is its key path (kafka.tls.ca)."""

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint=hint or "fix the Kafka config and retry")
        self.field = field


@dataclass(frozen=True)
class Topics:
    flows: str = FLOWS_TOPIC
    lost: str = LOST_TOPIC
    nodes: str = NODES_TOPIC

    def all(self) -> tuple[str, str, str]:
        return (self.flows, self.lost, self.nodes)


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the brokers: `ca` verifies them (None: the system's CAs); `cert` and `key` are
    the agent's own certificate for mTLS (both or neither)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def ssl_context(self):
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=str(self.ca) if self.ca else None,
            certfile=str(self.cert) if self.cert else None,
            keyfile=str(self.key) if self.key else None,
        )


@dataclass(frozen=True)
class SASLConfig:
    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: tuple[str, ...]
    topics: Topics = Topics()
    partitions: int = 3
    replication: int = 1
    create_topics: bool = True
    # zstd: aiokafka compresses lz4 at level 9 (HC), ~30x slower here for a larger result
    compression: str = "zstd"
    batch_flows: int = 2000
    batch_bytes: int = 512 * 1024
    linger_ms: int = 50
    request_timeout_ms: int = 30000
    spool_max_bytes: int = 256 * 1024 * 1024
    status_interval_s: float = 10.0
    tls: TLSConfig | None = None
    sasl: SASLConfig | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(self.bootstrap)

    @property
    def security_protocol(self) -> str:
        if self.sasl is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"

    def client_kwargs(self) -> dict[str, Any]:
        """What every aiokafka client (producer, consumer, admin) of these brokers takes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.tls is not None:
            kwargs["ssl_context"] = self.tls.ssl_context()
        if self.sasl is not None:
            kwargs["sasl_mechanism"] = self.sasl.mechanism
            kwargs["sasl_plain_username"] = self.sasl.username
            kwargs["sasl_plain_password"] = self.sasl.password
        return kwargs

    def producer_kwargs(self) -> dict[str, Any]:
        return {
            **self.client_kwargs(),
            "compression_type": None if self.compression == "none" else self.compression,
            # linger_ms is the publisher's own packing wait: its records are batches already,
            # so the producer sends them at once (its linger would add to every batch's wait)
            "linger_ms": 0,
            # several packed batches share one produce request
            "max_batch_size": 4 * self.batch_bytes,
            "max_request_size": max(1024 * 1024, 2 * self.batch_bytes),
            # the agent's producer writes every record once per attempt; the consumer drops
            # duplicates by seq. Idempotence would be better, but Tansu does not support it.
            "enable_idempotence": False,
            "acks": "all",
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "kafka") -> KafkaConfig:
        if not isinstance(raw, dict):
            raise KafkaConfigError(where, f"expected a table of settings, not {_kind(raw)}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise KafkaConfigError(
                f"{where}.{unknown[0]}",
                "unknown setting",
                hint=f"known settings: {', '.join(sorted(_KEYS))}",
            )
        if "bootstrap" not in raw:
            raise KafkaConfigError(
                f"{where}.bootstrap", "missing", hint='give the brokers as "host:port[,...]"'
            )
        defaults = cls(bootstrap=())
        compression = raw.get("compression", defaults.compression)
        if compression not in COMPRESSIONS:
            raise KafkaConfigError(
                f"{where}.compression",
                f"{compression!r} is not one of {', '.join(COMPRESSIONS)}",
            )
        batch_bytes = _int(raw, "batch_bytes", where, defaults.batch_bytes, 1024, MAX_BATCH_BYTES)
        config = cls(
            bootstrap=parse_bootstrap(raw["bootstrap"], f"{where}.bootstrap"),
            topics=_topics(raw.get("topics", {}), f"{where}.topics"),
            partitions=_int(raw, "partitions", where, defaults.partitions, 1, 10000),
            replication=_int(raw, "replication", where, defaults.replication, 1, 1000),
            create_topics=_bool(raw, "create_topics", where, defaults.create_topics),
            compression=compression,
            batch_flows=_int(raw, "batch_flows", where, defaults.batch_flows, 1, 100_000),
            batch_bytes=batch_bytes,
            linger_ms=_int(raw, "linger_ms", where, defaults.linger_ms, 0, 60_000),
            request_timeout_ms=_int(
                raw, "request_timeout_ms", where, defaults.request_timeout_ms, 1000, 600_000
            ),
            spool_max_bytes=_int(
                raw, "spool_max_bytes", where, defaults.spool_max_bytes, 64 * 1024, 1 << 44
            ),
            status_interval_s=_number(
                raw, "status_interval_s", where, defaults.status_interval_s, 0.1, 3600
            ),
            tls=_tls(raw["tls"], f"{where}.tls") if raw.get("tls") is not None else None,
            sasl=_sasl(raw["sasl"], f"{where}.sasl") if raw.get("sasl") is not None else None,
        )
        if config.spool_max_bytes < 4 * batch_bytes:
            raise KafkaConfigError(
                f"{where}.spool_max_bytes",
                f"{config.spool_max_bytes} holds fewer than 4 batches of {batch_bytes} bytes",
                hint="raise spool_max_bytes or lower batch_bytes",
            )
        return config


def load(path: Path | str) -> KafkaConfig:
    """A config file: TOML (.toml) or JSON (anything else); its keys at the top level or in a
    [kafka] table."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise KafkaConfigError(
            str(path), f"cannot read the Kafka config: {e.strerror}", hint="check the path"
        ) from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise KafkaConfigError(str(path), f"not valid {_format(path)}: {e}") from None
    if isinstance(raw, dict) and set(raw) == {"kafka"}:
        raw = raw["kafka"]
    return KafkaConfig.from_dict(raw)


def for_agent(extra: dict, config_path: Path | str | None = None) -> KafkaConfig | None:
    """The agent's Kafka config: the file it was given (or $FLOWSCOPE_KAFKA_CONFIG), else the
    lab's broker recorded in cluster.json, else None (no Kafka: the agent publishes nothing)."""
    path = config_path or os.environ.get(CONFIG_ENV)
    if path:
        return load(path)
    raw = extra.get(EXTRA_KEY)
    if raw:
        return KafkaConfig.from_dict(raw, "cluster.json extra.kafka")
    return None


# --- checks ------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return type(value).__name__


def _format(path: Path) -> str:
    return "TOML" if path.suffix == ".toml" else "JSON"


def parse_bootstrap(value: Any, where: str = "bootstrap") -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        raise KafkaConfigError(where, f"expected a string or a list, not {_kind(value)}")
    if not items or items == [""]:
        raise KafkaConfigError(where, "no broker given", hint='give "host:port[,host:port]"')
    out = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]" if isinstance(value, list) else where
        m = _HOST_PORT.match(item) if isinstance(item, str) else None
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise KafkaConfigError(here, f"{item!r} is not host:port", hint="e.g. 127.0.0.1:9092")
        out.append(item)
    return tuple(out)


def _topics(value: Any, where: str) -> Topics:
    if not isinstance(value, dict):
        raise KafkaConfigError(where, f"expected a table (flows, lost, nodes), not {_kind(value)}")
    unknown = sorted(set(value) - {"flows", "lost", "nodes"})
    if unknown:
        raise KafkaConfigError(f"{where}.{unknown[0]}", "unknown topic; use flows, lost, nodes")
    names = {}
    for key, default in (("flows", FLOWS_TOPIC), ("lost", LOST_TOPIC), ("nodes", NODES_TOPIC)):
        name = value.get(key, default)
        if not isinstance(name, str) or not _TOPIC.match(name) or name in (".", ".."):
            raise KafkaConfigError(
                f"{where}.{key}",
                f"{name!r} is not a Kafka topic name",
                hint="1-249 letters, digits, '.', '_' or '-'",
            )
        names[key] = name
    if len(set(names.values())) != 3:
        raise KafkaConfigError(where, "the flows, lost and nodes topics must differ")
    return Topics(**names)


def _int(raw: dict, key: str, where: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise KafkaConfigError(f"{where}.{key}", f"{value!r} is not a whole number {low}..{high}")
    return value


def _number(raw: dict, key: str, where: str, default: float, low: float, high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise KafkaConfigError(f"{where}.{key}", f"{value!r} is not a number {low}..{high}")
    return float(value)


def _bool(raw: dict, key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise KafkaConfigError(f"{where}.{key}", f"{value!r} is not true or false")
    return value


def _readable(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise KafkaConfigError(where, f"expected a file path, not {value!r}")
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise KafkaConfigError(where, f"{value} is not a readable file", hint="check the path")
    return path


def _tls(value: Any, where: str) -> TLSConfig:
    if value is True:
        return TLSConfig()
    if not isinstance(value, dict):
        raise KafkaConfigError(where, f"expected a table (ca, cert, key) or true, not {value!r}")
    unknown = sorted(set(value) - {"ca", "cert", "key"})
    if unknown:
        raise KafkaConfigError(f"{where}.{unknown[0]}", "unknown setting; use ca, cert, key")
    if ("cert" in value) != ("key" in value):
        missing = "key" if "cert" in value else "cert"
        raise KafkaConfigError(
            f"{where}.{missing}", "missing", hint="mTLS needs both the certificate and its key"
        )
    paths = {k: _readable(v, f"{where}.{k}") for k, v in value.items()}
    tls = TLSConfig(**paths)
    try:
        tls.ssl_context()
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        bad = "ca" if "ca" in paths and "cert" not in paths else "cert"
        raise KafkaConfigError(
            f"{where}.{bad}", f"not usable PEM ({e})", hint="give PEM files (ca, cert, key)"
        ) from None
    return tls


def _sasl(value: Any, where: str) -> SASLConfig:
    if not isinstance(value, dict):
        raise KafkaConfigError(
            where, f"expected a table (mechanism, username, password), not {value!r}"
        )
    unknown = sorted(set(value) - {"mechanism", "username", "password", "password_file"})
    if unknown:
        raise KafkaConfigError(
            f"{where}.{unknown[0]}",
            "unknown setting; use mechanism, username, password or password_file",
        )
    mechanism = value.get("mechanism", "PLAIN")
    if mechanism not in SASL_MECHANISMS:
        raise KafkaConfigError(
            f"{where}.mechanism", f"{mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
        )
    username = value.get("username")
    if not isinstance(username, str) or not username:
        raise KafkaConfigError(f"{where}.username", "missing or empty")
    if ("password" in value) == ("password_file" in value):
        raise KafkaConfigError(
            f"{where}.password", "give exactly one of password and password_file"
        )
    if "password_file" in value:
        password = _readable(value["password_file"], f"{where}.password_file").read_text()
        password = password.rstrip("\n")
    else:
        password = value["password"]
    if not isinstance(password, str) or not password:
        raise KafkaConfigError(f"{where}.password", "empty")
    return SASLConfig(mechanism, username, password)
