"""Model-level RoPE checks: HF LlamaForCausalLM vs our Megatron-Core GPTModel (and HybridModel,
megatron-core 0.19+) with the same weights, which reach the Megatron model through the package's
own conversion (tests/rope_models.py: the converter's tensor mapping for a GPTModel at any TP/PP
rank and either spec, the converter's GPT-layout checkpoint and Megatron-Core's load-time
translation for a HybridModel).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.distributed import run_distributed
from tests.model_classes import MODEL_CLASSES, needs_hybrid
from tests.rope_models import (GROUPS, HEAD_DIM, HEADS, HIDDEN, LAYERS, ROPE_CASES, TRAIN_LEN,
                               VOCAB, call, converted_state, hf_logits, hf_model, load_hf_weights,
                               load_into, megatron_logits, model_args, pose_batch,
                               write_converted)


@pytest.fixture(scope="module")
def mp():
    from pose_megatron import parallel

    parallel.initialize(1, 1)
    yield


# ---------------------------------------------------------------------------------------------
# TP = 1: every rope type, PoSE-skipped per-sample ids


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_logits_match_hf_per_sample_positions(mp, name, model_class):
    from pose_megatron.model import build_model

    tokens, pos = pose_batch(name)
    expected = hf_logits(name, tokens, pos)
    model = build_model(model_args(name), spec="local", model_class=model_class)
    assert type(model).__name__ == {"gpt": "PoseGPTModel", "hybrid": "PoseHybridModel"}[model_class]
    load_hf_weights(model, hf_model(name).state_dict(), model_args(name))
    got = megatron_logits(model, tokens, pos)
    assert got.shape == expected.shape == (3, TRAIN_LEN, VOCAB)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logit diff| {diff}"
    # The skipped ids mattered: contiguous ids give other logits.
    assert (megatron_logits(model, tokens, None) - got).abs().max() > 1e-3


def test_float64_precision_matches_hf_at_small_positions(mp):
    from pose_megatron.model import build_model

    tokens, pos = pose_batch("yarn")
    expected = hf_logits("yarn", tokens, pos)
    model = build_model(model_args("yarn"), spec="local", rope_precision="float64")
    load_hf_weights(model, hf_model("yarn").state_dict(), model_args("yarn"))
    diff = (megatron_logits(model, tokens, pos) - expected).abs().max().item()
    assert diff <= 1e-4


def test_training_loss_and_grads_match_hf(mp):
    # Backward through the per-sample tables: loss and weight gradients equal HF's.
    from pose_megatron.model import build_model

    name = "yarn_pose"
    tokens, pos = pose_batch(name)
    hf = hf_model(name).train()
    hf_loss = hf(input_ids=tokens, position_ids=pos, labels=tokens).loss
    hf_loss.backward()
    model = build_model(model_args(name), spec="local")
    load_hf_weights(model, hf.state_dict(), model_args(name))
    model.train()
    labels = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)  # Megatron takes shifted labels
    device = next(model.parameters()).device
    per_token = model(tokens.to(device), pos.to(device), labels=labels.to(device))  # [b, s]
    loss = per_token[:, :-1].mean()
    loss.backward()
    assert abs(loss.item() - hf_loss.item()) <= 1e-5
    hf_grad = hf.model.layers[0].self_attn.o_proj.weight.grad
    grad = model.decoder.layers[0].self_attention.linear_proj.weight.grad.cpu()
    assert (grad - hf_grad).abs().max() <= 1e-5 * max(1.0, hf_grad.abs().max().item())
    hf_q = hf.model.layers[1].self_attn.q_proj.weight.grad
    qkv = model.decoder.layers[1].self_attention.linear_qkv.weight.grad.cpu().view(GROUPS, -1, HIDDEN)
    q = qkv[:, : (HEADS // GROUPS) * HEAD_DIM].reshape(-1, HIDDEN)
    assert (q - hf_q).abs().max() <= 1e-5 * max(1.0, hf_q.abs().max().item())


def test_position_limit_raises(mp):
    from pose_megatron.model import build_model

    args = model_args("linear")  # max_position = 4 * 256
    model = build_model(args, spec="local")
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"position id 1024 is outside .* \[0, 1024\)"):
        megatron_logits(model, tokens, torch.tensor([[0, 1, 2, 1024]]))
    with pytest.raises(ValueError, match="must be >= 0"):
        megatron_logits(model, tokens, torch.tensor([[0, -1, 2, 3]]))
    megatron_logits(model, tokens, torch.tensor([[0, 1, 2, 1023]]))  # the last legal id


def test_state_dict_keys_are_stock(mp):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from pose_megatron.model import build_model, model_args_to_transformer_config

    args = model_args("yarn")
    ours = build_model(args, spec="local")
    stock = GPTModel(model_args_to_transformer_config(args),
                     get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
                     max_sequence_length=args.max_position, position_embedding_type="rope")
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert sorted(ours.sharded_state_dict()) == sorted(stock.sharded_state_dict())


# ---------------------------------------------------------------------------------------------
# arange positions: bit for bit equal to stock Megatron-Core RoPE


def _stock_model(args, position_embedding_type, model_class="gpt", **gpt_kwargs):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from pose_megatron.model import model_args_to_transformer_config

    config = model_args_to_transformer_config(args)
    scaling = args.rope_scaling or {}
    if position_embedding_type == "yarn":  # Megatron's YaRN applies mscale to cos/sin itself
        config.softmax_scale = None
        config.yarn_rotary_scaling_factor = scaling["factor"]
        config.yarn_original_max_position_embeddings = scaling["original_max_position_embeddings"]
        config.yarn_beta_fast, config.yarn_beta_slow = 32.0, 1.0
        config.yarn_mscale, config.yarn_mscale_all_dim = 1.0, 0.0
        config.yarn_correction_range_round_to_int = True
    if model_class == "hybrid":  # as Megatron-LM's hybrid_builder builds it, with our local spec
        from megatron.core.models.hybrid.hybrid_model import HybridModel

        from pose_megatron.model import hybrid_layer_pattern, hybrid_stack_spec

        return HybridModel(config, hybrid_stack_spec("local"), vocab_size=VOCAB,
                           max_sequence_length=args.max_position,
                           hybrid_layer_pattern=hybrid_layer_pattern(args.num_layers),
                           position_embedding_type=position_embedding_type,
                           rotary_base=args.rope_theta, **gpt_kwargs)
    return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
                    max_sequence_length=args.max_position,
                    position_embedding_type=position_embedding_type,
                    rotary_base=args.rope_theta, **gpt_kwargs)


STOCK_EQUIVALENTS = {
    # name -> (rope_scaling, GPTModel position_embedding_type, GPTModel kwargs)
    "default": (None, "rope", {}),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
               "rope", {"rope_scaling": True, "rope_scaling_factor": 8.0}),
    "yarn": (ROPE_CASES["yarn"], "yarn", {}),
}


@pytest.mark.parametrize("name", list(STOCK_EQUIVALENTS))
def test_arange_equals_stock(mp, name):
    from pose_megatron.config import ModelArgs
    from pose_megatron.model import build_model

    scaling, pe_type, kwargs = STOCK_EQUIVALENTS[name]
    args = model_args("default")
    args = ModelArgs(**dict(args.to_dict(), rope_scaling=scaling))
    weights = converted_state(hf_model("default").state_dict(), args)
    stock = _stock_model(args, pe_type, **kwargs)
    load_into(stock, weights)
    ours = build_model(args, spec="local")
    load_into(ours, weights)
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    arange = torch.arange(40).expand(2, 40)
    stock.eval()
    with torch.no_grad():
        expected = call(stock, tokens, arange, None)
    if name == "yarn":
        # Stock YaRN multiplies cos and sin by mscale; ours puts mscale**2 into the softmax scale:
        # the same logits up to rounding.
        assert (megatron_logits(ours, tokens, arange) - expected).abs().max() <= 1e-5
        assert (megatron_logits(ours, tokens, None) - expected).abs().max() <= 1e-5
        return
    assert torch.equal(megatron_logits(ours, tokens, arange), expected)
    assert torch.equal(megatron_logits(ours, tokens, None), expected)


def test_linear_matches_stock_interpolation_to_rounding(mp):
    # Stock scales positions by 1/factor, HF (and we) divide inv_freq: same math, other rounding.
    from pose_megatron.model import build_model

    args = model_args("linear")
    weights = converted_state(hf_model("default").state_dict(), args)
    stock = _stock_model(args, "rope", seq_len_interpolation_factor=4.0)
    load_into(stock, weights)
    ours = build_model(args, spec="local")
    load_into(ours, weights)
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    stock.eval()
    with torch.no_grad():
        expected = call(stock, tokens, None, None)
    assert (megatron_logits(ours, tokens, None) - expected).abs().max() <= 1e-5


def test_interleaved_layout_matches_hf_with_permuted_heads(mp):
    # Interleaved RoPE rotates pairs (2i, 2i+1), HF's halves layout pairs (i, i + D/2): the same
    # model once each head's q/k rows are permuted accordingly.
    from pose_megatron.model import build_model

    name = "llama3"
    tokens, pos = pose_batch(name)
    expected = hf_logits(name, tokens, pos)
    state = dict(hf_model(name).state_dict())
    half = torch.arange(HEAD_DIM // 2)
    perm = torch.stack([half, half + HEAD_DIM // 2], dim=1).flatten()
    for key in list(state):
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            state[key] = state[key].view(-1, HEAD_DIM, HIDDEN)[:, perm].reshape(-1, HIDDEN)
    args = model_args(name, rotary_interleaved=True)
    model = build_model(args, spec="local")
    weights = converted_state(state, args)
    load_into(model, weights)
    assert (megatron_logits(model, tokens, pos) - expected).abs().max() <= 1e-4
    # and bit for bit the stock interleaved RoPE at contiguous positions
    stock = _stock_model(model_args("default", rotary_interleaved=True), "rope")
    load_into(stock, weights)
    plain = build_model(model_args("default", rotary_interleaved=True), spec="local")
    load_into(plain, weights)
    stock.eval()
    with torch.no_grad():
        assert torch.equal(megatron_logits(plain, tokens, None), call(stock, tokens, None, None))


def test_enable_pose_rope_on_wrapped_chunks(mp):
    from pose_megatron.model import enable_pose_rope
    from pose_megatron.rotary import PoseRotaryEmbedding

    class Wrapper(torch.nn.Module):  # stands for DDP / Float16Module
        def __init__(self, module):
            super().__init__()
            self.module = module

    args = model_args("yarn_pose")
    chunks = [Wrapper(_stock_model(args, "rope")), _stock_model(args, "rope")]
    assert enable_pose_rope(chunks, {"rope_scaling": args.rope_scaling,
                                     "max_position": args.max_position,
                                     "rope_precision": "float64"}) is chunks
    for inner in (chunks[0].module, chunks[1]):
        assert isinstance(inner.rotary_pos_emb, PoseRotaryEmbedding)
        assert inner.rotary_pos_emb.precision == "float64"
        # YaRN's attention factor is in the softmax scale, not in fake yarn_* config settings.
        assert not hasattr(inner.config, "yarn_mscale")
        mscale = 0.1 * math.log(8.0) + 1.0
        assert math.isclose(inner.config.softmax_scale, mscale**2 / math.sqrt(HEAD_DIM))
    with pytest.raises(TypeError, match="expected a Megatron-Core GPTModel"):
        enable_pose_rope(torch.nn.Linear(2, 2), args)


# ---------------------------------------------------------------------------------------------
# enable_pose_rope on a model a Megatron-LM model_provider built


@pytest.mark.parametrize("name,model_class", [("linear", "gpt"), ("yarn", "gpt"),
                                              pytest.param("yarn_pose", "hybrid",
                                                           marks=needs_hybrid)])
def test_enable_pose_rope_on_stock_model(mp, name, model_class):
    # As pose_megatron.megatron_lm wraps a Megatron-LM model provider: a stock GPTModel or
    # HybridModel (built with this RoPE type's softmax scale), then enable_pose_rope.
    from pose_megatron.model import enable_pose_rope
    from pose_megatron.rotary import PoseRotaryEmbedding

    args = model_args(name)
    tokens, pos = pose_batch(name)
    stock = _stock_model(args, "rope", model_class)
    load_hf_weights(stock, hf_model(name).state_dict(), args)
    stock.eval()
    enable_pose_rope(stock, args)
    assert isinstance(stock.rotary_pos_emb, PoseRotaryEmbedding)
    arange = torch.arange(TRAIN_LEN).expand(len(tokens), TRAIN_LEN)
    with torch.no_grad():
        got = call(stock, tokens, pos, None)  # the hooks bind positional position_ids ...
        got_kw = call(stock, input_ids=tokens, position_ids=pos, attention_mask=None)  # ... and keyword
        plain = call(stock, tokens, None, None)  # None: contiguous 0..S-1
    assert torch.equal(got, got_kw)
    assert (got - hf_logits(name, tokens, pos)).abs().max() <= 1e-4
    assert (plain - hf_logits(name, tokens, arange)).abs().max() <= 1e-4
    assert stock.rotary_pos_emb._position_ids is None  # unbound after the call


def test_enable_pose_rope_refuses_what_it_cannot_serve(mp):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from pose_megatron.model import enable_pose_rope, model_args_to_transformer_config

    yarn = model_args("yarn")
    # Megatron's own YaRN model: its attention applies Megatron's factor itself.
    with pytest.raises(ValueError, match="position_embedding_type='yarn'.*'rope'"):
        enable_pose_rope(_stock_model(yarn, "yarn"), yarn)
    # Built without YaRN's attention scaling (a plain config): refused, with the fix.
    plain = model_args("default")
    model = GPTModel(model_args_to_transformer_config(plain),
                     get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
                     max_sequence_length=yarn.max_position, position_embedding_type="rope")
    with pytest.raises(ValueError, match=r"softmax_scale 0\.25, but this RoPE scaling needs "
                                         r"0\.3.*softmax_scale_for"):
        enable_pose_rope(model, yarn)
    enable_pose_rope(model, model_args("linear"))  # no attention scaling: fine
    config = model_args_to_transformer_config(plain, fused_single_qkv_rope=True)
    fused = GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
                     max_sequence_length=256, position_embedding_type="rope")
    with pytest.raises(ValueError, match="fused_single_qkv_rope"):
        enable_pose_rope(fused, plain)


def test_dynamic_warns_in_training(mp):
    from pose_megatron.model import build_model

    model = build_model(model_args("dynamic"), spec="local")
    model.train()
    tokens, pos = pose_batch("dynamic", batch=2)
    with pytest.warns(UserWarning, match="dynamic NTK"):
        call(model, tokens, pos)


# ---------------------------------------------------------------------------------------------
# TP = 2 and PP = 2 in two gloo processes


# every type on the GPTModel; two on the HybridModel, whose RoPE path is the same (TP=1 above
# checks every type on it)
PARALLEL_CASES = {"gpt": list(ROPE_CASES), "hybrid": ["yarn_pose", "longrope"]}


def _hybrid_checkpoints(model_class, names, root):
    """The converter's GPT-layout checkpoint of each case's HF weights, written here (TP=1) for
    the HybridModels of a parallel job to read; none for a GPTModel (converted in memory)."""
    if model_class != "hybrid":
        return {}
    return {name: write_converted(hf_model(name).state_dict(), model_args(name), str(root / name))
            for name in names}


def _tp2_body(rank, world, model_class, ckpts):
    from pose_megatron import parallel
    from pose_megatron.model import build_model

    parallel.initialize(tensor_model_parallel_size=2)
    diffs = {}
    for name in PARALLEL_CASES[model_class]:
        tokens, pos = pose_batch(name)
        hf = hf_model(name)
        model = build_model(model_args(name), spec="local", model_class=model_class)
        load_hf_weights(model, hf.state_dict(), model_args(name), ckpt=ckpts.get(name))
        got = megatron_logits(model, tokens, pos)
        with torch.no_grad():
            expected = hf(input_ids=tokens, position_ids=pos).logits
        diffs[name] = (got - expected).abs().max().item()
    return diffs


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_logits_match_hf_tp2(model_class, tmp_path):
    ckpts = _hybrid_checkpoints(model_class, PARALLEL_CASES[model_class], tmp_path)
    results = run_distributed(_tp2_body, 2, model_class, ckpts)
    for rank_diffs in results:
        assert set(rank_diffs) == set(PARALLEL_CASES[model_class])
        for name, diff in rank_diffs.items():
            assert diff <= 1e-4, f"TP=2 {model_class} {name}: max |logit diff| {diff}"


PP_CASES = ("yarn", "llama3")


def _pp2_body(rank, world, model_class, ckpts):
    import torch.distributed as dist

    from pose_megatron import parallel
    from pose_megatron.model import build_model

    device = parallel.initialize(pipeline_model_parallel_size=2)
    out = {}
    for name in PP_CASES:
        tokens, pos = pose_batch(name)
        hf = hf_model(name)
        model = build_model(model_args(name), spec="local", model_class=model_class)
        model.eval()
        assert (model.pre_process, model.post_process) == (rank == 0, rank == 1)
        load_hf_weights(model, hf.state_dict(), model_args(name), ckpt=ckpts.get(name))
        assert len(model.decoder.layers) == LAYERS // 2 * (2 if model_class == "hybrid" else 1)
        with torch.no_grad():
            if rank == 0:
                hidden = call(model, tokens, pos)  # [s, b, h]
                dist.send(hidden.to(device).contiguous(), dst=1)
            else:
                hidden = torch.empty(TRAIN_LEN, tokens.shape[0], HIDDEN, device=device)
                dist.recv(hidden, src=0)
                model.set_input_tensor(hidden)
                got = call(model, tokens, pos, runtime_gather_output=True)
                expected = hf(input_ids=tokens, position_ids=pos).logits
                out[name] = (got - expected).abs().max().item()
    return out


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_logits_match_hf_pp2_every_stage_uses_position_ids(model_class, tmp_path):
    ckpts = _hybrid_checkpoints(model_class, PP_CASES, tmp_path)
    _, last = run_distributed(_pp2_body, 2, model_class, ckpts)
    assert set(last) == {"yarn", "llama3"}
    for name, diff in last.items():
        assert diff <= 1e-4, f"PP=2 {name}: max |logit diff| {diff}"


# ---------------------------------------------------------------------------------------------
# Transformer Engine spec (GPU only): unfused per-sample tables, and TE's fused kernel, which
# takes only [S, 1, 1, D] tables and so serves gathered ids at micro-batch 1 (B > 1 is refused).
# The converter's mapping names the norms the TE spec fuses into the linear layers.


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_te_spec_matches_hf_unfused_and_fused(mp, model_class):
    # hybrid: Megatron-Core's own hybrid_stack_spec (Transformer Engine only)
    pytest.importorskip("transformer_engine")
    from pose_megatron.model import build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    for name in ("llama3", "yarn"):  # yarn: mscale in the softmax scale, so fused works at B=1
        tokens, pos = pose_batch(name)
        expected = hf_logits(name, tokens, pos)
        for fusion in (False, True):
            model = build_model(model_args(name), spec="te", apply_rope_fusion=fusion,
                                model_class=model_class)
            load_hf_weights(model, hf_model(name).state_dict(), model_args(name))
            if fusion:  # TE's kernel takes one [S, 1, 1, D] table: per-sample B=3 is refused
                with pytest.raises(ValueError, match="apply_rope_fusion"):
                    megatron_logits(model, tokens, pos)
            else:
                diff = (megatron_logits(model, tokens, pos) - expected).abs().max().item()
                assert diff <= 2e-4, f"TE {name} fusion={fusion} B=3: {diff}"
            diff1 = (megatron_logits(model, tokens[:1], pos[:1]) - expected[:1]).abs().max().item()
            assert diff1 <= 2e-4, f"TE {name} fusion={fusion} B=1: {diff1}"
            assert model.config.apply_rope_fusion is fusion  # never flipped
