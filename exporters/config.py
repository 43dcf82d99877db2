"""The export config: one YAML file for every exporter `flowscope export --config FILE` runs.

    source:                      # where the flows come from: kafka or relay (one of them)
      kafka:                     # a collector.kafkaconfig.KafkaConfig table (bootstrap, topics,
        bootstrap: 127.0.0.1:9092    # tls, sasl, ...)
      start: earliest            # where a new consumer group starts: earliest | latest
      max_records: 2000          # records handed to an exporter at most in one batch
      filters:                   # optional: observe's filter language
        allow: ["--namespace default"]             # flag strings, or FlowFilter tables
        deny: [{verdict: [DROPPED]}]
    prometheus:                  # one section per exporter kind
      enabled: true              # default true
      group: flowscope-export-prometheus   # the Kafka consumer group (default: the kind's)
      ...                        # the kind's own settings (its KIND.parse reads them)
    plugins:                     # more exporter kinds: section name -> module with a KIND
      mykind: mypackage.mykind

`source.relay` instead of `source.kafka`: `address` (host:port or unix:PATH) and the TLS options of
`observe` (`tls`, `ca_cert_files`, `client_cert_file`, `client_key_file`, `server_name`).

Every error names its field ("audit.rotate.max_mbb: unknown field") as a ConfigError. The kinds
are modules imported only when their section is there, so a kind that is missing or broken
stops only a config that uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.exporter import ConfigError, ExporterKind
from flowscope.errors import FlowscopeError

# section name -> the module whose KIND reads it
BUILTIN_KINDS: Mapping[str, str] = {
    "prometheus": "exporters.prometheus",
    "otel": "exporters.otel",
    "audit": "exporters.audit",
}
TOP_KEYS = ("source", "plugins")
SECTION_KEYS = ("enabled", "group")  # the runner's keys in every section; the rest is the kind's
SOURCE_KEYS = ("kafka", "relay", "start", "max_records", "filters")
RELAY_KEYS = ("address", "tls", "ca_cert_files", "client_cert_file", "client_key_file",
              "server_name")  # fmt: skip
STARTS = ("earliest", "latest")
DEFAULT_MAX_RECORDS = 2000


@dataclass(frozen=True)
class RelaySource:
    address: str
    tls: Any = None  # collector.tlsconfig.ClientTLS, or None for plain text


@dataclass(frozen=True)
class SourceConfig:
    kafka: Any = None  # collector.kafkaconfig.KafkaConfig
    relay: RelaySource | None = None
    start: str = "earliest"
    max_records: int = DEFAULT_MAX_RECORDS
    whitelist: tuple[bytes, ...] = ()  # FlowFilter messages, serialized (frozen, comparable)
    blacklist: tuple[bytes, ...] = ()

    def filters(self) -> tuple[list[Any], list[Any]]:
        from flowscope.proto import flow_pb2

        return (
            [flow_pb2.FlowFilter.FromString(b) for b in self.whitelist],
            [flow_pb2.FlowFilter.FromString(b) for b in self.blacklist],
        )

    def selection(self) -> Any:
        """A protofilter.FlowSelection, or None when there are no filters."""
        from flowscope.flow.protofilter import compile_selection

        if not self.whitelist and not self.blacklist:
            return None
        return compile_selection(*self.filters())


@dataclass(frozen=True)
class SectionConfig:
    name: str
    kind: ExporterKind
    group: str
    config: Any  # what kind.parse made of the section


@dataclass(frozen=True)
class ExportConfig:
    source: SourceConfig
    sections: tuple[SectionConfig, ...] = ()  # the enabled ones
    disabled: tuple[str, ...] = ()
    plugins: Mapping[str, str] = field(default_factory=dict)

    def section(self, name: str) -> SectionConfig | None:
        return next((s for s in self.sections if s.name == name), None)


def _kind_name(value: Any) -> str:
    return type(value).__name__


def load_kind(section: str, module_name: str) -> ExporterKind:
    """The KIND of an exporter module; ConfigError naming the section when it cannot be had."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ConfigError(
                section,
                f"exporter kind {module_name!r} is not installed",
                hint=f"remove the {section!r} section or set `enabled: false`",
            ) from None
        raise
    kind = getattr(module, "KIND", None)
    if not isinstance(kind, ExporterKind):
        raise ConfigError(section, f"module {module_name!r} has no KIND (an ExporterKind)")
    return kind


def parse_config(
    raw: Any, *, kinds: Mapping[str, ExporterKind] | None = None, default_source: Any = None
) -> ExportConfig:
    """The whole file, checked. `kinds`: kinds to use before the registry (tests);
    `default_source`: a raw source table used when the file has none (the lab's broker)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a mapping of sections, not {_kind_name(raw)}")
    plugins = _plugins(raw.get("plugins", {}))
    registry = {**BUILTIN_KINDS, **plugins}
    given = dict(kinds or {})
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(str(key), "section names are strings")
        if key not in TOP_KEYS and key not in registry and key not in given:
            known = sorted({*TOP_KEYS, *registry, *given})
            raise ConfigError(key, "unknown section", hint=f"known sections: {', '.join(known)}")
    source_raw = raw.get("source", default_source)
    if source_raw is None:
        raise ConfigError(
            "source", "missing", hint="give source.kafka (bootstrap: host:port) or source.relay"
        )
    source = parse_source(source_raw)
    sections, disabled = [], []
    for name in raw:
        if name in TOP_KEYS:
            continue
        section = raw[name] if raw[name] is not None else {}
        if not isinstance(section, dict):
            raise ConfigError(name, f"expected a mapping of settings, not {_kind_name(section)}")
        enabled = section.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{name}.enabled", f"{enabled!r} is not true or false")
        if not enabled:
            disabled.append(name)
            continue
        kind = given.get(name) or load_kind(name, registry[name])
        group = section.get("group", kind.group())
        if not isinstance(group, str) or not group.strip():
            raise ConfigError(f"{name}.group", f"{group!r} is not a consumer group name")
        own = {k: v for k, v in section.items() if k not in SECTION_KEYS}
        try:
            parsed = kind.parse(own, name)
        except ConfigError:
            raise
        except FlowscopeError as e:  # a kind that raised its own error type: keep its words
            raise ConfigError(name, e.args[0], hint=e.hint) from None
        sections.append(SectionConfig(name, kind, group, parsed))
    return ExportConfig(source, tuple(sections), tuple(disabled), plugins)


def load_config(path: Path | str, **kwargs: Any) -> ExportConfig:
    """parse_config of a YAML file; ConfigError naming the file when it cannot be read."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read the export config: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    return parse_config(raw, **kwargs)


def _plugins(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError("plugins", f"expected section: module pairs, not {_kind_name(raw)}")
    out = {}
    for name, module in raw.items():
        if not isinstance(name, str) or name in TOP_KEYS:
            raise ConfigError(f"plugins.{name}", "not a usable section name")
        if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
            raise ConfigError(f"plugins.{name}", f"{module!r} is not a Python module name")
        out[name] = module
    return out


def parse_source(raw: Any, where: str = "source") -> SourceConfig:
    from collector.kafkaconfig import KafkaConfig, KafkaConfigError

    if not isinstance(raw, dict):
        raise ConfigError(where, f"expected a mapping (kafka or relay), not {_kind_name(raw)}")
    unknown = sorted(set(raw) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", "unknown field", hint=f"known: {', '.join(SOURCE_KEYS)}"
        )
    if ("kafka" in raw) == ("relay" in raw):
        raise ConfigError(where, "give exactly one of kafka and relay")
    kafka = relay = None
    if "kafka" in raw:
        try:
            kafka = KafkaConfig.from_dict(raw["kafka"], f"{where}.kafka")
        except KafkaConfigError as e:
            raise ConfigError(e.field, e.args[0].removeprefix(f"{e.field}: "), e.hint) from None
    else:
        relay = _relay(raw["relay"], f"{where}.relay")
    start = raw.get("start", "earliest")
    if start not in STARTS:
        raise ConfigError(f"{where}.start", f"{start!r} is not one of {', '.join(STARTS)}")
    max_records = raw.get("max_records", DEFAULT_MAX_RECORDS)
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
        raise ConfigError(f"{where}.max_records", f"{max_records!r} is not a whole number >= 1")
    white, black = parse_filters(raw.get("filters", {}), f"{where}.filters")
    return SourceConfig(
        kafka=kafka,
        relay=relay,
        start=start,
        max_records=max_records,
        whitelist=tuple(f.SerializeToString() for f in white),
        blacklist=tuple(f.SerializeToString() for f in black),
    )


def _relay(raw: Any, where: str) -> RelaySource:
    from collector.tlsconfig import ClientTLS

    if isinstance(raw, str):
        raw = {"address": raw}
    if not isinstance(raw, dict):
        raise ConfigError(where, f"expected a mapping (address, tls, ...), not {_kind_name(raw)}")
    unknown = sorted(set(raw) - set(RELAY_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", "unknown field", hint=f"known: {', '.join(RELAY_KEYS)}"
        )
    address = raw.get("address")
    if not isinstance(address, str) or not address:
        raise ConfigError(f"{where}.address", "missing", hint="host:port or unix:/path")
    if not address.startswith("unix:") and ":" not in address:
        raise ConfigError(f"{where}.address", f"{address!r} is not host:port or unix:PATH")
    tls_flag = raw.get("tls", False)
    if not isinstance(tls_flag, bool):
        raise ConfigError(f"{where}.tls", f"{tls_flag!r} is not true or false")
    if not (tls_flag or any(k in raw for k in RELAY_KEYS[2:])):
        return RelaySource(address, None)
    cas = raw.get("ca_cert_files", [])
    if isinstance(cas, str):
        cas = [cas]
    if not isinstance(cas, list):
        raise ConfigError(f"{where}.ca_cert_files", "expected a list of file paths")
    for i, ca in enumerate(cas):
        if not isinstance(ca, str) or not Path(ca).is_file():
            raise ConfigError(f"{where}.ca_cert_files[{i}]", f"{ca!r} is not a file")
    for key in ("client_cert_file", "client_key_file"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not Path(value).is_file()):
            raise ConfigError(f"{where}.{key}", f"{value!r} is not a file")
    if ("client_cert_file" in raw) != ("client_key_file" in raw):
        missing = "client_key_file" if "client_cert_file" in raw else "client_cert_file"
        raise ConfigError(f"{where}.{missing}", "missing: mTLS needs the certificate and its key")
    server_name = raw.get("server_name")
    if server_name is not None and not isinstance(server_name, str):
        raise ConfigError(f"{where}.server_name", f"{server_name!r} is not a host name")
    tls = ClientTLS(
        tuple(cas), raw.get("client_cert_file"), raw.get("client_key_file"), server_name
    )
    return RelaySource(address, tls)


def parse_filters(raw: Any, where: str) -> tuple[list[Any], list[Any]]:
    """`allow` and `deny` lists in observe's filter language -> (whitelist, blacklist) of
    FlowFilter messages. An entry is a string of observe's filter flags ("--from-pod default/web
    --verdict DROPPED"; its --not parts go to the blacklist) or a FlowFilter as a table in its
    JSON form ({source_pod: [default/web], verdict: [DROPPED]})."""
    if raw is None:
        return [], []
    if not isinstance(raw, dict):
        raise ConfigError(where, f"expected a mapping (allow, deny), not {_kind_name(raw)}")
    unknown = sorted(set(raw) - {"allow", "deny"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "unknown field", hint="known: allow, deny")
    white: list[Any] = []
    black: list[Any] = []
    for key, target in (("allow", white), ("deny", black)):
        entries = raw.get(key, [])
        if isinstance(entries, str | dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise ConfigError(f"{where}.{key}", "expected a list of filters")
        for i, entry in enumerate(entries):
            here = f"{where}.{key}[{i}]"
            w, b = filter_entry(entry, here)
            if key == "deny" and b:
                raise ConfigError(here, "--not in a deny filter; move it to allow")
            target.extend(w)
            black.extend(b)  # an allow string's --not parts
    _check_filters(white, black, where)
    return white, black


def filter_entry(entry: Any, where: str) -> tuple[list[Any], list[Any]]:
    """One filter of a config file as (whitelist, blacklist) FlowFilters: a string of observe's
    filter flags (its --not parts are the blacklist) or a FlowFilter table; ConfigError at
    `where`."""
    from flowscope.cli.observeflags import filter_from_table, parse_filter_text

    try:
        if isinstance(entry, str):
            return parse_filter_text(entry)
        if isinstance(entry, dict):
            return [filter_from_table(entry)], []
    except FlowscopeError as e:
        raise ConfigError(where, e.args[0], hint="write observe's filter flags") from None
    raise ConfigError(where, f"expected flags or a table, not {_kind_name(entry)}")


def _check_filters(white: list[Any], black: list[Any], where: str) -> None:
    from flowscope.flow.protofilter import FilterError, compile_selection

    try:
        compile_selection(white, black)
    except FilterError as e:
        raise ConfigError(where, str(e)) from None
