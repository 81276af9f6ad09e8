"""deploy/: YAML lint, offline Kubernetes schema validation, and the invariants that
keep a deployment correct (probes, drain, discovery, exposure, network policy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.engine.config import EngineConfig
from services.router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.32"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
# cert-manager's kinds: not in the Kubernetes schemas; see test_certificates.py.
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}

Doc = dict[str, Any]


def render(folder: Path, namespace: str | None = None) -> list[Doc]:
    """kustomize build, for kustomizations made of resources and namespace only (the
    only features deploy/ uses, so the output is what kustomize itself would give)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"{folder}: the test renderer does not support {unsupported}"
    namespace = kustomization.get("namespace", namespace)
    docs: list[Doc] = []
    for entry in kustomization["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += render(path, namespace)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def config_map_file(docs: list[Doc], name: str, key: str) -> dict[str, Any]:
    return yaml.safe_load(named(docs, "ConfigMap", name)["data"][key])


def test_yaml_lint() -> None:
    files = sorted(str(p) for p in DEPLOY.rglob("*.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(ROOT / ".yamllint.yaml"), *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_manifest_validates_against_kubernetes_schemas(overlay: Path) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["kind"] not in CERT_MANAGER_KINDS:
            kubernetes_validate.validate(doc, desired_version=K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_engine_invariants(overlay: Path) -> None:
    docs = render(overlay)
    headless = named(docs, "Service", "tera-engines")
    assert headless["spec"]["clusterIP"] == "None"
    engines = [
        s
        for s in of_kind(docs, "StatefulSet")
        if s["spec"]["template"]["metadata"]["labels"].get("tera.ai/role") == "engine"
    ]
    assert engines, "at least one model block"
    for engine in engines:
        pod = engine["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert headless["spec"]["selector"].items() <= labels.items(), "headless selects it"
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        config = EngineConfig.model_validate(_engine_config(docs, pod))
        # The kubelet speaks no TLS: probes go to the plaintext health-only port.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["health"] == config.health_port
        # Liveness must survive a drain (readiness goes NOT_SERVING, the process lives).
        assert container["livenessProbe"]["grpc"]["service"] == "liveness"
        assert config.port == ports["grpc"] and config.host == "0.0.0.0"
        assert config.mux_stream_port == ports["mux-stream"], "the router's stream links"
        assert config.tls is not None, "engines serve mutual TLS only"
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert grace >= config.drain_grace_s + pre_stop, "drain completes before SIGKILL"
        if config.backend == "vllm" and "nvidia.com/gpu" in container["resources"]["limits"]:
            assert container["resources"]["requests"]["nvidia.com/gpu"] >= (
                config.vllm.tensor_parallel_size * config.vllm.pipeline_parallel_size
            )


def _engine_config(docs: list[Doc], pod: Doc) -> dict[str, Any]:
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    return config_map_file(docs, volume["configMap"]["name"], "engine.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_router_discovers_the_headless_service(overlay: Path) -> None:
    docs = render(overlay)
    router = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    headless = named(docs, "Service", "tera-engines")
    namespace = headless["metadata"]["namespace"]
    port = headless["spec"]["ports"][0]["port"]
    assert router.dns == [f"tera-engines.{namespace}.svc.cluster.local:{port}"]
    edge = named(docs, "Deployment", "tera-edge")["spec"]["template"]["spec"]["containers"][0]
    router_service = named(docs, "Service", "tera-router")
    router_target = (
        f"{router_service['metadata']['name']}:{router_service['spec']['ports'][0]['port']}"
    )
    assert edge["args"][edge["args"].index("--router") + 1] == router_target
    # Stream links: the edge's dial the router Service on the port GetLoad names.
    assert edge["args"][edge["args"].index("--router-transport") + 1] == "stream"
    assert router.engine_transport == "stream"
    pod = named(docs, "Deployment", "tera-router")["spec"]["template"]["spec"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    service_ports = {p["name"]: p["port"] for p in router_service["spec"]["ports"]}
    assert router.mux_stream_port == container_ports["mux-stream"] == service_ports["mux-stream"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_only_the_edge_is_exposed_and_engines_accept_only_the_router(overlay: Path) -> None:
    docs = render(overlay)
    exposed = [
        s["metadata"]["name"]
        for s in of_kind(docs, "Service")
        if s["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort")
    ]
    assert exposed == ["tera-edge"]
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "default deny"
    engine_rules = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels") == {"tera.ai/role": "engine"}
    ]
    (rule,) = engine_rules
    sources = [s["podSelector"]["matchLabels"] for r in rule["spec"]["ingress"] for s in r["from"]]
    assert sources == [{"tera.ai/role": "router"}]
    # The gRPC port and the stream links' port, of engines and of the router.
    engine_ports = {p["port"] for r in rule["spec"]["ingress"] for p in r["ports"]}
    assert engine_ports == {50061, 50063}
    (router_rule,) = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels") == {"tera.ai/role": "router"}
    ]
    router_ports = {p["port"] for r in router_rule["spec"]["ingress"] for p in r["ports"]}
    assert router_ports == {50051, 50053}


def test_api_keys_come_from_a_secret() -> None:
    docs = render(OVERLAYS[0])
    edge = named(docs, "Deployment", "tera-edge")["spec"]["template"]["spec"]["containers"][0]
    (env,) = [e for e in edge["env"] if e["name"] == "TERA_API_KEYS"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert named(docs, "Secret", ref["name"])
    assert all(
        "OTEL_EXPORTER_OTLP_ENDPOINT" in {e["name"] for e in c["env"]}
        for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
        if d["metadata"]["name"] != "jaeger"
        for c in d["spec"]["template"]["spec"]["containers"]
    )


def _container(docs: list[Doc], name: str) -> Doc:
    return named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_router_routes_as_tera_run_does(overlay: Path) -> None:
    """A deployment routes by what each engine's prefix cache holds, as `make run` and
    the cache-routing benchmarks do, not by the policy the manifests were first written
    with (p2c)."""
    docs = render(overlay)
    router = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    assert router.policy == RouterConfig().policy == "cache_aware"
    assert not router.model_policies


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_router_requires_callers_to_be_tenants(overlay: Path) -> None:
    """Any pod with a certificate from the CA (an engine's, say) reaching the router
    must still be a tenant: the edge by its certificate's name, others by a key."""
    docs = render(overlay)
    router = RouterConfig.model_validate(config_map_file(docs, "tera-router", "router.yaml"))
    assert router.auth.required
    edge_certificate = named(docs, "Certificate", "tera-edge")["spec"]["commonName"]
    assert edge_certificate in router.auth.edge_identities
    keys = {
        c: [e["valueFrom"] for e in _container(docs, c)["env"] if e["name"] == "TERA_API_KEYS"]
        for c in ("tera-edge", "tera-router")
    }
    assert keys["tera-router"] and keys["tera-router"] == keys["tera-edge"], "the edge's keys"


def test_dockerfiles_copy_what_exists() -> None:
    for dockerfile in (DEPLOY / "docker").glob("Dockerfile.*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_the_edge_and_router_keep_off_the_engines_nodes_where_they_can(overlay: Path) -> None:
    """vLLM's EngineCore spins on a host core between steps; the relay's pods prefer
    nodes without engines (a preference: a cluster of GPU nodes only still schedules them)."""
    docs = render(overlay)
    pods = [s["spec"]["template"]["metadata"]["labels"] for s in of_kind(docs, "StatefulSet")]
    for name in ("tera-edge", "tera-router"):
        spec = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        anti = spec["affinity"]["podAntiAffinity"]
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert selector == {"tera.ai/role": "engine"}
        assert any(selector.items() <= labels.items() for labels in pods), "selects engines"
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
