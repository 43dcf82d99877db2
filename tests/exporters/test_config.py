"""The export config file: sections, the source, filters, plugins, and an error naming the field
for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.config import ExportConfig, load_config, parse_config
from exporters.exporter import ConfigError, ExporterKind
from flowscope.flow.model import IP, TCP, Endpoint, Flow, LostEvent, LostEventSource, Verdict
from tests.exporters import collectkind

KAFKA = {"kafka": {"bootstrap": "127.0.0.1:9092"}}
KINDS = {"collect": collectkind.KIND}


def parse(raw: dict) -> ExportConfig:
    return parse_config(raw, kinds=KINDS)


def error_of(raw: object, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, **({"kinds": KINDS} | kwargs))
    return info.value


def test_a_minimal_file_uses_the_kinds_default_group() -> None:
    config = parse({"source": KAFKA, "collect": {"label": "a"}})
    (section,) = config.sections
    assert section.name == "collect"
    assert section.group == "flowscope-export-collect"
    assert section.config == collectkind.CollectConfig(label="a")
    assert config.source.kafka.bootstrap == ("127.0.0.1:9092",)
    assert config.source.start == "earliest"
    assert config.source.selection() is None


def test_group_enabled_and_the_kinds_own_keys_are_separated() -> None:
    config = parse({"source": KAFKA, "collect": {"group": "g1", "enabled": True, "path": "/tmp/x"}})
    assert config.sections[0].group == "g1"
    assert config.sections[0].config.path == "/tmp/x"
    off = parse({"source": KAFKA, "collect": {"enabled": False, "bogus": 1}})
    assert off.sections == () and off.disabled == ("collect",)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"source": KAFKA, "collect": {"nope": 1}}, "collect.nope", "unknown field"),
        ({"source": KAFKA, "collect": {"enabled": "yes"}}, "collect.enabled", "true or false"),
        ({"source": KAFKA, "collect": {"group": ""}}, "collect.group", "consumer group"),
        ({"source": KAFKA, "collect": [1]}, "collect", "mapping"),
        ({"source": KAFKA, "colect": {}}, "colect", "unknown section"),
        ({"collect": {}}, "source", "missing"),
        ({"source": {}, "collect": {}}, "source", "exactly one of kafka and relay"),
        ({"source": {**KAFKA, "relay": "a:1"}, "collect": {}}, "source", "exactly one"),
        ({"source": {**KAFKA, "strat": "x"}, "collect": {}}, "source.strat", "unknown field"),
        ({"source": {**KAFKA, "start": "now"}, "collect": {}}, "source.start", "earliest"),
        ({"source": {**KAFKA, "max_records": 0}}, "source.max_records", ">= 1"),
        ({"source": {"kafka": {}}}, "source.kafka.bootstrap", "missing"),
        ({"source": {"kafka": {"bootstrap": "nohost"}}}, "source.kafka.bootstrap", "host:port"),
        ({"source": {"relay": {"adress": "a:1"}}}, "source.relay.adress", "unknown field"),
        ({"source": {"relay": {}}}, "source.relay.address", "missing"),
        ({"source": {"relay": {"address": "a:1", "tls": "y"}}}, "source.relay.tls", "true"),
        (
            {"source": {"relay": {"address": "a:1", "ca_cert_files": ["/no/such"]}}},
            "source.relay.ca_cert_files[0]",
            "not a file",
        ),
        ({"source": KAFKA, "plugins": {"x": "not a module"}}, "plugins.x", "module name"),
        ({"source": KAFKA, "plugins": {"x": "no_such_mod_fs"}, "x": {}}, "x", "not installed"),
        ({"source": KAFKA, "plugins": {"x": "json"}, "x": {}}, "x", "no KIND"),
    ],
)
def test_bad_input_names_its_field(raw: dict, field: str, words: str) -> None:
    err = error_of(raw)
    assert err.field == field
    assert words in str(err)


def test_a_builtin_kind_not_installed_names_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.config as config_module

    monkeypatch.setitem(config_module.BUILTIN_KINDS, "audit", "exporters.no_such_kind_here")
    err = error_of({"source": KAFKA, "audit": {}})
    assert err.field == "audit" and "not installed" in str(err)
    assert "enabled: false" in (err.hint or "")
    # disabled, the missing kind is not even imported
    assert parse_config({"source": KAFKA, "audit": {"enabled": False}}).disabled == ("audit",)


def test_a_kinds_own_error_type_is_carried_with_the_section_named() -> None:
    from flowscope.errors import FlowscopeError

    def bad_parse(raw: object, where: str) -> object:
        raise FlowscopeError("port 99999 is out of range", hint="use 1..65535")

    kind = ExporterKind("odd", bad_parse, lambda c: None)  # type: ignore[arg-type,return-value]
    err = error_of({"source": KAFKA, "odd": {}}, kinds={"odd": kind})
    assert err.field == "odd" and "99999" in str(err) and err.hint == "use 1..65535"


def flow(ns: str, verdict: Verdict = Verdict.FORWARDED) -> Flow:
    return Flow(
        1,
        verdict,
        ip=IP("10.0.0.1", "10.0.0.2"),
        l4=TCP(40000, 80),
        source=Endpoint(identity=300, namespace=ns, pod_name="web-1"),
        destination=Endpoint(identity=301, namespace="db", pod_name="pg-0"),
    )


def test_filters_in_observe_flags_and_flowfilter_tables() -> None:
    config = parse(
        {
            "source": {
                **KAFKA,
                "filters": {
                    "allow": ["--from-namespace shop", {"source_pod": ["tools/"]}],
                    "deny": ["--verdict DROPPED"],
                },
            }
        }
    )
    selection = config.source.selection()
    assert selection.matches(flow("shop"))
    assert selection.matches(flow("tools"))
    assert not selection.matches(flow("other"))
    assert not selection.matches(flow("shop", Verdict.DROPPED))
    # lost events always pass: a reader must learn that it missed something
    assert selection.matches(LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 3, time_ns=1))


def test_an_allow_strings_not_goes_to_the_deny_list() -> None:
    config = parse({"source": {**KAFKA, "filters": {"allow": "--not --namespace kube-system"}}})
    white, black = config.source.filters()
    assert white == [] and len(black) == 2  # from or to: two filters, as hubble builds them
    assert not config.source.selection().matches(flow("kube-system"))
    assert config.source.selection().matches(flow("shop"))


@pytest.mark.parametrize(
    ("filters", "field", "words"),
    [
        ({"alow": []}, "source.filters.alow", "unknown field"),
        ({"allow": ["--verdict MAYBE"]}, "source.filters.allow[0]", "MAYBE"),
        ({"allow": ["--frm-pod x"]}, "source.filters.allow[0]", "unrecognized"),
        ({"allow": ["--from-pod 'x"]}, "source.filters.allow[0]", "quotation"),
        ({"deny": ["--not --pod x"]}, "source.filters.deny[0]", "move it to allow"),
        ({"deny": [{"source_pood": ["x"]}]}, "source.filters.deny[0]", "source_pood"),
        ({"allow": [3]}, "source.filters.allow[0]", "flags or a table"),
        ({"allow": [{"source_ip": ["300.1.1.1"]}]}, "source.filters", "source_ip"),
    ],
)
def test_bad_filters_name_the_entry(filters: dict, field: str, words: str) -> None:
    err = error_of({"source": {**KAFKA, "filters": filters}})
    assert err.field == field
    assert words in str(err)


def test_load_config_reads_yaml_and_names_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    good = tmp_path / "export.yaml"
    good.write_text("source:\n  relay: 127.0.0.1:4245\ncollect:\n  label: x\n")
    config = load_config(good, kinds=KINDS)
    assert config.source.relay.address == "127.0.0.1:4245" and config.source.relay.tls is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  kafka: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, kinds=KINDS)
    assert info.value.field.startswith(f"{bad}:") and "YAML" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "none.yaml")
    assert "cannot read" in str(info.value)


def test_the_default_source_stands_in_for_a_missing_one() -> None:
    config = parse_config({"collect": {}}, kinds=KINDS, default_source=KAFKA)
    assert config.source.kafka.bootstrap == ("127.0.0.1:9092",)


def test_the_example_file_is_valid() -> None:
    """examples/export/export.yaml, the reference's full example, parses with every kind."""
    path = Path(__file__).parents[2] / "examples" / "export" / "export.yaml"
    config = load_config(path)
    assert config.source.kafka is not None


@pytest.mark.parametrize(
    ("section", "raw", "message"),
    [
        ("audit", {"path": "/tmp/a.jsonl", "rotate": {"max_mbb": 5}}, "audit.rotate.max_mbb: "),
        ("prometheus", {"listen": "nope"}, "prometheus.listen: "),
        ("otel", {"protocol": "thrift"}, "otel.protocol: "),
    ],
)
def test_the_builtin_kinds_errors_name_their_field_through_the_file(
    section: str, raw: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"source": KAFKA, section: {"group": "g", **raw}})
    assert str(info.value).startswith(message)
