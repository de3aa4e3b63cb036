"""Bad input, faults and misuse: each case ends in a correct result or in one ``error:`` line naming
the file or flag (exit status 2, no traceback), and no earlier good output is lost.

Data-loss cases first. Most cases run the tools' ``main`` in-process through ``errors.run`` (the
same code path as the command line, without a process start-up each); a few run the real
commands as subprocesses to pin the entry points themselves.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from pose_megatron import errors, publish
from pose_megatron.commands import convert_hf_to_megatron as to_megatron
from pose_megatron.commands import convert_megatron_to_hf as to_hf
from tests.distributed import child_env
from tests.hf_families import make_hf_model, save_hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


def _tree_digest(path) -> dict:
    """{relative path: sha1} of every file under ``path``."""
    out = {}
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha1(f.read()).hexdigest()
    return out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    found = [line for line in lines if line.startswith("error: ")]
    assert len(found) == 1, err
    assert "Traceback" not in err, err
    return found[0]


def _run(tool_main, argv, capsys):
    """(exit status, the one error line or None) of a tool run in-process."""
    capsys.readouterr()
    code = errors.run(tool_main, argv, exit=False)
    err = capsys.readouterr().err
    return code, (_one_error_line(err) if code else None)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """proj/hf (a tiny HF LLaMA) and ckpt/pose (its torch_dist conversion), built once."""
    root = tmp_path_factory.mktemp("bad_input")
    hf = save_hf_model(make_hf_model("llama2"), str(root / "proj" / "hf"), shard=False)
    (root / "proj" / "notes.txt").write_text("unrelated file beside the model\n")
    assert to_megatron.main(["--hf-dir", hf, "--out", str(root / "ckpt" / "pose"),
                             "--no-progress"]) == 0
    return root


# ----------------------------------------------------------------------------- data loss


@pytest.mark.parametrize("case", ["same", "inside", "contains"])
def test_output_overlapping_an_input_is_refused_even_with_force(project, case, capsys):
    ckpt, proj = project / "ckpt" / "pose", project / "proj"
    before_ckpt, before_proj = _tree_digest(ckpt), _tree_digest(proj)
    if case == "contains":  # convert_hf_to_megatron.py --hf-dir proj/hf --out proj --force
        code, line = _run(to_megatron.convert, ["--hf-dir", str(proj / "hf"), "--out",
                                                str(proj), "--force", "--no-progress"], capsys)
        assert "--out" in line and "contains --hf-dir" in line
    else:  # convert_megatron_to_hf.py --megatron-dir ckpt/pose --out ckpt/pose[/sub] --force
        out = ckpt if case == "same" else ckpt / "release" / "hf"
        code, line = _run(to_hf.convert, ["--megatron-dir", str(ckpt), "--out", str(out),
                                          "--force", "--no-progress"], capsys)
        assert "--megatron-dir" in line
    assert code == 2
    assert _tree_digest(ckpt) == before_ckpt and _tree_digest(proj) == before_proj


def test_failed_conversion_keeps_the_previous_output(project, tmp_path, capsys, monkeypatch):
    from pose_megatron.convert import hf_io

    out = tmp_path / "hf_out"
    assert _run(to_hf.convert, ["--megatron-dir", str(project / "ckpt" / "pose"), "--out",
                                str(out), "--no-progress"], capsys)[0] == 0
    before = _tree_digest(out)

    def full_disk(self, name, tensor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.directory, "x"))

    monkeypatch.setattr(hf_io.HFWriter, "add", full_disk)
    code, line = _run(to_hf.convert, ["--megatron-dir", str(project / "ckpt" / "pose"),
                                      "--out", str(out), "--force", "--no-progress"], capsys)
    assert code == 2 and f"--out {out}: no space left on device" in line
    assert "the previous output is kept" in line
    assert _tree_digest(out) == before  # the earlier export is untouched
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n] == []


def test_second_writer_of_one_output_refuses(project, tmp_path, capsys):
    out = tmp_path / "locked"
    with publish.OutputLock(str(out)):
        code, line = _run(to_hf.convert, ["--megatron-dir", str(project / "ckpt" / "pose"),
                                          "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "is being written by another process" in line and "--out" in line
    assert not out.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import socket

    out = tmp_path / "model"
    dead, live, foreign = (tmp_path / f".model.tmp-{tag}" for tag in ("1-a", "2-b", "3-c"))
    for path, host, pid in ((dead, socket.gethostname(), _dead_pid()),
                            (live, socket.gethostname(), os.getpid()),
                            (foreign, "another-host", _dead_pid())):
        path.mkdir()
        (path / "weights").write_bytes(b"x" * 100)
        (path / publish.WRITER_RECORD).write_text(json.dumps({"host": host, "pid": pid}))
    # a writer killed between moving the previous output aside and publishing the new one
    old = tmp_path / ".model.old-4-d"
    (old / "previous").mkdir(parents=True)
    (old / "previous" / "config.json").write_text("{}")
    (old / publish.WRITER_RECORD).write_text(
        json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    with publish.publish_dir(str(out), force=True) as tmp:
        assert not out.exists() or (out / "config.json").exists()  # put back before the write
        open(os.path.join(tmp, "new.txt"), "w").close()
    assert not dead.exists() and not old.exists()
    assert live.exists() and foreign.exists()
    assert sorted(os.listdir(out)) == ["new.txt"]


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    """Preprocessing's .bin/.idx temporaries: named by their writer, removed once it is gone."""
    prefix = str(tmp_path / "corpus_text_document")
    mine = publish.temp_file_prefix(prefix)
    dead = mine.replace(f".tmp-{os.getpid()}-", f".tmp-{_dead_pid()}-")
    for path in (mine + ".bin", dead + ".bin", dead + ".idx", prefix + ".tmp-7.bin"):
        open(path, "w").close()
    assert sorted(publish.clean_stale_files(prefix)) == [dead + ".bin", dead + ".idx"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p) for p in (mine + ".bin", prefix + ".tmp-7.bin"))


def test_outputs_respect_the_umask(project, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "umask"
        assert _run(to_hf.convert, ["--megatron-dir", str(project / "ckpt" / "pose"), "--out",
                                    str(out), "--no-progress"], capsys)[0] == 0
    finally:
        os.umask(previous)
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert os.stat(out / "config.json").st_mode & 0o777 == 0o644


def test_tokenizer_is_checked_before_anything_is_written(project, tmp_path, capsys):
    out = tmp_path / "tok"
    code, line = _run(to_megatron.convert, ["--hf-dir", str(project / "proj" / "hf"), "--out",
                                            str(out), "--tokenizer", str(tmp_path / "nope"),
                                            "--no-progress"], capsys)
    assert code == 2 and "--tokenizer" in line
    assert os.listdir(tmp_path) == []


def test_read_only_or_unwritable_out_is_one_line(project, tmp_path, capsys, monkeypatch):
    real_mkdir = os.mkdir

    def read_only(path, *a, **k):
        if ".tmp-" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(publish.os, "mkdir", read_only)
    code, line = _run(to_hf.convert, ["--megatron-dir", str(project / "ckpt" / "pose"),
                                      "--out", str(tmp_path / "ro"), "--no-progress"], capsys)
    assert code == 2 and "--out" in line and "Read-only file system" in line


# ----------------------------------------------------------------------------- damaged inputs


def _broken_hf(project, tmp_path, damage: str) -> str:
    src = tmp_path / "hf"
    shutil.copytree(project / "proj" / "hf", src)
    shard = src / "model.safetensors"
    data = shard.read_bytes()
    if damage == "4-byte shard":
        shard.write_bytes(data[:4])
    elif damage == "truncated shard":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "header-truncated shard":
        header_len = int.from_bytes(data[:8], "little")
        shard.write_bytes(data[: 8 + header_len // 2])
    elif damage == "invalid config.json":
        (src / "config.json").write_text('{"hidden_size": 64,')
    elif damage == "missing config key":
        cfg = json.loads((src / "config.json").read_text())
        del cfg["hidden_size"]
        (src / "config.json").write_text(json.dumps(cfg))
    return str(src)


@pytest.mark.parametrize("damage,names", [
    ("4-byte shard", "model.safetensors"), ("truncated shard", "model.safetensors"),
    ("header-truncated shard", "model.safetensors"), ("invalid config.json", "config.json"),
    ("missing config key", "config.json: required key 'hidden_size'"),
])
def test_damaged_hf_directory_is_one_line_naming_the_file(project, tmp_path, damage, names,
                                                          capsys):
    hf = _broken_hf(project, tmp_path, damage)
    out = tmp_path / "out"
    code, line = _run(to_megatron.convert, ["--hf-dir", hf, "--out", str(out),
                                            "--no-progress"], capsys)
    assert code == 2 and names in line, line
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated shard", "header-truncated shard"])
def test_damaged_hf_model_given_to_an_evaluation_is_one_line_naming_the_file(
        project, tmp_path, damage, capsys):
    from pose_megatron.commands import eval_ppl

    hf = _broken_hf(project, tmp_path, damage)
    code, line = _run(eval_ppl.main, ["--model", hf, "--data", __file__, "--lengths", "32",
                                      "--output-json", str(tmp_path / "ppl.json")], capsys)
    assert code == 2 and line.startswith(f"error: {hf}/model.safetensors: "), line
    assert "truncated" in line


def test_missing_distcp_shard_is_one_line(project, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(project / "ckpt" / "pose", ckpt)
    for name in os.listdir(ckpt / "release"):
        if name.endswith(".distcp"):
            os.unlink(ckpt / "release" / name)
    code, line = _run(to_hf.convert, ["--megatron-dir", str(ckpt), "--out",
                                      str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2 and str(ckpt / "release") in line, line


def test_debug_switch_shows_the_traceback(project, tmp_path, capsys, monkeypatch):
    argv = ["--hf-dir", _broken_hf(project, tmp_path, "invalid config.json"), "--out",
            str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(ValueError, match="config.json"):
        errors.run(to_megatron.convert, argv + ["--debug"], exit=False)
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="config.json"):
        errors.run(to_megatron.convert, argv, exit=False)


# ----------------------------------------------------------------------------- the commands


def test_commands_print_one_line_and_exit_2(project, tmp_path):
    """The real entry points (one process each): converter, training, evaluation."""
    not_ckpt = tmp_path / "empty"
    not_ckpt.mkdir()
    cases = [
        ([os.path.join(TOOLS, "convert_megatron_to_hf.py"), "--megatron-dir",
          str(project / "ckpt" / "pose"), "--out", str(project / "ckpt" / "pose"), "--force"],
         "--megatron-dir"),
        (["-m", "pose_megatron.train", "--mock-data", "--device", "cpu", "--pose-train-len",
          "16", "--train-iters", "1", "--load", str(project / "proj")], "--load"),
        ([os.path.join(TOOLS, "eval_ppl.py"), "--model", str(not_ckpt), "--data", __file__,
          "--lengths", "32"], str(not_ckpt)),
    ]
    procs = [subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv, _ in cases]
    for proc, (argv, names) in zip(procs, cases):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err[-2000:])
        assert names in _one_error_line(err), err


# ----------------------------------------------------------------------------- training


TRAIN = ["--mock-data", "--device", "cpu", "--num-layers", "2", "--hidden-size", "64",
         "--num-attention-heads", "4", "--vocab-size", "256", "--pose-train-len", "16",
         "--pose-target-len", "64", "--micro-batch-size", "1", "--lr", "1e-3", "--seed", "3"]


def _training_cases(rank, world, root, converted, legacy):
    """Every training case in one process (one Megatron import): [(name, code, stderr, stdout)]."""
    import contextlib
    import io

    from megatron.core import dist_checkpointing

    from pose_megatron.train import main

    results = []

    def run(name, argv):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = errors.run(main, argv, exit=False)
        results.append((name, code, err.getvalue(), out.getvalue()))

    s1 = f"{root}/s1"
    run("first", TRAIN + ["--train-iters", "2", "--rope-scaling-type", "linear", "--save", s1])
    run("new lr", TRAIN + ["--train-iters", "2", "--lr", "5e-4", "--load", s1, "--save", s1])
    run("longer", TRAIN + ["--train-iters", "3", "--load", s1, "--save", s1])
    run("new rope", TRAIN + ["--train-iters", "2", "--rope-scaling-type", "ntk", "--load", s1])
    run("override", TRAIN + ["--train-iters", "3", "--override-opt-param-scheduler",
                             "--rope-scaling-type", "ntk", "--override-rope-scaling",
                             "--load", s1, "--save", s1])
    s2 = f"{root}/s2"
    run("no optim saved", TRAIN + ["--train-iters", "1", "--rope-scaling-type", "linear",
                                   "--no-save-optim", "--save", s2])
    run("resume no optim", TRAIN + ["--train-iters", "2", "--lr-decay-iters", "1", "--load", s2])
    run("fresh optim", TRAIN + ["--train-iters", "2", "--lr-decay-iters", "1", "--load", s2,
                                "--no-load-optim"])
    s3 = f"{root}/s3"
    with publish.OutputLock(s3, "--save"):
        run("locked save", TRAIN + ["--train-iters", "1", "--rope-scaling-type", "linear",
                                    "--save", s3])
    run("not a checkpoint", TRAIN + ["--train-iters", "1", "--load", f"{root}"])
    run("legacy", TRAIN + ["--train-iters", "1", "--load", legacy])

    # Corpora: a good one, a truncated .bin, an .idx of another .bin, documents all too short.
    data, tok = _make_corpora(root)
    DATA = TRAIN + ["--train-iters", "1", "--rope-scaling-type", "linear"]
    run("data without tokenizer", [a for a in DATA if a != "--mock-data"] + [
        "--data-path", data["good"]])
    run("tokenizer above vocab", [a for a in DATA if a != "--mock-data"] + [
        "--data-path", data["good"], "--tokenizer-model", tok, "--vocab-size", "50"])
    for name in ("truncated bin", "idx of another bin", "documents too short"):
        run(name, [a for a in DATA if a != "--mock-data"] + [
            "--data-path", data[name], "--tokenizer-model", tok,
            "--data-cache-path", f"{root}/cache"])

    # Its first save into its own --load directory, killed after the shards are written: the
    # converter's base weights keep their own label.
    original = dist_checkpointing.save

    def killed(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("killed during the save")

    dist_checkpointing.save = killed
    try:
        run("killed first save", TRAIN + ["--train-iters", "1", "--rope-scaling-type", "linear",
                                          "--pose-target-len", "512", "--load", converted,
                                          "--save", converted, "--debug"])
    except KeyboardInterrupt:
        results.append(("killed first save", 130, "", ""))
    finally:
        dist_checkpointing.save = original
    run("first save into --load", TRAIN + ["--train-iters", "1", "--rope-scaling-type",
                                           "linear", "--pose-target-len", "512", "--load",
                                           converted, "--save", converted])
    return results


def _make_corpora(root):
    """Tiny Megatron .bin/.idx corpora (written by Megatron-Core's own builder) and a
    character-level tokenizer."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from tests.eval_data import save_char_tokenizer

    tok = str(save_char_tokenizer(os.path.join(root, "tok")))
    rng = np.random.default_rng(0)

    def write(prefix, lengths):
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
        for n in lengths:
            builder.add_document(rng.integers(3, 90, size=n, dtype=np.int32), [n])
        builder.finalize(prefix + ".idx")
        return prefix

    data = {"good": write(os.path.join(root, "good"), [40] * 8),
            "truncated bin": write(os.path.join(root, "cut"), [40] * 8),
            "idx of another bin": write(os.path.join(root, "other"), [30] * 8),
            "documents too short": write(os.path.join(root, "short"), [5] * 8)}
    with open(data["truncated bin"] + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(data["truncated bin"] + ".bin") // 2)
    shutil.copy(data["good"] + ".idx", data["idx of another bin"] + ".idx")
    return data, tok


def test_training_resume_and_checkpoint_cases(project, tmp_path, capsys):
    from pose_megatron.config import ModelArgs
    from pose_megatron.checkpoint import resumable, store
    from tests.distributed import run_distributed

    converted, legacy = tmp_path / "converted", tmp_path / "legacy"
    shutil.copytree(project / "ckpt" / "pose", converted)
    assert to_megatron.main(["--hf-dir", str(project / "proj" / "hf"), "--out", str(legacy),
                             "--format", "legacy", "--no-progress"]) == 0
    base = (converted / "pose_model.json").read_text()
    results = run_distributed(_training_cases, 1, str(tmp_path), str(converted), str(legacy))[0]
    by_name = {name: (code, err, out) for name, code, err, out in results}

    def refused(name, *words):
        code, err, _ = by_name[name]
        line = _one_error_line(err)
        assert code == 2, (name, err)
        for word in words:
            assert word in line, (name, line)

    for name in ("first", "no optim saved"):
        assert by_name[name][0] == 0, by_name[name][1][-2000:]
    refused("new lr", "--lr 0.0005 (checkpoint: 0.001)", "--override-opt-param-scheduler")
    refused("longer", "--lr-decay-iters", "(checkpoint: 2)")
    refused("new rope", "--override-rope-scaling", "--load")
    code, err, out = by_name["override"]
    assert code == 0, err[-2000:]
    assert "resuming iteration 2 of 3: keeping weights, optimizer state, LR schedule from the " \
           "flags" in out
    refused("resume no optim", "--no-save-optim", "--no-load-optim")
    code, err, out = by_name["fresh optim"]
    assert code == 0 and "a FRESH optimizer" in out, err[-2000:]
    refused("locked save", "--save", "is being written by another process")
    refused("not a checkpoint", "--load", "not a checkpoint")
    refused("legacy", "--load", "legacy per-rank checkpoint", "--format torch_dist")

    refused("data without tokenizer", "--data-path needs --tokenizer-model")
    refused("tokenizer above vocab", "--tokenizer-model", "model's vocabulary has 50")
    refused("truncated bin", "cut.bin", "truncated .bin, or an .idx of another .bin")
    refused("idx of another bin", "other.bin", "truncated .bin, or an .idx of another .bin")
    refused("documents too short", "short.idx", "no document")

    # Each iteration carries the RoPE its weights were trained with; the resumed run with other
    # RoPE flags did not relabel iteration 2, and the export of iteration 2 says linear.
    s1 = tmp_path / "s1"
    assert ModelArgs.load(str(s1 / "iter_0000002")).rope_scaling["rope_type"] == "linear"
    assert ModelArgs.load(str(s1 / "iter_0000003")).rope_scaling["rope_type"] == "ntk"
    assert store.model_args_of(str(s1), store.resolve_iteration_dir(str(s1))).rope_scaling[
        "rope_type"] == "ntk"
    assert _run(to_hf.convert, ["--megatron-dir", str(s1), "--iteration", "2", "--out",
                                str(tmp_path / "iter2_hf"), "--no-progress"], capsys)[0] == 0
    exported = json.loads((tmp_path / "iter2_hf" / "config.json").read_text())
    assert exported["rope_scaling"]["rope_type"] == "linear"

    # Killed during its first save into its --load directory, then saved for real: the base
    # weights (release/) keep the converter's label, the new iteration has its own.
    assert by_name["killed first save"][0] != 0
    assert by_name["first save into --load"][0] == 0, by_name["first save into --load"][1]
    assert (converted / "pose_model.json").read_text() == base
    assert ModelArgs.load(str(converted)).rope_scaling is None
    assert resumable.read_tracker(str(converted)) == 1
    assert ModelArgs.load(str(converted / "iter_0000001")).rope_scaling["rope_type"] == "linear"
    assert megatron_args_of_release(converted).rope_scaling is None


def megatron_args_of_release(ckpt):
    from pose_megatron.checkpoint import store

    return store.model_args_of(str(ckpt), str(ckpt / "release"))


# ----------------------------------------------------------------------------- a really full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2.6 MB tmpfs: one checkpoint of the tiny model below (1.7 MB) fits, a second does not.
    Needs the right to mount (root, as on the CI machine); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_during_a_training_save_is_one_line_and_keeps_the_last_checkpoint(small_disk):
    save = small_disk / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pose_megatron.train", "--mock-data", "--device", "cpu",
         "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--num-query-groups", "2", "--vocab-size", "256", "--max-position-embeddings", "32",
         "--pose-train-len", "16", "--pose-target-len", "128", "--rope-scaling-type", "linear",
         "--train-iters", "2", "--lr", "1e-3", "--save", str(save), "--save-interval", "1"],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"--save {save}: no space left on device while saving iteration 2" in line
    assert "iter_0000001, is kept" in line
    # the partial iteration is gone (it held the space), the tracker still names iteration 1
    assert sorted(os.listdir(save)) == ["iter_0000001", "latest_checkpointed_iteration.txt",
                                        "pose_model.json"]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_full_disk_during_a_conversion_is_one_line_and_leaves_nothing(project, small_disk, fmt):
    """The converted tiny model (0.7 MB) does not fit in the 0.3 MB the filler leaves."""
    st = os.statvfs(small_disk)
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (300 << 10)))
    out = small_disk / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, "convert_hf_to_megatron.py"), "--hf-dir",
         str(project / "proj" / "hf"), "--out", str(out), "--format", fmt, "--no-progress"],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _one_error_line(proc.stderr) == (
        f"error: --out {out}: no space left on device (the filesystem at {small_disk}) while "
        f"writing it; the partial output is removed: free space or pass another --out")
    assert "encountered an error" not in proc.stderr  # Megatron's writer logs it no more
    assert os.listdir(small_disk) == ["filler"]  # no partial output, temporary or lock
