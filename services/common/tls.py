"""Mutual TLS for every gRPC hop (edge → router → engines, and the router's probes).

Each service has its own certificate and key, and trusts one CA for its peers: servers
require a client certificate signed by it, clients verify the server's. The files are
laid out as cert-manager writes a Secret (tls.crt, tls.key, ca.crt), so `--tls-dir`
points at a mounted Secret or at the folder `tera run` generates. Servers re-read them
when they change, so a rotated certificate is used without a restart. Plaintext is for
loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel

log = logging.getLogger("tera.tls")


class TLSConfig(BaseModel):
    cert: Path
    key: Path
    ca: Path
    # The name the peer's certificate must carry when the address does not (engines
    # found by DNS are dialled by IP): e.g. "tera-engine".
    server_name: str | None = None

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def stamp(self) -> tuple[int, ...]:
        """The files' modification times: a change means a renewal (or one under way)."""
        return tuple(p.stat().st_mtime_ns for p in (self.cert, self.key, self.ca))


def tls_dir(value: str) -> dict[str, str]:
    """argparse type of --tls-dir: a folder holding tls.crt, tls.key and ca.crt."""
    folder = Path(value)
    return {
        n: str(folder / f) for n, f in (("cert", "tls.crt"), ("key", "tls.key"), ("ca", "ca.crt"))
    }


def add_tls_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-dir",
        dest="tls",
        type=tls_dir,
        help="mutual TLS: folder with tls.crt, tls.key, ca.crt (a cert-manager Secret)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    return address.rpartition(":")[0] or address


def allowed_without_tls(tls: TLSConfig | None, address: str) -> bool:
    return tls is not None or is_loopback(host_of(address))


def require_tls_off_loopback(tls: TLSConfig | None, addresses: Sequence[str], what: str) -> None:
    """Plaintext gRPC only between loopback addresses."""
    public = [a for a in addresses if not is_loopback(host_of(a))]
    if tls is None and public:
        raise ValueError(
            f"refusing plaintext gRPC {what} {', '.join(public)}: set tls (--tls-dir) "
            "or use 127.0.0.1"
        )


class _Reloading:
    """The server's certificate configuration, re-read when a file changes. gRPC calls
    it at each handshake; None means "unchanged"."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._stamp = tls.stamp()

    def configuration(self) -> Any:
        cert, key, ca = self._tls.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> Any:
        try:
            stamp = self._tls.stamp()
            if stamp == self._stamp:
                return None
            configuration = self.configuration()
        except (OSError, ValueError) as exc:  # mid-rotation: keep the current one
            log.warning("certificate reload failed, keeping the current one: %s", exc)
            return None
        self._stamp = stamp
        log.info("certificates changed on disk: new handshakes use them")
        return configuration


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    reloading = _Reloading(tls)
    return grpc.dynamic_ssl_server_credentials(
        reloading.configuration(), reloading, require_client_authentication=True
    )


def add_port(server: grpc.aio.Server, address: str, tls: TLSConfig | None) -> None:
    if tls is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, server_credentials(tls))


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _options(tls: TLSConfig, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return [*options, *extra]


def aio_channel(
    address: str,
    tls: TLSConfig | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        address, channel_credentials(tls), options=_options(tls, options), interceptors=interceptors
    )


def sync_channel(address: str, tls: TLSConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(tls), options=_options(tls, ()))


class RotatingChannel:
    """A client channel whose certificate follows its files: once they change (a
    renewal), new calls go over a new channel, and the old one is closed after its
    calls had `grace_s` to finish. Without TLS, one plain channel."""

    def __init__(
        self,
        address: str,
        tls: TLSConfig | None,
        *,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[Any] | None = None,
        grace_s: float = 600.0,
    ) -> None:
        self._open = lambda: aio_channel(address, tls, options=options, interceptors=interceptors)
        self._tls = tls
        self._grace_s = grace_s
        self._stamp = _stamp(tls)
        self._channel = self._open()
        self._retiring: set[asyncio.Task[None]] = set()

    def current(self) -> grpc.aio.Channel:
        try:
            stamp = _stamp(self._tls)
        except OSError:  # mid-rotation: keep the current channel
            return self._channel
        if stamp != self._stamp:
            log.info("client certificate changed on disk: new calls use it")
            old, self._channel, self._stamp = self._channel, self._open(), stamp
            task = asyncio.create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return self._channel

    async def _retire(self, old: grpc.aio.Channel) -> None:
        await asyncio.sleep(self._grace_s)
        await old.close()

    async def close(self) -> None:
        for task in self._retiring:
            task.cancel()
        await self._channel.close()


def _stamp(tls: TLSConfig | None) -> tuple[int, ...]:
    return () if tls is None else tls.stamp()
