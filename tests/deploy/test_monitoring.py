"""deploy/k8s/monitoring: the Prometheus operator's objects, validated offline. Their CRDs
are not in the Kubernetes schemas, so they are checked against the subset of the
operator's schema Tera uses (unknown fields rejected), then wired against the manifests:
the PodMonitor selects every pod that serves metrics, on ports that exist and match the
services' configured metrics ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.config_merge import merge_config
from services.edge.cli import build_parser as edge_parser
from services.edge.config import EdgeConfig
from services.engine.config import EngineConfig
from services.router.config import RouterConfig
from tests.deploy.test_manifests import (
    DEPLOY,
    K8S_VERSION,
    OVERLAYS,
    _engine_config,
    config_map_file,
    named,
    of_kind,
    render,
)

MONITORING = DEPLOY / "k8s" / "monitoring"
RULES = DEPLOY / "observability" / "prometheus" / "rules.yaml"
CRD_KINDS = {"PodMonitor", "PrometheusRule"}

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS},
    "additionalProperties": False,
}
_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRINGS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_RELABEL = {
    "type": "object",
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"type": "string"},
    },
    "additionalProperties": False,
}
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": _DURATION,
        "relabelings": {"type": "array", "items": _RELABEL},
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string"},
        "for": _DURATION,
        "labels": _STRINGS,
        "annotations": _STRINGS,
    },
    "additionalProperties": False,
}
_GROUP = {
    "type": "object",
    "required": ["name", "rules"],
    "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": _RULE}},
    "additionalProperties": False,
}


def _crd(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
        "additionalProperties": False,
    }


SCHEMAS = {
    "PodMonitor": _crd(
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
            "additionalProperties": False,
        },
    ),
    "PrometheusRule": _crd(
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": _GROUP}},
            "additionalProperties": False,
        },
    ),
}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        present = e["key"] in labels
        ok = {
            "In": present and labels.get(e["key"]) in e.get("values", []),
            "NotIn": labels.get(e["key"]) not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


def test_objects_validate() -> None:
    docs = render(MONITORING)
    assert {d["kind"] for d in docs} == {*CRD_KINDS, "NetworkPolicy"}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, desired_version=K8S_VERSION, strict=True)


def test_prometheus_rule_is_rules_yaml() -> None:
    (rule,) = of_kind(render(MONITORING), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "run generate.py"


def _metrics_pods(overlay: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    docs = render(overlay)
    pods = []
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        template = workload["spec"]["template"]
        if template["metadata"]["labels"].get("tera.ai/role") in ("edge", "router", "engine"):
            pods.append((template, _metrics_port(docs, template)))
    return pods


def _metrics_port(docs: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, Any]:
    """The container port that serves /metrics, checked against the service's config."""
    role = pod["metadata"]["labels"]["tera.ai/role"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p for p in container["ports"]}
    if role == "edge":
        config = EdgeConfig.model_validate(
            merge_config(edge_parser().parse_args(container["args"][1:]))
        )
    elif role == "router":
        config = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    else:
        config = EngineConfig.model_validate(_engine_config(docs, pod))
    served = config.ops_port if isinstance(config, EdgeConfig) else config.metrics_port
    assert served == ports["metrics"]["containerPort"], role
    return ports["metrics"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_metrics_port_is_scraped(overlay: Path) -> None:
    monitoring = render(MONITORING)
    (monitor,) = of_kind(monitoring, "PodMonitor")
    (policy,) = of_kind(monitoring, "NetworkPolicy")
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    pods = _metrics_pods(overlay)
    assert {p["metadata"]["labels"]["tera.ai/role"] for p, _ in pods} == {
        "edge",
        "router",
        "engine",
    }
    for pod, port in pods:
        labels = pod["metadata"]["labels"]
        assert _selects(monitor["spec"]["selector"], labels), labels
        assert port["name"] in endpoints, labels
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"])
        assert port["name"] == "metrics", "never a public port"
        assert _selects(policy["spec"]["podSelector"], labels), labels
        assert port["containerPort"] in opened


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_edge_metrics_port_is_not_public(overlay: Path) -> None:
    """The LoadBalancer Service and the allow-from-anywhere policy leave the edge's
    operations port (/metrics, /admin/*) out: only the monitoring namespace reaches it."""
    docs = render(overlay)
    (port,) = [m for p, m in _metrics_pods(overlay) if _role(p) == "edge"]
    service = named(docs, "Service", "tera-edge")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    public = named(docs, "NetworkPolicy", "edge-from-anywhere")["spec"]["ingress"]
    assert port["containerPort"] not in {p["port"] for rule in public for p in rule["ports"]}
    assert all("from" not in rule for rule in public), "the public rule is the open one"


def _role(pod: dict[str, Any]) -> str:
    return pod["metadata"]["labels"]["tera.ai/role"]
