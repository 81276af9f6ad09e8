"""The stand-in's text: a deterministic function of the token position, streamed the way
a real engine's detokenizer streams it.

Token j is piece j's UTF-8 bytes (`token_text` formatted with i=j), or, with
`bytes_per_token`, the j-th slice of all pieces' bytes, so a multi-byte character can
span tokens; or, with `pieces`, the j-th of a fixed list, after whose last the choice stops
(an end-of-sequence). As in vLLM, incomplete UTF-8 is held back until it completes, and while stop
strings are set the last (longest stop - 1) characters are held back, so a stop string is
never streamed. What has been sent after m tokens depends on m alone: a continuation
replays m tokens and streams on from exactly where the cut stream stopped.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence


class TokenTape:
    """The bytes of token j, for every choice alike."""

    def __init__(self, token_text: str, bytes_per_token: int, pieces: Sequence[str] = ()) -> None:
        self._token_text = token_text
        self._fixed = [p.encode() for p in pieces]
        # Tokens in all, when the answer is fixed (pieces): the stream then ends.
        self.length = len(self._fixed) or None
        self._size = bytes_per_token
        self._buffer = bytearray()
        self._pieces = 0

    def token(self, j: int) -> bytes:
        if not self._size or self._fixed:
            return self._piece(j)
        end = (j + 1) * self._size
        while len(self._buffer) < end:
            self._buffer += self._piece(self._pieces)
            self._pieces += 1
        return bytes(self._buffer[j * self._size : end])

    def _piece(self, k: int) -> bytes:
        if self._fixed:
            return self._fixed[k] if k < len(self._fixed) else b""
        return self._token_text.format(i=k, t=int(time.monotonic() * 1e6)).encode()


class ChoiceText:
    """One choice's streamed text: decode, stop-string search, hold-back."""

    def __init__(self, tape: TokenTape, stop: Sequence[str]) -> None:
        self._tape = tape
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.position = 0  # tokens generated
        self.text = ""  # decoded text, cut at a stop string
        self.sent = 0  # characters streamed
        self.stopped = False

    def step(self) -> None:
        """Generates the next token."""
        searched_from = max(len(self.text) - self._hold, 0)
        self.text += self._decoder.decode(self._tape.token(self.position))
        self.position += 1
        self.stopped = self.position == self._tape.length  # the end of a fixed answer
        for stop in self._stop:
            at = self.text.find(stop, searched_from)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True

    def take(self, final: bool) -> str:
        """The text that can be streamed now and was not yet."""
        visible = len(self.text) if final or self.stopped else len(self.text) - self._hold
        if visible <= self.sent:
            return ""
        chunk = self.text[self.sent : visible]
        self.sent = visible
        return chunk
