"""A real DNS server (dnslib) on loopback, for the DNS-discovery fault scenarios."""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from devstack.processes import free_port

NXDOMAIN = 3


class _Resolver(BaseResolver):
    """A records for one name from the server's current list; NXDOMAIN for others."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".")
        if qname == self._server.name and request.q.qtype == QTYPE.A:
            for ip in list(self._server.addresses):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=0))
        elif qname != self._server.name:
            reply.header.rcode = NXDOMAIN
        return reply


class DnsServer:
    """A real DNS server answering A records for one name from a mutable list."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.port = free_port()
        self._server = DNSServer(_Resolver(self), port=self.port, address="127.0.0.1")

    def __enter__(self) -> DnsServer:
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
