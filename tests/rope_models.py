"""A tiny LLaMA per RoPE type, as a HF model (the numerical oracle) and as the plugin's
Megatron-Core model holding the same weights, for the model-level RoPE tests
(tests/test_model_rope.py) and the GPU check's parity step (tests/test_gpu_check.py).

The weights reach the Megatron model through the package's own conversion, never a mapping
written for the tests: a GPTModel gets the converter's tensor mapping (``convert.weights``: the
tensors its legacy writer saves and ``pose_megatron.checkpoint.loader`` reads back, any TP/PP rank, either
spec); a HybridModel reads a GPT-layout checkpoint written by the converter's torch_dist writer
through Megatron-Core's load-time translation, the way ``load_megatron_model`` loads one.
"""

from __future__ import annotations

import math
import tempfile

import torch

VOCAB, HIDDEN, FFN, LAYERS, HEADS, GROUPS, HEAD_DIM, WINDOW = 256, 64, 128, 2, 4, 2, 16, 256
TRAIN_LEN = 24

ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": WINDOW},
    "yarn_pose": {"rope_type": "yarn_pose", "factor": 8.0,
                  "original_max_position_embeddings": WINDOW},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": WINDOW},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": WINDOW,
                 "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
                 "long_factor": [1.0 + 0.6 * i for i in range(HEAD_DIM // 2)]},
}


def model_args(name, **kw):
    from pose_megatron.config import ModelArgs

    scaling = ROPE_CASES[name]
    window = WINDOW * 4 if name == "longrope" else WINDOW  # LongRoPE: HF window = extended one
    return ModelArgs(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_layers=LAYERS,
        num_attention_heads=HEADS, num_query_groups=GROUPS, head_dim=HEAD_DIM,
        max_position_embeddings=window, rope_theta=10000.0,
        rope_scaling=dict(scaling) if scaling else None, **kw,
    )


def yarn_pose_float64(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0):
    """The PoSE reference's revised YaRN, written independently in float64 from its formula."""
    def corr(rotations):
        return dim * math.log(original / (2 * math.pi * rotations)) / (2 * math.log(base))

    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), dim - 1)
    theta = [base ** (-2 * j / dim) for j in range(dim // 2)]
    out = []
    for j, t in enumerate(theta):
        ramp = min(max((j - low) / (high - low), 0.0), 1.0)
        gamma = 1 - ramp
        out.append(t / ((1 - gamma) * factor + gamma))
    return torch.tensor(out, dtype=torch.float64), 0.1 * math.log(factor) + 1.0


def hf_model(name, seed=0):
    """A random-init fp32 HF LLaMA using rope type `name` (ntk, yarn_pose expressed in HF terms)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    args = model_args(name)
    scaling = dict(args.rope_scaling or {"rope_type": "default"})
    theta = args.rope_theta
    if name == "ntk":  # fixed NTK == HF default RoPE with the enlarged base
        theta = theta * scaling["factor"] ** (HEAD_DIM / (HEAD_DIM - 2))
        scaling = {"rope_type": "default"}
    if name == "yarn_pose":  # HF has no such type: plain RoPE, frequencies replaced below
        scaling = {"rope_type": "default"}
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=GROUPS, head_dim=HEAD_DIM,
        max_position_embeddings=args.max_position_embeddings, rms_norm_eps=args.norm_eps,
        rope_parameters=dict(scaling, rope_theta=theta), tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if name == "yarn_pose":
        inv_freq, mscale = yarn_pose_float64(HEAD_DIM, args.rope_theta, 8.0, WINDOW)
        model.model.rotary_emb.inv_freq.copy_(inv_freq.float())
        model.model.rotary_emb.attention_scaling = mscale
    return model


# ---------------------------------------------------------------------------------------------
# HF weights -> the Megatron model, through the package's conversion


def converted_state(hf_state, args, *, tp=1, tp_rank=0, pp=1, pp_rank=0, spec="local"):
    """One rank's GPTModel state dict (``_extra_state`` left out) made from HF tensors by the
    converter's mapping: ``weights.iter_rank_state`` fed from ``hf_sources`` / ``hf_to_global``,
    as ``convert.api.hf_to_megatron`` feeds its writers."""
    from pose_megatron.convert import weights

    def get_global(name):
        return weights.hf_to_global(
            name, [hf_state[n] for n in weights.hf_sources(name, args)], args)

    return {key: value for key, value in weights.iter_rank_state(
        get_global, args, tp, pp, tp_rank, pp_rank, spec) if value is not None}


def write_converted(hf_state, args, path, dtype=torch.float32) -> str:
    """A GPT-layout torch_dist checkpoint of the HF tensors at ``path``, written by the
    converter's writer (``store.write_dist``); TP=1, in a process of its own or one whose
    model-parallel state is TP=PP=1."""
    from pose_megatron.checkpoint import store
    from pose_megatron.convert import weights

    def get_pieces(name):
        tensors = [hf_state[n] for n in weights.hf_sources(name, args)]
        return [t.to(dtype) for t in weights.hf_to_global_pieces(name, tensors, args)]

    store.write_dist(path, args, get_pieces, dtype)
    return path


def load_into(model, weights):
    """Copy ``weights`` into the model's tensors; the keys must be exactly the model's."""
    state = model.state_dict()
    tensors = {k for k, v in state.items()
               if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
    assert tensors == set(weights), (sorted(tensors ^ set(weights)))
    with torch.no_grad():
        for key, value in weights.items():
            state[key].copy_(value)


def _is_hybrid(model) -> bool:
    from pose_megatron import megatron_compat

    cls = megatron_compat.hybrid_model_class()
    return cls is not None and isinstance(model, cls)


def load_hf_weights(model, hf_state, args, *, ckpt=None):
    """Fill ``model`` (this process's TP slice and pipeline stage, built for ``args``) with the HF
    tensors ``hf_state``.

    A HybridModel reads the converter's GPT-layout checkpoint ``ckpt`` (``write_converted`` of
    the same tensors) through Megatron-Core's translation, as ``load_megatron_model(...,
    model_class="hybrid")`` does; at TP=PP=1 it is written here when not given.
    """
    from megatron.core import parallel_state as ps

    from pose_megatron.convert import weights

    if _is_hybrid(model):
        from pose_megatron.checkpoint.loader import load_dist_into

        if ckpt is not None:
            load_dist_into(model, ckpt, translate=True)
            return
        dtype = next(model.parameters()).dtype
        with tempfile.TemporaryDirectory() as tmp:
            load_dist_into(model, write_converted(hf_state, args, tmp, dtype), translate=True)
        return
    load_into(model, converted_state(
        hf_state, args, tp=ps.get_tensor_model_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        spec=weights.detect_spec(model.state_dict())))


# ---------------------------------------------------------------------------------------------
# inputs and forward passes


def pose_batch(name, batch=3):
    """PoSE-skipped position ids, one different row per sample, reaching toward the target."""
    from pose_megatron.positions import pose_position_ids_batch

    target = model_args(name).max_position
    ids = torch.as_tensor(
        pose_position_ids_batch(TRAIN_LEN, target, list(range(batch)), seed=11).position_ids)
    assert len({tuple(r) for r in ids.tolist()}) == batch  # every row its own positions
    assert ids.max() >= 4 * TRAIN_LEN  # and they skip far beyond the sample length
    tokens = torch.randint(0, VOCAB, (batch, TRAIN_LEN), generator=torch.Generator().manual_seed(5))
    return tokens, ids


def hf_logits(name, tokens, position_ids):
    with torch.no_grad():
        return hf_model(name)(input_ids=tokens, position_ids=position_ids).logits


def call(model, *args, **kwargs):
    """Run a Megatron model on its own device (CPU here, CUDA on a GPU machine); CPU result."""
    device = next(model.parameters()).device
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    out = model(*map(move, args), **{k: move(v) for k, v in kwargs.items()})
    return out.float().cpu()


def megatron_logits(model, tokens, position_ids, **kw):
    model.eval()
    with torch.no_grad():
        return call(model, tokens, position_ids, runtime_gather_output=True, **kw)
