"""The official openai SDK, unchanged, against the real stack (vLLM engine)."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from services.engine.model_prep import DEFAULT_MODEL_ID
from tests.conftest import RunningStack

MODEL = DEFAULT_MODEL_ID
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(vllm_stack: RunningStack) -> OpenAI:
    return OpenAI(base_url=vllm_stack.base_url, api_key="sk-tera-local", max_retries=0)


@pytest.fixture
def aclient(vllm_stack: RunningStack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=vllm_stack.base_url, api_key="sk-tera-local", max_retries=0)


def test_chat_answers(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32)
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_gives_length_and_exact_count(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_stream_equals_non_stream_at_temperature_zero(client: OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    # include_usage: the last chunk has no choices and carries the same usage.
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_seed_reproduces(client: OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 1.0}
    a = client.chat.completions.create(**kwargs, seed=1234)
    b = client.chat.completions.create(**kwargs, seed=1234)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_sequence_stops(client: OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    full = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    words = full.split()
    assert len(words) >= 3, full
    stop_word = words[2]
    cut = full.index(stop_word)
    r = client.chat.completions.create(**kwargs, stop=[stop_word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:cut]


def test_models_list_and_retrieve(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)  # the id contains a "/"
    assert model.id == MODEL and model.owned_by


def test_completions(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert r.object == "text_completion"
    assert r.choices[0].text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens <= 6


def test_completions_stream(client: OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices
    )
    assert streamed == whole


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no/such-model", messages=QUESTION)
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "no/such-model" in body["message"]


def test_bad_request_is_400_not_500(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)
    assert err.value.body["param"] == "temperature"  # type: ignore[index]


async def test_async_client_streams(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    r = await aclient.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert r.choices[0].message.content


def test_n_choices(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=6, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, n=2, stream=True
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_chat_logprobs(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert bytes(token.bytes or []).decode() == token.token
        # Greedy: the sampled token is the most likely one.
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-3)


def test_context_overflow_is_400_before_any_work(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2040)
    assert err.value.body["param"] == "max_tokens"  # type: ignore[index]
    assert "maximum context length is 2048" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="word " * 2100, max_tokens=1)
    assert err.value.body["param"] == "prompt"  # type: ignore[index]


def test_completions_echo_tokens_and_logprobs(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    choice = r.choices[0]
    assert choice.text.startswith("Hello") and len(choice.text) > len("Hello")
    lp = choice.logprobs
    assert lp is not None and len(lp.tokens or []) == 3
    assert all(len(t) <= 2 for t in lp.top_logprobs or [])
    assert (lp.text_offset or [])[0] == len("Hello")
    ids = client.completions.create(
        model=MODEL, prompt=[[504, 3458, 314]], max_tokens=3, temperature=0
    )
    assert ids.usage is not None and ids.usage.prompt_tokens == 3
    many = client.completions.create(model=MODEL, prompt=["One", "Two"], max_tokens=2, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
