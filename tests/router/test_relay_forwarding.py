"""A committed stream between two multiplexed calls (edge → router → engine, both mux: the
default) is forwarded on the engine link's reader, past the relay's task and generators
(relay.py `_forwarded`). The caller still gets every token in order, and the layers above
the relay still get the message they read, the last one with the usage."""

from __future__ import annotations

import openai

from devstack.processes import free_port
from tests.conftest import SCRIPTED_MODEL
from tests.faults.fleet import router_metric

TOKENS = 40


async def test_a_forwarded_stream_arrives_in_order_and_its_usage_is_counted(scripted_stack) -> None:
    stack = scripted_stack(
        behaviour={"tokens_per_second": 200, "token_text": "t{i} "},
        router_args=["--metrics-port", str(free_port())],
    )
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    chunks = await client.chat.completions.create(
        model=SCRIPTED_MODEL,
        messages=[{"role": "user", "content": "one two three four"}],
        max_tokens=TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, deltas = "", None, 0
    async for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            deltas += bool(choice.delta.content)
    await client.close()
    assert deltas >= 3, "too few messages to have forwarded any"
    assert text == "".join(f"t{i} " for i in range(TOKENS))
    assert usage is not None and usage.completion_tokens == TOKENS
    # The router counts a replica's prompt tokens from the stream's last message: had it
    # been forwarded past the relay too, the count would stay 0.
    assert usage.prompt_tokens > 0
    assert router_metric(stack, "tera_router_prompt_tokens_total") == usage.prompt_tokens
