"""The dashboards against Grafana's own Dashboard type: each JSON file, as a TypeScript object
literal, must satisfy `Dashboard` from the npm package @grafana/schema under `tsc --strict`
(scripts/setup.sh installs @grafana/schema and typescript into FLOWSCOPE_NPM). A file that breaks
the type (the check is not vacuous) is refused."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.exporters.grafana.dashboards import DASHBOARDS, load

NPM = Path(os.environ.get("FLOWSCOPE_NPM", "/var/cache/flowscope/npm"))
TSC = NPM / "node_modules" / ".bin" / "tsc"


def typecheck(workdir: Path, dashboards: dict[str, dict]) -> subprocess.CompletedProcess:
    if not TSC.exists() or not (NPM / "node_modules" / "@grafana" / "schema").exists():
        pytest.fail(f"tsc and @grafana/schema are not in {NPM}: run `bash scripts/setup.sh`")
    (workdir / "node_modules").symlink_to(NPM / "node_modules")
    files = []
    for name, dashboard in dashboards.items():
        ts = workdir / f"{name}.ts"
        ts.write_text(
            'import type { Dashboard } from "@grafana/schema";\n'
            f"export const dashboard = {json.dumps(dashboard, indent=1)} satisfies Dashboard;\n"
        )
        files.append(ts.name)
    return subprocess.run(
        [str(TSC), "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module",
         "esnext", "--moduleResolution", "bundler", *files],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_dashboard_satisfies_grafanas_dashboard_type(tmp_path):
    result = typecheck(tmp_path, {p.stem.replace("-", "_"): load(p) for p in DASHBOARDS})
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_dashboard_is_refused(tmp_path):
    broken = load(DASHBOARDS[0])
    broken["schemaVersion"] = "39"  # a string where Grafana wants a number
    del broken["panels"][1]["type"]  # a panel without its type
    broken["graphTooltip"] = 7  # not a DashboardCursorSync
    result = typecheck(tmp_path, {"broken": broken})
    assert result.returncode != 0
    out = result.stdout
    assert out.count("error TS") == 3, out
    assert "DashboardCursorSync" in out and "not assignable to type 'number'" in out, out
    assert "Property 'type' is missing" in out, out
