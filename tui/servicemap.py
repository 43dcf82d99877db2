"""The service map drawn in the terminal: workloads in two columns (those that connect
on the left, those connected to on the right; one that does both appears on both sides), and
each source's edges leave from a lane (a vertical line) of its own, coloured by its verdict.

    frontend/web ──┐
                   ├──────────────▶ backend/api
           world ──┼─┐
                   │ └────────────▶ frontend/web
     backend/api ──┼───┐
                   └───┼──────────▶ kube-system/coredns
                       └──────────▶ backend/db

Pure: `draw(edges, width)` returns a Rich Text; the widget only shows it.
"""

from __future__ import annotations

from rich.text import Text

from tui.columns import VERDICT_COLOURS
from tui.stats import Edge

MIN_LANES = 2
NAME_MAX = 28

# box-drawing joins: the set of directions (up, down, left, right) -> character
_JOIN = {
    frozenset("lr"): "─",
    frozenset("ud"): "│",
    frozenset("dr"): "┌",
    frozenset("dl"): "┐",
    frozenset("ur"): "└",
    frozenset("ul"): "┘",
    frozenset("udr"): "├",
    frozenset("udl"): "┤",
    frozenset("ulr"): "┴",
    frozenset("dlr"): "┬",
    frozenset("udlr"): "┼",
    frozenset("u"): "│",
    frozenset("d"): "│",
    frozenset("l"): "─",
    frozenset("r"): "─",
}


def _cut(name: str, n: int) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def draw(edges: list[Edge], width: int = 80) -> Text:
    """The map of `edges` in `width` columns (a message when there is nothing to draw)."""
    if not edges:
        return Text("no flows yet: the map fills in as flows arrive", style="dim")
    sources = list(dict.fromkeys(e.source for e in edges))
    targets = list(dict.fromkeys(e.destination for e in edges))
    left_w = min(NAME_MAX, max(len(s) for s in sources))
    right_w = min(NAME_MAX, max(len(t) for t in targets))
    lanes_w = max(MIN_LANES * 2 + 4, width - left_w - right_w - 4)
    lanes = max(1, (lanes_w - 4) // 2)
    # sources on even rows, targets on odd ones: a source's line and a target's never share a
    # row, so every T-junction on a row is a real one
    src_row = {s: i * 2 for i, s in enumerate(sources)}
    dst_row = {t: i * 2 + 1 for i, t in enumerate(targets)}
    height = max(len(sources) * 2 - 1, len(targets) * 2)
    x0 = left_w + 1  # the first column of the lane area
    x1 = x0 + lanes_w  # the arrowheads' column
    # one lane (vertical line) per source; all its edges leave from it
    lane_of = {s: x0 + 2 + (i % lanes) * 2 for i, s in enumerate(sources)}
    dirs: dict[tuple[int, int], set[str]] = {}
    colour: dict[tuple[int, int], str] = {}

    def mark(x: int, y: int, d: str, verdict: str) -> None:
        dirs.setdefault((x, y), set()).update(d)
        colour[(x, y)] = verdict

    # busiest edges last so their colour wins where lines meet
    for edge in sorted(edges, key=lambda e: e.total):
        verdict = edge.colour_verdict
        ys, yd, lane = src_row[edge.source], dst_row[edge.destination], lane_of[edge.source]
        for x in range(x0, lane):
            mark(x, ys, "lr", verdict)
        mark(lane, ys, "l" + ("d" if yd > ys else "u"), verdict)
        step = 1 if yd > ys else -1
        for y in range(ys + step, yd, step):
            mark(lane, y, "ud", verdict)
        mark(lane, yd, "r" + ("u" if yd > ys else "d"), verdict)
        for x in range(lane + 1, x1):
            mark(x, yd, "lr", verdict)
        colour[(x1, yd)] = verdict
        dirs[(x1, yd)] = {"arrow"}

    out = Text(no_wrap=True, overflow="crop")
    by_row = {**{r: s for s, r in src_row.items()}, **{r: t for t, r in dst_row.items()}}
    for y in range(height):
        name = by_row.get(y, "") if y % 2 == 0 else ""
        out.append(_cut(name, left_w).rjust(left_w) + " ", style="bold")
        for x in range(x0, x1 + 1):
            d = dirs.get((x, y))
            if not d:
                out.append(" ")
                continue
            ch = "▶" if "arrow" in d else _JOIN.get(frozenset(d), "┼")
            out.append(ch, style=VERDICT_COLOURS.get(colour[(x, y)], "white"))
        target = by_row.get(y, "") if y % 2 == 1 else ""
        out.append(" " + _cut(target, right_w), style="bold")
        out.append("\n")
    out.append("\n")
    legend = [("FORWARDED", "forwarded"), ("DROPPED", "dropped"), ("TRANSLATED", "translated")]
    for verdict, word in legend:
        out.append("── ", style=VERDICT_COLOURS[verdict])
        out.append(f"{word}   ")
    out.append("\n")
    for edge in edges:
        counts = ", ".join(f"{v} {n}" for v, n in sorted(edge.verdicts.items()))
        out.append(f"{edge.source} -> {edge.destination}: ", style="dim")
        out.append(counts + "\n", style=VERDICT_COLOURS.get(edge.colour_verdict, ""))
    return out
