"""The checkpoint layout of NVIDIA Megatron-Bridge, read and written beside our own.

What Megatron-Bridge 0.6.2 saves (``AutoBridge.import_ckpt`` / ``save_megatron_model``; read
from its ``training/checkpointing.py``, ``training/utils/checkpoint_utils.py`` and
``training/model_load_save.py``, and checked on a real save, tests/fixtures/bridge/)::

    CKPT/
      latest_train_state.pt              TrainState.state_dict(): {"step": tensor(N), ...}
      latest_checkpointed_iteration.txt  "N" as well (Megatron-LM's tracker)
      iter_000000N/
        run_config.yaml                  the ConfigContainer, hydra-style (``_target_``);
                                         its ``model`` section is the GPTModelProvider
        train_state.pt                   the same TrainState
        metadata.json, .metadata, *.distcp   the torch_dist checkpoint of {"model": ...}
        tokenizer/                       the HF tokenizer files (when it had one)

Bridge's loader (``AutoBridge.load_megatron_model`` -> ``load_model_config``) takes the
``iter_*`` directory with the largest number (else the path as given), instantiates
``run_config.yaml``'s ``model`` section, builds that model and loads the weights with
dist_checkpointing; without a ``run_config.yaml`` it needs Megatron-LM args plus a model type,
which ``AutoBridge`` does not pass. So a checkpoint Bridge accepts has its weights in
``iter_*/`` beside a ``run_config.yaml``. The tensor names need nothing: Megatron-Core's local
spec saves its norms under the Transformer Engine names (``sharded_state_dict_keys_map``), so
Bridge's checkpoints and ours name every tensor alike.

Reading maps the provider's fields to ``ModelArgs`` and refuses, naming the file and the field,
whatever a LLaMA-family HF model cannot express. Writing (``write_metadata``) adds the files
above to one of our checkpoints; the ``model`` section holds the architecture fields only, so
Bridge's own defaults (layer spec, fusions) apply where it loads.
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional

from pose_megatron import dtypes, families, publish
from pose_megatron.config import ModelArgs
from pose_megatron.rope import LLAMA31_ROPE, is_megatron_llama31

RUN_CONFIG = "run_config.yaml"
TRAIN_STATE = "train_state.pt"
TRAIN_STATE_TRACKER = "latest_train_state.pt"
PROVIDER_TARGET = "megatron.bridge.models.gpt_provider.GPTModelProvider"
CONTAINER_TARGET = "megatron.bridge.training.config.ConfigContainer"
# Providers of other architectures (the field checks below would refuse them too, less clearly).
_NOT_GPT = ("Mamba", "Hybrid", "T5", "VL", "Bert", "MLA")
# HF's YaRN defaults (modeling_rope_utils: ``beta_fast or 32``, ``beta_slow or 1``, truncate True).
_YARN_BETAS = (32.0, 1.0)


class BridgeConfigError(ValueError):
    """A run_config.yaml that does not describe a model we can convert."""


def has_run_config(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_CONFIG))


def tracker_iteration(ckpt_dir: str) -> Optional[int]:
    """The step ``latest_train_state.pt`` names, or None where there is no such file."""
    path = os.path.join(ckpt_dir, TRAIN_STATE_TRACKER)
    if not os.path.isfile(path):
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        step = state["step"]
        return int(step.item() if hasattr(step, "item") else step)
    except Exception as err:  # noqa: BLE001  (damaged file, wrong content)
        raise ValueError(f"{path}: not a Megatron-Bridge train state with a 'step' "
                         f"({type(err).__name__}: {err})") from None


def read_run_config(path: str) -> dict:
    """``run_config.yaml`` of an iteration directory, parsed with yaml.safe_load."""
    import yaml

    file = os.path.join(path, RUN_CONFIG)
    try:
        with open(file) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise BridgeConfigError(f"{file}: cannot read it ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise BridgeConfigError(f"{file}: no 'model' section (not a Megatron-Bridge run config)")
    return data


def _target(value) -> Optional[str]:
    return value.get("_target_") if isinstance(value, dict) else None


def model_args_from_run_config(path: str) -> ModelArgs:
    """ModelArgs of the model whose ``run_config.yaml`` lies in ``path`` (an iteration dir)."""
    file = os.path.join(path, RUN_CONFIG)
    model = read_run_config(path)["model"]

    def bad(field: str, why: str):
        return BridgeConfigError(f"{file}: model.{field}: {why}")

    def get(field: str, default: Any = None, required: bool = False):
        if required and model.get(field) is None:
            raise bad(field, "missing; cannot tell the model's shape")
        return model.get(field, default)

    def require(field: str, expected, default=None):
        value = model.get(field, default)
        if value != expected:
            raise bad(field, f"{value!r}; only {expected!r} converts to a LLaMA-family HF model")

    target = _target(model)
    if (target is None or not target.endswith("ModelProvider")
            or any(k in target.split(".")[-1] for k in _NOT_GPT)):
        raise bad("_target_", f"{target!r}; expected a GPT-style provider ({PROVIDER_TARGET})")
    require("normalization", "RMSNorm", "LayerNorm")
    require("gated_linear_unit", True, False)
    act = _target(model.get("activation_func"))
    if act not in ("torch.nn.functional.silu", "torch.nn.modules.activation.SiLU"):
        raise bad("activation_func", f"{act!r}; only SiLU (SwiGLU) converts")
    require("add_bias_linear", False, True)
    kind = model.get("position_embedding_type", "learned_absolute")
    if kind not in ("rope", "yarn"):
        raise bad("position_embedding_type",
                  f"{kind!r}; only 'rope' and 'yarn' convert to a LLaMA-family HF model")
    require("rotary_percent", 1.0, 1.0)
    for field in ("multi_latent_attention", "layernorm_zero_centered_gamma",
                  "apply_residual_connection_post_layernorm"):
        if model.get(field):
            raise bad(field, f"{model[field]!r}; LLaMA-family models have none")
    not_convertible = ["num_moe_experts", "softmax_scale", "window_size", "rotary_scaling_factor",
                       "heterogeneous_layers_config_path"]
    if kind == "rope":  # (Bridge's attention still applies a YaRN factor that is set)
        not_convertible.append("yarn_rotary_scaling_factor")
    for field in not_convertible:
        if model.get(field) is not None:
            raise bad(field, f"{model[field]!r}: not convertible (dense LLaMA-family models only)")
    try:
        family = families.family_from_megatron(model, f"{file}: model")
    except ValueError as err:
        raise BridgeConfigError(str(err)) from None

    heads = int(get("num_attention_heads", required=True))
    hidden = int(get("hidden_size", required=True))
    vocab = int(get("vocab_size", required=True))
    if model.get("should_pad_vocab"):
        from math import ceil

        multiple = int(model.get("make_vocab_size_divisible_by") or 1) * int(
            model.get("tensor_model_parallel_size") or 1)
        padded = int(ceil(vocab / multiple) * multiple)
        if padded != vocab:
            raise bad("should_pad_vocab", f"true: the saved vocabulary is padded from {vocab} "
                      f"to {padded}, which a HF model of vocab_size {vocab} cannot load")
    theta = float(get("rotary_base", 10000))
    window = int(get("seq_length", required=True))
    scaling = _rope_from_provider(model, bad)
    dtype = ("bfloat16" if model.get("bf16") else "float16" if model.get("fp16") else
             dtypes.lookup(_target(model.get("params_dtype")), "float32"))
    try:
        return ModelArgs(
            family=family.name, vocab_size=vocab, hidden_size=hidden,
            intermediate_size=int(get("ffn_hidden_size", required=True)),
            num_layers=int(get("num_layers", required=True)), num_attention_heads=heads,
            num_query_groups=int(model.get("num_query_groups") or heads),
            head_dim=int(model.get("kv_channels") or hidden // heads),
            norm_eps=float(get("layernorm_epsilon", 1e-5)),
            tie_word_embeddings=bool(get("share_embeddings_and_output_weights", True)),
            max_position_embeddings=window, rope_theta=theta, rope_scaling=scaling,
            rotary_interleaved=bool(get("rotary_interleaved", False)),
            init_method_std=float(get("init_method_std", 0.02)),
            bos_token_id=None, eos_token_id=None, torch_dtype=dtype)
    except (TypeError, ValueError) as err:
        raise BridgeConfigError(f"{file}: model: {err}") from None


def _rope_from_provider(model: dict, bad) -> Optional[dict]:
    """The HF rope_scaling (None: plain) of a provider's RoPE fields; HF's defaults are left out
    so that equal RoPEs compare equal."""
    from pose_megatron.rope import _yarn_mscale

    scaling = None
    if model.get("rope_scaling"):
        scaling = {"rope_type": "llama3", "factor": float(model.get("rope_scaling_factor", 8.0)),
                   **LLAMA31_ROPE}
    interpolation = model.get("seq_len_interpolation_factor")
    if interpolation not in (None, 1, 1.0):
        if scaling is not None:
            raise bad("seq_len_interpolation_factor", "set together with rope_scaling")
        scaling = {"rope_type": "linear", "factor": float(interpolation)}
    if model.get("position_embedding_type") != "yarn":
        return scaling
    if scaling is not None:
        raise bad("position_embedding_type", "'yarn' set together with rope_scaling or "
                  "seq_len_interpolation_factor")
    # Megatron-Core's YarnRotaryEmbedding, as GPTModel builds it from these fields
    for field in ("yarn_rotary_scaling_factor", "yarn_original_max_position_embeddings",
                  "yarn_beta_fast", "yarn_beta_slow"):
        if model.get(field) is None:
            raise bad(field, "missing; Megatron-Core's YaRN needs it")
    factor = float(model["yarn_rotary_scaling_factor"])
    scaling = {"rope_type": "yarn", "factor": factor,
               "original_max_position_embeddings": int(model["yarn_original_max_position_embeddings"])}
    for hf, field, default in zip(("beta_fast", "beta_slow"), ("yarn_beta_fast", "yarn_beta_slow"),
                                  _YARN_BETAS):
        if float(model[field]) != default:
            scaling[hf] = float(model[field])
    if not model.get("yarn_correction_range_round_to_int"):  # None: Megatron does not round
        scaling["truncate"] = False
    mscale, mscale_all_dim = model.get("yarn_mscale"), model.get("yarn_mscale_all_dim")
    if mscale is not None and mscale_all_dim is not None:
        if mscale and mscale_all_dim:  # HF's condition for the same ratio
            scaling.update(mscale=float(mscale), mscale_all_dim=float(mscale_all_dim))
        else:  # Megatron's ratio, which HF only takes as an explicit attention factor
            value = float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))
            if value != _yarn_mscale(factor):
                scaling["attention_factor"] = value
    return scaling


def as_read_back(args: ModelArgs) -> ModelArgs:
    """``args`` as reading the run_config.yaml written for it gives it back (HF's RoPE defaults
    left out), to compare a pose_model.json with a run_config.yaml; unchanged where Bridge
    cannot express its RoPE."""
    import dataclasses

    try:
        fields = provider_fields(args)
    except ValueError:
        return args

    def bad(field, why):
        return ValueError(f"{field}: {why}")

    return dataclasses.replace(args, rope_scaling=_rope_from_provider(fields, bad))


# ----------------------------------------------------------------------------- writing


def _yarn_fields(scaling: dict) -> dict:
    """The GPTModelProvider fields of HF YaRN ``scaling``: Megatron-Core's YarnRotaryEmbedding
    (GPTModel ``position_embedding_type="yarn"``), with the names Bridge's own import uses
    (``MegatronModelBridge.YARN_ROPE_SCALING_MAPPING``). Every field is written: Megatron does not
    fill HF's defaults (a missing ``yarn_correction_range_round_to_int`` means no rounding)."""
    from pose_megatron.rope import _yarn_attention_factor

    factor = float(scaling["factor"])
    fields = {
        "position_embedding_type": "yarn", "yarn_rotary_scaling_factor": factor,
        "yarn_original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
        "yarn_beta_fast": float(scaling.get("beta_fast") or _YARN_BETAS[0]),
        "yarn_beta_slow": float(scaling.get("beta_slow") or _YARN_BETAS[1]),
        "yarn_mscale": None, "yarn_mscale_all_dim": None,  # None: Megatron's default factor
        "yarn_correction_range_round_to_int": bool(scaling.get("truncate", True)),
    }
    if scaling.get("mscale") and scaling.get("mscale_all_dim"):
        fields.update(yarn_mscale=float(scaling["mscale"]),
                      yarn_mscale_all_dim=float(scaling["mscale_all_dim"]))
    if scaling.get("attention_factor") is not None:
        derived = _yarn_attention_factor({k: v for k, v in scaling.items()
                                          if k != "attention_factor"})
        if float(scaling["attention_factor"]) != derived:
            raise ValueError(
                f"--layout bridge: YaRN attention_factor {scaling['attention_factor']!r}: "
                "Megatron-Core's YaRN derives the attention factor from factor, mscale and "
                f"mscale_all_dim ({derived!r} here) and takes no other; Bridge would load the "
                "weights with another attention scale. Use --layout megatron")
    return fields




def provider_fields(args: ModelArgs) -> dict:
    """The GPTModelProvider fields of ``args`` (what Bridge's LLaMA bridge sets from config.json).

    Refuses a RoPE Bridge's provider cannot compute: Bridge would build plain RoPE and load the
    weights into a different model without a word.
    """
    scaling = dict(args.rope_scaling or {})
    kind = scaling.get("rope_type")
    rope: dict = {"rope_scaling": False, "rope_scaling_factor": 1.0,
                  "seq_len_interpolation_factor": None}
    if is_megatron_llama31(scaling):
        rope.update(rope_scaling=True, rope_scaling_factor=float(scaling["factor"]))
    elif kind == "linear":
        rope["seq_len_interpolation_factor"] = float(scaling["factor"])
    elif kind == "yarn":
        rope.update(_yarn_fields(scaling))
    elif kind is not None:
        raise ValueError(
            f"--layout bridge: RoPE {kind!r} ({scaling}) has no Megatron-Bridge GPTModelProvider "
            "equivalent (it has plain, LLaMA 3.1 with Megatron's constants, linear and YaRN); "
            "Bridge would load the weights with another RoPE. Use --layout megatron")
    dtype = "torch." + dtypes.canonical(args.torch_dtype, source="torch_dtype")
    return {
        "_target_": PROVIDER_TARGET,
        "num_layers": args.num_layers, "hidden_size": args.hidden_size,
        "ffn_hidden_size": args.intermediate_size,
        "num_attention_heads": args.num_attention_heads,
        "num_query_groups": args.num_query_groups, "kv_channels": args.head_dim,
        "vocab_size": args.vocab_size, "should_pad_vocab": False,
        "make_vocab_size_divisible_by": 1, "seq_length": args.max_position_embeddings,
        "normalization": "RMSNorm", "gated_linear_unit": True,
        "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
        "add_bias_linear": False,
        **families.get(args.family).megatron_config(),  # add_qkv_bias, qk_layernorm
        "position_embedding_type": "rope", "rotary_percent": 1.0,
        "rotary_base": float(args.rope_theta), "rotary_interleaved": args.rotary_interleaved,
        **rope,
        "layernorm_epsilon": float(args.norm_eps),
        "share_embeddings_and_output_weights": args.tie_word_embeddings,
        "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "init_method_std": float(args.init_method_std),
        "params_dtype": {"_target_": dtype, "_call_": False},
        "bf16": args.torch_dtype == "bfloat16", "fp16": args.torch_dtype == "float16",
        "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
        "perform_initialization": False,
    }


def _train_state_bytes(step: int) -> bytes:
    import torch

    state = {"step": torch.tensor(step), "consumed_train_samples": torch.tensor(0),
             "skipped_train_samples": torch.tensor(0), "consumed_valid_samples": torch.tensor(0),
             "floating_point_operations_so_far": torch.tensor(0.0),
             "do_train": torch.tensor(False), "do_valid": torch.tensor(False),
             "do_test": torch.tensor(False)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_metadata(ckpt_dir: str, iteration_path: str, args: ModelArgs, iteration: int,
                   tokenizer_dir: Optional[str] = None) -> None:
    """The files Bridge's loader reads, beside the weights in ``iteration_path`` (an ``iter_*``
    directory of ``ckpt_dir``): run_config.yaml and train_state.pt there, the
    latest_train_state.pt tracker in ``ckpt_dir``."""
    import yaml

    config = {"_target_": CONTAINER_TARGET, "model": provider_fields(args)}
    if tokenizer_dir is not None:
        config["tokenizer"] = {
            "_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig",
            "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": tokenizer_dir}
    publish.write_text(os.path.join(iteration_path, RUN_CONFIG),
                       "# written by pose_megatron (tools/convert_hf_to_megatron.py --layout "
                       "bridge): the model section Megatron-Bridge's loader instantiates\n"
                       + yaml.safe_dump(config, sort_keys=False))
    data = _train_state_bytes(iteration)
    for target in (os.path.join(iteration_path, TRAIN_STATE),
                   os.path.join(ckpt_dir, TRAIN_STATE_TRACKER)):
        with publish.atomic_file(target, binary=True) as f:
            f.write(data)
