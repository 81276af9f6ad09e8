"""deploy/k8s: cert-manager's objects for mutual TLS, validated offline. Their CRDs are
not in the Kubernetes schemas, so they are checked against the subset of cert-manager's
schema Tera uses (unknown fields rejected), then wired against the manifests: each
service mounts a Secret a Certificate writes, from the namespace's CA, at the paths its
config reads, with names that match what its peers dial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.common.config_merge import merge_config
from services.common.tls import TLSConfig
from services.edge.cli import build_parser as edge_parser
from services.edge.config import EdgeConfig
from services.engine.config import EngineConfig
from services.router.config import RouterConfig
from tests.deploy.test_manifests import (
    OVERLAYS,
    _engine_config,
    config_map_file,
    named,
    of_kind,
    render,
)

_REF = {
    "type": "object",
    "required": ["name", "kind"],
    "properties": {"name": {"type": "string"}, "kind": {"const": "Issuer"}},
    "additionalProperties": False,
}
_KEY = {
    "type": "object",
    "properties": {
        "algorithm": {"enum": ["ECDSA", "RSA", "Ed25519"]},
        "size": {"type": "integer"},
        "rotationPolicy": {"enum": ["Always", "Never"]},
    },
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": r"^(\d+(h|m|s))+$"}
_USAGES = {"enum": ["digital signature", "key encipherment", "client auth", "server auth"]}
_CERTIFICATE_SPEC = {
    "type": "object",
    "required": ["secretName", "issuerRef"],
    "properties": {
        "isCA": {"type": "boolean"},
        "commonName": {"type": "string"},
        "secretName": {"type": "string"},
        "dnsNames": {"type": "array", "items": {"type": "string"}},
        "usages": {"type": "array", "items": _USAGES},
        "duration": _DURATION,
        "renewBefore": _DURATION,
        "privateKey": _KEY,
        "issuerRef": _REF,
    },
    "additionalProperties": False,
}
_ISSUER_SPEC = {
    "type": "object",
    "oneOf": [{"required": ["selfSigned"]}, {"required": ["ca"]}],
    "properties": {
        "selfSigned": {"type": "object", "additionalProperties": False},
        "ca": {
            "type": "object",
            "required": ["secretName"],
            "properties": {"secretName": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def _crd(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
        "additionalProperties": False,
    }


SCHEMAS = {
    "Certificate": _crd("Certificate", _CERTIFICATE_SPEC),
    "Issuer": _crd("Issuer", _ISSUER_SPEC),
}


def _pod(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    return next(
        w["spec"]["template"]
        for w in workloads
        if w["spec"]["template"]["metadata"]["labels"].get("tera.ai/role") == role
    )


def _tls_of(docs: list[dict[str, Any]], role: str, pod: dict[str, Any]) -> TLSConfig:
    (container,) = pod["spec"]["containers"]
    if role == "edge":
        args = edge_parser().parse_args(container["args"][1:])
        config: Any = EdgeConfig.model_validate(merge_config(args, sections=("tls",)))
    elif role == "router":
        config = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    else:
        config = EngineConfig.model_validate(_engine_config(docs, pod))
    assert config.tls is not None, f"{role} runs without mutual TLS"
    return config.tls


def _certificate_mounted(docs: list[dict[str, Any]], pod: dict[str, Any], tls: TLSConfig) -> dict:
    """The Certificate whose Secret is mounted where tls's files are read."""
    (container,) = pod["spec"]["containers"]
    folder = {tls.cert.parent, tls.key.parent, tls.ca.parent}
    assert len(folder) == 1 and {tls.cert.name, tls.key.name, tls.ca.name} == {
        "tls.crt",
        "tls.key",
        "ca.crt",
    }
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in folder]
    assert "subPath" not in mount, "a subPath mount never sees a renewed certificate"
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]["secretName"]
    (cert,) = [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
    return cert


def test_objects_validate() -> None:
    for doc in render(OVERLAYS[0]):
        if doc["kind"] in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_service_mounts_a_certificate_from_the_ca(overlay: Path) -> None:
    docs = render(overlay)
    (ca_issuer,) = [i for i in of_kind(docs, "Issuer") if "ca" in i["spec"]]
    ca = [c for c in of_kind(docs, "Certificate") if c["spec"].get("isCA")]
    assert [c["spec"]["secretName"] for c in ca] == [ca_issuer["spec"]["ca"]["secretName"]]
    certs = {}
    for role in ("edge", "router", "engine"):
        pod = _pod(docs, role)
        cert = _certificate_mounted(docs, pod, _tls_of(docs, role, pod))
        assert cert["spec"]["issuerRef"]["name"] == ca_issuer["metadata"]["name"], role
        assert {"client auth", "server auth"} <= set(cert["spec"]["usages"]), role
        certs[role] = cert
    assert len({c["metadata"]["name"] for c in certs.values()}) == 3, "one per service"
    edge = named(docs, "Deployment", "tera-edge")["spec"]["template"]["spec"]["containers"][0]
    router_host = edge["args"][edge["args"].index("--router") + 1].rpartition(":")[0]
    assert router_host in certs["router"]["spec"]["dnsNames"], "the name the edge dials"
    server_name = _tls_of(docs, "router", _pod(docs, "router")).server_name
    assert server_name in certs["engine"]["spec"]["dnsNames"], "the name the router checks"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_router_probes_use_the_plaintext_health_port(overlay: Path) -> None:
    docs = render(overlay)
    router = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    (container,) = _pod(docs, "router")["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == router.health_port != router.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"], probe
