"""A streamed answer's messages written to the client on the router link's reader.

Between the edge and the router over GenerateMux (router_transport: mux, the default),
each streamed token used to wake its request's task and climb four async generators
(the relay, the observer, the merge, the SSE loop), each doing a few lines of work, to
reach one socket write. `Forwarding` does that same work as the message arrives: the SSE
loop supplies the `sink` (render and write now), the layers below add their per-message
bookkeeping as `taps`, and the relay hands `MuxCall.read` the whole chain. What the sink
refuses (the client's socket is backed up or closing) goes through the task as before,
and everything after it waits behind, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.proto_gen.tera.v1 import engine_pb2 as pb

log = logging.getLogger("tera.edge.forwarding")

Sink = Callable[[pb.GenerateResponse], bool]  # False: not taken, nothing done
Tap = Callable[[pb.GenerateResponse], None]


class Forwarding:
    """One upstream stream's chain; inert (refuses everything) until a sink is set."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self._taps: list[Tap] = []

    def tap(self, tap: Tap) -> None:
        """`tap` sees every message the sink takes, after it (a layer's bookkeeping)."""
        self._taps.append(tap)

    def __call__(self, data: bytes) -> bool:
        """MuxCall.read's Forward: runs on the link's reader, so it must not raise."""
        if self.sink is None:
            return False
        try:
            message = pb.GenerateResponse.FromString(data)
            if not self.sink(message):
                return False
        except Exception:  # the task path meets the same error where it can report it
            log.exception("forwarding a message failed; the stream's task takes it")
            return False
        try:
            for tap in self._taps:
                tap(message)
        except Exception:  # written already: the task must not write it again
            log.exception("a forwarded message's bookkeeping failed")
        return True
