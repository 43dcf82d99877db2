"""The `prometheus:` section of the export config.

    prometheus:
      listen: ":9965"            # host:port of /metrics (":9965": every address)
      cardinalityLimit: 5000     # label sets per metric before the rest folds into "other"
      pipeline: true             # flowscope_* pipeline metrics
      metrics:                   # Hubble's metrics; default: DEFAULT_METRICS
        - "dns:query;ignoreAAAA"                     # Hubble's --hubble-metrics syntax
        - name: drop                                  # or Hubble's dynamic-config form
          contextOptions:                             # a mapping, or [{name, values}]
            sourceContext: pod|namespace
            labelsContext: source_namespace,destination_namespace
          includeFilters: [{source_pod: ["default/"]}]   # FlowFilter tables (Hubble's JSON
          excludeFilters: ["--verdict FORWARDED"]         # names) or observe's flag strings
          cardinalityLimit: 200

Errors are ConfigError naming the field ("prometheus.metrics[1].contextOptions.sourceContext").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporters.config import filter_entry
from exporters.exporter import ConfigError
from exporters.prometheus.context import (
    OPTION_NAMES,
    ContextError,
    ContextOptions,
    is_context_option,
)

DEFAULT_LISTEN = ":9965"
DEFAULT_CARDINALITY_LIMIT = 5000
# each metric's own options (beyond the context options), as Hubble spells them
METRIC_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "flow": (),
    "drop": (),
    "tcp": (),
    "port-distribution": (),
    "icmp": (),
    "dns": ("query", "ignoreAAAA"),
    "http": ("exemplars",),
    "httpV2": ("exemplars",),
    "policy": (),
    "flows-to-world": ("any-drop", "port", "syn-only"),
}
DEFAULT_METRICS = ("flow", "drop", "tcp", "port-distribution", "icmp", "dns", "http", "policy",
                   "flows-to-world")  # fmt: skip
_SECTION_KEYS = ("listen", "cardinalityLimit", "pipeline", "metrics", "enabled", "group")
_METRIC_KEYS = ("name", "contextOptions", "includeFilters", "excludeFilters", "cardinalityLimit")


@dataclass(frozen=True)
class MetricConfig:
    name: str  # Hubble's metric name: flow, drop, dns, http, ...
    context: ContextOptions = field(default_factory=ContextOptions)
    options: tuple[tuple[str, str], ...] = ()  # the metric's own options (lower-cased keys)
    include: tuple[bytes, ...] = ()  # FlowFilter messages, serialized (frozen, comparable)
    exclude: tuple[bytes, ...] = ()
    cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key.lower())

    def selection(self) -> Any:
        """A protofilter.FlowSelection, or None when the metric has no filters."""
        if not self.include and not self.exclude:
            return None
        from flowscope.flow.protofilter import compile_selection
        from flowscope.proto import flow_pb2

        return compile_selection(
            [flow_pb2.FlowFilter.FromString(b) for b in self.include],
            [flow_pb2.FlowFilter.FromString(b) for b in self.exclude],
        )


@dataclass(frozen=True)
class PrometheusConfig:
    listen: str = DEFAULT_LISTEN
    metrics: tuple[MetricConfig, ...] = ()
    cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT
    pipeline: bool = True

    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "prometheus.listen")


def split_listen(text: str, where: str) -> tuple[str, int]:
    """("", 9965) from ":9965", ("127.0.0.1", 9965) from "127.0.0.1:9965", [::1]:9965 too."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(where, f"{text!r} is not host:port (e.g. ':9965', '127.0.0.1:9965')")
    return host.strip("[]"), int(port)


def parse(raw: Any, where: str = "prometheus") -> PrometheusConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"expected a mapping, not {type(raw).__name__}")
    _no_unknown(raw, _SECTION_KEYS, where)
    listen = raw.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ConfigError(f"{where}.listen", "expected host:port as a string")
    split_listen(listen, f"{where}.listen")
    limit = _limit(
        raw.get("cardinalityLimit", DEFAULT_CARDINALITY_LIMIT), f"{where}.cardinalityLimit"
    )
    pipeline = raw.get("pipeline", True)
    if not isinstance(pipeline, bool):
        raise ConfigError(f"{where}.pipeline", "expected true or false")
    entries = raw.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.metrics", "expected a list of metrics")
    metrics = tuple(_metric(e, f"{where}.metrics[{i}]", limit) for i, e in enumerate(entries))
    seen: set[str] = set()
    for i, m in enumerate(metrics):
        family = "http" if m.name == "httpV2" else m.name
        if family in seen:
            raise ConfigError(f"{where}.metrics[{i}]", f"metric {m.name!r} given twice")
        seen.add(family)
    return PrometheusConfig(listen, metrics, limit, pipeline)


def _no_unknown(raw: Mapping, known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key}", "unknown field", hint=f"known: {', '.join(known)}")


def _limit(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConfigError(where, f"{raw!r} is not a count (0: no limit)")
    return raw


def _metric(raw: Any, where: str, default_limit: int) -> MetricConfig:
    if isinstance(raw, str):
        name, _, rest = raw.partition(":")
        options = {}
        for part in filter(None, rest.split(";")):
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
        return _build(name.strip(), options, [], [], default_limit, where, where)
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a metric name, 'name:options' or a table")
    _no_unknown(raw, _METRIC_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name", "missing (flow, drop, dns, http, ...)")
    options = _context_options(raw.get("contextOptions", {}), f"{where}.contextOptions")
    limit = _limit(raw.get("cardinalityLimit", default_limit), f"{where}.cardinalityLimit")
    include = _filters(raw.get("includeFilters", []), f"{where}.includeFilters")
    exclude = _filters(raw.get("excludeFilters", []), f"{where}.excludeFilters")
    return _build(name, options, include, exclude, limit, where, f"{where}.contextOptions")


def _context_options(raw: Any, where: str) -> dict[str, str]:
    """Hubble's two forms: {sourceContext: pod} or [{name: sourceContext, values: [pod]}]."""
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ConfigError(f"{where}[{i}]", "expected {name: ..., values: [...]}")
            values = entry.get("values", [])
            items.append((entry["name"], values))
    else:
        raise ConfigError(where, "expected a mapping of option -> value")
    for key, value in items:
        if not isinstance(key, str):
            raise ConfigError(f"{where}.{key}", "option names are strings")
        if isinstance(value, list):
            sep = "," if key.lower() == "labelscontext" else "|"
            value = sep.join(str(v) for v in value)
        elif value is None or value is True:
            value = ""
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key}", f"{value!r} is not a string")
        out[key] = value
    return out


def _build(
    name: str,
    options: dict[str, str],
    include: list[Any],
    exclude: list[Any],
    limit: int,
    where: str,
    options_where: str,
) -> MetricConfig:
    own = METRIC_OPTIONS.get(name)
    if own is None:
        raise ConfigError(where, f"unknown metric {name!r}; known: {', '.join(METRIC_OPTIONS)}")
    try:
        context = ContextOptions.parse(options)
    except ContextError as e:
        raise ConfigError(f"{options_where}.{e.option}", str(e).split(": ", 1)[1]) from None
    extra = []
    lowered = {o.lower(): o for o in own}
    for key, value in options.items():
        if is_context_option(key):
            continue
        if key.lower() not in lowered:
            known = ", ".join((*OPTION_NAMES, *own))
            raise ConfigError(f"{options_where}.{key}", f"unknown option; known: {known}")
        extra.append((key.lower(), value))
    _check_selection(include, exclude, where)
    return MetricConfig(
        name,
        context,
        tuple(sorted(extra)),
        tuple(f.SerializeToString() for f in include),
        tuple(f.SerializeToString() for f in exclude),
        limit,
    )


def _filters(raw: Any, where: str) -> list[Any]:
    if isinstance(raw, str | Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError(where, "expected a list of filters")
    out: list[Any] = []
    for i, entry in enumerate(raw):
        here = f"{where}[{i}]"
        white, black = filter_entry(dict(entry) if isinstance(entry, Mapping) else entry, here)
        if black:
            raise ConfigError(here, "--not here; use excludeFilters")
        out.extend(white)
    return out


def _check_selection(include: list[Any], exclude: list[Any], where: str) -> None:
    from flowscope.flow.protofilter import FilterError, compile_selection

    try:
        compile_selection(include, exclude)
    except FilterError as e:
        raise ConfigError(where, str(e)) from None
