"""Sliding-window perplexity, the protocol of the PoSE paper (Table 1) and of PI/YaRN.

Window math, for one document of n tokens t[0..n-1], evaluation length ``ctx`` and ``stride``:

    m = ctx - 1                      tokens of the document per window (BOS takes one slot)
    begins b = 0, stride, 2*stride, ... ; the last window is the first one with end == n
    window k:  end_k    = min(b_k + m, n)
               input_k  = [BOS] + t[b_k : end_k]            (at most ctx tokens, positions 0..)
               scored_k = t[end_{k-1} : end_k]              (end_{-1} = 0)

Each window scores only the tokens after the previous window's end, so every document token is
scored exactly once, t[0] from BOS alone and later tokens with up to ``ctx - 1`` tokens of context
(at least ``ctx - 1 - stride`` in every window after the first). This needs
``1 <= stride <= ctx - 1``. Example: n=10, ctx=5, stride=2 gives windows (begin, end, scored)
(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2): 10 tokens scored.

Across documents the NLL is token-weighted: ppl = exp(sum of all scored NLL / number of scored
tokens), not a mean of per-document perplexities. Sums are kept in float64.

The result also keeps the NLL sum of every ``BLOCK_TOKENS`` consecutive scored tokens, in scoring
order: two models scored on the same text can then be compared block by block (a paired interval
for their perplexity ratio), and, for one window per document, the blocks past a position say how
the model does there alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    begin: int  # first document token in the window
    end: int  # one past the last document token in the window
    n_scored: int  # the last n_scored tokens of t[begin:end] are scored

    @property
    def n_input(self) -> int:
        return 1 + self.end - self.begin  # BOS included


def sliding_windows(n_tokens: int, ctx: int, stride: int) -> List[Window]:
    """The windows covering a document of ``n_tokens`` tokens (see the module docstring)."""
    if ctx < 2:
        raise ValueError(f"evaluation length {ctx} is too short: a window holds BOS + >= 1 token")
    if not 1 <= stride <= ctx - 1:
        raise ValueError(
            f"stride {stride} must be in [1, {ctx - 1}] for length {ctx}: a larger stride would "
            "leave tokens unscored between windows"
        )
    if n_tokens < 1:
        raise ValueError(f"a document needs at least 1 token, got {n_tokens}")
    m = ctx - 1
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + m, n_tokens)
        windows.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


_NLL_ROWS = 2048
BLOCK_TOKENS = 256


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood, float64: logits [k, vocab], targets [k] -> [k]."""
    # Rows in blocks: log_softmax is per row, so the values are those of one call, but a 32k
    # window's second [k, vocab] copy (6.4 GB at SmolLM2's vocabulary) is never held.
    out = []
    for rows in range(0, logits.shape[0], _NLL_ROWS):
        block = logits[rows:rows + _NLL_ROWS]
        # bf16/fp16 logits are upcast: log_softmax over a large vocabulary loses digits in 16 bits.
        if block.dtype != torch.float64:
            block = block.float()
        logp = torch.log_softmax(block, dim=-1)
        picked = targets[rows:rows + _NLL_ROWS].unsqueeze(-1)
        out.append(-logp.gather(-1, picked).squeeze(-1).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def window_nll(
    logits_fn: Callable[[torch.Tensor, Optional[int]], torch.Tensor],
    tokens: Sequence[int] | np.ndarray,
    window: Window,
    bos_id: int,
) -> torch.Tensor:
    """NLL of each scored token of one window, float64 [n_scored].

    ``logits_fn(ids [1, s], keep)`` returns logits of the last ``keep`` positions. Token t[j] sits
    at input index j - begin + 1 and is predicted by the logits at index j - begin, so the scored
    tokens need the last n_scored + 1 positions minus the final one.
    """
    doc = torch.as_tensor(np.asarray(tokens[window.begin:window.end], dtype=np.int64))
    ids = torch.cat([torch.tensor([bos_id], dtype=torch.long), doc]).unsqueeze(0)
    k = window.n_scored
    logits = logits_fn(ids, k + 1)[0, :-1]
    return token_nll(logits, doc[-k:].to(logits.device)).cpu()


@dataclass
class PerplexityResult:
    length: int
    stride: int
    nll_sum: float
    n_tokens: int
    n_windows: int
    n_documents: int
    block_nll: List[float] = field(default_factory=list)  # NLL sum per BLOCK_TOKENS scored tokens

    @property
    def nll(self) -> float:
        return self.nll_sum / self.n_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {
            "length": self.length,
            "stride": self.stride,
            "ppl": self.ppl,
            "nll": self.nll,
            "nll_sum": self.nll_sum,
            "tokens": self.n_tokens,
            "windows": self.n_windows,
            "documents": self.n_documents,
            "block_tokens": BLOCK_TOKENS,
            "block_nll": [round(b, 6) for b in self.block_nll],
        }


def perplexity(
    logits_fn: Callable[[torch.Tensor, Optional[int]], torch.Tensor],
    documents: Iterable[Sequence[int] | np.ndarray],
    ctx: int,
    stride: int,
    bos_id: int,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> PerplexityResult:
    """Token-weighted sliding-window perplexity of ``documents`` at evaluation length ``ctx``."""
    plans = [(doc, sliding_windows(len(doc), ctx, stride)) for doc in documents]
    if not plans:
        raise ValueError("no documents to evaluate")
    jobs = [(doc, w) for doc, windows in plans for w in windows]
    nll_sum = 0.0
    n_tokens = 0
    scored = []
    for doc, w in (jobs if progress is None else progress(jobs)):
        nll = window_nll(logits_fn, doc, w, bos_id)
        nll_sum += float(nll.sum())
        n_tokens += w.n_scored
        scored.append(nll)
    every = torch.cat(scored)
    blocks = [float(b.sum()) for b in torch.split(every, BLOCK_TOKENS)]
    return PerplexityResult(ctx, stride, nll_sum, n_tokens, len(jobs), len(plans), blocks)
