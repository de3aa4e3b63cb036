"""The model families the converters and training know, one declarative entry each.

A family is a LLaMA-style decoder (RMSNorm, SwiGLU, RoPE, no linear biases) plus the few things
that tell it apart. Its entry says, once:

- ``architecture``/``model_type``: how a HF ``config.json`` names it (read and written);
- ``megatron``: the Megatron-Core ``TransformerConfig`` fields it implies. Megatron-LM keeps them
  in its args and Megatron-Bridge in its provider under the same names, so one dict serves the
  model builder, the Megatron-LM args and Bridge's ``run_config.yaml`` alike, and reading one
  of those back finds the family whose fields match (``family_from_megatron``);
- ``layer``: the tensors of one decoder layer, Megatron local-spec name -> the HF tensors it is
  made of, each with its shape in symbols (``SYMBOLS``). The same table converts both ways;
- ``sliding_window``/``hf_extra``: the config.json keys only this family has.

Adding a family is adding an entry to ``FAMILIES`` (and a tiny random model of it to
tests/hf_families.py; docs/families.md lists each family's status). A family whose HF tensors
or Megatron modules are not in the tables below needs its rows first; one whose layers
Megatron-Core's GPTModel cannot build (NoPE layers, per-layer attention kinds) is not a family
of this package.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

# A tensor: (Megatron name, ((HF name, shape), ...)). Shapes are space-separated symbols:
SYMBOLS = {
    "h": "hidden_size",
    "f": "intermediate_size (per gate/up half)",
    "v": "vocab_size",
    "q": "num_attention_heads * head_dim",
    "kv": "num_query_groups * head_dim",
    "d": "head_dim",
}
Tensor = Tuple[str, Tuple[Tuple[str, str], ...]]

# Outside the layers: embedding, final norm, output layer (untied models only).
EMBEDDING: Tensor = ("embedding.word_embeddings.weight", (("model.embed_tokens.weight", "v h"),))
FINAL_NORM: Tensor = ("decoder.final_layernorm.weight", (("model.norm.weight", "h"),))
OUTPUT_LAYER: Tensor = ("output_layer.weight", (("lm_head.weight", "v h"),))

# One decoder layer, relative to decoder.layers.N. / model.layers.N., in the order of a HF file.
_NORM_1: Tensor = ("input_layernorm.weight", (("input_layernorm.weight", "h"),))
_QKV: Tensor = ("self_attention.linear_qkv.weight", (
    ("self_attn.q_proj.weight", "q h"), ("self_attn.k_proj.weight", "kv h"),
    ("self_attn.v_proj.weight", "kv h")))
_QKV_BIAS: Tensor = ("self_attention.linear_qkv.bias", (
    ("self_attn.q_proj.bias", "q"), ("self_attn.k_proj.bias", "kv"),
    ("self_attn.v_proj.bias", "kv")))
# per-head RMSNorm of queries and keys before RoPE (one weight of head_dim, shared by the heads)
_QK_NORM: Tuple[Tensor, ...] = (
    ("self_attention.q_layernorm.weight", (("self_attn.q_norm.weight", "d"),)),
    ("self_attention.k_layernorm.weight", (("self_attn.k_norm.weight", "d"),)),
)
_PROJ: Tensor = ("self_attention.linear_proj.weight", (("self_attn.o_proj.weight", "h q"),))
_NORM_2: Tensor = ("pre_mlp_layernorm.weight", (("post_attention_layernorm.weight", "h"),))
_MLP: Tuple[Tensor, ...] = (
    ("mlp.linear_fc1.weight", (("mlp.gate_proj.weight", "f h"), ("mlp.up_proj.weight", "f h"))),
    ("mlp.linear_fc2.weight", (("mlp.down_proj.weight", "h f"),)),
)
LLAMA_LAYER: Tuple[Tensor, ...] = (_NORM_1, _QKV, _PROJ, _NORM_2, *_MLP)
QKV_BIAS_LAYER: Tuple[Tensor, ...] = (_NORM_1, _QKV, _QKV_BIAS, _PROJ, _NORM_2, *_MLP)
QK_NORM_LAYER: Tuple[Tensor, ...] = (_NORM_1, _QKV, *_QK_NORM, _PROJ, _NORM_2, *_MLP)

# The TransformerConfig fields a family may set (all False for LLaMA) -> the ModelArgs field
# that records them.
MEGATRON_FIELDS = {"add_qkv_bias": "qkv_bias", "qk_layernorm": "qk_layernorm"}
# How a config.json carries a sliding window: not at all, always ("sliding_window"), or only
# when "use_sliding_window" is true (it is recorded for export, not applied in training).
SLIDING_WINDOW_FORMS = ("none", "always", "use_sliding_window")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # ModelArgs.family and the HF model_type
    architecture: str  # the HF class, config.json "architectures"
    models: str  # what it covers, for error messages (status: docs/families.md)
    layer: Tuple[Tensor, ...] = LLAMA_LAYER
    megatron: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    sliding_window: str = "none"
    hf_extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.megatron) - set(MEGATRON_FIELDS)
        if unknown or self.sliding_window not in SLIDING_WINDOW_FORMS:
            raise ValueError(f"family {self.name!r}: unknown settings {sorted(unknown)} or "
                             f"sliding_window {self.sliding_window!r}")

    @property
    def model_type(self) -> str:
        return self.name

    def megatron_config(self) -> Dict[str, bool]:
        """Every field of MEGATRON_FIELDS with this family's value."""
        return {k: bool(self.megatron.get(k, False)) for k in MEGATRON_FIELDS}

    @property
    def layer_tensor_names(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self.layer)


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("llama", "LlamaForCausalLM", "LLaMA 1/2/3.x", hf_extra={"attention_bias": False,
                                                                    "mlp_bias": False}),
    Family("mistral", "MistralForCausalLM", "Mistral, Mistral-NeMo", sliding_window="always"),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2/2.5 dense", layer=QKV_BIAS_LAYER,
           megatron={"add_qkv_bias": True}, sliding_window="use_sliding_window"),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3 dense", layer=QK_NORM_LAYER,
           megatron={"qk_layernorm": True}, sliding_window="use_sliding_window",
           hf_extra={"attention_bias": False}),
)}
# Reading a Megatron-side description (Megatron-LM args, Bridge provider) cannot tell families
# with the same Megatron fields apart (Mistral's window is not a Megatron setting): the first
# registered of them is taken.
_BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {tuple(FAMILIES)}")
    return FAMILIES[name]


def supported() -> str:
    """The supported architectures, for error messages."""
    return ", ".join(f"{f.architecture} ({f.models})" for f in FAMILIES.values()) + \
        " (docs/families.md)"


def from_hf_config(cfg: dict, source: str) -> Family:
    """The family of a HF config.json; an unknown one is refused in one line naming it."""
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    if not archs and cfg.get("model_type") in FAMILIES:
        return FAMILIES[cfg["model_type"]]
    raise ValueError(f"{source}: unknown architecture {archs or cfg.get('model_type')!r}; "
                     f"supported: {supported()}")


def family_from_megatron(fields: Mapping[str, object], source: str) -> Family:
    """The family whose Megatron fields (``MEGATRON_FIELDS``) ``fields`` has; missing ones are
    False (Megatron's defaults)."""
    got = {k: bool(fields.get(k) or False) for k in MEGATRON_FIELDS}
    for family in FAMILIES.values():
        if family.megatron_config() == got:
            return family
    on = sorted(k for k, v in got.items() if v)
    raise ValueError(f"{source}: {' and '.join(on)} together describe no supported family "
                     f"({', '.join(f'{f.name}: {f.megatron_config()}' for f in FAMILIES.values())})")


def shape(spec: str, args) -> Tuple[int, ...]:
    """A shape in SYMBOLS for the model ``args`` (a ModelArgs)."""
    dims = {"h": args.hidden_size, "f": args.intermediate_size, "v": args.vocab_size,
            "q": args.num_attention_heads * args.head_dim,
            "kv": args.num_query_groups * args.head_dim, "d": args.head_dim}
    return tuple(dims[s] for s in spec.split())

