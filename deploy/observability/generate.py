"""Writes what deploy/observability serves from its sources: the Grafana dashboards (from
panels.py, with grafana-foundation-sdk) and the Kubernetes PrometheusRule (from
prometheus/rules.yaml). `--check` writes nothing and fails when a file is out of date.

    .venv/bin/python deploy/observability/generate.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from panels import FLEET, TENANTS, P, Row

HERE = Path(__file__).resolve().parent
K8S_RULE = HERE.parents[1] / "deploy" / "k8s" / "monitoring" / "prometheus-rule.yaml"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_KINDS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
GENERATED = (
    "# Generated from {source} by deploy/observability/generate.py: do not edit.\n"
    "# yamllint disable rule:line-length\n"
)


def _target(spec: P, index: int) -> prometheus.Dataquery:
    q = spec.targets[index]
    target = (
        prometheus.Dataquery()
        .expr(q.expr)
        .legend_format(q.legend or "__auto")
        .ref_id("ABCDEFGH"[index])
        .datasource(DATASOURCE)
    )
    if spec.kind == "table":
        return target.instant().format("table")
    return target.exemplar(True)  # exemplars carry trace ids: the datasource links them


def _panel(spec: P, panel_id: int) -> object:
    builder = (
        PANEL_KINDS[spec.kind]()
        .id(panel_id)
        .title(spec.title)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(12 if spec.kind != "stat" else 6)
    )
    if spec.description:
        builder = builder.description(spec.description)
    for i in range(len(spec.targets)):
        builder = builder.with_target(_target(spec, i))
    return builder


def _variable(name: str, metric: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .refresh(2)  # on time range change
    )


def build(title: str, uid: str, specs: list[P | Row], variables: dict[str, str]) -> dict:
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["tera"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    for name, metric in variables.items():
        board = board.with_variable(_variable(name, metric))
    for panel_id, spec in enumerate(specs, start=1):
        if isinstance(spec, Row):
            board = board.with_row(dashboard.Row(spec.title).id(panel_id))
        else:
            board = board.with_panel(_panel(spec, panel_id))
    return _without_nulls(json.loads(json.dumps(board.build(), cls=JSONEncoder)))


def _without_nulls(value: object) -> object:
    """The SDK writes unset fields as null (e.g. a panel's options); Grafana wants them absent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def outputs() -> dict[Path, str]:
    fleet = build("Tera fleet", "tera-fleet", FLEET, {"model": "tera_edge_requests_total"})
    tenants = build("Tera tenants", "tera-tenants", TENANTS, {"key": "tera_key_requests_total"})
    rules = yaml.safe_load((HERE / "prometheus" / "rules.yaml").read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tera", "labels": {"app.kubernetes.io/part-of": "tera"}},
        "spec": rules,
    }
    source = "deploy/observability/prometheus/rules.yaml"
    text = yaml.dump(rule, Dumper=_IndentedDumper, sort_keys=False, width=100)
    return {
        HERE / "dashboards" / "tera-fleet.json": _json(fleet),
        HERE / "dashboards" / "tera-tenants.json": _json(tenants),
        K8S_RULE: GENERATED.format(source=source) + text,
    }


class _IndentedDumper(yaml.SafeDumper):
    """Indents sequences inside mappings, as yamllint (and the rest of deploy/) does."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _json(board: dict) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"out of date: {path} (run deploy/observability/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
