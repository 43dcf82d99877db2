"""`observe`'s outputs, as `hubble observe -o ...` writes them, for GetFlowsResponse records:

- compact (default): one line per flow (flowscope.flow.compact), lost events as
  "EVENTS LOST: SOURCE CPU(n) N";
- dict: a block of KEY: value lines per record, blocks separated by "------------";
- table: columns TIMESTAMP [NODE] SOURCE DESTINATION TYPE VERDICT SUMMARY, aligned as Go's
  tabwriter aligns them (padding 3), written when the stream ends (not with --follow);
- json, jsonpb: one GetFlowsResponse per line in Hubble's JSON (protojson, proto field names);
  hubble's json is its jsonpb.

Node status events (from the relay) go to stderr, as hubble prints them: that nodes are
unavailable or failed; "Receiving flows from N nodes" only when asked (debug).
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from flowscope.flow.compact import (
    PLAIN,
    Palette,
    flow_type,
    format_compact,
    host_names,
    lost_source,
    summary_text,
    verdict_text,
)
from flowscope.flow.model import Flow, LostEvent
from flowscope.flow.protoconv import record_from_response, response_to_dict
from flowscope.flow.timestamp import stamp_milli
from flowscope.proto import observer_pb2

OUTPUTS = ("compact", "dict", "json", "jsonpb", "table")
DICT_SEPARATOR = "------------"
_NODE_NAMES_CUT = 50  # characters of node names before "(and N more)", as hubble cuts them


def tabulate(rows: list[list[str]], padding: int = 3, minwidth: int = 2) -> list[str]:
    """Rows aligned as Go's tabwriter (minwidth 2, padding 3, spaces) aligns tab-ended cells: each
    cell but a row's last is padded to its column's widest cell plus `padding`."""
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            width = max(len(cell) + padding, minwidth)
            if i == len(widths):
                widths.append(width)
            else:
                widths[i] = max(widths[i], width)
    return [
        "".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + row[-1] for row in rows
    ]


def _join_cut(names: list[str], limit: int = _NODE_NAMES_CUT) -> str:
    length, end = 0, len(names)
    for i, name in enumerate(names):
        length += len(name) + 2
        if length > limit and i > 0:
            end = i
            break
    joined = ", ".join(names[:end])
    return joined if end == len(names) else f"{joined} (and {len(names) - end} more)"


class Printer:
    """Writes GetFlowsResponses in one of OUTPUTS; call close() at the end (table output)."""

    def __init__(
        self,
        output: str = "compact",
        *,
        node_name: bool = False,
        palette: Palette = PLAIN,
        debug: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: use one of {', '.join(OUTPUTS)}")
        self.output = output
        self.node_name = node_name
        # the table is not coloured (column widths would count the escapes), as in hubble
        self.palette = PLAIN if output in ("table", "json", "jsonpb") else palette
        self.debug = debug
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lines = 0
        self._rows: list[list[str]] = []

    # --- records ---

    def write(self, resp: observer_pb2.GetFlowsResponse) -> None:
        kind = resp.WhichOneof("response_types")
        if kind == "node_status":
            self._node_status(resp)
            return
        if kind is None:
            return
        if self.output in ("json", "jsonpb"):
            self.out.write(json.dumps(response_to_dict(resp), separators=(",", ":")) + "\n")
        else:
            record = record_from_response(resp)
            if isinstance(record, Flow):
                self._flow(record)
            else:
                self._lost(record)
        self.lines += 1

    def write_all(self, responses: list[observer_pb2.GetFlowsResponse]) -> None:
        for resp in responses:
            self.write(resp)
        self.flush()

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self._rows:
            header = ["TIMESTAMP", *(["NODE"] if self.node_name else [])]
            header += ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
            self.out.write("".join(line + "\n" for line in tabulate([header, *self._rows])))
            self._rows.clear()
        self.out.flush()

    def _flow(self, flow: Flow) -> None:
        if self.output == "compact":
            line = format_compact(flow, node_name=self.node_name, palette=self.palette)
            self.out.write(line + "\n")
            return
        src, dst = host_names(flow)
        p = self.palette
        verdict = p.verdict(flow, verdict_text(flow))
        if self.output == "table":
            node = [flow.node_name] if self.node_name else []
            self._rows.append(
                [
                    stamp_milli(flow.time_ns),
                    *node,
                    src,
                    dst,
                    flow_type(flow),
                    verdict_text(flow),
                    summary_text(flow),
                ]
            )
            return
        lines = [f"  TIMESTAMP: {stamp_milli(flow.time_ns)}"]
        if self.node_name:
            lines.append(f"       NODE: {flow.node_name}")
        lines += [
            f"     SOURCE: {p.host(src)}",
            f"DESTINATION: {p.host(dst)}",
            f"       TYPE: {flow_type(flow)}",
            f"    VERDICT: {verdict}",
            f"    SUMMARY: {summary_text(flow)}",
        ]
        self._dict_block(lines)

    def _lost(self, event: LostEvent) -> None:
        summary = f"CPU({event.cpu or 0}) - {event.num_events_lost}"
        if self.output == "compact":
            self.out.write(format_compact(event) + "\n")
        elif self.output == "table":
            node = [""] if self.node_name else []
            self._rows.append(["", *node, lost_source(event), "", "EVENTS LOST", "", summary])
        else:
            lines = ["  TIMESTAMP: "]
            if self.node_name:
                lines.append("       NODE: ")
            lines += [
                f"     SOURCE: {lost_source(event)}",
                "       TYPE: EVENTS LOST",
                "    VERDICT: ",
                f"    SUMMARY: {summary}",
            ]
            self._dict_block(lines)

    def _dict_block(self, lines: list[str]) -> None:
        if self.lines:
            lines.insert(0, DICT_SEPARATOR)
        self.out.write("".join(line + "\n" for line in lines))

    # --- node status events (stderr) ---

    def _node_status(self, resp: observer_pb2.GetFlowsResponse) -> None:
        status = resp.node_status
        state = status.state_change
        if not self.debug and state not in (observer_pb2.NODE_UNAVAILABLE, observer_pb2.NODE_ERROR):
            return  # informational, as hubble skips it
        names = list(status.node_names)
        stamp = stamp_milli(resp.time.ToNanoseconds())
        if self.output in ("json", "jsonpb"):
            text = json.dumps(response_to_dict(resp), separators=(",", ":"))
        elif self.output == "dict":
            message = json.dumps(status.message) if status.message else "N/A"
            text = "\n".join(
                [
                    f"  TIMESTAMP: {stamp}",
                    f"      STATE: {observer_pb2.NodeState.Name(state)}",
                    f"      NODES: {_join_cut(names)}",
                    f"    MESSAGE: {message}",
                ]
            )
        else:
            prefix = f"{stamp} [{resp.node_name}]"
            count, joined = len(names), _join_cut(names)
            if state == observer_pb2.NODE_CONNECTED:
                text = f"{prefix}: Receiving flows from {count} nodes: {joined}"
            elif state == observer_pb2.NODE_UNAVAILABLE:
                text = f"{prefix}: {count} nodes are unavailable: {joined}"
                if status.message:
                    text += f" ({status.message})"
            elif state == observer_pb2.NODE_GONE:
                text = f"{prefix}: {count} nodes removed from cluster: {joined}"
            else:
                text = f'{prefix}: Error "{status.message}" on {count} nodes: {joined}'
        self.err.write(text + "\n")
        self.err.flush()
