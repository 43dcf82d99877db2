"""The dashboards under exporters/grafana/dashboards and their PromQL, for the tests."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = sorted((ROOT / "exporters" / "grafana" / "dashboards").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query."""
    return [(p["title"], t["refId"], t["expr"]) for p in panels(dashboard) for t in p["targets"]]
