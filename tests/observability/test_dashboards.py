"""The Grafana dashboards in deploy/observability: their JSON is well formed and up to date
with panels.py, and every panel's query returns series from a real Prometheus scraping a
running stack (edge, router, two stand-in engines) after a short load."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import free_port, wait_until
from tests.conftest import ROOT, RunningStack
from tests.observability.load import catalog, drive
from tests.observability.prometheus_server import SCRAPE_S, Prometheus, prometheus_binary

OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARDS = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
RULES = OBSERVABILITY / "prometheus" / "rules.yaml"
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$model": ".*", "$key": ".*"}
# Panels the stand-in stack cannot fill, and why. Keep it short.
NOT_EXERCISED = {
    "Prefix cache hit ratio (vLLM)": "vLLM's own metrics: stand-in engines do not run vLLM",
    "vLLM queue time p99": "vLLM's own metrics: stand-in engines do not run vLLM",
    "Retries refused by the retry budget": "the short load never drains the retry budget",
    "First messages awaited past the timeout": "no stand-in is slower than the router's "
    "first-message timeout",
    "Hedges/s: sent, won by the hedge, cancelled": "no stand-in is slow enough to be hedged",
    "Resumes/s by reason (streams continued on another replica)": "the stand-ins fail only "
    "before their first token: nothing is resumed",
    "Resume gap p50 / p99 (cut to next token)": "nothing is resumed (see above)",
    "Fair queue: waiting requests by class": "the fair queue is off in this stack",
    "Fair queue: shed/s by reason": "the fair queue is off in this stack",
}
HOSTS = re.compile(r"https?://|localhost|\b\d{1,3}(\.\d{1,3}){3}\b")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for path in DASHBOARDS
        for panel in _panels(_load(path))
        for target in panel["targets"]
    ]


def grafana_to_promql(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_dashboards_are_generated_and_current() -> None:
    assert [p.name for p in DASHBOARDS] == ["tera-fleet.json", "tera-tenants.json"]
    result = subprocess.run(
        [sys.executable, str(OBSERVABILITY / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = _load(path)
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids, "unique panel ids"
    titles = [p["title"] for p in _panels(board)]
    assert len(titles) == len(set(titles)), "unique titles"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            names = re.findall(r"\b(?:tera|vllm)[:_][a-z0-9_:]+", target["expr"])
            assert names, f"{panel['title']}: no Tera or vLLM metric"
            grafana_to_promql(target["expr"])  # only variables Grafana defines
    assert not HOSTS.search(path.read_text()), "no hard-coded hosts"


def test_allowlist_names_real_panels() -> None:
    titles = {title for title, _ in _queries()}
    assert set(NOT_EXERCISED) <= titles


@pytest.fixture
def scraped(scripted_stack, tmp_path: Path) -> Iterator[tuple[RunningStack, Prometheus]]:  # type: ignore[no-untyped-def]
    if prometheus_binary() is None:
        missing = "prometheus is not installed (scripts/test_services.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # in CI a missing service is an error, never a skip
        pytest.skip(missing)
    from tests.observability.otlp_receiver import OtlpReceiver

    router_metrics, engine_metrics = free_port(), [free_port(), free_port()]
    behaviours = [{"tokens_per_second": 400, "fail_first_requests": 3}, {"tokens_per_second": 400}]
    with OtlpReceiver() as receiver:
        stack: RunningStack = scripted_stack(
            engines=2,
            env=receiver.env,
            # p2c: some calls reach the failing replica, whatever the prompts.
            router_args=["--metrics-port", str(router_metrics), "--policy", "p2c"],
            per_engine_args=[
                ["--metrics-port", str(port), "--scripted", json.dumps(b)]
                for port, b in zip(engine_metrics, behaviours, strict=True)
            ],
            edge_args=["--catalog", str(catalog(tmp_path / "catalog.yaml"))],
        )
        targets = {
            "tera-edge": [f"127.0.0.1:{stack.stack.plan.edge_ops_port}"],
            "tera-router": [f"127.0.0.1:{router_metrics}"],
            "tera-engine": [f"127.0.0.1:{p}" for p in engine_metrics],
        }
        with Prometheus(tmp_path / "prometheus", targets, [RULES]) as prometheus:
            wait_until(prometheus.targets_up, timeout_s=30, what="targets up")
            yield stack, prometheus


def _problem(prometheus: Prometheus, title: str, expr: str, at: float) -> str | None:
    try:
        series = prometheus.query(grafana_to_promql(expr), at)
    except AssertionError as exc:
        return f"{title}: {exc}"
    if not series and title not in NOT_EXERCISED:
        return f"{title}: no series from {expr}"
    return None


async def test_every_panel_and_alert_query_works_on_a_scraped_stack(scraped) -> None:  # type: ignore[no-untyped-def]
    stack, prometheus = scraped
    await drive(stack.base_url)
    await asyncio.sleep(3 * SCRAPE_S)  # the last samples reach Prometheus
    at = time.time()
    problems = [p for title, expr in _queries() if (p := _problem(prometheus, title, expr, at))]
    assert not problems, "panels that fail or return no series:\n" + "\n".join(problems)
    for rule in prometheus.rules():
        prometheus.query(rule["query"], at)  # raises with Prometheus's error
        assert rule["health"] in ("ok", "unknown"), f"{rule['name']}: {rule.get('lastError')}"
    exemplars = prometheus.api(
        "query_exemplars",
        query="tera_edge_time_to_first_token_seconds_bucket",
        start=at - 120,
        end=at,
    )
    trace_ids = [e["labels"].get("trace_id") for series in exemplars for e in series["exemplars"]]
    assert trace_ids and all(trace_ids), "TTFT exemplars carry trace ids"
