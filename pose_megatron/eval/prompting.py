"""Prompt-building pieces shared by the passkey and RULER protocols.

- ``largest_fitting``: how many repeated units (filler sentences, list entries, words) fit a
  token budget, counted with the model's own tokenizer;
- ``ChatFrame``: the text a chat template puts before and after one user message, so a prompt
  can be sized token-exactly with the template included (RULER wraps every task in the model's
  template; instruct models need it to answer at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

# A string no prompt contains, rendered in place of the user message to find the template's parts.
_CONTENT_MARK = "\u2063RULER-CONTENT\u2063"


def largest_fitting(n_tokens: Callable[[int], int], budget: int, guess: int = 1) -> int:
    """The largest n >= 0 with ``n_tokens(n) <= budget``, or -1 when even n = 0 does not fit.

    ``n_tokens`` must be non-decreasing in n (more units never tokenise shorter); ``guess`` is
    where the search starts (e.g. budget / tokens per unit), so a good guess costs a few calls.
    Exponential search away from the guess, then bisection: O(log n) tokenizer calls.
    """
    if n_tokens(0) > budget:
        return -1
    lo, hi = 0, max(1, int(guess))  # invariant once set: fits(lo), not fits(hi)
    if n_tokens(hi) <= budget:
        lo = hi
        step = max(1, hi)
        while n_tokens(lo + step) <= budget:
            lo += step
            step *= 2
        hi = lo + step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_tokens(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class ChatFrame:
    """``before + user_message + after`` is the rendered one-turn chat with the assistant's turn
    opened (HF's ``add_generation_prompt=True``)."""

    before: str
    after: str

    @classmethod
    def from_renderer(cls, render: Callable[[str], str]) -> "ChatFrame":
        text = render(_CONTENT_MARK)
        if text.count(_CONTENT_MARK) != 1:
            raise ValueError("the chat template does not place the user message verbatim once")
        before, after = text.split(_CONTENT_MARK)
        return cls(before, after)


def chat_frame(render: Optional[Callable[[str], str]], mode: str) -> Optional[ChatFrame]:
    """The frame to use for ``--chat-template`` ``mode``: auto (the tokenizer's template when it
    has one), on (required) or off."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--chat-template must be auto, on or off, got {mode!r}")
    if mode == "off" or (render is None and mode == "auto"):
        return None
    if render is None:
        raise ValueError("--chat-template on: the tokenizer has no chat template")
    return ChatFrame.from_renderer(render)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
