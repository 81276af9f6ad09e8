"""Builds a response's output items from the engine's deltas, with the typed events that
stream them.

Each delta extends the open item (reasoning, message or one function call) or closes it
and opens the next, so items come in the order the model wrote them. A reasoning item
carries the reasoning as reasoning_text content and, when reasoning.summary asks, as its
one summary part too (with the summary events). Non-streamed responses use the same
builder and drop the events: one path for both.
"""

from __future__ import annotations

import copy
from typing import Any

from services.edge.responses.items import Item, new_id
from services.proto_gen.tera.v1 import engine_pb2 as pb

Event = dict[str, Any]


def _output_text(text: str) -> Item:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _logprob(lp: pb.TokenLogprob) -> Item:
    """An output_text part's logprob (OpenAI's LogProb, with bytes)."""
    top = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top]
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes), "top_logprobs": top}


class OutputBuilder:
    def __init__(self, *, summary: bool, logprobs: bool = False) -> None:
        self.items: list[Item] = []
        self._summary = summary  # reasoning.summary asked for: fill the item's summary
        self._logprobs = logprobs  # include message.output_text.logprobs (or top_logprobs)
        self._open: tuple[str, int] | None = None  # (kind, tool call index)
        self._calls: dict[int, Item] = {}

    def add(self, d: pb.ChoiceDelta) -> list[Event]:
        events: list[Event] = []
        if d.reasoning_text:
            events += self._ensure(("reasoning", -1))
            events.append(self._delta("response.reasoning_text.delta", d.reasoning_text))
            self.items[-1]["content"][0]["text"] += d.reasoning_text
            if self._summary:
                events.append(self._summary_delta(d.reasoning_text))
        if d.text:
            events += self._ensure(("message", -1))
            # A delta's logprobs are its tokens'; the engine splits reasoning from answer
            # per delta, so those of a text delta belong to the text.
            logprobs = [_logprob(lp) for lp in d.logprobs] if self._logprobs else []
            event = self._delta("response.output_text.delta", d.text)
            events.append({**event, "logprobs": [_event_shape(lp) for lp in logprobs]})
            part = self.items[-1]["content"][0]
            part["text"] += d.text
            part["logprobs"] += logprobs
        for call in d.tool_calls:
            events += self._ensure(("function_call", call.index), call)
            if call.arguments:
                item = self._calls[call.index]
                item["arguments"] += call.arguments
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": len(self.items) - 1,
                        "delta": call.arguments,
                    }
                )
        return events

    def close(self, status: str) -> list[Event]:
        """Closes the open item; `status` is "completed" or "incomplete"."""
        if self._open is None:
            return []
        self._open = None
        item, index = self.items[-1], len(self.items) - 1
        item["status"] = status
        kind = item["type"]
        events: list[Event] = []
        if kind == "function_call":
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
        else:
            part = item["content"][0]
            text_event = f"response.{'output' if kind == 'message' else 'reasoning'}_text.done"
            done = {**self._part_ref(), "text": part["text"]}
            if kind == "message":
                done["logprobs"] = [_event_shape(lp) for lp in part["logprobs"]]
            events.append({"type": text_event, **done})
            events.append({"type": "response.content_part.done", **self._part_ref(), "part": part})
            if kind == "reasoning":
                del item["status"]  # reasoning items carry no status
                if self._summary:
                    events += self._close_summary()
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        return events

    def _ensure(self, kind: tuple[str, int], call: pb.ToolCallDelta | None = None) -> list[Event]:
        if self._open == kind:
            return []
        events = self.close("completed")
        self._open = kind
        item = self._new_item(kind[0], call)
        self.items.append(item)
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": len(self.items) - 1,
                "item": _copy(item),
            }
        )
        if kind[0] != "function_call":
            part = _copy(item["content"][0])
            events.append({"type": "response.content_part.added", **self._part_ref(), "part": part})
        if kind[0] == "reasoning" and self._summary:
            item["summary"].append({"type": "summary_text", "text": ""})
            part = _copy(item["summary"][0])
            events.append(
                {
                    "type": "response.reasoning_summary_part.added",
                    **self._summary_ref(),
                    "part": part,
                }
            )
        return events

    def _new_item(self, kind: str, call: pb.ToolCallDelta | None) -> Item:
        if kind == "reasoning":
            text = {"type": "reasoning_text", "text": ""}
            return {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [text]}
        if kind == "message":
            return {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [_output_text("")],
            }
        assert call is not None
        item = {
            "id": new_id("fc"),
            "type": "function_call",
            "call_id": call.id or new_id("call"),
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        self._calls[call.index] = item
        return item

    def _part_ref(self) -> Event:
        index = len(self.items) - 1
        return {"item_id": self.items[index]["id"], "output_index": index, "content_index": 0}

    # The summary asked for by reasoning.summary: open models write no separate summary,
    # so it is the reasoning text itself, streamed as OpenAI streams summaries (one part).
    def _summary_ref(self) -> Event:
        index = len(self.items) - 1
        return {"item_id": self.items[index]["id"], "output_index": index, "summary_index": 0}

    def _summary_delta(self, text: str) -> Event:
        self.items[-1]["summary"][0]["text"] += text
        return {
            "type": "response.reasoning_summary_text.delta",
            **self._summary_ref(),
            "delta": text,
        }

    def _close_summary(self) -> list[Event]:
        part = self.items[-1]["summary"][0]
        ref = self._summary_ref()
        return [
            {"type": "response.reasoning_summary_text.done", **ref, "text": part["text"]},
            {"type": "response.reasoning_summary_part.done", **ref, "part": _copy(part)},
        ]

    def _delta(self, kind: str, text: str) -> Event:
        return {"type": kind, **self._part_ref(), "delta": text}


def _event_shape(logprob: Item) -> Item:
    """A part's logprob as events carry it (ResponseLogProb has no bytes)."""
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in logprob["top_logprobs"]]
    return {"token": logprob["token"], "logprob": logprob["logprob"], "top_logprobs": top}


def _copy(item: Item) -> Item:
    """A snapshot for an event: later deltas must not change what was already sent (a
    part's logprobs list grows in place, hence deep)."""
    return copy.deepcopy(item)


def usage_json(usage: pb.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
