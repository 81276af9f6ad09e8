"""The router's channels to engines follow its client certificate's files: after a
renewal (here, to a certificate the engine trusts, where the old one was from another
CA), its probes and calls use the new one without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from devstack.certs import issue, new_authority
from devstack.engine_args import scripted_engine_args
from devstack.processes import ManagedProcess, free_port, wait_until
from devstack.readiness import client_tls, grpc_serving, router_has_replicas
from services.common.tls import sync_channel
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.conftest import SCRIPTED_MODEL


def _service(name: str, args: list[str], tls_dir: Path, logs: Path) -> ManagedProcess:
    port = args[args.index("--port") + 1]
    log = logs / f"{name}-{port}.log"
    return ManagedProcess(name, [*args, "--tls-dir", str(tls_dir)], log_path=log).start()


def test_the_router_picks_up_a_renewed_client_certificate(tmp_path: Path) -> None:
    engines_ca = new_authority("the engines' CA")
    engine_tls = issue(engines_ca, "engine", tmp_path / "engine")
    caller_tls = issue(engines_ca, "edge", tmp_path / "caller")  # trusted after the renewal
    router_tls = issue(new_authority("a retired CA"), "router", tmp_path / "router")
    engine_port, router_port = free_port(), free_port()
    engine_address, router = f"127.0.0.1:{engine_port}", f"127.0.0.1:{router_port}"
    host = ["--host", "127.0.0.1"]
    engine_args = ["-m", "services.engine", *host, "--port", str(engine_port)]
    engine = _service(
        "engine", [*engine_args, *scripted_engine_args(SCRIPTED_MODEL)], engine_tls, tmp_path
    )
    router_args = ["-m", "services.router", *host, "--port", str(router_port)]
    router_process = _service(
        "router", [*router_args, "--replica", engine_address], router_tls, tmp_path
    )
    processes = [engine, router_process]
    try:
        wait_until(
            lambda: grpc_serving(engine_address, tls=client_tls(engine_tls)),
            timeout_s=60,
            watch=processes,
            what="the engine",
        )
        old_caller = client_tls(router_tls)  # the router trusts its own CA until renewed
        wait_until(lambda: grpc_serving(router, tls=old_caller), timeout_s=60, watch=processes)
        time.sleep(2)  # several probe rounds: the engine refuses the retired CA's certificate
        assert not router_has_replicas(router, 1, tls=old_caller)

        issue(engines_ca, "router", router_tls)  # cert-manager renews the router's Secret
        new_caller = client_tls(caller_tls)
        wait_until(
            lambda: router_has_replicas(router, 1, tls=new_caller),
            timeout_s=30,
            watch=processes,
            what="the engine back in rotation over the renewed certificate",
        )
        with sync_channel(router, new_caller) as channel:
            request = pb.GenerateRequest(request_id="r", model=SCRIPTED_MODEL)
            request.sampling.max_tokens = 3
            calls = pb_grpc.EngineStub(channel).Generate(request, timeout=30)
            assert sum(d.num_tokens for m in calls for d in m.choices) == 3
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc}\n{router_process.log_tail()}") from exc
    finally:
        for process in processes:
            process.stop(grace_s=2)
