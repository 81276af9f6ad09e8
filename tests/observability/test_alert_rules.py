"""Tera's alert rules: promtool accepts them, its unit tests (synthetic series per alert:
fires when it should, silent when it should not) pass, and every alert links to a
section of the runbook that exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus" / "rules.yaml"
RULES_TEST = OBSERVABILITY / "prometheus" / "rules_test.yaml"
RUNBOOK = OBSERVABILITY / "RUNBOOK.md"


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing = "promtool is not installed (scripts/test_services.sh installs prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # in CI a missing service is an error, never a skip
        pytest.skip(missing)
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_both_ways() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in _alerts():
        mine = [c for c in cases if c["alertname"] == alert["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{alert['alert']}: never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{alert['alert']}: never shown silent"


def test_every_alert_links_to_a_runbook_section() -> None:
    anchors = {
        _slug(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in _alerts():
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        path, anchor = annotations["runbook"].split("#")
        assert path == "deploy/observability/RUNBOOK.md", alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in RUNBOOK.md"
