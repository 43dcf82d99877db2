"""The help screen: the keys and the filter language, on top of the app (Esc, q or ? closes)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# flowscope tui

Live flows from the cluster's relay (or the Kafka flows topic).

## Keys

| key | what |
|---|---|
| `/` | edit the filter (Enter applies it, Esc goes back) |
| `p`, `space` | pause / resume the flow table (flows keep arriving meanwhile) |
| `Enter` | details of the selected flow: every field and its JSON |
| `Esc` | close the details |
| `up`/`down`, `k`/`j`, `PgUp`/`PgDn` | move in the table (moving up stops following) |
| `g` / `G` (`Home`/`End`) | oldest / newest row (`G` follows the newest again) |
| `f` `d` `t` `m` `r` (or `1`-`5`) | views: flows, drops, top talkers, service map, rates |
| `c` | clear the table and the counts |
| `R` | reconnect now (when the relay or broker was unreachable) |
| `T` | light / dark theme |
| `ctrl+p` | command palette |
| `?` | this help |
| `q` | quit |

## Filters

The filter bar takes `flowscope observe`'s (and `hubble observe`'s) filter flags:

    --from-pod default/web --verdict DROPPED
    --namespace shop --not --to-port 53
    --protocol udp --to-port 53 --type drop
    --http-status 5+ --from-label app=client

Values of one flag are alternatives; different flags must all hold; `--not` excludes the next
one. Connected to the relay the filter runs on the server (only matching flows are sent);
from Kafka it runs here. A bad filter is shown under the bar, naming the flag, and the old
one keeps running.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "app.pop_screen", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
