"""A replica as the policies see it, without a channel."""

from __future__ import annotations

from services.common.arrivals import ArrivalRate
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.cache_index import PrefixIndex
from services.router.replica import Replica


class FakeReplica(Replica):
    """Selection only reads address, load, arrivals and the prefix index; no channel is opened."""

    def __init__(self, address: str, in_flight: int = 0) -> None:
        self.address = address
        self.in_flight = in_flight
        self.requests = 0
        self.reported = pb.LoadReport()
        self.prefix_index = PrefixIndex()
        self.prefill_tokens = 0
        self.arrivals = ArrivalRate()
