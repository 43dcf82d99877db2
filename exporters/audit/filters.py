"""The audit section's allow and deny lists, in `observe`'s filter language, as a FlowSelection.

Each item is either a string of observe's filter flags ("--from-pod default/web --verdict
DROPPED") or a FlowFilter in protobuf's JSON mapping ({"source_pod": ["default/web"]}). A flow is
written when it matches an allow item (or there are none) and no deny item; `--not` inside an
allow string sends that part to the deny list, as observe sends it to the blacklist.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from exporters.exporter import ConfigError
from flowscope.cli.observeflags import add_filter_flags, build_filters
from flowscope.errors import UsageError
from flowscope.flow.protofilter import FilterError, FlowSelection, compile_selection
from flowscope.proto import flow_pb2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _flag_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="filter", add_help=False, exit_on_error=False)
    add_filter_flags(parser)
    return parser


def filters_of(
    item: str | dict[str, Any], field: str
) -> tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]:
    """One allow/deny item as (whitelist, blacklist) FlowFilters; ConfigError naming `field`."""
    if isinstance(item, dict):
        try:
            return [json_format.ParseDict(item, flow_pb2.FlowFilter())], []
        except json_format.ParseError as e:
            reason = str(e).splitlines()[0]  # the first line names the bad key
            raise ConfigError(field, f"not a FlowFilter: {reason}") from None
    try:
        args = _flag_parser().parse_args(shlex.split(item))
        return build_filters(args.filter_ops or [])
    except (UsageError, ValueError, argparse.ArgumentError) as e:
        raise ConfigError(field, str(e), hint="write observe's filter flags") from None


def selection_of(
    allow: Sequence[str | dict[str, Any]], deny: Sequence[str | dict[str, Any]], field: str
) -> FlowSelection:
    white: list[flow_pb2.FlowFilter] = []
    black: list[flow_pb2.FlowFilter] = []
    for i, item in enumerate(allow):
        w, b = filters_of(item, f"{field}.allow[{i}]")
        white += w
        black += b
    for i, item in enumerate(deny):
        w, b = filters_of(item, f"{field}.deny[{i}]")
        if b:
            raise ConfigError(f"{field}.deny[{i}]", "--not in a deny item: write it under allow")
        black += w
    try:
        return compile_selection(white, black)
    except FilterError as e:
        raise ConfigError(f"{field}.filters", str(e)) from None
