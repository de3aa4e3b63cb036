"""RULER's scoring and the per-(task, length) evaluation loop.

A prediction is the greedy continuation of the prompt (which ends in the task's answer prefix),
cleaned as RULER's ``postprocess_pred`` does: stripped, control characters turned into line
breaks. RULER scores every synthetic task with string-match recall:

- ``all``: the fraction of the expected answers that occur in the prediction (case-insensitive),
  RULER's ``string_match_all``, used for all NIAH, VT, CWE and FWE tasks;
- ``part``: 1 when any expected answer occurs, RULER's ``string_match_part`` (its QA metric),
  recorded as well.

A task's score at a length is the mean over samples, in percent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

from pose_megatron.eval.ruler import TASKS, Builder

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    pred = prediction.lower()
    return sum(a.lower() in pred for a in answers) / len(answers) if answers else 0.0


def string_match_part(prediction: str, answers: Sequence[str]) -> float:
    pred = prediction.lower()
    return float(any(a.lower() in pred for a in answers))


@dataclass
class TaskResult:
    task: str
    length: int
    records: List[dict]

    @property
    def score(self) -> float:
        """RULER's score of the task at this length: mean string_match_all, percent."""
        return 100 * sum(r["all"] for r in self.records) / len(self.records)

    @property
    def score_part(self) -> float:
        return 100 * sum(r["part"] for r in self.records) / len(self.records)

    def to_dict(self) -> dict:
        return {"task": self.task, "length": self.length, "samples": len(self.records),
                "score": round(self.score, 2), "score_part": round(self.score_part, 2),
                "records": self.records}


def evaluate_task(
    greedy: Callable[[List[int], int], List[int]],
    builder: Builder,
    task: str,
    length: int,
    samples: int,
    max_new_tokens: Optional[int] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    done: Sequence[dict] = (),
    on_record: Optional[Callable[["TaskResult"], None]] = None,
) -> TaskResult:
    """Generate ``samples`` prompts of ``task`` at ``length`` tokens and score the model's answers;
    ``max_new_tokens`` caps RULER's per-task generation budget. ``done`` are the records of the
    first samples from an interrupted run (kept, not rerun); ``on_record`` sees the result after
    each new sample (to save progress)."""
    budget = TASKS[task].tokens_to_generate
    if max_new_tokens is not None:
        budget = min(budget, max_new_tokens)
    records = list(done)[:samples]
    todo = range(len(records), samples)
    steps = todo if progress is None else progress(todo)
    result = TaskResult(task, length, records)
    for i in steps:
        s = builder.build(task, length, i)
        output = builder.decode(greedy(s.input_ids, budget))
        pred = postprocess(output)
        records.append({
            "sample": i,
            "answers": s.answers,
            "output": output,
            "all": string_match_all(pred, s.answers),
            "part": string_match_part(pred, s.answers),
            "depths": [round(d, 4) for d in s.depths],
            "n_tokens": len(s.input_ids),
        })
        if on_record is not None:
            on_record(result)
    return result
