"""The filter bar's text: `observe`'s filter flags typed as one line ("--from-pod default/web
--verdict DROPPED"), read into the GetFlowsRequest's whitelist and blacklist by the same code
`observe` uses (flowscope.cli.observeflags), so both speak one language with the same errors.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from flowscope.cli.observeflags import parse_filter_text
from flowscope.proto import flow_pb2


@dataclass(frozen=True)
class Filters:
    """A parsed filter line: the text as typed and the FlowFilters it means."""

    text: str = ""
    whitelist: tuple[flow_pb2.FlowFilter, ...] = field(default=())
    blacklist: tuple[flow_pb2.FlowFilter, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.whitelist or self.blacklist)


def parse_filters(text: str) -> Filters:
    """The Filters of one line of observe's filter flags; UsageError naming the offending flag."""
    white, black = parse_filter_text(text)
    return Filters(text.strip(), tuple(white), tuple(black))


def filter_text(ops: list[tuple[str, str | None]]) -> str:
    """The line that means the recorded flags `ops` (from the command line) again."""
    words: list[str] = []
    for flag, value in ops:
        words.append(f"--{flag}")
        if value is not None and not isinstance(value, list):  # --not records []
            words.append(shlex.quote(str(value)))
    return " ".join(words)
