"""tera_client without a server: packaging, requests, options and error mapping."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
import tera_client as tc
from tera_client.request import build_request

from services.common.grpc_options import CHANNEL_OPTIONS as SERVICE_OPTIONS


def test_imports_without_the_services_or_their_heavy_dependencies() -> None:
    code = (
        "import sys, tera_client\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = {'vllm', 'torch', 'aiohttp', 'services'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_channel_options_are_the_services_own() -> None:
    assert set(SERVICE_OPTIONS) <= set(tc.CHANNEL_OPTIONS)


def test_retry_policy_is_a_service_config() -> None:
    options = dict(tc.channel_options())
    policy = json.loads(options["grpc.service_config"])["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    assert options["grpc.enable_retries"] == 1
    assert dict(tc.channel_options(tc.NO_RETRIES))["grpc.enable_retries"] == 0


def test_chat_with_tools_and_schema_becomes_one_request() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    request = build_request(
        "m",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"a": 1}}},
            "max_tokens": 5,
            "stop": ["\n"],
        },
    )
    assert request.model == "m" and request.chat.messages[0].content == "hi"
    assert request.tools.choice.function_name == "f"
    assert json.loads(request.structured.json_schema) == {"a": 1}
    assert request.sampling.max_tokens == 5 and list(request.sampling.stop) == ["\n"]


def test_prompt_as_token_ids() -> None:
    assert list(build_request("m", {"prompt": [1, 2]}).prompt.token_ids.ids) == [1, 2]
    with pytest.raises(ValueError):
        build_request("m", {})


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "why"

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize(
    ("code", "trailing", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, (("tera-error-param", "x"),), tc.BadRequestError),
        (grpc.StatusCode.UNAUTHENTICATED, (), tc.AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, (), tc.PermissionDeniedError),
        (grpc.StatusCode.NOT_FOUND, (), tc.NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "2"),), tc.RateLimitError),
        (grpc.StatusCode.UNAVAILABLE, (("retry-after", "1"),), tc.ServiceUnavailableError),
        (grpc.StatusCode.UNAVAILABLE, (), tc.APIConnectionError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, (), tc.APITimeoutError),
        (grpc.StatusCode.INTERNAL, (), tc.InternalServerError),
    ],
)
def test_status_codes_become_openai_named_errors(code, trailing, expected) -> None:
    error = tc.from_rpc_error(_Failed(code, trailing))
    assert type(error) is expected and error.code == code and error.message == "why"
    if expected is tc.BadRequestError:
        assert error.param == "x"
    elif trailing:
        assert error.retry_after == float(trailing[0][1])
