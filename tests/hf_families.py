"""Tiny random HF models of each supported family, built and saved with real transformers.

Plain helpers; the session fixture that saves each family once is ``hf_family_dir`` in
tests/conftest.py."""

from __future__ import annotations

import torch

# name -> (config class name, config kwargs)
FAMILIES = {
    # LLaMA-2-like: MHA, untied, plain RoPE
    "llama2": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4,
                                   tie_word_embeddings=False)),
    # LLaMA-3-like: GQA, rope llama3, tied and untied
    "llama3_tied": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "llama3_untied": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    # Mistral-like: GQA, head_dim != hidden/heads, sliding window recorded
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      sliding_window=4096, tie_word_embeddings=False)),
    # Qwen2-like: q/k/v biases, tied
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=True, rope_theta=1000000.0)),
    # Qwen3-like: per-head q/k RMSNorm (weights randomised below), head_dim != hidden/heads
    # (Qwen3-0.6B: 1024 / 16 heads, head_dim 128), tied as the small ones, rope_theta 1e6
    "qwen3_tied": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       tie_word_embeddings=True, rope_theta=1000000.0)),
    # untied, with the YaRN its configs ship (factor 4 over a 64-token original window)
    "qwen3_untied": ("Qwen3Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
        rope_theta=1000000.0, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                            "original_max_position_embeddings": 64})),
}

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, vocab_size=256,
            max_position_embeddings=256, rms_norm_eps=1e-6)


def make_hf_model(family: str, seed: int = 0, **overrides):
    import transformers

    cls_name, kwargs = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**BASE, **kwargs, **overrides})
    model_cls = getattr(transformers, cls_name.replace("Config", "ForCausalLM"))
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        # random init leaves norms at 1 and biases at 0: randomise them so a swap would show
        # (q_norm/k_norm too: a dropped or misplaced QK norm changes the logits)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def save_hf_model(model, directory: str, *, shard: bool = True, safetensors: bool = True) -> str:
    model.save_pretrained(directory, max_shard_size="40KB" if shard else "5GB",
                          safe_serialization=safetensors)
    return directory


def hf_state(directory: str) -> dict:
    """Every tensor stored in a HF directory, read back without transformers."""
    from pose_megatron.convert.hf_io import HFCheckpoint

    ckpt = HFCheckpoint(directory)
    return {name: ckpt.get(name).clone() for name in ckpt.names()}
