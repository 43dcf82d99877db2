"""The app driven by Textual's Pilot with a faked source: each view, key binding and the filter
bar, at 80x24 (the smallest terminal it promises) unless a test needs more."""

from __future__ import annotations

import asyncio

from textual.widgets import Input, TabbedContent

from flowscope.flow.model import Verdict
from tests.tui.flows import FakeSource, S, dns_nxdomain, flow, http_response
from tui.app import FlowscopeApp
from tui.filtertext import parse_filters
from tui.flowtable import FlowTable
from tui.help import HelpScreen
from tui.source import Link

SIZE = (80, 24)


def screen_text(app: FlowscopeApp) -> str:
    """What the terminal shows, as text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def traffic() -> list:
    flows = [flow(i * S // 10) for i in range(30)]
    flows += [flow(31 * S // 10 + i, verdict=Verdict.DROPPED, ingress=True) for i in range(5)]
    flows += [flow(4 * S, src="shop/web-2", dst="shop/db-1", port=5432)]
    flows += [http_response(4 * S + 1), dns_nxdomain(4 * S + 2)]
    return flows


async def settle(pilot, seconds: float = 0.25) -> None:
    await pilot.pause(seconds)


async def screen_when(pilot, app: FlowscopeApp, shown: str, timeout: float = 5.0) -> str:
    """The screen's text once it shows `shown` (or at the timeout): a follow scrolls after a
    refresh, which a loaded machine may not have painted yet after a fixed pause."""
    deadline = asyncio.get_running_loop().time() + timeout
    text = screen_text(app)
    while shown not in text and asyncio.get_running_loop().time() < deadline:
        await pilot.pause(0.05)
        text = screen_text(app)
    return text


async def test_live_table_shows_flows_with_verdicts_and_l7() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.query_one(FlowTable)
        assert len(table.rows) == 38
        text = await screen_when(pilot, app, "DNS NXDO")
        assert "TIME" in text and "VERDICT" in text and "DROP RE" in text
        assert "connected to fake relay" in text and "38 flows" in text
        # following: the newest rows are on screen
        assert "DNS NXDO" in text and "503 GET" in text
        assert "shop/web-2" in text and "5432/TCP" in text


async def test_enter_opens_the_selected_drops_details_and_escape_closes_them() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.query_one(FlowTable)
        await pilot.press("g")  # the oldest row
        assert table.cursor == 0 and not table.following
        for _ in range(30):  # down to the first drop
            await pilot.press("j")
        assert table.selected.verdict == Verdict.DROPPED
        await pilot.press("enter")
        await settle(pilot)
        text = screen_text(app)
        assert app.query_one("#detail").has_class("open")
        assert "DROPPED POLICY_DENIED  shop/web-1 -> shop/api-1 8080/TCP" in text
        assert "flow.verdict" in text
        detail = str(app.query_one("#detail-text").render())
        assert "flow.drop_reason_desc" in detail
        assert '"drop_reason_desc": "POLICY_DENIED"' in detail  # the JSON, as observe -o json
        await pilot.press("escape")
        await settle(pilot, 0.1)
        assert not app.query_one("#detail").has_class("open")
        await pilot.press("G")
        assert table.following and table.cursor == len(table.rows) - 1


async def test_pause_holds_new_flows_and_resume_adds_them() -> None:
    source = FakeSource(traffic()[:10])
    app = FlowscopeApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.query_one(FlowTable)
        assert len(table.rows) == 10
        await pilot.press("p")
        source.buffer.extend(flow(5 * S + i) for i in range(7))
        await settle(pilot)
        assert len(table.rows) == 10 and len(app.held) == 7
        assert "PAUSED" in screen_text(app) and "7 new" in screen_text(app)
        await pilot.press("space")
        await settle(pilot, 0.1)
        assert len(table.rows) == 17 and not app.held
        assert "PAUSED" not in screen_text(app)


async def test_scrollback_is_bounded() -> None:
    app = FlowscopeApp(FakeSource(traffic()), scrollback=25)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.query_one(FlowTable)
        assert len(table.rows) == 25 and table.added == 38
        assert table.rows[-1].l7 is not None  # the newest kept, the oldest gone
        assert app.stats.flows == 38  # the counts still saw every flow


async def test_filter_bar_applies_on_the_server_and_shows_errors_inline() -> None:
    source = FakeSource(traffic())
    app = FlowscopeApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"--verdict BOGUS")
        await pilot.press("enter")
        await settle(pilot, 0.1)
        text = screen_text(app)
        assert "--verdict: 'BOGUS' is not a verdict" in text
        assert len(source.runs) == 1  # the old request keeps running
        field = app.query_one("#filter", Input)
        field.value = ""
        await pilot.press(*"--from-pod shop/web --verdict dropped")
        await pilot.press("enter")
        await settle(pilot)
        assert "is not a verdict" not in screen_text(app)
        # the source was restarted with the filter (a relay source sends it in the request)
        assert len(source.runs) == 2
        assert source.runs[-1] == parse_filters("--from-pod shop/web --verdict dropped")
        assert isinstance(app.focused, FlowTable)


async def test_drops_view_groups_by_reason_and_pod() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot, 1.2)
        assert app.query_one(TabbedContent).active == "drops"
        text = screen_text(app)
        assert "by reason" in text and "by pod" in text
        assert "POLICY_DENIED" in text and "shop/api-1" in text
        assert " 5 " in text  # five drops, all at the receiver


async def test_top_talkers_view() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot, 1.2)
        lines = [ln for ln in screen_text(app).splitlines() if "shop/" in ln]
        assert "shop/web-1" in lines[0] and "shop/api-1" in lines[0] and "36" in lines[0]
        assert any("shop/web-2" in ln and "shop/db-1" in ln for ln in lines[1:])


async def test_service_map_view() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot, 1.2)
        text = screen_text(app)
        assert app.query_one(TabbedContent).active == "map"
        assert "▶ shop/api" in text and "▶ shop/db" in text and "▶ kube-system/coredns" in text
        assert "shop/web -> shop/api: DROPPED 5, FORWARDED 31" in text


async def test_rates_view_has_a_sparkline_per_verdict() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot, 1.2)
        text = screen_text(app)
        for verdict in ("FORWARDED", "DROPPED", "AUDIT", "TRANSLATED"):
            assert verdict in text
        forwarded = app.query_one("#spark-forwarded")
        assert sum(forwarded.data) == 33 and max(forwarded.data) == 10
        assert sum(app.query_one("#spark-dropped").data) == 5
        await pilot.press("f")
        assert app.query_one(TabbedContent).active == "flows"
        assert isinstance(app.focused, FlowTable)


async def test_help_screen_and_theme_toggle() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot, 0.2)
        assert isinstance(app.screen, HelpScreen)
        assert "Keys" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot, 0.1)
        assert not isinstance(app.screen, HelpScreen)
        before = app.theme
        await pilot.press("T")
        assert app.theme != before and app.theme in ("textual-dark", "textual-light")
        await pilot.press("T")
        assert app.theme == before


async def test_command_palette_runs_the_apps_commands() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot, 0.2)
        await pilot.press(*"service map")
        await settle(pilot, 0.5)
        assert "Show service map" in screen_text(app)
        await pilot.press("enter")
        await settle(pilot, 0.3)
        assert app.query_one(TabbedContent).active == "map"


async def test_unreachable_relay_is_shown_and_r_retries() -> None:
    source = FakeSource(traffic(), unreachable_runs=1)
    app = FlowscopeApp(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.state.link is Link.UNREACHABLE
        text = screen_text(app)
        assert "cannot reach fake relay" in text and "retrying in 8s (R: now)" in text
        assert app.query_one("#status").has_class("down")
        await pilot.press("R")
        await settle(pilot)
        assert len(source.runs) == 2 and app.state.link is Link.CONNECTED
        assert "38 flows" in screen_text(app)
        assert not app.query_one("#status").has_class("down")


async def test_clear_empties_table_and_counts() -> None:
    app = FlowscopeApp(FakeSource(traffic()))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot, 0.1)
        assert not app.query_one(FlowTable).rows and app.stats.flows == 0
        assert "0 flows" in screen_text(app)


async def test_lost_events_and_a_full_buffer_are_counted_on_the_status_line() -> None:
    from flowscope.flow.model import LostEvent, LostEventSource
    from tui.buffer import FlowBuffer

    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 12, time_ns=flow(0).time_ns)
    # a buffer of 20 that gets 39 before the first drain: 19 never shown
    app = FlowscopeApp(FakeSource([*traffic(), lost]), buffer=FlowBuffer(capacity=20))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "12 lost" in text and "19 not shown" in text
        assert "LOST       12 lost  PERF_EVENT_" in text  # its row in the table
