"""Replica discovery: static addresses and DNS names re-resolved periodically.

A Kubernetes headless Service resolves to one A record per ready engine pod, so
re-resolving "engine-headless:50061" every few seconds tracks pods as they come and go.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from services.router.pool import ReplicaPool

log = logging.getLogger("tera.router.discovery")


def split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {target!r}")
    return host.strip("[]"), int(port)


async def resolve(target: str) -> set[str]:
    host, port = split_host_port(target)
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return {_format(info[4][0], port) for info in infos}


def _format(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def watch_dns(pool: ReplicaPool, target: str, refresh_s: float) -> None:
    """Keeps the pool's "dns:<target>" source equal to what the name resolves to."""
    source = f"dns:{target}"
    while True:
        try:
            addresses = await resolve(target)
        except OSError as exc:
            # A name that stops resolving (all pods gone) means no replicas, but a
            # transient resolver failure should not drop a working fleet: keep the last.
            log.warning("resolving %s failed: %s", target, exc)
            if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME:
                pool.set_source(source, set())
        else:
            pool.set_source(source, addresses)
        await asyncio.sleep(refresh_s)
