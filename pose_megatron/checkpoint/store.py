"""Reading and writing Megatron checkpoints in the layout Megatron-LM's ``--load`` expects.

    CKPT/
      pose_model.json                    ModelArgs (architecture + RoPE) so nothing else needs flags
      latest_checkpointed_iteration.txt  "release" for converter output, else the iteration
      release/ (or iter_0000100/)
        torch_dist: Megatron-Core distributed checkpoint of {"model": sharded_state_dict,
                    "checkpoint_version": 3.0, "iteration": N, "args": Namespace}
        legacy:     mp_rank_XX[_YYY]/model_optim_rng.pt = {"model": state_dict, "args": ..., ...}

``args`` is the Megatron-LM argument namespace (``megatron_lm_args``): Megatron-LM's
``--use-checkpoint-args`` takes the model shape from it. Reading works the other way too: a
checkpoint saved by Megatron-LM's own ``pretrain()`` has no pose_model.json, and the model is
described by the args in its common state (``checkpoint_model_args``).

The distributed checkpoint is written from a TP=1, PP=1 model on one process: its tensors are
stored by global shape and offsets, so any TP/PP reloads it (dist_checkpointing reshards). A
legacy checkpoint is per rank and is written directly from the HF tensors, one rank at a time.
Both readers return *global* tensors (TP merged, global layer numbers), see ``weights``.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch

from pose_megatron import publish
from pose_megatron.config import CONFIG_FILENAME, ModelArgs
from pose_megatron.convert import bridge, weights
from pose_megatron.convert.megatron_lm_args import (disagreements, megatron_lm_args,
                                                    model_args_from_megatron_lm)

TRACKER = "latest_checkpointed_iteration.txt"
# The HF tokenizer travels with the weights here, so evaluation and back-conversion find it.
TOKENIZER_SUBDIR = "tokenizer"
CHECKPOINT_VERSION = 3.0
FORMATS = ("torch_dist", "legacy")
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")

class CheckpointReadError(ValueError):
    """A checkpoint that exists but cannot be read (missing or damaged files)."""


def read_or_fail(read: Callable, path: str):
    """Run a Megatron / torch.distributed.checkpoint read of ``path``; a missing or damaged
    file becomes one error naming ``path`` (torch's CheckpointException is a BaseException
    wrapping each rank's traceback)."""
    try:
        return read()
    except (CheckpointReadError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as err:  # noqa: BLE001
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        detail = next((x for x in reversed(lines) if re.match(r"^\w+(Error|Exception): ", x)),
                      lines[0] if lines else type(err).__name__)
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise CheckpointReadError(f"{path}: cannot read the checkpoint ({detail})") from err


def model_args_of(ckpt_dir: str, path: str) -> ModelArgs:
    """The ModelArgs the weights in ``path`` (an iteration of ``ckpt_dir``) were saved with:
    the iteration's own pose_model.json, else (older checkpoints) the one at the root."""
    if os.path.isfile(os.path.join(path, CONFIG_FILENAME)):
        return ModelArgs.load(path)
    return ModelArgs.load(ckpt_dir)


def iteration_dir(iteration: Optional[int]) -> str:
    return "release" if iteration is None else f"iter_{iteration:07d}"


def resolve_iteration_dir(ckpt_dir: str, iteration: Optional[int] = None) -> str:
    """The directory holding the weights: the tracker's iteration unless one is given.

    Megatron-Bridge checkpoints (``bridge``) are found as Bridge's loader finds them: an
    iteration directory given directly (it holds run_config.yaml), else the step of
    latest_train_state.pt, before Megatron-LM's tracker.
    """
    if iteration is None and bridge.has_run_config(ckpt_dir):
        return ckpt_dir
    if iteration is None:
        iteration = bridge.tracker_iteration(ckpt_dir)
        if iteration is not None and os.path.isfile(os.path.join(ckpt_dir, TRACKER)):
            with open(os.path.join(ckpt_dir, TRACKER)) as f:
                text = f.read().strip()
            if text != str(iteration):  # Bridge writes both; a later job updated only one
                raise ValueError(
                    f"{ckpt_dir}: {bridge.TRAIN_STATE_TRACKER} names iteration {iteration}, "
                    f"{TRACKER} {text!r}: pass --iteration to choose")
    if iteration is None:
        tracker = os.path.join(ckpt_dir, TRACKER)
        if not os.path.isfile(tracker):
            raise FileNotFoundError(
                f"{tracker} not found: {ckpt_dir} is not a Megatron checkpoint (nor a "
                f"Megatron-Bridge one: no {bridge.TRAIN_STATE_TRACKER} or {bridge.RUN_CONFIG})")
        with open(tracker) as f:
            text = f.read().strip()
        if text != "release" and not text.isdigit():
            raise ValueError(f"{tracker}: expected 'release' or an iteration number, got {text!r}")
        sub = "release" if text == "release" else iteration_dir(int(text))
    else:
        sub = iteration_dir(iteration)
    path = os.path.join(ckpt_dir, sub)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} not found (named by {TRACKER}, "
                                f"{bridge.TRAIN_STATE_TRACKER} or --iteration)")
    return path


def write_tracker(ckpt_dir: str, iteration: Optional[int]) -> None:
    publish.write_text(os.path.join(ckpt_dir, TRACKER),
                       "release" if iteration is None else str(iteration))


def load_sharded(request: dict, path: str, *, validate_access_integrity: bool = True) -> dict:
    """dist_checkpointing.load of ``request`` (no ShardedObjects), failures naming ``path``.

    Megatron-Core 0.19 (what Megatron-Bridge saves with) keeps a checkpoint's common state
    inside its .distcp files, without common.pt, and its ``load`` reads it there. Megatron-Core
    0.16's ``load`` reads common.pt first and fails; the tensors themselves are plain
    torch.distributed.checkpoint data that it reads like any other, so there it is handed a
    common strategy that reads nothing (the requests here hold tensors only).
    """
    import inspect

    from megatron.core import dist_checkpointing

    kwargs = {}
    if (not os.path.isfile(os.path.join(path, "common.pt"))
            and "common_strategy" in inspect.signature(dist_checkpointing.load).parameters):
        from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

        class _NoCommonState(TorchCommonLoadStrategy):
            def load_common(self, checkpoint_dir):
                return {}

        kwargs["common_strategy"] = _NoCommonState()
    return read_or_fail(lambda: dist_checkpointing.load(
        request, path, validate_access_integrity=validate_access_integrity, **kwargs), path)


_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_ATTENTION_PARTS = ("self_attention.", "input_layernorm.")
_MLP_PARTS = ("mlp.", "pre_mlp_layernorm.")


def hybrid_pattern(keys, where: str) -> Optional[str]:
    """The HybridModel layer pattern a distributed checkpoint's tensor keys show (``*`` attention,
    ``-`` MLP, one symbol per numbered layer), or None for a GPTModel checkpoint (its per-layer
    tensors are stacked under ``decoder.layers.<name>``, no layer number). Only the LLaMA-family
    pattern, ``*-`` per block, describes a model the converters know; others are refused."""
    kinds: Dict[int, set] = {}
    for key in keys:
        m = _LAYER_KEY.match(key)
        if m:
            rest = m.group(2)
            kind = "*" if rest.startswith(_ATTENTION_PARTS) else \
                "-" if rest.startswith(_MLP_PARTS) else "?"
            kinds.setdefault(int(m.group(1)), set()).add(kind)
    if not kinds:
        return None
    # "?": a layer of another kind (Mamba, MoE, ...), a mixed or a missing layer number
    pattern = "".join(next(iter(kinds[i])) if len(kinds.get(i, ())) == 1 else "?"
                      for i in range(max(kinds) + 1))
    if pattern != "*-" * (len(pattern) // 2):
        raise ValueError(
            f"{where}: a HybridModel checkpoint whose layers ({pattern}; '?' is neither attention "
            f"nor MLP) are not the LLaMA-family pattern '*-' per block (one attention layer, then "
            f"one MLP layer); only that pattern converts")
    return pattern


def checkpoint_hybrid_pattern(path: str) -> Optional[str]:
    """``hybrid_pattern`` of the distributed checkpoint in ``path`` (read from its metadata)."""
    from megatron.core import dist_checkpointing

    meta = read_or_fail(lambda: dist_checkpointing.load_tensors_metadata(path), path)
    return hybrid_pattern(meta, path)


def checkpoint_format(path: str) -> str:
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return "torch_dist"
    if any(_RANK_DIR.match(n) for n in os.listdir(path)):
        return "legacy"
    raise ValueError(f"{path}: neither a distributed checkpoint (metadata.json) nor mp_rank_* dirs")


# ----------------------------------------------------------------------------- legacy format


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def _owned(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # torch.save writes a view's whole storage: copy slices so each rank file holds its part only
    if t is None:
        return None
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        return t.contiguous().clone()
    return t


def write_legacy(
    path: str, args: ModelArgs, get_global: Callable[[str], torch.Tensor], tp: int, pp: int,
    *, spec: str = "local", iteration: int = 0, progress=None, add_position_embedding: bool = True,
) -> None:
    """Write ``mp_rank_*/model_optim_rng.pt`` for every rank; one pipeline stage in RAM at a time."""
    weights.check_parallel(args, tp, pp)
    lm_args = megatron_lm_args(args, fmt="legacy", tp=tp, pp=pp,
                               add_position_embedding=add_position_embedding)
    for pp_rank in range(pp):
        cache: Dict[str, torch.Tensor] = {}

        def stage_get(name):
            if name not in cache:
                cache[name] = get_global(name)
                if progress is not None:
                    progress(name, cache[name])
            return cache[name]

        for tp_rank in range(tp):
            state = {k: _owned(v) for k, v in weights.iter_rank_state(
                stage_get, args, tp, pp, tp_rank, pp_rank, spec)}
            rank_dir = os.path.join(path, rank_dir_name(tp_rank, pp_rank, pp))
            os.makedirs(rank_dir, exist_ok=True)
            target = os.path.join(rank_dir, "model_optim_rng.pt")
            with publish.atomic_file(target, binary=True) as f:
                torch.save({"model": state, "checkpoint_version": CHECKPOINT_VERSION,
                            "iteration": iteration, "args": lm_args}, f)
            del state
        cache.clear()


def load_rank_file(path: str) -> dict:
    """One ``model_optim_rng.pt`` of a legacy checkpoint, read with ``weights_only=True``.

    Megatron-LM keeps its ``args`` Namespace (and, in training checkpoints, RNG and optimizer
    state) in these files; importing Megatron-Core registers those classes as safe globals, as
    Megatron-LM's own loader relies on.
    """
    import megatron.core  # noqa: F401
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


class LegacyReader:
    """Global tensors of a legacy checkpoint, TP shards merged as they are asked for."""

    def __init__(self, path: str, args: ModelArgs):
        self.path, self.args = path, args  # the iteration directory, as DistReader's
        ranks = {}
        for name in os.listdir(path):
            m = _RANK_DIR.match(name)
            if m:
                ranks[(int(m.group(1)), int(m.group(2) or 0))] = os.path.join(
                    path, name, "model_optim_rng.pt")
        self.tp = 1 + max(t for t, _ in ranks)
        self.pp = 1 + max(p for _, p in ranks)
        missing = [(t, p) for t in range(self.tp) for p in range(self.pp) if (t, p) not in ranks]
        missing_files = [f for f in ranks.values() if not os.path.isfile(f)]
        if missing or missing_files:
            raise FileNotFoundError(
                f"{path}: incomplete legacy checkpoint, missing ranks (tp, pp) {missing} "
                f"or files {missing_files}")
        self._files = ranks
        self._stage = None
        self._stage_states = None

    def _load_stage(self, pp_rank):
        if self._stage != pp_rank:
            self._stage_states = []
            for tp_rank in range(self.tp):
                blob = load_rank_file(self._files[(tp_rank, pp_rank)])
                if "model" not in blob:
                    keys = sorted(k for k in blob if k.startswith("model"))
                    raise ValueError(
                        f"{self._files[(tp_rank, pp_rank)]}: no 'model' entry (found {keys}); "
                        "virtual pipeline checkpoints are not supported")
                self._stage_states.append(blob["model"])
            self._stage = pp_rank
            self._keys = {}
            for key in self._stage_states[0]:
                g = weights.global_name(key, self.args, self.pp, pp_rank)
                if g is not None:
                    self._keys[g] = key
        return self._stage_states

    def _stage_of(self, name: str) -> int:
        if name == "embedding.word_embeddings.weight":
            return 0
        if name in ("decoder.final_layernorm.weight", "output_layer.weight"):
            return self.pp - 1
        layer = int(name.split(".")[2])
        return layer // (self.args.num_layers // self.pp)

    def get(self, name: str) -> torch.Tensor:
        states = self._load_stage(self._stage_of(name))
        if name not in self._keys:
            raise KeyError(f"tensor {name!r} not found in the legacy checkpoint")
        key = self._keys[name]
        return weights.merge_tp(name, [s[key] for s in states])

    def close(self) -> None:
        pass  # stages are loaded one at a time and dropped as the next is asked for


# ----------------------------------------------------------------------------- torch_dist format


def _ensure_process_group():
    """A one-process gloo group for dist_checkpointing; returns a cleanup callable.

    Conversion runs on the CPU even on a GPU machine; there the CPU shims are not installed (they
    would redirect the CUDA calls a later GPU model in the same process needs), and a plain gloo
    group is enough for writing and reading tensors held in host memory.
    """
    import torch.distributed as dist

    from pose_megatron import parallel

    if dist.is_initialized():
        return lambda: None
    if not torch.cuda.is_available():
        parallel.initialize(1, 1, device="cpu")
        return parallel.destroy
    from megatron.core import parallel_state

    parallel.init_single_process("gloo")
    parallel_state.initialize_model_parallel(1, 1)
    return parallel.destroy


def converter_model(args: ModelArgs, dtype: torch.dtype):
    """The model training builds for ``args`` (``pose_megatron.model.build_model``, local spec,
    one stage), parameters left uninitialised: its sharded state dict is exactly the one a
    training run saves and loads."""
    from pose_megatron.model import build_model

    return build_model(args, pre_process=True, post_process=True, spec="local", params_dtype=dtype,
                       use_cpu_initialization=True, perform_initialization=False,
                       bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)


def _save_strategy():
    """Megatron's torch_dist writer with one writer process: the data is already in this process's
    RAM, so more writers only add forks (measured: 2.9 s vs 3.8 s for 2 GB on 2 cores)."""
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    try:
        return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1)
    except TypeError:  # a Megatron-Core whose strategy takes other arguments: use its default
        return None


def write_dist(
    path: str, args: ModelArgs, get_pieces: Callable[[str], List[torch.Tensor]],
    dtype: torch.dtype, *, iteration: int = 0, progress=None, add_position_embedding: bool = True,
) -> None:
    """Write a torch_dist checkpoint of the model training builds holding the given weights.

    ``get_pieces(name)`` returns tensors whose concatenation along dim 0 is the global tensor
    ``name`` (one tensor, or e.g. gate and up of a SwiGLU ``linear_fc1``). The model's sharded
    state dict comes from Megatron-Core itself, factories applied, so the saved keys and sharding
    are exactly a training run's. Its tensors are then pointed at the converted weights instead of
    being filled: the parameters' own storage is never touched, and where Megatron's SwiGLU
    factory cuts ``linear_fc1`` into its halves (views, which its writer would clone) the halves
    are the HF gate and up tensors themselves. Neither a concatenation nor a clone of the
    checkpoint's largest tensors is made (measured: 2.6 s of a 13.5 s 1B conversion).
    """
    import megatron.core  # noqa: F401
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import apply_factories

    cleanup = _ensure_process_group()
    try:
        model = converter_model(args, dtype)
        params = dict(model.named_parameters())
        owner = {p.untyped_storage().data_ptr(): name for name, p in params.items()}
        sharded = model.sharded_state_dict()
        apply_factories(sharded)
        views: Dict[str, list] = {}

        def collect(x):
            if isinstance(x, ShardedTensor) and x.data is not None:
                name = owner.get(x.data.untyped_storage().data_ptr())
                if name is None:
                    raise RuntimeError(f"{x.key}: Megatron's sharded state dict holds a tensor "
                                       "that is not a model parameter; cannot convert into it")
                views.setdefault(name, []).append(x)
            return x

        dict_list_map_inplace(collect, sharded)
        names = weights.megatron_names(args)
        unfilled = sorted(set(params) - set(names))
        if unfilled:  # would be saved as uninitialised memory
            raise RuntimeError(f"Megatron's model has parameters the converter does not know how "
                               f"to fill from HF: {unfilled[:5]}")
        for name in names:
            param = params[name]
            pieces = get_pieces(name)
            if progress is not None:
                for t in pieces:
                    progress(name, t)
            shape = (sum(t.shape[0] for t in pieces), *pieces[0].shape[1:])
            if shape != tuple(param.shape):
                raise ValueError(f"{name}: converted tensor has shape {shape}, Megatron's model "
                                 f"expects {tuple(param.shape)}")
            for sh in views.get(name, []):
                # Stored in the converted dtype: the stock model keeps its norms in fp32 (a
                # training run's Float16Module casts them), and a bf16 checkpoint must come
                # back from HF -> Megatron -> HF as bf16, norms included.
                sh.data = _same_view(sh.data, param, pieces)
                sh.dtype = sh.data.dtype
            del pieces
        state = {"model": sharded, "checkpoint_version": CHECKPOINT_VERSION,
                 "iteration": iteration,
                 "args": megatron_lm_args(args, fmt="torch_dist",
                                          add_position_embedding=add_position_embedding)}
        os.makedirs(path, exist_ok=True)
        dist_checkpointing.save(state, path, sharded_strategy=_save_strategy())
        del model, params, sharded, state, views
    finally:
        cleanup()


def _same_view(view: torch.Tensor, param: torch.Tensor, pieces: List[torch.Tensor]) -> torch.Tensor:
    """``view`` of ``param``, taken instead from the tensor that ``pieces`` concatenate to."""
    offset = view.storage_offset() - param.storage_offset()
    if view.is_contiguous():
        start = 0
        for piece in pieces:  # a view that is exactly one piece: that piece, uncopied
            if start == offset and piece.numel() == view.numel():
                return piece.contiguous().view(view.shape)
            start += piece.numel()
    full = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return full.contiguous().as_strided(view.shape, view.stride(), offset)


class DistReader:
    """Global tensors of a distributed checkpoint (whatever TP/PP wrote it).

    GPTModel checkpoints store each per-layer tensor stacked over the layers; HybridModel ones
    (``*-`` per block) store one tensor per numbered layer, block i's attention in layer 2i and
    its MLP in layer 2i+1, and the final norm as ``decoder.final_norm``: ``get`` takes the GPT
    names either way (``hybrid_pattern`` says which layout was found). Layers are read a group
    at a time, as the caller asks for them in order: with the HF writer flushing shards in
    the background, writing one group overlaps reading the next, and only one group is held.
    The rest (embeddings, final norm, output layer) is read once, on first use. ``close()``
    releases the process group the reads use.
    """

    def __init__(self, path: str, args: ModelArgs, max_groups: int = 4):
        import megatron.core  # noqa: F401
        from megatron.core import dist_checkpointing

        self.path, self.args = path, args
        self._cleanup = _ensure_process_group()
        try:
            meta = read_or_fail(lambda: dist_checkpointing.load_tensors_metadata(path), path)
        except BaseException:
            self.close()
            raise
        # optimizer state and the like, when a training checkpoint, is not read
        self._meta = {k: st for k, st in meta.items()
                      if k.startswith(("embedding.", "decoder.", "output_layer."))}
        layers = args.num_layers
        try:
            self.hybrid_pattern = hybrid_pattern(self._meta, path)
        except BaseException:
            self.close()
            raise
        if self.hybrid_pattern is not None and len(self.hybrid_pattern) != 2 * layers:
            self.close()
            raise ValueError(f"{path}: {len(self.hybrid_pattern) // 2} attention/MLP layer "
                             f"pairs, but the model description has {layers} layers")
        # per-layer tensors: stacked (GPT), or one key per hybrid layer
        self._stacked = {k for k, st in self._meta.items() if k.startswith("decoder.layers.")
                         and (self.hybrid_pattern is not None
                              or (len(st.global_shape) > 1 and st.global_shape[0] == layers))}
        self._groups = max(g for g in range(1, max_groups + 1) if layers % g == 0)
        self._per_group = layers // self._groups
        self._group, self._group_tensors = None, {}
        self._rest = None

    def _load(self, keys, group: Optional[int] = None) -> Dict[str, torch.Tensor]:
        from megatron.core.dist_checkpointing import ShardedTensor

        # every rank of a running group reads whole tensors: rank 0 is the main replica
        replica = torch.distributed.get_rank()
        request = {}
        for key in keys:
            st = self._meta[key]
            if group is None:
                request[key] = ShardedTensor.from_rank_offsets(
                    key, torch.empty(st.global_shape, dtype=st.dtype), replica_id=replica)
            else:  # layers [group * per_group, (group + 1) * per_group) of the stack
                shape = (self._per_group, *st.global_shape[1:])
                request[key] = ShardedTensor.from_rank_offsets(
                    key, torch.empty(shape, dtype=st.dtype), (0, group, self._groups),
                    replica_id=replica)
        # A group is deliberately a part of each stacked tensor; Megatron's access check is for
        # a job loading whole tensors across its ranks.
        return load_sharded(request, self.path, validate_access_integrity=group is None)

    def _layer_group(self, layer: int) -> Tuple[int, Dict[str, torch.Tensor]]:
        """(group, its tensors) of ``layer``; the previous group is dropped before a new one is
        read, so only one is held."""
        group = layer // self._per_group
        if group != self._group:
            self._group_tensors = {}  # drop the last group before reading the next
            if self.hybrid_pattern is None:  # that group's slice of every stacked tensor
                self._group_tensors = self._load(sorted(self._stacked), group)
            else:  # the group's numbered hybrid layers, two per block
                first, end = 2 * group * self._per_group, 2 * (group + 1) * self._per_group
                self._group_tensors = self._load(sorted(
                    k for k in self._stacked if first <= int(_LAYER_KEY.match(k).group(1)) < end))
            self._group = group
        return group, self._group_tensors

    def get(self, name: str) -> torch.Tensor:
        m = _LAYER_KEY.match(name)
        hybrid = self.hybrid_pattern is not None
        if hybrid and name == "decoder.final_layernorm.weight":
            name = "decoder.final_norm.weight"
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            # a hybrid block's attention is layer 2i, its MLP layer 2i+1
            at = 2 * layer + (0 if rest.startswith(_ATTENTION_PARTS) else 1)
            prefix = f"decoder.layers.{at}." if hybrid else "decoder.layers."
            for key in (prefix + weights.TE_NORM_NAMES.get(rest, rest), prefix + rest):
                if key in self._stacked:
                    group, tensors = self._layer_group(layer)
                    return tensors[key] if hybrid else \
                        tensors[key][layer - group * self._per_group]
            if hybrid:
                raise KeyError(f"tensor decoder.layers.{layer}.{rest!r} not found in the "
                               f"distributed checkpoint (hybrid layer {at})")
        if self._rest is None:
            self._rest = self._load([k for k in self._meta if k not in self._stacked])
        if name in self._rest:
            return self._rest[name]
        raise KeyError(f"tensor {name!r} not found in the distributed checkpoint")

    def close(self) -> None:
        self._group_tensors, self._rest = {}, None
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


def checkpoint_common_args(path: str, fmt: str):
    """The ``args`` entry of an iteration directory's common state (None where there is none).

    Megatron-LM stores its argparse.Namespace there; pose_megatron's own training stores a dict
    of its flags. Read with ``weights_only=True``: Megatron-Core registers Namespace and the
    other classes its checkpoints hold as safe globals when it is imported.
    """
    if fmt == "legacy":
        names = sorted(n for n in os.listdir(path) if _RANK_DIR.match(n))
        return load_rank_file(os.path.join(path, names[0], "model_optim_rng.pt")).get("args")
    from megatron.core import dist_checkpointing

    cleanup = _ensure_process_group()
    try:
        # 0.19 keeps the common state inside the .distcp files: a missing one fails here
        common = read_or_fail(lambda: dist_checkpointing.load_common_state_dict(path), path)
        return common.get("args")
    finally:
        cleanup()


def checkpoint_model_args(ckpt_dir: str, path: str, fmt: str) -> ModelArgs:
    """The model a checkpoint holds: its pose_model.json, and/or the Megatron-LM args it was saved with.

    Where both exist they must agree: a pose_model.json copied from another checkpoint (the
    base model a Megatron-LM job started from, say) describes another RoPE than the one trained,
    and exporting it would silently change the model.
    """
    described = (model_args_of(ckpt_dir, path)
                 if any(os.path.isfile(os.path.join(d, CONFIG_FILENAME)) for d in (path, ckpt_dir))
                 else None)
    if bridge.has_run_config(path):  # Megatron-Bridge: the model is its run_config.yaml's
        saved = bridge.model_args_from_run_config(path)
        diffs = (disagreements(bridge.as_read_back(described), saved)
                 if described is not None else [])
        if diffs:
            raise ValueError(
                f"{ckpt_dir}: its {CONFIG_FILENAME} disagrees with "
                f"{os.path.join(path, bridge.RUN_CONFIG)} ({'; '.join(diffs)}); remove one")
        return described or saved
    common = checkpoint_common_args(path, fmt)
    trained = model_args_from_megatron_lm(common) if isinstance(common, argparse.Namespace) \
        else None
    if described is not None and trained is not None:
        diffs = disagreements(described, trained)
        if diffs:
            raise ValueError(
                f"{ckpt_dir}: its {CONFIG_FILENAME} disagrees with the Megatron-LM args "
                f"the checkpoint was saved with ({'; '.join(diffs)}); it describes another model "
                f"(copied from another checkpoint?): remove it to convert from the saved args")
    if described is None and trained is None:
        raise FileNotFoundError(
            f"{ckpt_dir}: no {CONFIG_FILENAME} and no Megatron-LM args in the checkpoint's common "
            f"state: cannot tell the model's shape and RoPE (checkpoints written by pose_megatron "
            f"or saved by Megatron-LM's pretrain() carry one of them)")
    return described or trained


def open_checkpoint(ckpt_dir: str, iteration: Optional[int] = None):
    """(ModelArgs, reader with .get(global_name), format) of a Megatron checkpoint.

    pose_megatron's own and converted checkpoints, those of Megatron-LM's ``pretrain()`` and
    of Megatron-Bridge (the top directory or one ``iter_*`` directory).
    """
    path = resolve_iteration_dir(ckpt_dir, iteration)
    fmt = checkpoint_format(path)
    args = checkpoint_model_args(ckpt_dir, path, fmt)
    reader = DistReader(path, args) if fmt == "torch_dist" else LegacyReader(path, args)
    return args, reader, fmt


__all__ = ["CONFIG_FILENAME", "write_dist", "write_legacy", "open_checkpoint",
           "converter_model", "FORMATS"]
