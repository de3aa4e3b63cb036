"""matplotlib is an optional extra: without it every tool that plots finishes its work, skips the
plot with one line saying how to get matplotlib, and exits 0.

The tools run in a subprocess whose ``sys.modules["matplotlib"]`` is None, which makes every
``import matplotlib`` fail as it does where the package is not installed.
"""

import json
import os
import subprocess
import sys
import textwrap

from tests.distributed import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["matplotlib"] = None  # as if not installed
    sys.path.insert(0, sys.argv[1])
    from pose_megatron import errors, positions
    from pose_megatron.commands import eval_passkey, eval_ruler
    runs = json.loads(sys.argv[2])
    tools = {"eval_ruler": eval_ruler.main, "eval_passkey": eval_passkey.main,
             "positions": positions.main}
    print(json.dumps([errors.run(tools[name], argv, exit=False) for name, argv in runs]))
""")


def test_tools_skip_the_plot_without_matplotlib_and_exit_0(tiny_hf_dir, tmp_path):
    model = ["--model", tiny_hf_dir, "--name", "tiny", "--device", "cpu"]
    runs = [
        ("eval_ruler", model + ["--lengths", "1700", "--tasks", "vt", "--samples", "1",
                                "--max-new-tokens", "3", "--output-json",
                                str(tmp_path / "ruler.json")]),
        ("eval_passkey", model + ["--lengths", "320", "--trials", "1", "--output-json",
                                  str(tmp_path / "passkey.json")]),
        ("positions", ["--train-len", "16", "--target-len", "64", "--samples", "20",
                       "--plot", str(tmp_path / "coverage.png")]),
    ]
    done = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, json.dumps(runs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=child_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, 0, 0], done.stderr[-3000:]
    notes = [line for line in done.stderr.splitlines() if "matplotlib" in line]
    hint = "matplotlib is not installed (pip install matplotlib, or pip install -e '.[plots]')"
    assert notes == [f"note: skipped the plot {tmp_path / name}: {hint}"
                     for name in ("ruler.png", "passkey.png", "coverage.png")], done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    # the evaluations themselves are complete; only the plots are missing
    for name in ("ruler", "passkey"):
        assert json.load(open(tmp_path / f"{name}.json"))["models"][0]["results"]
        assert f"wrote {tmp_path / name}.json\n" in done.stderr + "\n"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".png")]
