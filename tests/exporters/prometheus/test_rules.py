"""The recording and alert rules: valid for Prometheus (`promtool check rules`) and evaluated
over made-up series by `promtool test rules` (rules_test.yaml: every recording rule's value and
the alerts that must fire, with their labels and annotations)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RULES = sorted((HERE.parents[2] / "exporters" / "prometheus" / "rules").glob("*.yaml"))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `bash scripts/setup.sh` (Debian prometheus)")
    return path


def test_rules_are_valid():
    assert RULES
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout


def test_rules_evaluate_to_the_expected_values_and_alerts():
    result = subprocess.run(
        [promtool(), "test", "rules", "rules_test.yaml"],
        cwd=HERE,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails(tmp_path):
    """The unit tests can fail: the same file with one expected value changed does."""
    text = (HERE / "rules_test.yaml").read_text()
    broken = text.replace("value: 0.025", "value: 0.05", 1)
    assert broken != text
    rules = [str(r) for r in RULES]
    broken = broken.replace("../../../exporters/prometheus/rules/flowscope.yaml", rules[0])
    (tmp_path / "t.yaml").write_text(broken)
    result = subprocess.run(
        [promtool(), "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "p95_5m" in result.stdout + result.stderr
