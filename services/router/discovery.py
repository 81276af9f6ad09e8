"""Replica discovery: DNS names re-resolved periodically.

A Kubernetes headless Service resolves to one A record per ready engine pod, so
re-resolving "engine-headless:50061" every few seconds tracks pods as they come and go.
The system resolver is used by default (/etc/hosts and resolv.conf, as in a pod); a
named DNS server ("dns_server: 10.0.0.10:53") is queried directly with dnspython.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import dns.asyncresolver
import dns.exception
import dns.resolver

from services.router.pool import ReplicaPool

log = logging.getLogger("tera.router.discovery")


class NameGone(Exception):
    """The name no longer exists: no replicas (as opposed to a resolver failure)."""


def split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {target!r}")
    return host.strip("[]"), int(port)


def _format(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Resolver:
    def __init__(self, server: str | None = None, timeout_s: float = 2.0) -> None:
        self._dns: dns.asyncresolver.Resolver | None = None
        if server:
            host, port = split_host_port(server)
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [host]
            self._dns.port = port
            self._dns.lifetime = timeout_s

    async def resolve(self, target: str) -> set[str]:
        host, port = split_host_port(target)
        try:
            ipaddress.ip_address(host)
            return {_format(host, port)}
        except ValueError:
            pass
        ips = await (self._query(host) if self._dns else self._system(host))
        return {_format(ip, port) for ip in ips}

    async def _system(self, host: str) -> set[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                raise NameGone(host) from exc
            raise
        return {str(info[4][0]) for info in infos}

    async def _query(self, host: str) -> set[str]:
        assert self._dns is not None
        ips: set[str] = set()
        missing = 0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                missing += 1
                continue
            ips.update(r.to_text() for r in answer)
        if missing == 2:
            raise NameGone(host)
        return ips


async def watch_dns(pool: ReplicaPool, target: str, refresh_s: float, resolver: Resolver) -> None:
    """Keeps the pool's "dns:<target>" source equal to what the name resolves to."""
    source = f"dns:{target}"
    while True:
        try:
            pool.set_source(source, await resolver.resolve(target))
        except NameGone:
            pool.set_source(source, set())
        except (OSError, dns.exception.DNSException) as exc:
            # A resolver hiccup must not drop a working fleet: keep the last answer.
            log.warning("resolving %s failed: %s", target, exc)
        await asyncio.sleep(refresh_s)
