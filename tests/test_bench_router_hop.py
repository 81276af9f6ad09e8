"""bench/router_hop.py's direct stack really leaves the router off the path: with its
router stopped it still answers, where the shipped stack's edge, stopped the same way,
cannot (what shows the check can fail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from bench import router_hop
from bench.common import STAND_IN_MODEL
from devstack.stack import Stack


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.stop()


def _streamed_chat(stack: Stack) -> str:
    client = OpenAI(base_url=stack.plan.base_url, api_key="unused", max_retries=0, timeout=30)
    chunks = client.chat.completions.create(
        model=STAND_IN_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("direct", [True, False])
def test_only_the_direct_stack_answers_with_its_router_stopped(
    direct: bool, tmp_path: Path, started: list[Stack]
) -> None:
    stack = Stack(router_hop.plan(tmp_path, direct=direct)).start(timeout_s=60)
    started.append(stack)
    assert _streamed_chat(stack)
    assert stack.router is not None
    stack.router.stop()
    if direct:
        assert _streamed_chat(stack)
    else:
        with pytest.raises(openai.APIError):
            _streamed_chat(stack)
