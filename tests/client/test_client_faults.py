"""tera_client against stand-in engines: missing metadata, retries that wait as the
server says, and a replica lost mid-stream surfacing as an error."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
import tera_client as tc

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tests.client.conftest import router_address
from tests.conftest import SCRIPTED_MODEL


def _raw_generate(address: str, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    """The generated stubs alone, as a team without the client would call; no metadata."""
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.EngineStub(channel).Generate(request, timeout=10))


def test_model_from_the_request_when_metadata_is_missing(shared_scripted_stack) -> None:
    request = pb.GenerateRequest(model=SCRIPTED_MODEL)
    request.prompt.text = "hi"
    request.sampling.max_tokens = 3
    answer = _raw_generate(router_address(shared_scripted_stack), request)
    assert "".join(c.text for m in answer for c in m.choices) == "tok0 tok1 tok2 "


def test_no_model_anywhere_is_invalid_argument_naming_it(shared_scripted_stack) -> None:
    request = pb.GenerateRequest()
    request.prompt.text = "hi"
    with pytest.raises(grpc.RpcError) as caught:
        _raw_generate(router_address(shared_scripted_stack), request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("tera-error-param", "model") in caught.value.trailing_metadata()
    with (
        tc.TeraClient(router_address(shared_scripted_stack)) as client,
        pytest.raises(tc.BadRequestError) as typed,
    ):
        client.complete("", prompt="hi")
    assert typed.value.param == "model"


def test_unknown_model_is_not_found(shared_scripted_stack) -> None:
    with (
        tc.TeraClient(router_address(shared_scripted_stack)) as client,
        pytest.raises(tc.NotFoundError),
    ):
        client.complete("no/such-model", prompt="hi")


def _hold_the_only_slot(address: str, max_tokens: int) -> threading.Thread:
    """Returns once the holder streams: admitted, so its slot is taken (a fixed sleep
    was too short on a loaded machine, and the second call took the slot)."""
    streaming = threading.Event()

    def run() -> None:
        with tc.TeraClient(address, retry=tc.NO_RETRIES) as holder:
            for _ in holder.generate(SCRIPTED_MODEL, prompt="hold", max_tokens=max_tokens):
                streaming.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert streaming.wait(timeout=60), "the holder never got a token"
    return thread


@pytest.fixture
def one_slot(scripted_stack) -> str:
    """A router before one stand-in engine that admits a single call at a time."""
    stack = scripted_stack(
        behaviour={"tokens_per_second": 10}, per_engine_args=[["--max-in-flight", "1"]]
    )
    return router_address(stack)


def test_refusal_carries_retry_after_and_grpc_pushback(one_slot: str) -> None:
    holder = _hold_the_only_slot(one_slot, max_tokens=30)
    with (
        tc.TeraClient(one_slot, retry=tc.NO_RETRIES) as client,
        pytest.raises(tc.RateLimitError) as caught,
    ):
        client.complete(SCRIPTED_MODEL, prompt="second")
    holder.join()
    assert caught.value.retry_after == 1
    request = pb.GenerateRequest(model=SCRIPTED_MODEL)
    request.prompt.text = "x"
    holder = _hold_the_only_slot(one_slot, max_tokens=30)
    with pytest.raises(grpc.RpcError) as raw:
        _raw_generate(one_slot, request)
    holder.join()
    assert ("grpc-retry-pushback-ms", "1000") in raw.value.trailing_metadata()


def test_rate_limited_call_is_retried_after_the_pushback(one_slot: str) -> None:
    # The slot frees ~1.3 s after the holder's first token (13 more at 10/s). Two retries
    # with gRPC's own backoff (0.1-0.2 s) are spent long before that; waiting 1 s each,
    # as told, reaches it at ~2 s.
    quick = tc.RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.2)
    holder = _hold_the_only_slot(one_slot, max_tokens=14)
    started = time.monotonic()
    with tc.TeraClient(one_slot, retry=quick) as client:
        answer = client.complete(SCRIPTED_MODEL, prompt="second", max_tokens=2)
    holder.join()
    assert answer.text == "tok0 tok1 "
    assert answer.choices[0].finish_reason == "length"
    assert time.monotonic() - started >= 1.0


def test_replica_killed_mid_stream_raises_never_a_short_answer(scripted_stack) -> None:
    stack = scripted_stack(behaviour={"tokens_per_second": 10})
    received: list[tc.Delta] = []
    with tc.TeraClient(router_address(stack)) as client:
        stream = client.generate(SCRIPTED_MODEL, prompt="long", max_tokens=100)
        with pytest.raises(tc.ServiceUnavailableError) as caught:
            for delta in stream:
                received.append(delta)
                if len(received) == 3:
                    stack.stack.engines[0].kill_group(signal.SIGKILL)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(received) >= 3
    assert all(d.finish_reason is None for d in received)
