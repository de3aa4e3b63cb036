"""tools/eval_passkey.py and tools/eval_ppl.py end to end on a tiny real LLaMA."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pose_megatron.eval.models import load_model
from pose_megatron.eval.passkey import build_trial
from pose_megatron.eval.perplexity import perplexity
from tests.eval_data import BOS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_tool(name):
    return importlib.import_module(f"pose_megatron.commands.{name}")


@pytest.mark.parametrize("name", ["eval_passkey", "eval_ppl"])
def test_help_explains_every_flag(name):
    parser = load_tool(name).build_parser()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in out


def test_eval_passkey_tool(tiny_hf_dir, tmp_path, capsys):
    tool = load_tool("eval_passkey")
    out = str(tmp_path / "pk.json")
    assert tool.main(["--model", tiny_hf_dir, "--name", "tiny", "--lengths", "400,300",
                      "--trials", "3", "--seed", "5", "--device", "cpu",
                      "--output-json", out, "--mark", "train=256"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["length", "tiny", "acc%"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["300", "400"]
    data = json.load(open(out))
    assert data["tool"] == "eval_passkey"
    (entry,) = data["models"]
    assert (entry["name"], entry["kind"], entry["trials"], entry["seed"]) == ("tiny", "hf", 3, 5)
    assert [r["length"] for r in entry["results"]] == [300, 400]
    model = load_model(tiny_hf_dir, device="cpu")
    for res in entry["results"]:
        assert res["trials"] == 3
        assert res["correct"] == sum(r["correct"] for r in res["records"])
        assert res["accuracy"] == res["correct"] / 3
        for i, r in enumerate(res["records"]):
            t = build_trial(model.tokenizer.encode, BOS, res["length"], i, seed=5)
            assert (r["key"], r["n_tokens"]) == (t.key, len(t.input_ids))
    with open(str(tmp_path / "pk.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC

    # A second model (the same weights with PI) compared against the first run's file.
    out2 = str(tmp_path / "pk2.json")
    assert tool.main(["--model", tiny_hf_dir, "--name", "tiny-pi4", "--lengths", "300",
                      "--trials", "2", "--rope-scaling", '{"rope_type":"linear","factor":4}',
                      "--compare", out, "--output-json", out2, "--plot",
                      str(tmp_path / "cmp.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["length", "tiny", "acc%", "tiny-pi4", "acc%"]
    assert lines[3].split()[-1] == "-"  # tiny-pi4 was not run at 400
    names = [m["name"] for m in json.load(open(out2))["models"]]
    assert names == ["tiny", "tiny-pi4"]
    assert json.load(open(out2))["models"][1]["rope_scaling"] == {"rope_type": "linear",
                                                                   "factor": 4}
    assert os.path.getsize(str(tmp_path / "cmp.png")) > 1000


def test_eval_ppl_tool(tiny_hf_dir, tmp_path, capsys):
    tool = load_tool("eval_ppl")
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)  # 180 characters
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": "Pack my box with five dozen liquor jugs."}) + "\n")
    out = str(tmp_path / "ppl.json")
    assert tool.main(["--model", tiny_hf_dir, "--data", str(text), str(jsonl),
                      "--lengths", "32", "64", "--stride", "40", "--device", "cpu",
                      "--output-json", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["length", os.path.basename(tiny_hf_dir), "ppl"]
    entry = json.load(open(out))["models"][0]
    assert entry["documents"] == 2
    r32, r64 = entry["results"]
    # At 32 the stride 40 cannot overlap windows and becomes 31; at 64 it stays 40.
    assert (r32["length"], r32["stride"], r64["stride"]) == (32, 31, 40)
    assert r32["tokens"] == r64["tokens"] == 180 + 40
    # Windows: 180 tokens at (ctx 32, stride 31) -> 6, 40 tokens -> 2; at (64, 40) -> 4 and 1.
    assert (r32["windows"], r64["windows"]) == (8, 5)
    model = load_model(tiny_hf_dir, device="cpu")
    docs = [np.array(model.tokenizer.encode(text.read_text())),
            np.array(model.tokenizer.encode("Pack my box with five dozen liquor jugs."))]
    direct = perplexity(model.logits, docs, 64, 40, BOS)
    assert r64["ppl"] == pytest.approx(direct.ppl, rel=1e-9)
    # the 40-token document cannot fill a 64-token window: the cell is marked and explained
    assert (r32["full_documents"], r64["full_documents"]) == (2, 1)
    assert lines[3].split()[1].endswith("*")
    assert float(lines[3].split()[1][:-1]) == pytest.approx(direct.ppl, abs=5e-4)
    assert any("length 64: * 1 of 2 documents are shorter than 63 tokens" in line
               for line in lines)
    with open(str(tmp_path / "ppl.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC

    # Re-plot only, from the saved file.
    assert tool.main(["--compare", out, "--output-json", str(tmp_path / "again.json")]) == 0
    assert json.load(open(str(tmp_path / "again.json")))["models"] == [entry]


def test_eval_ppl_marks_lengths_no_document_fills(tiny_hf_dir, tmp_path, capsys):
    tool = load_tool("eval_ppl")
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)  # 180 tokens
    out = str(tmp_path / "ppl.json")
    assert tool.main(["--model", tiny_hf_dir, "--data", str(text), "--lengths", "32", "100000",
                      "--stride", "31", "--device", "cpu", "--output-json", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split() == ["100000", "n/a"]
    assert any("length 100000: n/a: the longest document has 180 tokens; length 100000 needs "
               "99999" in line for line in lines)
    r32, big = json.load(open(out))["models"][0]["results"]
    assert r32["ppl"] > 1 and big["ppl"] is None and "180 tokens" in big["skipped"]
    # an n/a result is a valid earlier result for --compare
    assert tool.main(["--compare", out, "--output-json", str(tmp_path / "again.json")]) == 0
    # no length can be computed: a one-line error before any window is evaluated
    with pytest.raises(SystemExit, match="--lengths: no length can be evaluated: the longest "
                                         "document of --data has 180 tokens"):
        tool.main(["--model", tiny_hf_dir, "--data", str(text), "--lengths", "1k",
                   "--device", "cpu", "--output-json", str(tmp_path / "none.json")])
    assert not os.path.exists(tmp_path / "none.json")


@pytest.mark.parametrize("content, message", [
    ({"tool": "eval_ppl", "models": [{"name": "a"}]}, r"models\[0\] \(a\) has no \"results\""),
    ({"tool": "eval_ppl", "models": [{"name": "a", "results": [{"length": 32}]}]},
     r"models\[0\].results\[0\] \(length 32\) has no numeric \"ppl\""),
    ({"tool": "eval_ppl", "models": [{"results": []}]}, r"models\[0\] has no \"name\""),
    ({"tool": "eval_ppl", "models": {"a": 1}}, r"\"models\" is not a list"),
])
def test_malformed_compare_fails_before_the_evaluation(tmp_path, content, message):
    tool = load_tool("eval_ppl")
    bad = tmp_path / "earlier.json"
    bad.write_text(json.dumps(content))
    # --model names no model at all: the error must come from --compare, checked first
    with pytest.raises(SystemExit, match=f"--compare {bad}: " + message):
        tool.main(["--model", str(tmp_path / "no-model"), "--data", str(bad), "--lengths", "32",
                   "--compare", str(bad), "--output-json", str(tmp_path / "out.json")])
    assert not os.path.exists(tmp_path / "out.json")


def test_tool_errors_name_the_flag(tiny_hf_dir, tmp_path):
    ppl = load_tool("eval_ppl")
    with pytest.raises(SystemExit, match="--data is required"):
        ppl.main(["--model", tiny_hf_dir, "--lengths", "32"])
    with pytest.raises(SystemExit, match="--rope-scaling is not valid JSON"):
        ppl.main(["--model", tiny_hf_dir, "--lengths", "32", "--data", __file__,
                  "--rope-scaling", "{linear}"])
    with pytest.raises(SystemExit, match="give --model"):
        ppl.main(["--lengths", "32"])
    with pytest.raises(SystemExit, match="not a length"):
        ppl.main(["--model", tiny_hf_dir, "--lengths", "abc", "--data", __file__])
    with pytest.raises(SystemExit, match="not a results file written by eval_ppl"):
        bogus = tmp_path / "x.json"
        bogus.write_text(json.dumps({"tool": "eval_passkey", "models": []}))
        ppl.main(["--compare", str(bogus)])
    passkey = load_tool("eval_passkey")
    with pytest.raises(SystemExit, match="too short"):
        passkey.main(["--model", tiny_hf_dir, "--lengths", "64", "--trials", "1",
                      "--output-json", str(tmp_path / "p.json")])
    with pytest.raises(SystemExit, match="--trials must be >= 1"):
        passkey.main(["--model", tiny_hf_dir, "--lengths", "400", "--trials", "0"])
