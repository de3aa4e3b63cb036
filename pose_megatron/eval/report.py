"""Outputs of the evaluation tools: an aligned text table and an atomically written JSON file."""

from __future__ import annotations

import json
from typing import List, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


# The per-length value each tool's table and plot read (None: a length marked n/a).
_VALUE_KEYS = {"eval_ppl": "ppl", "eval_passkey": "accuracy"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(path: str, tool: str) -> List[dict]:
    """The model entries of a JSON written by ``tool`` (for --compare), checked entry by entry.

    Called before any evaluation runs, so a malformed earlier file fails at once (one error
    naming it and the bad entry) instead of after a long evaluation, before its results are saved.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--compare {path}: cannot read results ({exc})") from None
    if not isinstance(data, dict) or data.get("tool") != tool or "models" not in data:
        raise ValueError(f"--compare {path}: not a results file written by {tool}")
    models = data["models"]
    if not isinstance(models, list):
        raise ValueError(f"--compare {path}: \"models\" is not a list")
    key = _VALUE_KEYS.get(tool)
    for i, entry in enumerate(models):
        where = f"--compare {path}: models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where} has no \"name\"")
        if not isinstance(entry.get("results"), list):
            raise ValueError(f"{where} ({entry['name']}) has no \"results\" list")
        for j, result in enumerate(entry["results"]):
            if not isinstance(result, dict) or isinstance(result.get("length"), bool) \
                    or not isinstance(result.get("length"), int):
                raise ValueError(f"{where}.results[{j}] has no integer \"length\"")
            if key is not None and not (_is_number(result.get(key))
                                        or (result.get(key) is None and "skipped" in result)):
                raise ValueError(f"{where}.results[{j}] (length {result['length']}) has no "
                                 f"numeric \"{key}\"")
    return list(models)
