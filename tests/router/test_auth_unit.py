"""The router's caller identification, without processes: keys, edge certificates,
forged tenant metadata."""

from __future__ import annotations

import grpc
import pytest

from services.catalog.schema import sha256_hex
from services.common import metadata
from services.router.auth import AuthConfig, Authenticator, Refused, TenantKey

AUTH = Authenticator(
    AuthConfig(
        tenants=[
            TenantKey(name="a", sha256=sha256_hex("sk-a")),
            TenantKey(name="b", sha256=sha256_hex("sk-b"), models=["m1"]),
        ]
    )
)
EDGE = {"x509_common_name": [b"tera-edge"], "transport_security_type": [b"ssl"]}
OTHER = {"x509_common_name": [b"tera-engine"], "transport_security_type": [b"ssl"]}


def _bearer(key: str) -> dict[str, str]:
    return {metadata.AUTHORIZATION: f"Bearer {key}"}


def test_keys_map_to_tenants_with_their_allowlists() -> None:
    assert AUTH.identify(_bearer("sk-a"), OTHER).tenant.name == "a"
    b = AUTH.identify({**_bearer("sk-b"), metadata.TENANT: "a"}, EDGE)
    assert b.tenant.name == "b" and b.allows("m1") and not b.allows("m2"), "a key wins"


@pytest.mark.parametrize(
    ("invocation", "context"),
    [({}, OTHER), ({}, {}), (_bearer("sk-wrong"), EDGE), ({metadata.TENANT: "a"}, OTHER)],
    ids=["no key", "no certificate", "wrong key", "forged tenant"],
)
def test_unauthenticated(invocation: dict[str, str], context: dict) -> None:
    with pytest.raises(Refused) as err:
        AUTH.identify(invocation, context)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_edge_speaks_for_its_user() -> None:
    assert AUTH.identify({metadata.TENANT: "a"}, EDGE).tenant.name == "a"
    assert AUTH.identify({}, EDGE).tenant.name == "edge"
