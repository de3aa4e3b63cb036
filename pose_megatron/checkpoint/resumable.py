"""Atomic, resumable Megatron-Core distributed checkpoints.

Layout (shared with the converters, which write ``release/``)::

    CKPT/pose_model.json                  the ModelArgs of the first save (read only for
                                          checkpoints older than per-iteration copies)
    CKPT/latest_checkpointed_iteration.txt   "100" (or "release")
    CKPT/iter_0000100/                    megatron.core.dist_checkpointing of
        {"model", "optimizer", "opt_param_scheduler", "rng_state", "iteration",
         "consumed_train_samples", "checkpoint_version", "args"}
    CKPT/iter_0000100/pose_model.json     the ModelArgs (architecture, RoPE) of these weights

The ModelArgs travel inside each iteration, published with its weights by the same rename: a
save killed half-way, or a resumed run with other RoPE flags, cannot relabel weights saved
earlier. One run writes a ``--save`` directory at a time (``publish.OutputLock``).

Atomicity: every rank writes into ``iter_X.tmp``; only after all ranks finished does rank 0 rename
it to ``iter_X`` and then rewrite the tracker (temp file + rename). A process killed at any moment
leaves the tracker naming the last complete checkpoint; stale ``.tmp`` directories are ignored on
load and replaced on the next save.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal

import numpy as np
import torch
import torch.distributed as dist

from pose_megatron import publish
from pose_megatron.checkpoint import store
from pose_megatron.config import CONFIG_FILENAME, ModelArgs
from pose_megatron.model import unwrap_model

# The layout is Megatron-LM's, defined once in checkpoint/store (converter output is a
# checkpoint too).
TRACKER = store.TRACKER
CHECKPOINT_VERSION = store.CHECKPOINT_VERSION
# Test hook: SIGKILL this process right after its shards of iteration N are written, before the
# rename (what a node failure during a save looks like).
KILL_DURING_SAVE_ENV = "POSE_TEST_KILL_DURING_SAVE"


def iteration_dir(root: str, iteration) -> str:
    return os.path.join(root, store.iteration_dir(
        None if iteration == "release" else int(iteration)))


def read_tracker(root: str):
    """The tracker's content: an int iteration, "release", or None when there is none."""
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return "release" if os.path.isdir(os.path.join(root, "release")) else None
    text = open(path).read().strip()
    if text == "release":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} holds {text!r}; expected an iteration number or 'release'") \
            from None


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0



def _rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"random": random.getstate(), "np": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_rng(state):
    # One object per (PP, TP) rank: the RNG streams differ there; DP replicas hold copies.
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state", state,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


def _optimizer_metadata(optimizer):
    if getattr(optimizer.config, "use_distributed_optimizer", False):
        return {"distrib_optim_sharding_type": "fully_sharded_model_space"}
    return None


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler, *,
                    consumed_train_samples: int, model_args: ModelArgs, args: dict | None = None,
                    save_optim: bool = True) -> str:
    """Write ``root/iter_{iteration}`` atomically on all ranks; returns its path."""
    from megatron.core import dist_checkpointing

    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    _prepare(root, tmp, model_args)

    model_sd = unwrap_model(model).sharded_state_dict()
    state = {
        "model": model_sd,
        "iteration": int(iteration),
        "consumed_train_samples": int(consumed_train_samples),
        "checkpoint_version": CHECKPOINT_VERSION,
        "args": dict(args or {}),
        "rng_state": _sharded_rng(_rng_state()),
    }
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    if optimizer is not None and save_optim:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd, metadata=_optimizer_metadata(optimizer))
    try:
        dist_checkpointing.save(state, tmp)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - torch wraps each writer's error
        _failed_save(root, tmp, iteration, err)
        raise

    if os.environ.get(KILL_DURING_SAVE_ENV) == str(iteration):
        os.kill(os.getpid(), signal.SIGKILL)

    _publish(root, tmp, final, model_args, f"{iteration}\n")
    return final


def _failed_save(root: str, tmp: str, iteration: int, err: BaseException) -> None:
    """A save that raised: its partial shards are removed (on a full disk they hold the space
    the next save needs), and a full disk becomes one line saying what is kept."""
    full = publish.disk_full(root, err)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if full:
        kept = read_tracker(root)
        keeps = (f"the last complete checkpoint, {iteration_dir(root, kept)}, is kept"
                 if kept is not None else "no earlier checkpoint was complete")
        raise publish.OutputError(
            f"--save {root}: no space left on device while saving iteration "
            f"{iteration} (its partial files are removed; {keeps}): free space or pass another "
            f"--save") from err


def _prepare(root: str, tmp: str, model_args: ModelArgs) -> None:
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)  # left by a save that was killed (the --save lock is ours)
        os.makedirs(tmp)
        if not os.path.exists(os.path.join(root, CONFIG_FILENAME)):
            model_args.save(root)  # for readers of the older layout; never rewritten
    _barrier()


def _publish(root: str, tmp: str, final: str, model_args: ModelArgs, tracker: str) -> None:
    """Rank 0, once every rank's shards are in ``tmp``: add the settings, rename, point the
    tracker at it."""
    _barrier()
    if _rank() == 0:
        model_args.save(tmp)
        publish.fsync_tree(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        publish.move_into_place(tmp, final)
        publish.write_text(os.path.join(root, TRACKER), tracker)
    _barrier()


def save_release(root: str, model, model_args: ModelArgs) -> str:
    """Write a model-only ``root/release`` checkpoint (the converter's layout), atomically.

    A run started with ``--load root`` then begins at iteration 0 from exactly these weights,
    whatever its TP/PP sizes (dist_checkpointing reshards).
    """
    from megatron.core import dist_checkpointing

    final = iteration_dir(root, "release")
    tmp = final + ".tmp"
    _prepare(root, tmp, model_args)
    dist_checkpointing.save({"model": unwrap_model(model).sharded_state_dict()}, tmp)
    _publish(root, tmp, final, model_args, "release\n")
    return final


@dataclasses.dataclass
class SavedCheckpoint:
    """What ``--load`` names, read before anything is built: where, which settings, what state."""

    root: str
    tracker: object  # int iteration or "release"
    path: str
    model_args: ModelArgs
    common: dict  # the common state: iteration, args, opt_param_scheduler, ...
    has_optimizer: bool
    hybrid_pattern: str | None = None  # saved by a HybridModel run: its layers; None: GPTModel

    @property
    def release(self) -> bool:
        return self.tracker == "release"


def find_iteration(root: str) -> tuple:
    """(tracker, iteration directory) of ``--load root``; refuses what is no checkpoint."""
    tracker = read_tracker(root)
    if tracker is None:
        raise FileNotFoundError(
            f"--load {root}: neither {TRACKER} nor a release/ directory; not a checkpoint "
            "written by pose_megatron (training or converter)")
    path = iteration_dir(root, tracker)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--load {root}: {os.path.join(root, TRACKER)} names {tracker}, "
                                f"but {path} is missing")
    return tracker, path


def inspect_checkpoint(root: str) -> SavedCheckpoint:
    """Read what ``--load root`` holds without loading any weights; refuses non-checkpoints."""
    from megatron.core import dist_checkpointing

    tracker, path = find_iteration(root)
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        if any(n.startswith("mp_rank_") for n in os.listdir(path)):
            raise ValueError(
                f"--load {root}: {path} is a legacy per-rank checkpoint (mp_rank_*); training "
                "reads distributed checkpoints: convert with tools/convert_hf_to_megatron.py "
                "--format torch_dist")
        raise ValueError(f"--load {root}: {path} holds no distributed checkpoint (no "
                         "metadata.json)")
    model_args = store.model_args_of(root, path)
    common = store.read_or_fail(lambda: dist_checkpointing.load_common_state_dict(path), path)
    return SavedCheckpoint(root=root, tracker=tracker, path=path, model_args=model_args,
                           common=dict(common or {}),
                           has_optimizer="optimizer" in _saved_keys(path, common or {}),
                           hybrid_pattern=store.checkpoint_hybrid_pattern(path))


def lock_save_dir(root: str):
    """Hold ``--save``'s lock for this run (rank 0 takes it; every rank refuses together).

    Also removes the unpublished ``iter_*.tmp`` directories killed saves left: with the lock
    held no other run can be writing them.
    """
    lock, message = None, None
    if _rank() == 0:
        try:
            lock = publish.OutputLock(root, "--save").acquire()
        except OSError as err:
            message = str(err)
        else:
            if os.path.isdir(root):
                for name in os.listdir(root):
                    if name.endswith(".tmp") and os.path.isdir(os.path.join(root, name)):
                        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise publish.OutputError(message)
    return lock


def load_checkpoint(root: str, model, optimizer=None, scheduler=None, *,
                    finetune: bool = False, load_optim: bool = True,
                    saved: SavedCheckpoint | None = None) -> dict:
    """Load the checkpoint the tracker names into model (and optimizer, scheduler, RNG).

    A GPTModel checkpoint loads into a HybridModel through Megatron-Core's load-time translation
    (``megatron_compat.retarget_to_gpt_checkpoint``: the model's and the optimizer's sharded
    state dicts are pointed at the GPT keys, as Megatron-LM's loader does).

    Returns {"iteration", "consumed_train_samples", "release", "optimizer"}. A ``release``
    checkpoint (the converter's output) holds a model only: training starts from iteration 0
    with it. With ``finetune`` a training checkpoint is treated the same way (Megatron-LM's
    ``--finetune``): its weights start a new run, its optimizer, scheduler, RNG and data
    position are not read. Without ``load_optim`` (or when the checkpoint has none) the
    optimizer starts fresh; ``"optimizer"`` in the result says whether it was loaded.
    """
    from megatron.core import dist_checkpointing

    saved = saved or inspect_checkpoint(root)
    path = saved.path
    release = saved.release or finetune
    model_sd = unwrap_model(model).sharded_state_dict()
    request = {"model": model_sd}
    if not release:
        request["rng_state"] = _sharded_rng(_rng_state())
        if optimizer is not None and load_optim and saved.has_optimizer:
            request["optimizer"] = optimizer.sharded_state_dict(
                model_sd, is_loading=True, metadata=_optimizer_metadata(optimizer))
    pattern = getattr(unwrap_model(model), "hybrid_layer_pattern", None)
    if pattern and not saved.hybrid_pattern:
        from pose_megatron import megatron_compat

        for part in ("model", "optimizer"):
            if part in request:
                megatron_compat.retarget_to_gpt_checkpoint(request[part], pattern)
    state = store.read_or_fail(lambda: dist_checkpointing.load(request, path), path)
    unwrap_model(model).load_state_dict(state["model"])
    if release:
        return {"iteration": 0, "consumed_train_samples": 0, "release": True,
                "optimizer": False}
    if "optimizer" in request:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in state:
        scheduler.load_state_dict(state["opt_param_scheduler"])
    rng = state["rng_state"]
    _set_rng_state(rng[0] if isinstance(rng, list) else rng)
    return {"iteration": int(state["iteration"]),
            "consumed_train_samples": int(state["consumed_train_samples"]), "release": False,
            "optimizer": "optimizer" in request}


def _saved_keys(path: str, common: dict) -> set:
    from megatron.core import dist_checkpointing

    keys = set(common)
    try:
        metadata = dist_checkpointing.load_tensors_metadata(path)
        keys |= {k.split(".", 1)[0] for k in metadata}
    except Exception:  # noqa: BLE001 - metadata is only a hint; assume an optimizer is there
        keys.add("optimizer")
    return keys
