"""examples/real_table.py's statistics against values worked by hand."""

import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("real_table",
                                               os.path.join(ROOT, "examples", "real_table.py"))
real_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_table)


def test_wilson_and_mcnemar_by_hand():
    # Wilson 95%: 5/5 -> [0.566, 1], 0/10 -> [0, 0.278] (Agresti & Coull's tables)
    assert real_table.wilson(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)
    assert real_table.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    # 8 vs 1 discordant: 2 * (C(9,0) + C(9,1)) / 2^9
    assert real_table.mcnemar(8, 1) == pytest.approx(20 / 512)
    assert real_table.mcnemar(1, 8) == real_table.mcnemar(8, 1)
    assert real_table.mcnemar(0, 0) == 1.0 and real_table.mcnemar(3, 3) == 1.0


def test_paired_ratio_whole_window_and_past_it():
    size, n_blocks = 256, 40
    tokens = size * (n_blocks - 1) + 100  # a short last block
    counts = [size] * (n_blocks - 1) + [100]
    control = [2.0 * c for c in counts]
    # PoSE equal to the control in the first 32 blocks (8192 tokens), 0.1 nats better after
    pose = [x - (0.1 * c if i >= 32 else 0.0) for i, (x, c) in enumerate(zip(control, counts))]
    a, b = (pose, size, tokens), (control, size, tokens)
    past = real_table.paired_ratio(a, b, first_block=32)
    assert past == pytest.approx((math.exp(-0.1),) * 3)  # every block the same: no spread
    whole = real_table.paired_ratio(a, b)
    after = sum(counts[32:])
    assert whole[0] == pytest.approx(math.exp(-0.1 * after / tokens))
    assert whole[1] < whole[0] < whole[2]  # blocks differ: the interval has width
    assert real_table.paired_ratio(a, (control, size, tokens + 1)) is None  # not the same text


def test_table_reads_result_files(tmp_path):
    def ppl_file(name, method, blocks):
        rec = {"length": 512, "ppl": math.exp(sum(blocks) / 512), "tokens": 512,
               "block_tokens": 256, "block_nll": blocks}
        (tmp_path / name).write_text(json.dumps({"models": [{"name": method, "results": [rec]}]}))

    def passkey_file(name, method, right):
        recs = [{"trial": i, "correct": ok} for i, ok in enumerate(right)]
        (tmp_path / name).write_text(json.dumps({"models": [{"name": method, "results": [
            {"length": 512, "correct": sum(right), "trials": len(right), "records": recs}]}]}))

    ppl_file("ppl_pose_yarn_512.json", "pose_yarn", [256.0, 256.0])
    ppl_file("ppl_control_yarn_512.json", "control_yarn", [512.0, 512.0])
    passkey_file("passkey_pose_yarn_512.json", "pose_yarn", [True, True, False, True])
    passkey_file("passkey_control_yarn_512.json", "control_yarn", [False, True, True, False])
    lines = real_table.paired_tables(real_table.collect(str(tmp_path)))
    text = "\n".join(lines)
    assert f"| licences, all | {math.exp(-1):.3f} [{math.exp(-1):.3f}-{math.exp(-1):.3f}] |" in text
    assert "| 512 | 4 | 2 | 1 | 1.00 |" in text
    pytest.importorskip("matplotlib")
    real_table.plot(real_table.collect(str(tmp_path)), str(tmp_path / "real.png"))
    assert (tmp_path / "real.png").stat().st_size > 0


def test_plot_takes_every_trial_right(tmp_path):
    # 10/10: the Wilson bound is 1 up to rounding, and matplotlib refuses a negative error bar
    pytest.importorskip("matplotlib")
    cells = real_table.collect(str(tmp_path))
    cells["passkey"]["pose_yarn"] = {16384: (10, 10)}
    real_table.plot(cells, str(tmp_path / "all_right.png"))
    assert (tmp_path / "all_right.png").stat().st_size > 0


def test_region_table_splits_the_longest_window_at_the_models_window():
    # 40 blocks of 256 (10240 tokens): PoSE equal to the control before 8192, 0.1 nats better after
    size, counts = 256, [256] * 40
    control = [2.0 * c for c in counts]
    pose = [x - (0.1 * c if i >= 32 else 0.0) for i, (x, c) in enumerate(zip(control, counts))]
    cells = {"blocks_ppl": {"pose_yarn": {10240: (pose, size, 10240)},
                            "control_yarn": {10240: (control, size, 10240)}},
             "blocks_ppl_pydoc": {}}
    text = "\n".join(real_table.region_table(cells, "pose_yarn", "control_yarn"))
    assert "| 0-8192 | 8192-10240 |" in text
    after = f"{math.exp(-0.1):.3f}"
    assert f"| 1.000 [1.000-1.000] | {after} [{after}-{after}] |" in text
