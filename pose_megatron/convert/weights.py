"""Weight layout between HF LLaMA-family models and Megatron-Core's GPTModel.

Pure tensor functions, no I/O. Three layers of the problem, kept apart:

1. HF <-> "global" Megatron tensors (the TP=1, PP=1 layout, global layer numbers): fusing
   q/k/v into ``linear_qkv`` per query group, and gate/up into ``linear_fc1``.
2. Global <-> one tensor-parallel rank's slice (``shard_tp`` / ``merge_tp``).
3. Global layer numbers <-> a pipeline stage's local numbers, and local-spec vs TE-spec norm
   names (``local_name`` / ``global_name``).

Megatron's ``linear_qkv`` rows are grouped by query group: for each group g the rows of its
``heads_per_group`` query heads, then its key head, then its value head. Tensor parallelism
splits that dimension contiguously, so each TP rank owns whole query groups. ``linear_fc1`` of a
SwiGLU MLP is [gate; up] on every TP rank (each rank's slice of gate, then its slice of up), so
the TP=1 tensor is [gate; up] and a TP shard is not a contiguous slice of it.

HF LLaMA's rotary embedding rotates halves (not interleaved pairs), as Megatron's default does,
so no row permutation of q/k is needed (unlike Meta's original checkpoints).
"""

from __future__ import annotations

import functools
import re
import types
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from pose_megatron import families
from pose_megatron.config import ModelArgs

# The TE spec fuses the norms into the following linear layer.
TE_NORM_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_LOCAL_NORM_NAMES = {v: k for k, v in TE_NORM_NAMES.items()}
# Modules whose state dicts carry an ``_extra_state`` entry (None for the local spec).
_EXTRA_STATE_LAYER = (
    "self_attention.linear_proj",
    "self_attention.linear_qkv",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)
_EXTRA_STATE_LAYER_TE = _EXTRA_STATE_LAYER + ("self_attention.core_attention",)

SPECS = ("local", "te")
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------- HF <-> global


def layer_tensor_names(args: ModelArgs) -> Tuple[str, ...]:
    return families.get(args.family).layer_tensor_names


@functools.lru_cache(maxsize=8)
def _name_map(family: str, num_layers: int) -> Mapping[str, Tuple[Tuple[str, str], ...]]:
    rows = dict([families.EMBEDDING])
    for layer in range(num_layers):
        rows.update((f"decoder.layers.{layer}.{name}",
                     tuple((f"model.layers.{layer}.{hf}", shape) for hf, shape in sources))
                    for name, sources in families.get(family).layer)
    rows.update((families.FINAL_NORM, families.OUTPUT_LAYER))
    return types.MappingProxyType(rows)  # shared by every caller: read-only


def tensor_map(args: ModelArgs) -> Mapping[str, Tuple[Tuple[str, str], ...]]:
    """Global Megatron name -> ((HF name, shape), ...) of every tensor, in HF file order: the one
    HF <-> Megatron name map, the family's table (``families``) with layer numbers filled in.
    Import reads each Megatron tensor from its HF names, export writes it back under the same
    names, so the map is never inverted. A tied model has no output layer of its own: its
    entry stays (a PP > 1 last stage asks for it) but ``megatron_names`` leaves it out."""
    return _name_map(args.family, args.num_layers)


def _own_tensors(args: ModelArgs):
    for name, sources in tensor_map(args).items():
        if not (args.tie_word_embeddings and name == families.OUTPUT_LAYER[0]):
            yield name, sources


def megatron_names(args: ModelArgs) -> List[str]:
    """Every global Megatron tensor name of the model, in HF file order (embeddings first)."""
    return [name for name, _ in _own_tensors(args)]


def hf_sources(name: str, args: ModelArgs) -> Tuple[str, ...]:
    """The HF tensor names a global Megatron tensor is made of (in order)."""
    sources = tensor_map(args).get(name)
    if sources is None:
        raise KeyError(f"no HF counterpart for Megatron tensor {name!r} in family {args.family!r}")
    return tuple(hf for hf, _ in sources)


def hf_shapes(args: ModelArgs) -> Dict[str, Tuple[int, ...]]:
    """The shape each HF tensor must have for ``args`` (used to name mismatches clearly)."""
    return {hf: families.shape(spec, args) for _, sources in _own_tensors(args)
            for hf, spec in sources}


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF q/k/v projections (weights [out, in] or biases [out]) -> Megatron linear_qkv."""
    groups, d = args.num_query_groups, args.head_dim
    per_group = args.num_attention_heads // groups
    rest = q.shape[1:]
    return torch.cat(
        [q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest),
         v.reshape(groups, d, *rest)], dim=1,
    ).reshape(groups * (per_group + 2) * d, *rest)


def split_qkv(qkv: torch.Tensor, args: ModelArgs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, d = args.num_query_groups, args.head_dim
    per_group = args.num_attention_heads // groups
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def hf_to_global(name: str, hf: List[torch.Tensor], args: ModelArgs) -> torch.Tensor:
    """Build the global Megatron tensor ``name`` from its HF sources (``hf_sources(name, args)``)."""
    if name.endswith("linear_qkv.weight") or name.endswith("linear_qkv.bias"):
        return fuse_qkv(*hf, args)
    if name.endswith("linear_fc1.weight"):
        return torch.cat(hf, dim=0)
    (tensor,) = hf
    return tensor


def hf_to_global_pieces(name: str, hf: List[torch.Tensor], args: ModelArgs) -> List[torch.Tensor]:
    """``hf_to_global`` left as pieces that concatenate along dim 0 to it (fc1: gate, up), for a
    writer that can use them without the concatenation."""
    if name.endswith("linear_fc1.weight"):
        return list(hf)
    return [hf_to_global(name, hf, args)]


def global_to_hf(name: str, tensor: torch.Tensor, args: ModelArgs) -> List[torch.Tensor]:
    if name.endswith("linear_qkv.weight") or name.endswith("linear_qkv.bias"):
        return list(split_qkv(tensor, args))
    if name.endswith("linear_fc1.weight"):
        return list(torch.chunk(tensor, 2, dim=0))
    return [tensor]


# ----------------------------------------------------------------------------- TP sharding


def _tp_kind(name: str) -> str:
    if name.endswith("linear_fc1.weight"):
        return "fc1"
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias")) or name in (
            "embedding.word_embeddings.weight", "output_layer.weight"):
        return "column"
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return "row"
    return "replicated"  # norms


def check_parallel(args: ModelArgs, tp: int, pp: int) -> None:
    """Refuse TP/PP sizes that do not divide the model, naming the numbers."""
    if tp < 1 or pp < 1:
        raise ValueError(f"--tp and --pp must be >= 1, got tp={tp} pp={pp}")
    problems = []
    if args.num_attention_heads % tp:
        problems.append(f"num_attention_heads {args.num_attention_heads}")
    if args.num_query_groups % tp:
        problems.append(f"num_query_groups (num_key_value_heads) {args.num_query_groups}")
    if args.intermediate_size % tp:
        problems.append(f"intermediate_size {args.intermediate_size}")
    if args.vocab_size % tp:
        problems.append(f"vocab_size {args.vocab_size}")
    if problems:
        raise ValueError(f"--tp {tp} does not divide " + ", ".join(problems))
    if args.num_layers % pp:
        raise ValueError(f"--pp {pp} does not divide num_layers {args.num_layers}")


def shard_tp(name: str, tensor: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s slice (of ``tp``) of the global tensor ``name``. Returns a view when it can."""
    kind = _tp_kind(name)
    if tp == 1 or kind == "replicated":
        return tensor
    if kind == "fc1":
        gate, up = torch.chunk(tensor, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[rank], torch.chunk(up, tp, dim=0)[rank]])
    dim = 0 if kind == "column" else 1
    return torch.chunk(tensor, tp, dim=dim)[rank]


def merge_tp(name: str, shards: List[torch.Tensor]) -> torch.Tensor:
    kind = _tp_kind(name)
    if len(shards) == 1:
        return shards[0]
    if kind == "replicated":
        first = shards[0]
        for i, other in enumerate(shards[1:], 1):
            if not torch.equal(first, other):
                raise ValueError(f"{name}: TP rank {i} holds a different copy of a replicated tensor")
        return first
    if kind == "fc1":
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=0 if kind == "column" else 1)


# ----------------------------------------------------------------------------- PP and spec names


def stage_layers(args: ModelArgs, pp: int, pp_rank: int) -> range:
    per_stage = args.num_layers // pp
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def stage_names(args: ModelArgs, pp: int, pp_rank: int) -> List[str]:
    """Global tensor names held by pipeline stage ``pp_rank``.

    With tied embeddings and PP > 1 the last stage keeps its own copy of the embedding as
    ``output_layer.weight`` (Megatron keeps the two equal through the embedding group).
    """
    names = []
    if pp_rank == 0:
        names.append("embedding.word_embeddings.weight")
    for layer in stage_layers(args, pp, pp_rank):
        names += [f"decoder.layers.{layer}.{n}" for n in layer_tensor_names(args)]
    if pp_rank == pp - 1:
        names.append("decoder.final_layernorm.weight")
        if not args.tie_word_embeddings or pp > 1:
            names.append("output_layer.weight")
    return names


def local_name(name: str, args: ModelArgs, pp: int, pp_rank: int, spec: str = "local") -> str:
    """Global tensor name -> the key in stage ``pp_rank``'s ``model.state_dict()``."""
    match = _LAYER_RE.match(name)
    if not match:
        return name
    layer, rest = int(match.group(1)), match.group(2)
    layer -= stage_layers(args, pp, pp_rank).start
    if spec == "te":
        rest = TE_NORM_NAMES.get(rest, rest)
    return f"decoder.layers.{layer}.{rest}"


def global_name(key: str, args: ModelArgs, pp: int, pp_rank: int) -> Optional[str]:
    """A stage's state-dict key (either spec) -> global tensor name; None for ``_extra_state``."""
    if key.endswith("._extra_state"):
        return None
    match = _LAYER_RE.match(key)
    if not match:
        return key
    layer, rest = int(match.group(1)), match.group(2)
    rest = _LOCAL_NORM_NAMES.get(rest, rest)
    return f"decoder.layers.{layer + stage_layers(args, pp, pp_rank).start}.{rest}"


def extra_state_keys(args: ModelArgs, pp: int, pp_rank: int, spec: str = "local") -> List[str]:
    """The ``_extra_state`` keys a stage's state dict has (their values are None when saved)."""
    per_layer = _EXTRA_STATE_LAYER_TE if spec == "te" else _EXTRA_STATE_LAYER
    keys = [f"decoder.layers.{i}.{m}._extra_state"
            for i in range(len(stage_layers(args, pp, pp_rank))) for m in per_layer]
    if pp_rank == pp - 1:
        keys.append("output_layer._extra_state")
    return keys


def detect_spec(keys) -> str:
    return "te" if any(k.endswith("layer_norm_weight") for k in keys) else "local"


def iter_rank_state(
    get_global, args: ModelArgs, tp: int, pp: int, tp_rank: int, pp_rank: int, spec: str = "local",
) -> Iterator[Tuple[str, Optional[torch.Tensor]]]:
    """(state-dict key, tensor) pairs of one (tp_rank, pp_rank) model, tensors from ``get_global``."""
    for name in stage_names(args, pp, pp_rank):
        source = "embedding.word_embeddings.weight" if (
            name == "output_layer.weight" and args.tie_word_embeddings) else name
        yield local_name(name, args, pp, pp_rank, spec), shard_tp(name, get_global(source), tp, tp_rank)
    for key in extra_state_keys(args, pp, pp_rank, spec):
        yield key, None
