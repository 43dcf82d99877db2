"""The live flow table: a Line API scroll view (Textual's way for big, fast-changing data) over a
bounded deque of records. Only the rows on screen are formatted, once per frame, so adding a
thousand flows costs a deque extend and one refresh, never a repaint per flow.

- new records are added in batches (`add`); past `scrollback` the oldest fall off;
- following (the default): the view stays on the newest row; moving the cursor up stops
  following, `end` (or G) follows again;
- the cursor row is highlighted; `selected` is its record; Enter posts `FlowTable.Selected`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from flowscope.flow.model import Record
from tui import columns

DEFAULT_SCROLLBACK = 10_000
# column -> (minimum width, share of the width left over)
_WIDTHS = {
    "TIME": (8, 0),
    "SOURCE": (10, 4),
    "DESTINATION": (10, 4),
    "SERVICE": (5, 2),
    "PORT": (8, 0),
    "VERDICT": (10, 0),
    "DROP REASON": (8, 2),
    "L7": (10, 4),
}


def column_widths(width: int) -> list[int]:
    """Each column's width for a table `width` cells wide (one space between columns)."""
    mins = [_WIDTHS[c][0] for c in columns.COLUMNS]
    shares = [_WIDTHS[c][1] for c in columns.COLUMNS]
    spare = max(0, width - sum(mins) - (len(mins) - 1))
    total = sum(shares)
    out = [m + spare * s // total for m, s in zip(mins, shares, strict=True)]
    out[-1] += max(0, width - sum(out) - (len(out) - 1))  # rounding: the rest to the last
    return out


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(0, width - 1)] + "…" if width else ""


class FlowTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {"flow-table--header", "flow-table--cursor"}
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "cursor(-20)", "Page up", show=False),
        Binding("pagedown", "cursor(20)", "Page down", show=False),
        Binding("home,g", "first", "Oldest", show=False),
        Binding("end,G", "follow", "Follow", show=False),
        Binding("enter", "select", "Details"),
    ]

    class Selected(Message):
        def __init__(self, record: Record) -> None:
            super().__init__()
            self.record = record

    cursor = reactive(-1)  # index into the rows; -1: none yet
    following = reactive(True)

    def __init__(self, scrollback: int = DEFAULT_SCROLLBACK, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scrollback = scrollback
        self.rows: deque[Record] = deque(maxlen=scrollback)
        self.added = 0  # every record ever added (to tell how many fell off)

    # --- data ---------------------------------------------------------------------------------

    def add(self, records: Iterable[Record]) -> int:
        """Append a batch; returns how many were added."""
        before = len(self.rows)
        fresh = list(records)
        if not fresh:
            return 0
        fell_off = max(0, before + len(fresh) - self.scrollback)
        self.rows.extend(fresh)
        self.added += len(fresh)
        if self.following:
            self.cursor = len(self.rows) - 1
        elif self.cursor >= 0:
            self.cursor = max(0, self.cursor - fell_off)  # keep the same record selected
        self._resize()
        if self.following:
            # after the new virtual size is laid out, or the end is the old one
            self.call_after_refresh(self.scroll_end, animate=False)
        self.refresh()
        return len(fresh)

    def clear(self) -> None:
        self.rows.clear()
        self.cursor = -1
        self.following = True
        self._resize()
        self.refresh()

    @property
    def selected(self) -> Record | None:
        if 0 <= self.cursor < len(self.rows):
            return self.rows[self.cursor]
        return None

    def _resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)

    def on_resize(self) -> None:
        self._resize()
        if self.cursor >= 0:
            self.call_after_refresh(self._keep_visible)

    # --- keys -----------------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        if not self.rows:
            return
        start = self.cursor if self.cursor >= 0 else 0
        self.cursor = min(len(self.rows) - 1, max(0, start + delta))
        self.following = self.cursor == len(self.rows) - 1 and delta > 0
        self._keep_visible()

    def action_first(self) -> None:
        if self.rows:
            self.following = False
            self.cursor = 0
            self._keep_visible()

    def action_follow(self) -> None:
        self.following = True
        if self.rows:
            self.cursor = len(self.rows) - 1
            self.scroll_end(animate=False)

    def action_select(self) -> None:
        record = self.selected
        if record is not None:
            self.post_message(self.Selected(record))

    def _keep_visible(self) -> None:
        top = int(self.scroll_offset.y)
        visible = max(1, self.size.height - 1)  # the header takes a line
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)
        self.refresh()

    def on_click(self, event) -> None:
        y = event.y - 1 + int(self.scroll_offset.y)
        if 0 <= y < len(self.rows):
            self.following = False
            self.cursor = y
            self.refresh()
            self.post_message(self.Selected(self.rows[y]))

    def on_mouse_scroll_up(self) -> None:
        self.following = False  # reading back: new rows must not pull the view down

    def watch_cursor(self) -> None:
        self.refresh()

    # --- drawing --------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        widths = column_widths(width)
        if y == 0:  # the header stays on top while the rows scroll under it
            style = self.get_component_rich_style("flow-table--header")
            text = " ".join(_fit(c, w) for c, w in zip(columns.COLUMNS, widths, strict=True))
            return Strip([Segment(_fit(text, width), style)], width)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        cells = columns.row(self.rows[index])
        base = self.rich_style
        if index == self.cursor:
            base = base + self.get_component_rich_style("flow-table--cursor")
        segments = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            style = base
            if columns.COLUMNS[i] == "VERDICT":
                colour = columns.VERDICT_COLOURS.get(cell)
                if colour:
                    style = base + Style(color=colour, bold=True)
            segments.append(Segment(_fit(cell, w), style))
            segments.append(Segment(" ", base))
        return Strip(segments[:-1], width).crop_extend(0, width, base)
