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


MAPPED = Authenticator(
    AuthConfig(
        required=True,
        tenants=[
            TenantKey(name="a", sha256=sha256_hex("sk-a")),
            TenantKey(name="batch", sha256=sha256_hex("sk-batch"), priority="batch"),
        ],
        certificate_tenants={"tera-worker": "batch", "spiffe://tera/ns/jobs/sa/indexer": "a"},
    )
)


def _certificate(cn: str, dns: list[str] = (), uri: list[str] = ()) -> dict[str, list[bytes]]:
    return {
        "x509_common_name": [cn.encode()],
        "peer_dns": [n.encode() for n in dns],
        "peer_uri": [n.encode() for n in uri],
    }


def test_a_mapped_certificate_is_its_keys_tenant() -> None:
    by_cn = MAPPED.identify({}, _certificate("tera-worker"))
    assert by_cn.own and by_cn.tenant.name == "batch" and by_cn.tenant.priority == "batch"
    spiffe = _certificate("x", uri=["spiffe://tera/ns/jobs/sa/indexer"])
    assert MAPPED.identify({}, spiffe).tenant.name == "a", "a URI SAN (SPIFFE id)"
    assert MAPPED.identify({}, _certificate("x", dns=["tera-worker"])).tenant.name == "batch"
    key_wins = MAPPED.identify(_bearer("sk-a"), _certificate("tera-worker"))
    assert key_wins.tenant.name == "a"


def test_an_unmapped_certificate_is_unauthenticated() -> None:
    with pytest.raises(Refused) as err:
        MAPPED.identify({metadata.TENANT: "batch"}, _certificate("tera-stranger", dns=["x"]))
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_map_to_a_missing_key_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="no catalog key named"):
        AuthConfig(required=True, certificate_tenants={"tera-worker": "nobody"})
