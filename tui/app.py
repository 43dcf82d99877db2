"""`flowscope tui`: the Textual app. The source (an asyncio worker) fills a bounded FlowBuffer;
a 10 Hz timer drains it into the flow table (one batch per tick) and the aggregate stats; the
aggregate views redraw once a second, and only the one on screen.

Layout, top to bottom: header, filter bar (+ its error line), status line, the views in tabs
(flows with a detail pane, drops, top talkers, service map, rates), footer with the keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from flowscope.errors import UsageError
from flowscope.flow.model import Record
from tui import detail, servicemap
from tui.buffer import FlowBuffer
from tui.filtertext import Filters, parse_filters
from tui.flowtable import DEFAULT_SCROLLBACK, FlowTable
from tui.help import HelpScreen
from tui.source import FlowSource, Link, SourceState
from tui.stats import SPARK_VERDICTS, FlowStats

DRAIN_INTERVAL = 0.1  # s: the table takes what arrived ten times a second
VIEW_INTERVAL = 1.0  # s: the aggregate views redraw once a second
VIEWS = (
    ("flows", "Flows"),
    ("drops", "Drops"),
    ("talkers", "Top talkers"),
    ("map", "Service map"),
    ("rates", "Rates"),
)
THEMES = ("textual-dark", "textual-light")
_VIEW_FOCUS = {
    "flows": "#table",
    "drops": "#drops-by-reason",
    "talkers": "#talkers-table",
    "map": "#map-scroll",
}

# (palette name, help, action): the command palette's own commands
COMMANDS = (
    *((f"Show {n.lower()}", f"the {n.lower()} view", f"view('{tab}')") for tab, n in VIEWS),
    ("Pause or resume", "freeze the flow table (flows are kept meanwhile)", "pause"),
    ("Edit filter", "observe's filter flags, e.g. --verdict DROPPED", "edit_filter"),
    ("Clear filter", "show every flow again", "clear_filter"),
    ("Clear table and counts", "start the table and the views afresh", "clear"),
    ("Reconnect now", "to the relay or broker, without waiting for the next retry", "reconnect"),
    ("Toggle light/dark theme", "between textual-dark and textual-light", "toggle_theme"),
    ("Help", "the keys and the filter language", "help"),
)


class FlowscopeCommands(Provider):
    """The app's actions in the command palette (ctrl+p), next to Textual's own."""

    async def discover(self) -> Hits:
        for name, help_text, action in COMMANDS:
            yield DiscoveryHit(name, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, action in COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(name),
                    partial(self.app.run_action, action),
                    help=help_text,
                )


class FlowscopeApp(App[None]):
    CSS_PATH = Path(__file__).with_name("flowscope.tcss")
    TITLE = "flowscope"
    COMMANDS = App.COMMANDS | {FlowscopeCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "edit_filter", "Filter"),
        Binding("p,space", "pause", "Pause"),
        Binding("escape", "close", "Close", show=False),
        Binding("f,1", "view('flows')", "Flows", show=False),
        Binding("d,2", "view('drops')", "Drops"),
        Binding("t,3", "view('talkers')", "Talkers"),
        Binding("m,4", "view('map')", "Map"),
        Binding("r,5", "view('rates')", "Rates"),
        Binding("c", "clear", "Clear", show=False),
        Binding("R", "reconnect", "Reconnect", show=False),
        Binding("T", "toggle_theme", "Theme", show=False),
        Binding("question_mark", "help", "Help"),
    ]

    paused = reactive(False)
    state: reactive[SourceState] = reactive(SourceState(Link.CONNECTING, "starting"))

    def __init__(
        self,
        source: FlowSource,
        filters: Filters | None = None,
        *,
        scrollback: int = DEFAULT_SCROLLBACK,
        buffer: FlowBuffer | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.filters = filters or Filters()
        self.buffer = buffer if buffer is not None else FlowBuffer()  # (an empty one is falsy)
        self.stats = FlowStats()
        self.scrollback = scrollback
        self.held: deque[Record] = deque(maxlen=scrollback)  # arrived while paused
        self.sub_title = source.describe
        self._worker = None

    # --- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filter-bar"):
            yield Label("filter", id="filter-label")
            yield Input(
                value=self.filters.text,
                placeholder="observe's filter flags, e.g. --from-pod NS/POD --to-port 80",
                id="filter",
            )
        yield Label("", id="filter-error")
        yield Static("", id="status")
        with TabbedContent(id="views", initial="flows"):
            with TabPane("Flows", id="flows"):
                yield FlowTable(self.scrollback, id="table")
                with VerticalScroll(id="detail"):
                    yield Static("", id="detail-text")
            with TabPane("Drops", id="drops"), Horizontal():
                yield DataTable(id="drops-by-reason", cursor_type="row")
                yield DataTable(id="drops-by-pod", cursor_type="row")
            with TabPane("Top talkers", id="talkers"):
                yield DataTable(id="talkers-table", cursor_type="row")
            with TabPane("Service map", id="map"), VerticalScroll(id="map-scroll"):
                yield Static("", id="map-drawing")
            with TabPane("Rates", id="rates"), Vertical(id="rates-list"):
                for verdict in SPARK_VERDICTS:
                    with Horizontal(classes="rate-row"):
                        yield Label(verdict, classes=f"rate-name {verdict.lower()}")
                        key = verdict.lower()
                        yield Label("0/s", id=f"rate-now-{key}", classes="rate-now")
                        yield Sparkline([0], id=f"spark-{key}", classes=key)
        yield Footer()

    def on_mount(self) -> None:
        for table_id, headers in (
            ("drops-by-reason", ("DROP REASON", "COUNT", "RATE/s")),
            ("drops-by-pod", ("POD", "COUNT", "RATE/s")),
            ("talkers-table", ("SOURCE", "DESTINATION", "FLOWS")),
        ):
            self._one(f"#{table_id}", DataTable).add_columns(*headers)
        self._one("#drops-by-reason").border_title = "by reason"
        self._one("#drops-by-pod").border_title = "by pod"
        self.set_interval(DRAIN_INTERVAL, self.drain)
        self.set_interval(VIEW_INTERVAL, self.refresh_view)
        self.start_source()
        self._one(FlowTable).focus()

    def _one(self, selector, expect_type=None):
        """A widget of the main screen (App.query_one asks the screen on top, which may be
        the help screen or the command palette while the timers run)."""
        if not self.screen_stack:
            raise NoMatches(f"no screen for {selector!r}: the app is closing")
        main = self.screen_stack[0]
        if expect_type is None:
            return main.query_one(selector)
        return main.query_one(selector, expect_type)

    def _one_or_none(self, selector):
        try:
            return self._one(selector)
        except NoMatches:
            return None

    # --- the source -----------------------------------------------------------------------------

    def start_source(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._worker = self.run_worker(
            self._run_source(), name="source", group="source", exclusive=True
        )

    async def _run_source(self) -> None:
        try:
            await self.source.run(self.buffer, self.filters, self.set_state)
        except Exception as exc:  # shown, not a crash of the whole UI
            self.set_state(SourceState(Link.REFUSED, f"{type(exc).__name__}: {exc}"))

    def set_state(self, state: SourceState) -> None:
        self.state = state

    def watch_state(self) -> None:
        self.update_status()

    def watch_paused(self) -> None:
        self.update_status()

    # --- the 10 Hz drain ------------------------------------------------------------------------

    def drain(self) -> int:
        """Take what arrived into the stats and the table (or the held rows, paused)."""
        if not self._one_or_none(FlowTable):  # the timer fired while the app is closing
            return 0
        records = self.buffer.drain()
        if records:
            try:
                self.ingest(records)
            except NoMatches:  # closing, between the check and now
                return 0
        return len(records)

    def ingest(self, records: Iterable[Record]) -> None:
        records = list(records)
        self.stats.add(records)
        if self.paused:
            self.held.extend(records)
        else:
            self._one(FlowTable).add(records)
        self.update_status()

    def update_status(self) -> None:
        if not self.is_mounted:
            return
        state = self.state
        mark = {
            Link.CONNECTED: "[green]●[/]",
            Link.CONNECTING: "[yellow]…[/]",
            Link.UNREACHABLE: "[red]✖[/]",
            Link.REFUSED: "[red]✖[/]",
        }[state.link]
        parts = [f"{mark} {_escape(state.message)}"]
        if state.link is Link.UNREACHABLE:  # first, so a narrow terminal still shows it
            parts.insert(0, f"[red]✖ retrying in {state.retry_in:.0f}s (R: now)[/]")
            parts[1] = _escape(state.message)
        parts.append(f"{self.stats.flows:,} flows")
        if self.stats.lost:  # LostEvents: lost before the relay or broker had them
            parts.append(f"[red]{self.stats.lost:,} lost[/]")
        if self.buffer.overflowed:  # the screen fell behind the stream
            parts.append(f"[red]{self.buffer.overflowed:,} not shown[/]")
        if self.paused:
            parts.append(f"[reverse] PAUSED [/] {len(self.held):,} new")
        status = self._one_or_none("#status")
        if status is None:
            return
        status.update(" │ ".join(parts))
        status.set_class(state.link in (Link.UNREACHABLE, Link.REFUSED), "down")

    # --- the aggregate views, once a second -----------------------------------------------------

    def refresh_view(self) -> None:
        try:
            active = self._one(TabbedContent).active
            getattr(self, f"_show_{active}", lambda: None)()
        except NoMatches:  # the timer fired while the app is closing
            return

    def _show_drops(self) -> None:
        now = self.stats.now
        for table_id, counts in (
            ("drops-by-reason", self.stats.drop_reasons.top(50, now)),
            ("drops-by-pod", self.stats.drop_pods.top(50, now)),
        ):
            table = self._one(f"#{table_id}", DataTable)
            table.clear()
            table.add_rows((c.key, f"{c.total:,}", f"{c.rate:.1f}") for c in counts)

    def _show_talkers(self) -> None:
        table = self._one("#talkers-table", DataTable)
        table.clear()
        table.add_rows((s, d, f"{n:,}") for s, d, n in self.stats.top_talkers(50))

    def _show_map(self) -> None:
        drawing = self._one("#map-drawing", Static)
        drawing.update(servicemap.draw(self.stats.service_edges(), drawing.size.width or 80))

    def _show_rates(self) -> None:
        for verdict in SPARK_VERDICTS:
            key = verdict.lower()
            series = self.stats.rates.series(verdict)
            self._one(f"#spark-{key}", Sparkline).data = series
            self._one(f"#rate-now-{key}", Label).update(f"{self.stats.rates.current(verdict):,}/s")

    # --- the filter -----------------------------------------------------------------------------

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.set_filter(event.value)

    def set_filter(self, text: str) -> bool:
        """Parse and apply `text`; on a bad filter show its error inline and keep the old one."""
        error = self._one("#filter-error", Label)
        field = self._one("#filter", Input)
        try:
            filters = parse_filters(text)
        except UsageError as exc:
            error.update(f"✖ {exc}")
            error.add_class("shown")
            field.add_class("invalid")
            return False
        error.update("")
        error.remove_class("shown")
        field.remove_class("invalid")
        self.filters = filters
        self.restart()
        self._one(FlowTable).focus()
        return True

    def restart(self) -> None:
        """Start afresh with the current filters: the table, counts and the source."""
        self.buffer.drain()
        self.held.clear()
        self.stats = FlowStats()
        self._one(FlowTable).clear()
        self.start_source()
        self.update_status()

    # --- actions --------------------------------------------------------------------------------

    def action_edit_filter(self) -> None:
        self._one(TabbedContent).active = "flows"
        self._one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        self._one("#filter", Input).value = ""
        self.set_filter("")

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self.held:
            self._one(FlowTable).add(self.held)
            self.held.clear()
        self.update_status()

    def action_close(self) -> None:
        if self.focused is self._one("#filter", Input):
            self._one(FlowTable).focus()
            return
        self._one("#detail").remove_class("open")
        self._one(FlowTable).focus()

    def action_view(self, tab: str) -> None:
        # focus first: TabbedContent shows the pane of whatever gets focus, so a widget left
        # focused in the old pane would bring it back
        target = _VIEW_FOCUS.get(tab)
        if target:
            self._one(target).focus()
        else:
            self.set_focus(None)
        self._one(TabbedContent).active = tab
        self.refresh_view()

    def action_clear(self) -> None:
        self.held.clear()
        self.stats = FlowStats()
        self._one(FlowTable).clear()
        self._one("#detail").remove_class("open")
        self.refresh_view()
        self.update_status()

    def action_reconnect(self) -> None:
        self.start_source()

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_view()

    @on(FlowTable.Selected)
    def show_detail(self, event: FlowTable.Selected) -> None:
        self._one("#detail-text", Static).update(detail.describe(event.record))
        pane = self._one("#detail")
        pane.add_class("open")
        pane.scroll_home(animate=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
