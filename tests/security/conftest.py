"""A real vLLM engine, router and edge with mutual TLS on every gRPC hop, once per
session: the hostile-input table and the mTLS end-to-end check share it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.certs import ensure_local_certs
from devstack.engine_args import vllm_engine_args
from devstack.stack import Stack
from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import CACHE_DIR, RunningStack, _plan


@pytest.fixture(scope="session")
def vllm_mtls_stack(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("vllm-mtls")
    plan = _plan(
        root,
        1,
        vllm_engine_args(model_dir, CACHE_DIR),
        [DEFAULT_MODEL_ID],
        tls_dir=ensure_local_certs(root / "tls"),
    )
    stack = Stack(plan).start(timeout_s=600)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()
