"""The router reads a request's model from its wire bytes, decoding nothing else."""

from __future__ import annotations

import pytest

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.wire import WireError, model_of, string_field


def _full_request(model: str) -> bytes:
    request = pb.GenerateRequest(request_id="r" * 200, model=model, coalesce_window_ms=7)
    request.chat.messages.add(role="user", content="x" * 300)  # a long nested field
    request.sampling.temperature = 0.5  # fixed32 inside a nested message
    request.sampling.seed = -1  # a 10-byte varint
    request.sampling.logit_bias[3] = 1.5
    request.tools.tools.add(name="model", parameters_json="{}")  # field 2 deeper down
    return request.SerializeToString()


def test_model_found_among_every_wire_type() -> None:
    assert model_of(_full_request("org/model-é")) == "org/model-é"


def test_speech_requests_too() -> None:
    speech = pb.SynthesizeRequest(input="hello", model="voice-model", speed=1.5)
    assert model_of(speech.SerializeToString()) == "voice-model"


def test_nested_field_2_is_not_the_model() -> None:
    assert model_of(_full_request("")) == ""


def test_last_value_wins_as_in_protobuf() -> None:
    data = pb.GenerateRequest(model="a").SerializeToString()
    data += pb.GenerateRequest(model="b").SerializeToString()
    assert model_of(data) == pb.GenerateRequest.FromString(data).model == "b"


@pytest.mark.parametrize("cut", [1, 5, 40])
def test_truncated_bytes_are_an_error(cut: int) -> None:
    data = _full_request("m")[:-cut]
    with pytest.raises(WireError):
        string_field(data, 2)
    assert model_of(data) in ("", "m")  # never raises to the relay


def test_garbage_is_no_model() -> None:
    assert model_of(b"\xff\xff\xff") == ""
    assert model_of(b"") == ""
