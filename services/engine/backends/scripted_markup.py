"""The stand-in's tool-call and reasoning parsers, streamed as vLLM's are.

With `markup` on, a choice's streamed text is split the way a reasoning parser and a
tool parser split a real model's: text between `<think>` and `</think>` is
reasoning_text; `<tool_call>NAME` + newline opens a call (its first delta carries a fresh
id and the name, as vLLM's do), and the text up to `</tool_call>` is its arguments,
streamed in pieces; everything else is content. A marker split across messages is held
back until it is whole. The parser's state depends only on the text fed so far, so a
continuation that replays the emitted tokens through it goes on exactly where the cut
stream stopped (the id a replay makes is never sent: the caller has the first one).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from services.proto_gen.tera.v1 import engine_pb2 as pb

# Marker -> the mode it switches to.
MARKERS = {
    "<think>": "reasoning",
    "</think>": "content",
    "<tool_call>": "name",
    "</tool_call>": "content",
}


@dataclass
class Parsed:
    """One message's share of a choice's text, split by kind."""

    content: str = ""
    reasoning: str = ""
    calls: list[pb.ToolCallDelta] = field(default_factory=list)

    def arguments(self, index: int, text: str) -> None:
        if self.calls and self.calls[-1].index == index:
            self.calls[-1].arguments += text
        else:
            self.calls.append(pb.ToolCallDelta(index=index, arguments=text))


class MarkupParser:
    def __init__(self) -> None:
        self._mode = "content"
        self._pending = ""  # held back: a possible marker's start, or a name not ended
        self.calls = 0  # tool calls opened so far

    def feed(self, text: str, *, final: bool) -> Parsed:
        out, buf = Parsed(), self._pending + text
        while buf:
            if self._mode == "name":
                end = buf.find("\n")
                if end < 0:
                    break  # the name is not complete yet
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                out.calls.append(
                    pb.ToolCallDelta(index=self.calls, id=call_id, name=buf[:end].strip())
                )
                self._mode, buf = "args", buf[end + 1 :]
                continue
            at, marker = min(((buf.find(m), m) for m in MARKERS if m in buf), default=(-1, ""))
            if at < 0:
                keep = 0 if final else _partial_marker(buf)
                self._emit(out, buf[: len(buf) - keep])
                buf = buf[len(buf) - keep :]
                break
            self._emit(out, buf[:at])
            if self._mode == "args" and marker == "</tool_call>":
                self.calls += 1
            self._mode, buf = MARKERS[marker], buf[at + len(marker) :]
        self._pending = buf
        return out

    def _emit(self, out: Parsed, text: str) -> None:
        if not text:
            return
        if self._mode == "reasoning":
            out.reasoning += text
        elif self._mode == "args":
            out.arguments(self.calls, text)
        else:
            out.content += text


def _partial_marker(text: str) -> int:
    """The length of the longest end of `text` that begins some marker."""
    return max(
        (n for m in MARKERS for n in range(1, len(m)) if text.endswith(m[:n])),
        default=0,
    )
