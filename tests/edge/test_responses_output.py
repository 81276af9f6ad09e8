"""What a response carries besides its text, through the official SDK on stand-in
engines: output_text logprobs (`include`, `top_logprobs`), in the response and in its
stream's text events; `text.verbosity` validated and echoed; `include` values checked.

The stand-in's token j is "tok{j} " with log-probability -0.25 * (j % 4), its top
alternatives itself, then "alt1", "alt2"... (services/engine/backends/scripted.py).
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.conftest import SCRIPTED_MODEL, RunningStack

LOGPROBS = "message.output_text.logprobs"


@pytest.fixture(scope="module")
def client(shared_scripted_stack: RunningStack) -> OpenAI:
    return OpenAI(base_url=shared_scripted_stack.base_url, api_key="sk-x", max_retries=0)


def _create(client: OpenAI, **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs = {"store": False, **kwargs}
    return client.responses.create(  # type: ignore[call-overload]
        model=SCRIPTED_MODEL, input="hi", max_output_tokens=4, **kwargs
    )


def test_logprobs_on_output_text(client: OpenAI) -> None:
    r = _create(client, include=[LOGPROBS], top_logprobs=2)
    part = r.output[0].content[0]
    assert [lp.token for lp in part.logprobs] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert [lp.logprob for lp in part.logprobs] == [0.0, -0.25, -0.5, -0.75]
    for lp in part.logprobs:
        assert lp.bytes == list(lp.token.encode())
        assert [t.token for t in lp.top_logprobs] == [lp.token, "alt1"]
        assert lp.top_logprobs[1].logprob == lp.logprob - 1


def test_no_logprobs_unless_asked(client: OpenAI) -> None:
    assert _create(client).output[0].content[0].logprobs == []
    # A count of alternatives asks for logprobs too: it means nothing without them.
    implied = _create(client, top_logprobs=1).output[0].content[0].logprobs
    assert len(implied) == 4 and all(len(lp.top_logprobs) == 1 for lp in implied)


def test_streamed_text_events_carry_the_logprobs(client: OpenAI) -> None:
    events = list(_create(client, include=[LOGPROBS], top_logprobs=3, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    streamed = [(lp.token, lp.logprob) for e in deltas for lp in e.logprobs]
    final = events[-1].response.output[0].content[0]
    assert streamed == [(lp.token, lp.logprob) for lp in final.logprobs] and len(streamed) == 4
    assert all(len(lp.top_logprobs) == 3 for e in deltas for lp in e.logprobs)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert [lp.token for lp in done.logprobs] == [t for t, _ in streamed]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.content[0].logprobs == []  # a snapshot, not the finished part


@pytest.mark.parametrize(
    ("include", "words"),
    [
        (["message.output_text.logprob"], "'message.output_text.logprob' is not a value"),
        (["reasoning.encrypted_content"], "encrypted reasoning is not offered"),
    ],
)
def test_include_values_are_checked(client: OpenAI, include: list[str], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _create(client, include=include)
    assert words in err.value.message and err.value.param == "include"  # type: ignore[attr-defined]


def test_include_of_refused_tools_is_harmless(client: OpenAI) -> None:
    r = _create(client, include=["file_search_call.results", "web_search_call.results"])
    assert r.output_text


def test_verbosity_is_validated_and_echoed(client: OpenAI) -> None:
    assert _create(client).text.verbosity == "medium"  # OpenAI's default
    assert _create(client, text={"verbosity": "low"}).text.verbosity == "low"
    with pytest.raises(openai.BadRequestError) as err:
        _create(client, text={"verbosity": "loud"})
    assert err.value.param == "text.verbosity"  # type: ignore[attr-defined]


def test_retrieve_includes_logprobs_only_when_asked(client: OpenAI) -> None:
    # GET /v1/responses/{id} takes `include` as create does: logprobs are an extra field.
    r = _create(client, include=[LOGPROBS], top_logprobs=1, store=True)
    created = r.output[0].content[0].logprobs
    assert len(created) == 4
    assert client.responses.retrieve(r.id).output[0].content[0].logprobs == []
    again = client.responses.retrieve(r.id, include=[LOGPROBS]).output[0].content[0].logprobs
    assert again == created
    # Asked for on a response made without them: there is nothing to add.
    plain = _create(client, store=True)
    assert client.responses.retrieve(plain.id, include=[LOGPROBS]).output_text == plain.output_text
    assert (
        client.responses.retrieve(plain.id, include=[LOGPROBS]).output[0].content[0].logprobs == []
    )


@pytest.mark.parametrize(
    ("query", "param", "words"),
    [
        ({"include": ["message.output_text.logprob"]}, "include", "is not a value include"),
        ({"include": ["reasoning.encrypted_content"]}, "include", "encrypted reasoning"),
        ({"stream": True}, "stream", "background"),
    ],
)
def test_retrieve_checks_its_query(client: OpenAI, query: dict, param: str, words: str) -> None:
    r = _create(client, store=True)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.retrieve(r.id, **query)
    assert words in err.value.message and err.value.param == param  # type: ignore[attr-defined]
