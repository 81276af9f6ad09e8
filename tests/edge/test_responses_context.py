"""The Responses API's conversation against the model's context, on a stand-in engine
whose context is 64 tokens (a message costs its words + 4).

truncation "auto" drops the oldest turns (never the instructions) until the request
fits; "disabled" (the default) answers 400; the key's token reservation counts the
stored turns a previous_response_id brings, not only the new input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml
from openai import OpenAI

from tests.conftest import SCRIPTED_MODEL, RunningStack

KEYS = {"plain": "sk-tera-plain", "metered": "sk-tera-metered"}
CONTEXT = 64
TWENTY_WORDS = " ".join(f"w{i}" for i in range(20))  # a 24-token user message


def _catalog(path: Path) -> Path:
    keys = [
        {"name": "plain", "key": KEYS["plain"]},
        {"name": "metered", "key": KEYS["metered"], "limits": {"tokens_per_minute": 600}},
    ]
    path.write_text(yaml.safe_dump({"models": [{"id": SCRIPTED_MODEL}], "keys": keys}))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from devstack.stack import Stack
    from tests.conftest import _plan, scripted_args

    folder = tmp_path_factory.mktemp("responses-context")
    engine_args = [*scripted_args(), "--max-context-length", str(CONTEXT)]
    edge_args = ["--catalog", str(_catalog(folder / "catalog.yaml"))]
    plan = _plan(folder, 1, engine_args, [SCRIPTED_MODEL], edge_args=edge_args)
    stack = Stack(plan).start(timeout_s=60)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def _client(stack: RunningStack, key: str = "plain") -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=KEYS[key], max_retries=0)


def _first_turn(client: OpenAI) -> str:
    """system 6 + user 24 + 4 output = 34 of 64 tokens; the stored answer costs 8."""
    r = client.responses.create(
        model=SCRIPTED_MODEL, instructions="be brief", input=TWENTY_WORDS, max_output_tokens=4
    )
    assert r.usage is not None and r.usage.input_tokens == 30
    return r.id


def test_auto_drops_the_oldest_turn_and_keeps_the_instructions(small: RunningStack) -> None:
    client = _client(small)
    r = client.responses.create(
        model=SCRIPTED_MODEL,
        previous_response_id=_first_turn(client),
        instructions="be brief",
        input=TWENTY_WORDS,
        max_output_tokens=4,
        truncation="auto",
    )
    # Whole: 6 + 24 + 8 + 24 = 62, + 4 > 64. Without the first user turn: 6 + 8 + 24.
    assert r.truncation == "auto" and r.status == "incomplete" and r.output_text
    assert r.usage is not None and r.usage.input_tokens == 38


def test_disabled_refuses_a_conversation_too_long(small: RunningStack) -> None:
    client = _client(small)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model=SCRIPTED_MODEL,
            previous_response_id=_first_turn(client),
            instructions="be brief",
            input=TWENTY_WORDS,
            max_output_tokens=4,
        )
    assert "maximum context length is 64" in err.value.message
    assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_auto_cannot_shorten_a_single_message_too_long(small: RunningStack) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        _client(small).responses.create(
            model=SCRIPTED_MODEL,
            input=" ".join(["w"] * 70),
            max_output_tokens=4,
            truncation="auto",
            store=False,
        )


def test_reservation_counts_the_stored_turns(small: RunningStack) -> None:
    """600 tokens a minute; each turn's input is ~400 by the edge's estimate (4
    characters a token) but 5 by the engine's count, so the first turn settles small.
    The second turn carries the first one's input: ~800 reserved, over the limit."""
    client = _client(small, "metered")
    long_word = "x" * 1600
    first = client.responses.create(
        model=SCRIPTED_MODEL, input=long_word, max_output_tokens=4, truncation="auto"
    )
    with pytest.raises(openai.RateLimitError, match="tokens per minute"):
        client.responses.create(
            model=SCRIPTED_MODEL,
            previous_response_id=first.id,
            input=long_word,
            max_output_tokens=4,
        )
    short = client.responses.create(model=SCRIPTED_MODEL, input=long_word, max_output_tokens=4)
    assert short.status == "incomplete"  # the same input without the stored turn fits


def test_reservation_counts_what_the_engine_is_sent(small: RunningStack) -> None:
    """A stored answer with logprobs is ~50 KB of JSON but ~300 characters of text: the
    reservation counts the text the engine gets, not the stored JSON (~12,000 tokens,
    far over the key's 600)."""
    client = _client(small, "metered")
    first = client.responses.create(
        model=SCRIPTED_MODEL,
        input="hi",
        max_output_tokens=50,
        include=["message.output_text.logprobs"],
        top_logprobs=20,
    )
    assert len(first.output[0].content[0].logprobs) == 50  # type: ignore[union-attr]
    follow = client.responses.create(
        model=SCRIPTED_MODEL,
        previous_response_id=first.id,
        input="more",
        max_output_tokens=4,
        truncation="auto",  # 5 + 54 + 5 + 4 > 64: the first "hi" goes
    )
    assert follow.usage is not None and follow.usage.input_tokens == 59
