"""RULER suite: exact lengths, needle depths, answers recoverable from the prompt text by an
independent solver, RULER's scoring on hand cases, determinism, and the tool end to end."""

import collections
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pose_megatron.eval.passkey import FILLER
from pose_megatron.eval.prompting import ChatFrame, chat_frame, largest_fitting
from pose_megatron.eval.ruler import (
    DEPTHS, TASKS, Builder, Haystack, load_haystack, text_units,
)
from pose_megatron.eval.ruler_scoring import (
    evaluate_task, postprocess, string_match_all, string_match_part,
)
from tests.eval_data import BOS, VOCAB

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INV = {i: t for t, i in VOCAB.items()}


def char_encode(text):
    return [VOCAB[c] for c in text]


def char_decode(ids):
    return "".join(INV[i] for i in ids if i >= 3)


@pytest.fixture(scope="module")
def haystack():
    # The bundled corpus's first documents (the default haystack), enough for these lengths.
    return load_haystack([], char_decode, max_chars=60_000)


@pytest.fixture(scope="module")
def sp_tokenizer(sp_model):
    """The bundled corpus's sentencepiece tokenizer, trained small (a real BPE whose counts are
    not linear in the text)."""
    from pose_megatron.eval.models import load_tokenizer

    return load_tokenizer(sp_model)


@pytest.fixture(scope="module")
def builders(haystack, sp_tokenizer):
    sp = sp_tokenizer
    return {
        "char": Builder(char_encode, char_decode, BOS, haystack=haystack, seed=1),
        "sp": Builder(sp.encode, sp.decode, sp.bos_id, haystack=haystack, seed=1),
    }


# ----------------------------------------------------------------------------------------------
# An independent reference solver: reads the prompt text only.


def solve(task, text):
    family = TASKS[task].family
    if family == "niah":
        question = re.findall(r"for (.+?) mentioned in the provided text\?", text)[-1]
        keys = re.split(r", and |, ", question)
        found = collections.defaultdict(list)
        for key, value in re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.",
                                     text):
            found[key].append(value)
        return [v for k in keys for v in found[k]]
    if family == "vt":
        main = text[text.rindex("Memorize and track"):]
        value = re.search(r"assigned the value (\d+) in the text above", main).group(1)
        assigned = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)", main))

        def resolve(name):
            rhs = assigned[name]
            return resolve(rhs[4:]) if rhs.startswith("VAR ") else rhs

        return [n for n in assigned if resolve(n) == value]
    if family == "cwe":
        main = text[text.rindex("Below is a numbered list"):]
        listing = main[main.index("most often.") + len("most often."):main.index("Question:")]
        counts = collections.Counter(re.findall(r"\d+\.\s+(\S+)", listing))
        return [w for w, _ in counts.most_common(10)]
    if family == "fwe":
        body = text[text.rindex("coded words.") + len("coded words."):text.rindex("Question:")]
        counts = collections.Counter(w for w in body.split() if "." not in w)
        return [w for w, _ in counts.most_common(3)]
    raise AssertionError(task)


# CWE switches to RULER's large repeat counts at 4096 tokens; both sides are covered.
LENGTHS = {"char": [2600, 8000], "sp": [2500, 8000]}


@pytest.mark.parametrize("tok", ["char", "sp"])
@pytest.mark.parametrize("task", list(TASKS))
def test_lengths_exact_and_answers_recoverable(builders, tok, task):
    b = builders[tok]
    for length in LENGTHS[tok]:
        for i in range(2):
            s = b.build(task, length, i)
            assert len(s.input_ids) == length
            assert s.input_ids[0] == b.bos_id
            assert s.text == b.decode(s.input_ids)
            assert sorted(solve(task, s.text)) == sorted(s.answers), (task, length, i)
    # The answers have the form RULER gives them.
    family, p = TASKS[task].family, TASKS[task].params
    if family == "niah":
        n = p["num_needle_q"] * p["num_needle_v"]
        assert len(s.answers) == n
        pattern = {"numbers": r"\d{7}", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                   r"[89ab][0-9a-f]{3}-[0-9a-f]{12}", "words": r"[^\s-]+(-[^\s-]+)+"}
        assert all(re.fullmatch(pattern[p["type_needle_v"]], a) for a in s.answers)
    elif family == "vt":
        assert len(s.answers) == 5 and all(re.fullmatch(r"[A-Z]{5}", a) for a in s.answers)
    elif family == "cwe":
        assert len(s.answers) == 10
    else:
        assert len(s.answers) == 3 and all(re.fullmatch(r"[a-z]{6}", a) for a in s.answers)


def test_cwe_repeat_counts_follow_ruler(builders):
    b = builders["char"]
    for length, (common, rare) in [(2600, (6, 1)), (8000, (30, 3))]:
        s = b.build("cwe", length, 0)
        main = s.text[s.text.rindex("Below is a numbered list"):]
        counts = collections.Counter(re.findall(r"\d+\.\s+(\S+)", main.split("Question:")[0]))
        assert {counts[a] for a in s.answers} == {common}
        others = [c for w, c in counts.items() if w not in s.answers]
        # Padding words appear once, the last entry may be cut.
        assert max(others) == rare and min(others) >= 1


def test_fwe_counts_are_zipf(builders):
    s = builders["char"].build("fwe", 4000, 0)
    body = s.text[s.text.rindex("coded words.") + 12:s.text.rindex("Question:")]
    counts = collections.Counter(w for w in body.split() if w != "...")
    top = [c for _, c in counts.most_common(4)]
    n = s.info["words"]
    zeta2 = np.pi ** 2 / 6
    assert top[:3] == [int(n * k ** -2.0 / zeta2) for k in (2, 3, 4)]
    assert s.answers == [w for w, _ in counts.most_common(3)]


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "vt"])
def test_needles_sit_at_their_depth(builders, task):
    b = builders["char"]
    for i in range(6):
        s = b.build(task, 6000, i)
        assert all(int(round(100 * d)) in DEPTHS for d in s.depths)
        lines = s.text.split("\n")
        needle_lines = [j for j, line in enumerate(lines)
                        if line.startswith(("One of the special magic", "VAR "))]
        if task == "vt":
            needle_lines = needle_lines[-5:]  # the chain of the task (the example comes first)
        # A needle's position in the token ids is where its line starts in the decoded text.
        for pos, d in zip(s.needle_positions, s.depths):
            assert char_decode(s.input_ids[pos:pos + 1]) == "\n"
            assert char_decode(s.input_ids[pos + 1:]).startswith(("One of", "VAR "))
        if task == "niah_multikey_2":
            continue  # the haystack lines are needles too
        hay = [j for j, line in enumerate(lines) if FILLER[:20] in line]
        first, last = hay[0], hay[-1]
        unit = 1 / (len(hay) - 1)
        for line_no, d in zip(sorted(needle_lines)[-len(s.depths):], sorted(s.depths)):
            before = sum(first <= j < line_no for j in hay)
            assert abs(before / len(hay) - d) <= 1.5 * unit + 1e-9, (before, len(hay), d)
            assert first - 1 <= line_no <= last + 1


@pytest.mark.parametrize("task", ["niah_single_2", "niah_multivalue"])
def test_essay_needle_depth_in_tokens(builders, task):
    b = builders["sp"]
    depths_seen = []
    for i in range(6):
        s = b.build(task, 3000, i)
        depths_seen += s.depths
        head = s.text.index("afterwards.")
        tail = s.text.rindex("mentioned in the provided text?")
        starts = [m.start() for m in re.finditer("One of the special magic", s.text)]
        assert len(starts) == len(s.depths)
        # Depth in characters of haystack text is close to the stated depth in tokens.
        for start, d in zip(starts, sorted(s.depths)):
            assert abs((start - head) / (tail - head) - d) < 0.08, (start, d)
        for pos in s.needle_positions:
            assert "One of the special magic" in b.decode(s.input_ids[pos:pos + 40])
    assert min(depths_seen) < 0.4 and max(depths_seen) > 0.6


def test_samples_are_seeded_and_independent(haystack):
    a = Builder(char_encode, char_decode, BOS, haystack=haystack, seed=3)
    b = Builder(char_encode, char_decode, BOS, haystack=haystack, seed=3)
    for task in TASKS:
        one = [a.build(task, 3000, i).input_ids for i in range(3)]
        assert b.build(task, 3000, 2).input_ids == one[2]  # without building 0 and 1 first
        assert one[0] != one[1]
    c = Builder(char_encode, char_decode, BOS, haystack=haystack, seed=4)
    assert c.build("niah_single_1", 3000, 0).answers != a.build("niah_single_1", 3000, 0).answers


def test_chat_frame_replaces_bos(haystack):
    frame = ChatFrame.from_renderer(lambda m: f"<user>{m}</user>\n<bot>")
    assert (frame.before, frame.after) == ("<user>", "</user>\n<bot>")
    b = Builder(char_encode, char_decode, None, chat=frame, haystack=haystack)
    s = b.build("niah_single_1", 2000, 0)
    assert len(s.input_ids) == 2000
    assert s.text.startswith("<user>A special magic number is hidden")
    assert s.text.endswith("?</user>\n<bot> The special magic number for "
                           f"{s.info['keys'][0]} mentioned in the provided text is")
    assert chat_frame(None, "auto") is None
    with pytest.raises(ValueError, match="no chat template"):
        chat_frame(None, "on")
    with pytest.raises(ValueError, match="verbatim"):
        ChatFrame.from_renderer(lambda m: m + m)


def test_too_short_and_unknown(builders):
    for task in TASKS:
        with pytest.raises(ValueError, match="too short"):
            builders["char"].build(task, 60, 0)
    with pytest.raises(ValueError, match="unknown task"):
        builders["char"].build("qa_1", 1000, 0)
    with pytest.raises(ValueError, match="needs a real-text haystack"):
        Builder(char_encode, char_decode, BOS).build("niah_single_2", 1000, 0)


def test_text_units_split_sentences_and_long_runs():
    units = text_units(["One two.  Three\nfour!   " + " ".join(["w"] * 90)])
    assert units[:2] == ["One two.", "Three four!"]
    assert [len(u.split()) for u in units[2:]] == [40, 40, 10]
    assert Haystack(units, "x").units == units
    with pytest.raises(ValueError, match="no text"):
        Haystack([], "empty")


def test_largest_fitting_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        costs = np.cumsum(rng.integers(0, 5, 60))
        budget = int(rng.integers(0, costs[-1] + 3))
        guess = int(rng.integers(0, 80))
        f = lambda n: int(costs[min(n, 59)]) + 10 * max(0, n - 59)  # noqa: E731
        brute = max([n for n in range(200) if f(n) <= budget], default=-1)
        assert largest_fitting(f, budget, guess) == brute


# ----------------------------------------------------------------------------------------------
# Scoring


def test_string_match_on_hand_cases():
    pred = postprocess("  The special magic numbers are: 1234567\x00and 7654321.\n")
    assert pred == "The special magic numbers are: 1234567\nand 7654321."
    assert string_match_all(pred, ["1234567", "7654321", "1111111"]) == pytest.approx(2 / 3)
    assert string_match_part(pred, ["1111111", "7654321"]) == 1.0
    assert string_match_part(pred, ["1111111"]) == 0.0
    assert string_match_all("VKL, erh and NGG", ["VKL", "ERH", "NGG", "PIZ"]) == 0.75
    assert string_match_all("", ["a"]) == 0.0


def test_evaluate_task_scores_a_scripted_model(builders):
    b = builders["char"]
    calls = []
    task = "niah_multivalue"

    def greedy(ids, max_new_tokens):
        # Reads the answers from the prompt, then gives all of them, half of them, or none.
        answers = solve(task, char_decode(ids))
        given = [answers, answers[: len(answers) // 2], []][len(calls) % 3]
        calls.append(max_new_tokens)
        return char_encode(" " + ", ".join(given) + ".")

    res = evaluate_task(greedy, b, "niah_multivalue", 2500, 3)
    assert [r["all"] for r in res.records] == [1.0, 0.5, 0.0]
    assert [r["part"] for r in res.records] == [1.0, 1.0, 0.0]
    assert res.score == pytest.approx(50.0) and res.score_part == pytest.approx(200 / 3)
    assert calls == [128] * 3  # RULER's NIAH generation budget
    d = res.to_dict()
    assert (d["task"], d["length"], d["samples"], d["score"]) == ("niah_multivalue", 2500, 3, 50.0)
    assert all(r["n_tokens"] == 2500 for r in d["records"])
    task = "vt"
    capped = evaluate_task(greedy, b, "vt", 3000, 1, max_new_tokens=7)
    assert calls[-1] == 7  # the cap, below RULER's 30 for vt
    assert capped.records[0]["all"] == 1.0


# ----------------------------------------------------------------------------------------------
# The tool


def load_tool():
    return importlib.import_module("pose_megatron.commands.eval_ruler")


def test_help_explains_every_flag():
    parser = load_tool().build_parser()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_ruler.py"),
                          "--help"], capture_output=True, text=True, check=True).stdout
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in out


def test_tool_end_to_end_on_tiny_model(tiny_hf_dir, tmp_path, capsys):
    tool = load_tool()
    hay = tmp_path / "hay.txt"
    hay.write_text("A plain sentence of real text. Another one follows here! " * 50)
    out = str(tmp_path / "r.json")
    common = ["--model", tiny_hf_dir, "--name", "tiny", "--device", "cpu",
              "--max-new-tokens", "3", "--seed", "2", "--output-json", out]
    assert tool.main(common + ["--lengths", "1700", "--tasks", "niah_single_1,niah_single_2",
                               "vt", "--samples", "1", "--haystack", str(hay),
                               "--mark", "train=256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny (RULER score %, 1 samples")
    assert lines[1].split() == ["task", "1700"]
    assert [ln.split()[0] for ln in lines[3:7]] == ["niah_single_1", "niah_single_2", "vt",
                                                    "average"]
    data = json.load(open(out))
    assert data["tool"] == "eval_ruler"
    (entry,) = data["models"]
    assert (entry["seed"], entry["samples"], entry["chat_template"]) == (2, 1, False)
    assert entry["haystack"] == str(hay)
    from pose_megatron.eval.models import load_model

    model = load_model(tiny_hf_dir, device="cpu")
    tok = model.tokenizer
    builder = Builder(tok.encode, tok.decode, BOS, haystack=load_haystack([str(hay)], tok.decode),
                      seed=2)
    for res in entry["results"]:
        assert res["samples"] == 1 and res["length"] == 1700 and "partial" not in res
        (r,) = res["records"]
        assert res["score"] == pytest.approx(100 * r["all"])
        s = builder.build(res["task"], 1700, r["sample"])
        assert r["answers"] == s.answers and r["n_tokens"] == 1700
        assert r["output"] == tok.decode(model.greedy(s.input_ids, 3))
        assert r["all"] == string_match_all(postprocess(r["output"]), s.answers)
    with open(str(tmp_path / "r.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # --resume with more samples keeps the first one and runs only the second.
    first = entry["results"][0]["records"][0]
    assert tool.main(common + ["--lengths", "1700", "--tasks", "niah_single_1", "--samples", "2",
                               "--resume"]) == 0
    capsys.readouterr()
    results = json.load(open(out))["models"][0]["results"]
    cells = {r["task"]: r for r in results}
    cell = cells["niah_single_1"]
    assert [r["sample"] for r in cell["records"]] == [0, 1]
    assert cell["records"][0] == first and cell["samples"] == 2
    # The cells this run did not redo are kept as they were.
    assert sorted(cells) == ["niah_single_1", "niah_single_2", "vt"]
    assert [r for r in results if r["task"] != "niah_single_1"] == entry["results"][1:]
    # --compare re-plots without a model.
    assert tool.main(["--compare", out, "--output-json", str(tmp_path / "c.json")]) == 0
    assert "niah_single_1" in capsys.readouterr().out


def test_tool_errors_name_the_flag(tiny_hf_dir, tmp_path):
    tool = load_tool()
    base = ["--model", tiny_hf_dir, "--lengths", "2000", "--output-json",
            str(tmp_path / "x.json")]
    with pytest.raises(SystemExit, match="--tasks: unknown qa_1"):
        tool.main(base + ["--tasks", "qa_1"])
    with pytest.raises(SystemExit, match="--samples must be >= 1"):
        tool.main(base + ["--samples", "0"])
    with pytest.raises(SystemExit, match="too short"):
        tool.main(["--model", tiny_hf_dir, "--lengths", "100", "--tasks", "vt",
                   "--output-json", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="--haystack .*nope"):
        tool.main(base + ["--tasks", "niah_single_2", "--haystack", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="no chat template"):
        tool.main(base + ["--tasks", "vt", "--chat-template", "on"])


def test_hf_chat_template_frames_the_prompt(tmp_path):
    from transformers import AutoTokenizer

    from pose_megatron.eval.models import load_tokenizer
    from tests.eval_data import save_char_tokenizer

    save_char_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    hf.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    hf.save_pretrained(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    frame = chat_frame(tok.render_chat, "auto")
    assert (frame.before, frame.after) == ("<user>", "\n<assistant>")
    assert chat_frame(tok.render_chat, "off") is None
    s = Builder(tok.encode, tok.decode, None, chat=frame).build("fwe", 1500, 0)
    assert len(s.input_ids) == 1500
    assert s.text.startswith("<user>Read the following coded text")
    assert s.text.endswith("coded text?\n<assistant> Answer: According to the coded text above, "
                           "the three most frequently appeared words are:")


def test_runs_of_one_model_merge_into_one_table():
    tool = load_tool()
    cell = lambda t, L, score: {"task": t, "length": L, "score": score}  # noqa: E731
    merged = tool.merge_by_name([
        {"name": "m", "seed": 0, "results": [cell("vt", 1024, 20.0), cell("fwe", 512, 40.0)]},
        {"name": "other", "results": [cell("vt", 1024, 0.0)]},
        {"name": "m", "seed": 0, "results": [cell("niah_single_1", 512, 100.0),
                                             cell("vt", 1024, 30.0)]},
    ])
    assert [e["name"] for e in merged] == ["m", "other"]
    cells = {(r["task"], r["length"]): r["score"] for r in merged[0]["results"]}
    assert cells == {("vt", 1024): 30.0, ("fwe", 512): 40.0, ("niah_single_1", 512): 100.0}
    assert tool.task_order(merged[0]) == ["niah_single_1", "vt", "fwe"]
