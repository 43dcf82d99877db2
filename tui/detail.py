"""The detail pane's text for one record: every field the JSON has, one per line with its dotted
path (flow.l4.TCP.destination_port: 80), then the record's JSON as `observe -o json` prints it."""

from __future__ import annotations

import json

from rich.text import Text

from flowscope.flow.model import Flow, Record
from tui import columns
from tui.columns import VERDICT_COLOURS


def flatten(obj: object, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, value) for every leaf of a JSON object; lists index as [i]."""
    if isinstance(obj, dict):
        out: list[tuple[str, str]] = []
        for key, value in obj.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(obj, list):
        out = []
        for i, value in enumerate(obj):
            out += flatten(value, f"{prefix}[{i}]")
        return out
    return [(prefix, json.dumps(obj) if isinstance(obj, bool) or obj is None else str(obj))]


def describe(record: Record) -> Text:
    line = json.loads(record.to_json())
    text = Text()
    if isinstance(record, Flow):  # the headline: what happened, before the fields
        cells = dict(zip(columns.COLUMNS, columns.row(record), strict=True))
        verdict = cells["VERDICT"]
        text.append(verdict, style=f"bold {VERDICT_COLOURS.get(verdict, '')}")
        if cells["DROP REASON"]:
            text.append(f" {cells['DROP REASON']}", style="bold red")
        text.append(f"  {cells['SOURCE']} -> {cells['DESTINATION']} {cells['PORT']}")
        for extra in ("SERVICE", "L7"):
            if cells[extra]:
                text.append(f"  {cells[extra]}")
        text.append("\n\n")
    fields = flatten(line)
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        style = ""
        if key == "flow.verdict" or key == "flow.drop_reason_desc":
            style = VERDICT_COLOURS.get(value, "red" if key.endswith("desc") else "")
        text.append(key.ljust(width) + "  ", style="bold")
        text.append(value + "\n", style=style)
    text.append("\nJSON\n", style="bold underline")
    text.append(json.dumps(line, indent=2))
    return text
