"""The publisher's Kafka config: the lab's cluster.json shape, files (TOML, JSON), every check
naming its key, TLS and SASL turned into aiokafka's settings."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import pytest

from collector import kafkaconfig
from collector.kafkaconfig import KafkaConfig, KafkaConfigError, Topics
from dataplane.lab.kafka import KafkaInfo
from flowscope.errors import FlowscopeError


def test_the_labs_record_is_a_config() -> None:
    extra = {"kafka": KafkaInfo("127.0.0.1:39092", partitions=5).to_extra()}
    config = kafkaconfig.for_agent(extra)
    assert config is not None
    assert config.bootstrap == ("127.0.0.1:39092",)
    assert config.partitions == 5
    assert config.topics == Topics("flowscope.flows", "flowscope.lost", "flowscope.nodes")
    assert config.security_protocol == "PLAINTEXT"
    kwargs = config.producer_kwargs()
    assert kwargs["compression_type"] == "zstd"
    assert kwargs["enable_idempotence"] is False  # Tansu has no idempotent producer
    assert kwargs["bootstrap_servers"] == "127.0.0.1:39092"


def test_no_kafka_anywhere_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kafkaconfig.CONFIG_ENV, raising=False)
    assert kafkaconfig.for_agent({}) is None


def test_a_file_wins_over_the_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kafka.toml"
    path.write_text(
        '[kafka]\nbootstrap = ["b1:9093", "b2:9093"]\ncompression = "lz4"\n'
        'batch_flows = 500\n[kafka.topics]\nflows = "team.flows"\n'
    )
    extra = {"kafka": {"bootstrap": "127.0.0.1:1"}}
    config = kafkaconfig.for_agent(extra, path)
    assert config is not None and config.bootstrap == ("b1:9093", "b2:9093")
    assert config.bootstrap_servers == "b1:9093,b2:9093"
    assert config.compression == "lz4" and config.batch_flows == 500
    assert config.topics.flows == "team.flows" and config.topics.lost == "flowscope.lost"
    monkeypatch.setenv(kafkaconfig.CONFIG_ENV, str(path))
    assert kafkaconfig.for_agent(extra) == config
    json_path = tmp_path / "kafka.json"
    json_path.write_text(json.dumps({"bootstrap": "b3:1", "compression": "none"}))
    config = kafkaconfig.load(json_path)
    assert config.producer_kwargs()["compression_type"] is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "kafka.bootstrap"),
        ({"bootstrap": ""}, "kafka.bootstrap"),
        ({"bootstrap": "nohostport"}, "kafka.bootstrap"),
        ({"bootstrap": ["a:1", "b:99999"]}, "kafka.bootstrap[1]"),
        ({"bootstrap": 5}, "kafka.bootstrap"),
        ({"bootstrap": "a:1", "compresion": "lz4"}, "kafka.compresion"),
        ({"bootstrap": "a:1", "compression": "gzip"}, "kafka.compression"),
        ({"bootstrap": "a:1", "partitions": 0}, "kafka.partitions"),
        ({"bootstrap": "a:1", "partitions": True}, "kafka.partitions"),
        ({"bootstrap": "a:1", "batch_flows": "many"}, "kafka.batch_flows"),
        ({"bootstrap": "a:1", "batch_bytes": 10 << 20}, "kafka.batch_bytes"),
        ({"bootstrap": "a:1", "linger_ms": -1}, "kafka.linger_ms"),
        ({"bootstrap": "a:1", "create_topics": "yes"}, "kafka.create_topics"),
        ({"bootstrap": "a:1", "spool_max_bytes": 100}, "kafka.spool_max_bytes"),
        ({"bootstrap": "a:1", "spool_max_bytes": 1 << 20}, "kafka.spool_max_bytes"),
        ({"bootstrap": "a:1", "status_interval_s": 0}, "kafka.status_interval_s"),
        ({"bootstrap": "a:1", "topics": {"flows": "bad topic"}}, "kafka.topics.flows"),
        ({"bootstrap": "a:1", "topics": {"alerts": "x"}}, "kafka.topics.alerts"),
        ({"bootstrap": "a:1", "topics": {"lost": "flowscope.flows"}}, "kafka.topics"),
        ({"bootstrap": "a:1", "tls": "on"}, "kafka.tls"),
        ({"bootstrap": "a:1", "tls": {"ca": "/nonexistent/ca.pem"}}, "kafka.tls.ca"),
        ({"bootstrap": "a:1", "tls": {"cert": "/etc/hostname"}}, "kafka.tls.key"),
        ({"bootstrap": "a:1", "tls": {"crt": "x"}}, "kafka.tls.crt"),
        (
            {"bootstrap": "a:1", "sasl": {"mechanism": "GSSAPI", "username": "u"}},
            "kafka.sasl.mechanism",
        ),
        ({"bootstrap": "a:1", "sasl": {"password": "p"}}, "kafka.sasl.username"),
        ({"bootstrap": "a:1", "sasl": {"username": "u"}}, "kafka.sasl.password"),
        ({"bootstrap": "a:1", "sasl": {"username": "u", "password": ""}}, "kafka.sasl.password"),
        (
            {"bootstrap": "a:1", "sasl": {"username": "u", "password_file": "/nonexistent"}},
            "kafka.sasl.password_file",
        ),
        ([], "kafka"),
    ],
)
def test_bad_values_name_their_key(raw, field: str) -> None:
    with pytest.raises(KafkaConfigError) as err:
        KafkaConfig.from_dict(raw)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert isinstance(err.value, FlowscopeError) and err.value.hint


def test_unreadable_and_unparsable_files_say_which(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="cannot read"):
        kafkaconfig.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("bootstrap = [")
    with pytest.raises(KafkaConfigError, match="not valid TOML"):
        kafkaconfig.load(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(KafkaConfigError, match="not valid JSON"):
        kafkaconfig.load(bad_json)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "agent.pem", tmp_path / "agent-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=flowscope-test", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_and_sasl_become_the_clients_settings(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    config = KafkaConfig.from_dict(
        {
            "bootstrap": "kafka.example:9093",
            "tls": {"ca": str(cert), "cert": str(cert), "key": str(key)},
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": "flowscope",
                "password_file": str(password),
            },
        }
    )
    assert config.security_protocol == "SASL_SSL"
    kwargs = config.client_kwargs()
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "flowscope"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(config)  # the password never reaches a log line
    plain = KafkaConfig.from_dict(
        {"bootstrap": "k:1", "sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}
    )
    assert plain.security_protocol == "SASL_PLAINTEXT"
    assert KafkaConfig.from_dict({"bootstrap": "k:1", "tls": True}).security_protocol == "SSL"


def test_a_file_that_is_not_pem_is_refused_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(KafkaConfigError) as err:
        KafkaConfig.from_dict({"bootstrap": "k:1", "tls": {"ca": str(junk)}})
    assert err.value.field == "kafka.tls.ca"
