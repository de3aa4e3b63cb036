"""Passkey retrieval, the protocol of the PoSE paper (after Mohtashami & Jaggi, 2023).

A prompt of a given token length is made of, joined by newlines:

    TASK_LINE                       (optional, present in the PoSE reference code)
    FILLER repeated n_prefix times
    "The pass key is K. Remember it. K is the pass key."
    FILLER repeated n_suffix times
    "What is the pass key? The pass key is"

Repetitions of the filler are separated by one space. K is a random 5-digit integer; the split
n_prefix is uniform over 0..n_total, where n_total is the largest filler count for which
[BOS] + tokens(prompt) fits the length. The model generates greedily (10 new tokens by default);
the first integer in the decoded continuation is the prediction; a trial passes on exact match.

Every trial is reproducible: its key and split come from a generator seeded with
(seed, length, trial), so a trial does not depend on which other lengths or trials ran.

The trials of one length all open with the task line and filler; a model that can reuse a key/value
cache computes that opening once (``shared_opening``) and each trial runs only its tokens after the
part it shares, which is everything from its needle on: about half the prompt tokens on average,
and the same answers (each token's keys and values depend only on the tokens before it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from pose_megatron.eval.prompting import common_prefix_len, largest_fitting

TASK_LINE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (10000, 99999)  # inclusive: 5 digits

_INT = re.compile(r"\d+")


def _opening_lines(n_fillers: int, task_line: bool) -> List[str]:
    """The prompt's lines before the needle: what every trial's prompt opens with."""
    return ([TASK_LINE] if task_line else []) + [" ".join([FILLER] * n_fillers)]


def prompt_text(key: int, n_prefix: int, n_suffix: int, task_line: bool = True) -> str:
    """The prompt with the needle after ``n_prefix`` fillers and before ``n_suffix`` fillers."""
    if n_prefix < 0 or n_suffix < 0:
        raise ValueError(f"filler counts must be >= 0, got {n_prefix} and {n_suffix}")
    lines = _opening_lines(n_prefix, task_line) + [
        NEEDLE.format(key=key),
        " ".join([FILLER] * n_suffix),
        QUESTION,
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class PasskeyTrial:
    length: int  # requested length in tokens, BOS included
    trial: int
    key: int
    n_prefix: int
    n_total: int
    text: str
    input_ids: List[int]  # [BOS] + tokens(text); len(input_ids) <= length

    @property
    def depth(self) -> float:
        """Where the needle sits, 0 (start of the filler) .. 1 (end)."""
        return self.n_prefix / self.n_total if self.n_total else 0.0


def trial_rng(seed: int, length: int, trial: int) -> np.random.Generator:
    return np.random.default_rng([seed, length, trial])


def build_trial(
    encode: Callable[[str], List[int]],
    bos_id: int,
    length: int,
    trial: int,
    seed: int = 0,
    task_line: bool = True,
) -> PasskeyTrial:
    """The prompt of trial ``trial`` at ``length`` tokens (BOS included), as text and ids."""
    rng = trial_rng(seed, length, trial)
    key = int(rng.integers(KEY_RANGE[0], KEY_RANGE[1] + 1))
    u = float(rng.random())  # the split, drawn before n_total is known so the draw count is fixed

    def n_tokens(n_prefix: int, n_suffix: int) -> int:
        return 1 + len(encode(prompt_text(key, n_prefix, n_suffix, task_line)))

    base = n_tokens(0, 0)
    if base > length:
        raise ValueError(
            f"passkey length {length} is too short: the prompt without filler already takes "
            f"{base} tokens"
        )
    # Searched from the per-filler estimate (tokenizers merge across the joins, so the count
    # is not exactly linear in the filler count).
    per_filler = max(1, n_tokens(1, 1) - base) / 2
    n_total = largest_fitting(lambda n: n_tokens(n, 0), length,
                              guess=int((length - base) / per_filler))
    n_prefix = min(int(u * (n_total + 1)), n_total)
    n_suffix = n_total - n_prefix
    # The split can shift the count by a token or two at the joins: trim the suffix if so.
    while n_suffix > 0 and n_tokens(n_prefix, n_suffix) > length:
        n_suffix -= 1
    while n_prefix > 0 and n_tokens(n_prefix, n_suffix) > length:
        n_prefix -= 1
    text = prompt_text(key, n_prefix, n_suffix, task_line)
    ids = [int(bos_id)] + [int(t) for t in encode(text)]
    return PasskeyTrial(length, trial, key, n_prefix, n_prefix + n_suffix, text, ids)


def shared_opening(encode: Callable[[str], List[int]], bos_id: int, n_fillers: int,
                   task_line: bool = True) -> List[int]:
    """[BOS] + the tokens of the task line and ``n_fillers`` fillers: what a trial with
    ``n_fillers`` fillers before its needle starts with, up to the join before the needle."""
    text = "\n".join(_opening_lines(n_fillers, task_line))
    return [int(bos_id)] + [int(t) for t in encode(text)]


def parse_answer(text: str) -> Optional[int]:
    """The first run of digits in ``text`` as an integer, or None when there is none."""
    match = _INT.search(text)
    return int(match.group()) if match else None


def is_correct(prediction: Optional[int], key: int) -> bool:
    return prediction is not None and prediction == key


@dataclass
class LengthResult:
    length: int
    trials: int
    correct: int
    records: List[dict]

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0

    def to_dict(self) -> dict:
        return {
            "length": self.length,
            "trials": self.trials,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "records": self.records,
        }


def evaluate_length(
    greedy: Callable[[List[int], int], List[int]],
    decode: Callable[[Sequence[int]], str],
    encode: Callable[[str], List[int]],
    bos_id: int,
    length: int,
    trials: int,
    seed: int = 0,
    max_new_tokens: int = 10,
    task_line: bool = True,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    greedy_sharing: Optional[Callable[[List[int]], Callable[[List[int], int], List[int]]]] = None,
) -> LengthResult:
    """Run ``trials`` passkey trials at one length; ``greedy(ids, n)`` returns new token ids.

    With ``greedy_sharing`` (``EvalModel.greedy_sharing``) the trials start from one cached
    opening (module docstring) instead of each running its whole prompt.
    """
    built = [build_trial(encode, bos_id, length, i, seed=seed, task_line=task_line)
             for i in range(trials)]
    if greedy_sharing is not None:
        opening = shared_opening(encode, bos_id, max(t.n_prefix for t in built), task_line)
        # the opening only as far as some trial shares it: no cache is computed for nothing
        used = max(common_prefix_len(opening, t.input_ids) for t in built)
        greedy = greedy_sharing(opening[:used])
    records = []
    correct = 0
    steps = range(trials) if progress is None else progress(range(trials))
    for i in steps:
        t = built[i]
        output = decode(greedy(t.input_ids, max_new_tokens))
        pred = parse_answer(output)
        ok = is_correct(pred, t.key)
        correct += ok
        records.append({
            "trial": i,
            "key": t.key,
            "prediction": pred,
            "correct": ok,
            "depth": round(t.depth, 4),
            "n_tokens": len(t.input_ids),
            "cached_tokens": getattr(greedy, "cached_tokens", 0),
            "output": output,
        })
    return LengthResult(length, trials, correct, records)
