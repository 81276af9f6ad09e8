"""gRPC channel and server options used on every hop.

Clients ping every 10 s so a dead peer is noticed on idle connections too; servers must
then permit those pings, or they answer GOAWAY "too_many_pings".
"""

# gRPC's I/O in the relay processes (edge, router), as their GRPC_EXPERIMENTS: the
# polling I/O gRPC Python ran on before its EventEngine rollout, where the thread that
# waits on the completion queue reads and writes the sockets itself. With the
# EventEngine (grpcio's default since) an EventEngine thread does the socket I/O and
# hands each message on to the poller thread: one more thread wake-up per message, on
# every hop, about 5 % of the relay's CPU at one token a message (README, "gRPC's I/O on
# the thread that polls"). grpc reads the variable once, when it is first imported, so
# whoever starts the process sets it: devstack for the local stack, the gateway image for
# Kubernetes. An experiment grpc no longer knows is logged as "Unknown experiment" and
# ignored. Engines keep the default: vLLM starts its own processes from theirs, and
# gRPC's fork handling under this setting is untested.
RELAY_GRPC_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
)

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly to a replica that comes back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
