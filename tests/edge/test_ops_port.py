"""/metrics and /admin/* answer on the operations port only, never on the public one."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import RunningStack

KEY, ADMIN = "sk-tera-ops-tenant", "sk-tera-ops-admin"


@pytest.fixture
def ops_stack(scripted_stack) -> RunningStack:  # type: ignore[no-untyped-def]
    return scripted_stack(edge_env={"TERA_API_KEYS": KEY, "TERA_ADMIN_KEY": ADMIN})


async def _get(url: str, key: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_public_port_hides_metrics_and_admin(ops_stack: RunningStack) -> None:
    public = ops_stack.base_url.removesuffix("/v1")
    for path in ("/metrics", "/admin/usage"):
        status, body = await _get(public + path, KEY)
        assert status == 404 and "unknown_url" in body, path
        status, body = await _get(public + path)
        assert status == 401 and "tera_" not in body, path
    assert (await _get(public + "/admin/usage", ADMIN))[0] == 401, "admin key is no tenant key"


async def test_ops_port_serves_metrics_and_admin(ops_stack: RunningStack) -> None:
    status, body = await _get(ops_stack.ops_url + "/metrics")
    assert status == 200 and "# HELP" in body
    assert KEY not in body and ADMIN not in body
    assert (await _get(ops_stack.ops_url + "/admin/usage"))[0] == 401
    assert (await _get(ops_stack.ops_url + "/admin/usage", KEY))[0] == 401
    status, body = await _get(ops_stack.ops_url + "/admin/usage", ADMIN)
    assert status == 200 and "keys" in body


def test_ops_listener_defaults_to_loopback() -> None:
    from services.edge.config import EdgeConfig

    config = EdgeConfig()
    assert config.ops_host == "127.0.0.1" and config.ops_port is None
