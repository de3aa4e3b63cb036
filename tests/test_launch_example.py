"""examples/pose_llama7b.sh launched the three ways a user types it: ``bash`` (which starts
torchrun), ``torchrun ... examples/pose_llama7b.sh`` (torchrun runs the file with Python; each
worker trains itself), and under Slurm (one bash launch per node through srun).

The fast tests run the real torchrun and the real script with ``PYTHON`` pointing at a recorder
of the command each process would run (the launch path only, seconds); the slow ones train the
tiny CPU model for real and compare the saved checkpoints tensor by tensor.
tools/slurm_check.sh runs the batch script under a real one-machine Slurm.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from tests.distributed import child_env
from pose_megatron.parallel import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = "examples/pose_llama7b.sh"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$REC_DIR/rank${RANK:-none}-node${SLURM_NODEID:-none}.args"
"""


def _record(tmp_path, command, **env):
    """Run ``command`` with the script's PYTHON replaced by a recorder: {file name: argv}."""
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    for old in rec.iterdir():
        old.unlink()
    python = tmp_path / "python-recorder"
    python.write_text(RECORDER)
    python.chmod(0o755)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=child_env(PYTHON=str(python), REC_DIR=str(rec), POSE_TINY_CPU="1",
                                        OMP_NUM_THREADS="1", **env))
    records = {p.name: p.read_text().splitlines() for p in sorted(rec.iterdir())}
    return done, records


def _training_flags(argv):
    """What follows ``-m pose_megatron.train`` in one recorded command."""
    at = argv.index("pose_megatron.train")
    assert argv[at - 1] == "-m"
    return argv[at + 1:]


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_the_file_is_valid_bash_and_valid_python():
    bash = subprocess.run(["bash", "-n", SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr
    # -W error: an escape sequence Python would warn about is a failure here, not in a worker
    py = subprocess.run([sys.executable, "-W", "error", "-c",
                         "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')",
                         SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert py.returncode == 0, py.stderr


def _without_save(flags):
    at = flags.index("--save")
    return flags[:at] + flags[at + 2:]


def test_torchrun_workers_train_with_the_flags_of_the_bash_launch(tmp_path):
    done, launched = _record(tmp_path, ["bash", SCRIPT, "--seed", "7"],
                             SAVE=str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    (launcher,) = launched.values()
    assert launcher[:2] == ["-m", "pose_megatron.launch"]
    assert _flag(launcher, "--nproc-per-node") == "2" and _flag(launcher, "--nnodes") == "1"

    port = str(free_port())
    done, workers = _record(tmp_path, [*TORCHRUN, "--nproc-per-node", "2", "--master-port", port,
                                       SCRIPT, "--seed", "7"])
    assert done.returncode == 0, done.stderr
    # one process per torchrun worker, each the training itself: no second launcher anywhere
    assert sorted(workers) == ["rank0-nodenone.args", "rank1-nodenone.args"]
    for argv in workers.values():
        assert argv[:2] == ["-m", "pose_megatron.train"]
        assert _without_save(_training_flags(argv)) == _without_save(_training_flags(launcher))
        assert argv[-2:] == ["--seed", "7"]
        # both workers of the job write one directory (torchrun's run id "none" without --rdzv-id)
        assert _flag(argv, "--save") == f"/tmp/pose-tiny-{os.getuid()}-none-{port}"
    assert f"+ rank 0 of 2: {tmp_path}/python-recorder -m pose_megatron.train" in done.stderr


def _scontrol_works():
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "show", "hostnames", "x"], capture_output=True,
                          timeout=30).returncode == 0


def _slurm_step(node_id, tasks="2", **extra):
    env = dict(SLURM_JOB_ID="4321", SLURM_STEP_ID="0", SLURM_STEP_NUM_NODES="2",
               SLURM_STEP_NUM_TASKS=tasks, SLURM_NODEID=str(node_id),
               SLURM_STEP_NODELIST="nodea,nodeb", **extra)
    if not _scontrol_works():  # the first node's name then comes from the user, as it may
        env["MASTER_ADDR"] = "nodea"
    return env


def test_under_srun_each_node_starts_one_torchrun_with_slurms_rendezvous(tmp_path):
    """What srun gives each task of a two-node step (the variables a real one sets; the real
    one runs in tools/slurm_check.sh)."""
    seen = []
    for node in (0, 1):
        done, launched = _record(tmp_path, ["bash", SCRIPT], **_slurm_step(node))
        assert done.returncode == 0, done.stderr
        (argv,) = launched.values()
        seen.append(argv)
        assert argv[:2] == ["-m", "pose_megatron.launch"]
        assert (_flag(argv, "--nnodes"), _flag(argv, "--node-rank")) == ("2", str(node))
        # the tiny model's TP=2 spread over the two nodes
        assert _flag(argv, "--nproc-per-node") == "1"
        assert (_flag(argv, "--master-addr"), _flag(argv, "--master-port")) == ("nodea", "24321")
        assert _flag(argv, "--save") == f"/tmp/pose-tiny-{os.getuid()}-4321"
    assert _training_flags(seen[0]) == _training_flags(seen[1])


def test_more_than_one_srun_task_per_node_is_refused(tmp_path):
    done, launched = _record(tmp_path, ["bash", SCRIPT], **_slurm_step(0, tasks="4"))
    assert done.returncode == 2 and not launched
    assert done.stderr.strip().splitlines()[-1] == (
        "error: srun started 4 tasks on 2 nodes; run one per node (srun --ntasks-per-node=1), "
        "its torchrun starts the node's workers")


# ----------------------------------------------------------------------------- real training


def _tensors(ckpt, iteration=3):
    """Every tensor of one saved iteration (model, optimizer, RNG), by name."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        flat = os.path.join(tmp, "flat.pt")
        dcp_to_torch_save(os.path.join(ckpt, f"iter_{iteration:07d}"), flat)
        state = torch.load(flat, weights_only=False)  # our own file, written just above
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + "/")
            elif isinstance(v, torch.Tensor):
                out[prefix + k] = v

    walk(state, "")
    return out


def _series(ckpt):
    return sorted(n for n in os.listdir(ckpt) if not n.startswith("."))


def _env(**extra):
    return child_env(POSE_TINY_CPU="1", OMP_NUM_THREADS="1", **extra)


def _run(command, **env):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=_env(**env))


@pytest.fixture(scope="module")
def bash_launched(tmp_path_factory):
    """The CPU mode as CI's README command runs it: ``bash examples/pose_llama7b.sh``."""
    tmp = tmp_path_factory.mktemp("bash")
    save = tmp / "ckpt"
    # this test's Python, as the torchrun launches below use (the bash launch's default: .venv's)
    done = _run(["bash", SCRIPT, "--log-json", str(tmp / "log.jsonl")], SAVE=str(save),
                PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr[-3000:]
    return save


@pytest.mark.slow
def test_bash_launch_trains_the_tiny_model(bash_launched):
    assert (bash_launched / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (bash_launched / "iter_0000003" / "metadata.json").exists()
    assert len((bash_launched.parent / "log.jsonl").read_text().splitlines()) == 3


def test_bash_launch_refuses_missing_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("LOAD", "SAVE", "DATA_PATH")}
    env.pop("POSE_TINY_CPU", None)
    done = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: set LOAD (see the top of {SCRIPT})"


EXPECTED_SERIES = ["iter_0000002", "iter_0000003", "latest_checkpointed_iteration.txt",
                   "pose_model.json"]


def _assert_same_checkpoint(save, reference):
    assert _series(save) == EXPECTED_SERIES
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    ours, theirs = _tensors(save), _tensors(reference)
    assert ours.keys() == theirs.keys()
    assert any("optimizer" in k or "exp_avg" in k for k in ours), sorted(ours)[:20]
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not different, different


def _saved_to(stderr):
    match = re.search(r"^\+ rank 0 of \d+: .* --save (\S+) ", stderr, re.M)
    assert match, stderr[-3000:]
    return match.group(1)


@pytest.mark.slow
def test_torchrun_one_node_two_processes_saves_the_bash_launchs_checkpoint(bash_launched):
    # as typed: no SAVE, the job's own default directory (printed by rank 0)
    done = _run([*TORCHRUN, "--nproc-per-node", "2", SCRIPT])
    assert done.returncode == 0, done.stderr[-3000:]
    save = _saved_to(done.stderr)
    try:
        _assert_same_checkpoint(pathlib.Path(save), bash_launched)
    finally:
        shutil.rmtree(save, ignore_errors=True)


@pytest.mark.slow
def test_torchrun_two_nodes_one_process_each_saves_the_bash_launchs_checkpoint(bash_launched):
    """Two torchrun agents rendezvousing on localhost, node ranks 0 and 1: one job."""
    port = str(free_port())
    agents = [subprocess.Popen(
        [*TORCHRUN, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
         "--master-addr", "127.0.0.1", "--master-port", port, SCRIPT],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env()) for rank in (0, 1)]
    outputs = [agent.communicate(timeout=600) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    save = _saved_to(outputs[0][1])
    assert save == f"/tmp/pose-tiny-{os.getuid()}-none-{port}"
    assert "+ rank 0" not in outputs[1][1]  # node 1 holds rank 1 only
    try:
        _assert_same_checkpoint(pathlib.Path(save), bash_launched)
    finally:
        shutil.rmtree(save, ignore_errors=True)
