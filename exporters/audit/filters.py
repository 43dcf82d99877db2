"""The audit section's allow and deny lists, in `observe`'s filter language, as a FlowSelection.

Each item is either a string of observe's filter flags ("--from-pod default/web --verdict
DROPPED") or a FlowFilter in protobuf's JSON mapping ({"source_pod": ["default/web"]}). A flow is
written when it matches an allow item (or there are none) and no deny item; `--not` inside an
allow string sends that part to the deny list, as observe sends it to the blacklist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporters.config import filter_entry
from exporters.exporter import ConfigError
from flowscope.flow.protofilter import FilterError, FlowSelection, compile_selection
from flowscope.proto import flow_pb2


def selection_of(
    allow: Sequence[str | dict[str, Any]], deny: Sequence[str | dict[str, Any]], field: str
) -> FlowSelection:
    white: list[flow_pb2.FlowFilter] = []
    black: list[flow_pb2.FlowFilter] = []
    for i, item in enumerate(allow):
        w, b = filter_entry(item, f"{field}.allow[{i}]")
        white += w
        black += b
    for i, item in enumerate(deny):
        w, b = filter_entry(item, f"{field}.deny[{i}]")
        if b:
            raise ConfigError(f"{field}.deny[{i}]", "--not in a deny item: write it under allow")
        black += w
    try:
        return compile_selection(white, black)
    except FilterError as e:
        raise ConfigError(f"{field}.filters", str(e)) from None
