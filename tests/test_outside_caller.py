"""A Python program that loads a model with ``pose_megatron.load_megatron_model`` can still start
every tool as a subprocess: the one-process group it got needs no port and left its os.environ
as it was (before: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT of a live store, and EADDRINUSE in
every child)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.distributed import child_env
from tests.eval_data import save_tiny_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CALLER = textwrap.dedent("""
    import json, os, subprocess, sys
    root, ckpt = sys.argv[1], sys.argv[2]
    before = dict(os.environ)
    import torch
    import pose_megatron
    model = pose_megatron.load_megatron_model(ckpt)
    ids = torch.arange(8).unsqueeze(0)
    logits = model(ids, ids)
    changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
    py, tools = sys.executable, os.path.join(root, "tools")
    commands = {
        "convert": [py, os.path.join(tools, "convert_megatron_to_hf.py"), "--megatron-dir", ckpt,
                    "--out", sys.argv[3] + "/hf", "--no-progress"],
        "train": [py, "-m", "pose_megatron.train", "--mock-data", "--device", "cpu", "--load",
                  ckpt, "--pose-train-len", "16", "--train-iters", "1", "--save",
                  sys.argv[3] + "/trained"],
        "eval": [py, os.path.join(tools, "eval_ppl.py"), "--model", ckpt, "--data", sys.argv[4],
                 "--lengths", "32", "--device", "cpu", "--output-json",
                 sys.argv[3] + "/ppl.json"],
    }
    procs = {name: subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, argv in commands.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        results[name] = [proc.returncode, err[-1500:]]
    print(json.dumps({"changed": changed, "logits": list(logits.shape), "tools": results}))
""")


@pytest.mark.slow
def test_tools_run_as_subprocesses_of_a_process_that_loaded_a_model(tmp_path):
    hf = save_tiny_llama(tmp_path / "hf")
    ckpt = tmp_path / "ckpt"
    conv = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megatron.py"),
                           "--hf-dir", str(hf), "--out", str(ckpt), "--no-progress"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0, conv.stderr[-2000:]
    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    out = tmp_path / "out"
    out.mkdir()
    # A clean environment, as a user's program would have: no rendezvous variables at all.
    caller = subprocess.run([sys.executable, "-c", CALLER, ROOT, str(ckpt), str(out), str(text)],
                            cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=600)
    assert caller.returncode == 0, caller.stderr[-3000:]
    report = json.loads(caller.stdout.strip().splitlines()[-1])
    assert report["changed"] == [] or set(report["changed"]).isdisjoint(
        {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"}), report["changed"]
    assert report["logits"][:2] == [1, 8]
    for name, (code, err) in report["tools"].items():
        assert code == 0, (name, err)
    assert json.loads((out / "hf" / "config.json").read_text())["num_hidden_layers"] == 2
    assert (out / "trained" / "iter_0000001").is_dir()
    assert json.loads((out / "ppl.json").read_text())["models"][0]["results"][0]["length"] == 32
