"""Plaintext gRPC only between loopback addresses; a replica found by DNS at a public
address is not dialled in plaintext."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.common.tls import TLSConfig, allowed_without_tls, require_tls_off_loopback
from services.router.config import RouterConfig
from services.router.pool import ReplicaPool

TLS = TLSConfig(cert=Path("c"), key=Path("k"), ca=Path("a"))


def test_plaintext_only_on_loopback() -> None:
    assert allowed_without_tls(None, "127.0.0.1:1") and allowed_without_tls(None, "[::1]:1")
    assert allowed_without_tls(None, "localhost:1")
    assert not allowed_without_tls(None, "10.0.0.1:1") and allowed_without_tls(TLS, "10.0.0.1:1")
    with pytest.raises(ValueError, match=r"0\.0\.0\.0:50051"):
        require_tls_off_loopback(None, ["0.0.0.0:50051"], "listening on")
    with pytest.raises(ValueError, match="refusing plaintext"):
        RouterConfig(host="0.0.0.0")
    assert RouterConfig(host="0.0.0.0", tls=TLS).tls == TLS


async def test_a_public_replica_from_dns_is_not_dialled_in_plaintext() -> None:
    pool = ReplicaPool(RouterConfig(dns=["engines.example:50061"]))
    pool.set_source("dns:engines.example:50061", {"10.1.2.3:50061", "127.0.0.1:50061"})
    assert set(pool.replicas) == {"127.0.0.1:50061"}
    await pool.close()


async def test_client_channel_follows_a_renewed_certificate(tmp_path: Path) -> None:
    import asyncio

    from devstack.certs import issue, new_authority
    from devstack.readiness import client_tls
    from services.common.tls import RotatingChannel

    folder = issue(new_authority(), "edge", tmp_path / "edge")
    rotating = RotatingChannel("127.0.0.1:1", client_tls(folder), grace_s=0.05)
    first = rotating.current()
    assert rotating.current() is first, "unchanged files: the same channel"
    await asyncio.sleep(0.01)
    issue(new_authority(), "edge", folder)  # cert-manager renews the Secret
    second = rotating.current()
    assert second is not first and rotating.current() is second
    await asyncio.sleep(0.2)
    assert first.get_state() == grpc.ChannelConnectivity.SHUTDOWN, "the old one is closed"
    await rotating.close()
