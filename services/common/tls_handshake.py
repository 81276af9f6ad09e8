"""What a mutual TLS handshake between two ends of this process would conclude, checked
from their certificate files without one: whether it would succeed, and the client
certificate's names the server would see. services/common/mux_stream.py joins a link to
a listener of its own process in memory only where the handshake would have gone through,
so colocating the edge and the router (services/gateway) changes nothing but the cost.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from services.common.tls import TLSConfig


def handshake_names(
    server: TLSConfig | None, client: TLSConfig | None, host: str
) -> dict[str, list[bytes]] | None:
    """What a mutual TLS handshake between these two ends, the client dialling `host`,
    would tell the server of the client: its certificate's names where each end's
    certificate is in date and issued by the other's CA, and the server's names what the
    client expects (the files read now, so a renewal counts); {} with TLS at neither end;
    None where the handshake would fail, so the caller connects and meets it."""
    if server is None or client is None:
        return {} if server is None and client is None else None
    try:
        client_cert = _issued(client.cert, by=server.ca)
        server_cert = _issued(server.cert, by=client.ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    if not _names_host(server_cert, client.server_name or host):
        return None
    return certificate_names(client_cert)


def _names_host(cert: x509.Certificate, expected: str) -> bool:
    """Whether `cert`'s alternative names cover `expected` (an address or a DNS name)."""
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(expected) in alternatives.get_values_for_type(x509.IPAddress)
    except ValueError:  # a DNS name
        wanted = expected.lower()
        for name in alternatives.get_values_for_type(x509.DNSName):
            name = name.lower()
            if name == wanted or (
                name.startswith("*.") and wanted.partition(".")[2] == name[2:] and "." in wanted
            ):
                return True
        return False


def _issued(cert_file: Path, *, by: Path) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(by.read_bytes()))
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ValueError(f"{cert_file} is not in date")
    return cert


def certificate_names(cert: x509.Certificate) -> dict[str, list[bytes]]:
    """A certificate's names as `peer_names` gives them from a handshake's peer."""
    names: dict[str, list[bytes]] = {}
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        names.setdefault("x509_common_name", []).append(str(attribute.value).encode())
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        alternatives = None
    for name in alternatives.value if alternatives is not None else ():
        if isinstance(name, x509.DNSName):
            names.setdefault("peer_dns", []).append(name.value.encode())
        elif isinstance(name, x509.UniformResourceIdentifier):
            names.setdefault("peer_uri", []).append(name.value.encode())
    if names:
        names["transport_security_type"] = [b"ssl"]
    return names
