"""The filter bar's text: `observe`'s filter flags typed as one line ("--from-pod default/web
--verdict DROPPED"), read into the GetFlowsRequest's whitelist and blacklist by the same code
`observe` uses (flowscope.cli.observeflags), so both speak one language with the same errors.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

from flowscope.cli.observeflags import add_filter_flags, build_filters
from flowscope.errors import UsageError
from flowscope.proto import flow_pb2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting (the UI shows the error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or "not a filter")


@dataclass(frozen=True)
class Filters:
    """A parsed filter line: the text as typed and the FlowFilters it means."""

    text: str = ""
    whitelist: tuple[flow_pb2.FlowFilter, ...] = field(default=())
    blacklist: tuple[flow_pb2.FlowFilter, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.whitelist or self.blacklist)


def _parser() -> _Parser:
    p = _Parser(prog="filter", add_help=False, allow_abbrev=False)
    add_filter_flags(p)
    return p


def parse_filters(text: str) -> Filters:
    """The Filters of one line of observe's filter flags; UsageError naming the offending flag."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"filter: {exc}") from None
    if words and not words[0].startswith("-"):
        raise UsageError(f"{words[0]!r}: filters are flags, e.g. --from-pod default/web")
    args = _parser().parse_args(words)
    white, black = build_filters(args.filter_ops or [])
    return Filters(text.strip(), tuple(white), tuple(black))


def filter_text(ops: list[tuple[str, str | None]]) -> str:
    """The line that means the recorded flags `ops` (from the command line) again."""
    words: list[str] = []
    for flag, value in ops:
        words.append(f"--{flag}")
        if value is not None and not isinstance(value, list):  # --not records []
            words.append(shlex.quote(str(value)))
    return " ".join(words)
