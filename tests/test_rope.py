"""RoPE math against HF transformers' own implementation (the oracle) and an independent float64
statement of the PoSE reference's revised YaRN."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from pose_megatron import rope
from pose_megatron.rotary import PoseRotaryEmbedding, RopeSettings, attention_softmax_scale
from tests.rope_models import yarn_pose_float64

HEAD_DIM, THETA, WINDOW = 64, 10000.0, 2048

HF_CASES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 8.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": WINDOW},
    "yarn_attention_factor": {"rope_type": "yarn", "factor": 8.0, "attention_factor": 0.8,
                              "original_max_position_embeddings": WINDOW, "beta_fast": 16.0},
    "yarn_mscale": {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                    "original_max_position_embeddings": WINDOW, "truncate": False},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": WINDOW},
    "longrope": {"rope_type": "longrope", "factor": 16.0, "original_max_position_embeddings": WINDOW,
                 "short_factor": [1.0 + 0.01 * i for i in range(HEAD_DIM // 2)],
                 "long_factor": [1.0 + 0.4 * i for i in range(HEAD_DIM // 2)]},
}


def reference_cos_sin(position_ids, inv_freq, attention_scaling=1.0):
    """The plain statement of what the rotary modules compute: HF-layout cos/sin
    ``[..., 2 * len(inv_freq)]`` for integer positions, in inv_freq's dtype."""
    freqs = position_ids[..., None].to(inv_freq.dtype) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


def hf_config(scaling, theta=THETA, window=WINDOW):
    return LlamaConfig(hidden_size=4 * HEAD_DIM, num_attention_heads=4, head_dim=HEAD_DIM,
                       max_position_embeddings=window,
                       rope_parameters=dict(scaling, rope_theta=theta))


def hf_window(name):
    return WINDOW * 16 if name == "longrope" else WINDOW  # LongRoPE configs carry the long window


def skipped_positions(limit, batch=3, length=512, seed=0):
    """Per-sample PoSE-like ids: a head chunk at 0.., a tail chunk shifted toward `limit`."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        head = int(torch.randint(1, length // 2, (1,), generator=g))
        shift = int(torch.randint(0, limit - length + 1, (1,), generator=g))
        rows.append(torch.cat([torch.arange(head), torch.arange(head, length) + shift]))
    return torch.stack(rows)


def ours_cos_sin(scaling, position_ids, *, window=WINDOW, precision="float32", theta=THETA):
    settings = RopeSettings(rope_theta=theta, rope_scaling=scaling, max_position=None,
                            max_position_embeddings=window, rope_precision=precision)
    module = PoseRotaryEmbedding(HEAD_DIM, settings)
    angles = module.angles(position_ids)[:, :, 0, :].transpose(0, 1)  # [b, s, d]
    return angles.cos() * module.attention_scaling, angles.sin() * module.attention_scaling, module


@pytest.mark.parametrize("name", list(HF_CASES))
def test_inv_freq_and_scaling_equal_hf(name):
    scaling = HF_CASES[name]
    window = hf_window(name)
    config = hf_config(scaling, window=window)
    for seq_len in ([None, 3000, 9000] if name in ("dynamic", "longrope") else [None]):
        if name == "default":
            expected, expected_scale = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
        else:
            expected, expected_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](
                config, None, seq_len=seq_len)
        got32, scale = rope.compute_inv_freq(HEAD_DIM, THETA, scaling, seq_len=seq_len,
                                             max_position_embeddings=window, dtype=torch.float32)
        got64, scale64 = rope.compute_inv_freq(HEAD_DIM, THETA, scaling, seq_len=seq_len,
                                               max_position_embeddings=window)
        assert got64.dtype == torch.float64 and got64.shape == (HEAD_DIM // 2,)
        assert torch.equal(got32, expected), f"{name} seq_len={seq_len}: float32 not bit-identical"
        assert torch.allclose(got64, expected.double(), rtol=1e-6, atol=0)
        assert scale == scale64 == expected_scale


@pytest.mark.parametrize("name", list(HF_CASES))
def test_cos_sin_equal_hf_rotary_embedding(name):
    scaling = HF_CASES[name]
    window = hf_window(name)
    limit = int(window * scaling.get("factor", 1.0)) if name != "longrope" else window
    positions = skipped_positions(limit)
    assert positions.max() > WINDOW or name == "default"
    hf = LlamaRotaryEmbedding(hf_config(scaling, window=window))
    x = torch.zeros(1, dtype=torch.float32)
    hf_cos, hf_sin = hf(x, positions)
    cos, sin, module = ours_cos_sin(scaling, positions, window=window)
    assert (cos - hf_cos).abs().max() <= 1e-6 and (sin - hf_sin).abs().max() <= 1e-6
    assert module.attention_scaling == hf.attention_scaling
    # float64 precision: the same frequencies, angles exact to float32 rounding at any position.
    inv32, scale = rope.compute_inv_freq(HEAD_DIM, THETA, scaling, dtype=torch.float32,
                                         seq_len=positions.max() + 1,  # as the module passes it
                                         max_position_embeddings=window)
    ref_cos, ref_sin = reference_cos_sin(positions, inv32.double(), scale)
    cos, sin, _ = ours_cos_sin(scaling, positions, window=window, precision="float64")
    assert (cos.double() - ref_cos).abs().max() <= 1e-6
    assert (sin.double() - ref_sin).abs().max() <= 1e-6


def test_ntk_equals_hf_default_with_enlarged_base():
    factor = 8.0
    scaling = {"rope_type": "ntk", "factor": factor}
    theta_ntk = THETA * factor ** (HEAD_DIM / (HEAD_DIM - 2))
    config = hf_config({"rope_type": "default"}, theta=theta_ntk)
    expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    got, scale = rope.compute_inv_freq(HEAD_DIM, THETA, scaling, dtype=torch.float32)
    assert torch.equal(got, expected) and scale == 1.0
    positions = skipped_positions(WINDOW * 8)
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), positions)
    cos, sin, _ = ours_cos_sin(scaling, positions)
    assert (cos - hf_cos).abs().max() <= 1e-6 and (sin - hf_sin).abs().max() <= 1e-6


@pytest.mark.parametrize("factor,original,dim", [(8.0, 2048, 64), (32.0, 4096, 128), (4.0, 256, 16)])
def test_yarn_pose_equals_independent_float64(factor, original, dim):
    scaling = {"rope_type": "yarn_pose", "factor": factor,
               "original_max_position_embeddings": original}
    expected, expected_scale = yarn_pose_float64(dim, THETA, factor, original)
    got, scale = rope.compute_inv_freq(dim, THETA, scaling)
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    assert scale == pytest.approx(expected_scale, abs=1e-15)
    got32, _ = rope.compute_inv_freq(dim, THETA, scaling, dtype=torch.float32)
    assert torch.allclose(got32.double(), expected, rtol=1e-6, atol=0)
    # It is not HF's yarn: same ends (extrapolated high, interpolated low frequencies) ...
    hf_yarn, hf_scale = rope.compute_inv_freq(
        dim, THETA, dict(scaling, rope_type="yarn"))
    assert got[0] == hf_yarn[0] and torch.isclose(got[-1], hf_yarn[-1], rtol=1e-12)
    assert scale == hf_scale
    # ... but a different blend in the ramp band (wavelengths, not frequencies).
    if dim >= 64:
        assert (got - hf_yarn).abs().max() > 1e-4


def test_yarn_pose_cos_sin_float64_precision_at_long_positions():
    # Positions up to 131072: float64 tables give cos/sin accurate to float32 rounding, plain
    # float32 angles are off by up to ~ulp(131072) = 0.0078 rad.
    factor, original = 64.0, 2048
    scaling = {"rope_type": "yarn_pose", "factor": factor,
               "original_max_position_embeddings": original}
    inv32, mscale = rope.compute_inv_freq(HEAD_DIM, THETA, scaling, dtype=torch.float32)
    positions = skipped_positions(original * int(factor), length=256, seed=3)
    positions[:, -1] = original * int(factor) - 1
    exact_cos, exact_sin = reference_cos_sin(positions, inv32.double(), mscale)
    cos64, sin64, _ = ours_cos_sin(scaling, positions, precision="float64")
    cos32, sin32, _ = ours_cos_sin(scaling, positions, precision="float32")
    err64 = max((cos64.double() - exact_cos).abs().max(), (sin64.double() - exact_sin).abs().max())
    err32 = max((cos32.double() - exact_cos).abs().max(), (sin32.double() - exact_sin).abs().max())
    assert err64 <= 1e-6, err64
    assert err32 >= 1e-3, err32  # the float32 path's angle error, for the record


def test_interleaved_layout():
    settings = RopeSettings(rope_scaling={"rope_type": "linear", "factor": 2.0})
    pos = torch.tensor([[0, 5, 900]])
    halves = PoseRotaryEmbedding(8, settings).angles(pos)[:, 0, 0, :]
    pairs = PoseRotaryEmbedding(8, settings, rotary_interleaved=True).angles(pos)[:, 0, 0, :]
    freqs = halves[:, :4]
    assert torch.equal(halves, torch.cat([freqs, freqs], -1))
    assert torch.equal(pairs, freqs.repeat_interleave(2, dim=-1))
    assert torch.equal(freqs[2], 900 * (rope.compute_inv_freq(8, THETA, settings.rope_scaling,
                                                              dtype=torch.float32)[0]))


@pytest.mark.parametrize("name", ["default", "yarn", "yarn_attention_factor", "yarn_mscale",
                                  "longrope"])
def test_softmax_scale_gives_hf_attention_of_scaled_cos_sin(name):
    # HF multiplies cos and sin by the attention scaling; we leave them unscaled and put it into
    # the softmax scale (TransformerConfig.softmax_scale). Same attention probabilities.
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    pos = skipped_positions(WINDOW * 4, batch=2, length=64)
    cos, sin, module = ours_cos_sin(HF_CASES[name], pos, window=hf_window(name))
    scaling = module.attention_scaling
    assert (scaling != 1.0) == (name != "default")
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 4, 64, HEAD_DIM, generator=g, dtype=torch.float64) for _ in range(2))
    cos, sin = cos.double(), sin.double()
    qh, kh = apply_rotary_pos_emb(q, k, cos, sin)  # HF: scaled tables, 1/sqrt(d)
    expected = torch.softmax(qh @ kh.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
    qu, ku = apply_rotary_pos_emb(q, k, cos / scaling, sin / scaling)
    softmax_scale = attention_softmax_scale(scaling, HEAD_DIM)
    assert (softmax_scale is None) == (name == "default")
    got = torch.softmax(qu @ ku.transpose(-1, -2) * (softmax_scale or HEAD_DIM**-0.5), dim=-1)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scaling,message", [
    ({"rope_type": "ntk_by_parts", "factor": 2.0}, "unknown rope_type 'ntk_by_parts'"),
    ({"rope_type": "linear"}, r"missing parameter\(s\) \['factor'\]"),
    ({"rope_type": "yarn", "factor": 4.0}, "original_max_position_embeddings"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192},
     "high_freq_factor"),
    ({"rope_type": "longrope", "original_max_position_embeddings": 4096, "long_factor": [1.0]},
     "short_factor"),
    ({"rope_type": "linear", "factor": -2.0}, "factor must be a positive number, got -2.0"),
    ({"rope_type": "linear", "factor": 0.5}, "factor 0.5 < 1"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 8192}, "low_freq_factor < high_freq_factor"),
])
def test_validation_errors(scaling, message):
    with pytest.raises(ValueError, match=message):
        rope.validate_rope_scaling(scaling)


def test_validation_normalises():
    assert rope.validate_rope_scaling(None) == {"rope_type": "default"}
    assert rope.validate_rope_scaling({"type": "linear", "factor": 2.0}) == {
        "rope_type": "linear", "factor": 2.0}
    # HF's fallback: the config's window becomes original_max_position_embeddings.
    got = rope.validate_rope_scaling({"rope_type": "yarn", "factor": 4.0},
                                     max_position_embeddings=4096)
    assert got["original_max_position_embeddings"] == 4096
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['finetuned'\]"):
        rope.validate_rope_scaling({"rope_type": "yarn", "factor": 4.0, "finetuned": True,
                                    "original_max_position_embeddings": 4096})


def test_dynamic_needs_window_and_warns_for_training():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope.compute_inv_freq(HEAD_DIM, THETA, {"rope_type": "dynamic", "factor": 2.0})
    with pytest.warns(UserWarning, match="dynamic NTK"):
        assert rope.warn_if_training({"rope_type": "dynamic", "factor": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not rope.warn_if_training({"rope_type": "yarn_pose", "factor": 2.0,
                                          "original_max_position_embeddings": 64})


def test_rotary_module_position_errors():
    settings = RopeSettings(rope_scaling={"rope_type": "linear", "factor": 2.0}, max_position=100)
    module = PoseRotaryEmbedding(16, settings)
    with pytest.raises(ValueError, match=r"position id 100 is outside .* \[0, 100\)"):
        module.angles(torch.tensor([[0, 100]]))
    with pytest.raises(TypeError, match="integers"):
        module.angles(torch.tensor([[0.0, 1.0]]))
    module.bind(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="cover 7 tokens but the model runs 9"):
        module(9)
    module.unbind()
    assert module(9).shape == (9, 1, 1, 16)
    with pytest.raises(ValueError, match="rope_precision"):
        PoseRotaryEmbedding(16, RopeSettings(rope_precision="float16"))


def test_float64_tables_cached_grown_and_bounded():
    settings = RopeSettings(rope_scaling={"rope_type": "linear", "factor": 4.0}, max_position=4096,
                            rope_precision="float64")
    module = PoseRotaryEmbedding(16, settings)

    def rows():
        (table,) = [t for k, t in module._tables.items() if k[0] == "table64"]
        return table.shape[0]

    module.angles(torch.tensor([[0, 100]]))
    assert rows() == 101  # over 0..max(position id), as the reference builds it
    module.angles(torch.tensor([[0, 50]]))
    assert rows() == 101
    module.angles(torch.tensor([[0, 150]]))
    assert rows() == 202  # grown geometrically
    module.angles(torch.tensor([[0, 4000]]))
    assert rows() == 4001
    # Dynamic NTK's frequencies change with every batch maximum: nothing is kept.
    dynamic = PoseRotaryEmbedding(16, RopeSettings(
        rope_scaling={"rope_type": "dynamic", "factor": 4.0}, max_position_embeddings=64,
        rope_precision="float64"))
    for high in range(100, 110):
        dynamic.angles(torch.tensor([[0, high]]))
    assert dynamic._tables == {}
