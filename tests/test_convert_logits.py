"""HF logits == plugin logits on converted checkpoints (fp32, max abs diff <= 1e-4), with
per-sample PoSE position ids, at TP=1 (every family), TP=2 and PP=2 (gloo, 2 processes); a
checkpoint re-saved by the TP=2 / PP=2 model converts back to HF bit for bit.

On megatron-core 0.19+ the same converted (GPT-layout) checkpoints also load into a HybridModel
through Megatron-Core's load-time translation (LLaMA and Qwen2 at TP=1, TP=2 and PP=2), and the
hybrid-layout checkpoint it re-saves converts back to HF bit for bit."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pose_megatron.positions import pose_position_ids_batch
from tests.hf_families import FAMILIES, hf_state, make_hf_model, save_hf_model
from tests.distributed import run_distributed
from tests.model_classes import have_hybrid, needs_hybrid

TRAIN_LEN, TARGET_LEN = 24, 96


def _inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 256, (3, TRAIN_LEN), generator=g)
    pos = torch.from_numpy(pose_position_ids_batch(TRAIN_LEN, TARGET_LEN, [0, 1, 2], seed=5).position_ids)
    return ids, pos


def _hf_logits(hf_dir):
    from transformers import AutoModelForCausalLM

    ids, pos = _inputs()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos).logits


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("logits")
    hf_dirs = {f: save_hf_model(make_hf_model(f, seed=3), str(root / f)) for f in FAMILIES}
    return root, hf_dirs


def _tp1_body(rank, world, hf_dirs, root):
    from pose_megatron import load_megatron_model, parallel
    from pose_megatron.convert import hf_to_megatron

    out = {}
    ids, pos = _inputs()
    for family, src in hf_dirs.items():
        mg = os.path.join(root, f"{family}-dist")
        hf_to_megatron(src, mg, fmt="torch_dist", progress=False)
        # legacy at TP=2, PP=2 loaded by a TP=1 process: the loader reshards
        legacy = os.path.join(root, f"{family}-legacy22")
        hf_to_megatron(src, legacy, fmt="legacy", tp=2, pp=2, progress=False)
        for tag, ckpt in (("dist", mg), ("legacy22", legacy)):
            model = load_megatron_model(ckpt)
            with torch.no_grad():
                out[family, tag] = model(ids, pos)
        if family in HYBRID_FAMILIES and have_hybrid():
            model = load_megatron_model(mg, model_class="hybrid")  # Megatron's translation
            assert type(model).__name__ == "PoseHybridModel"
            with torch.no_grad():
                out[family, "hybrid"] = model(ids, pos)
    parallel.destroy()
    return out


HYBRID_FAMILIES = ("llama3_untied", "qwen2")  # LLaMA (GQA, untied), Qwen2 (biases, tied)


def _convert_body(rank, world, src, dst):
    from pose_megatron.convert import hf_to_megatron

    hf_to_megatron(src, dst, fmt="torch_dist", progress=False)


def test_logits_tp1_every_family(converted):
    root, hf_dirs = converted
    (got,) = run_distributed(_tp1_body, 1, hf_dirs, str(root))
    ids, pos = _inputs()
    assert int(pos.max()) > TRAIN_LEN  # PoSE skips: positions beyond the training window
    assert not torch.equal(pos[0], pos[1])  # per-sample positions
    for family, src in hf_dirs.items():
        want = _hf_logits(src)
        tags = ("dist", "legacy22") + (("hybrid",) if family in HYBRID_FAMILIES and have_hybrid()
                                       else ())
        for tag in tags:
            logits = got[family, tag]
            assert logits.shape == (3, TRAIN_LEN, 256)
            diff = (logits - want).abs().max().item()
            assert diff <= 1e-4, (family, tag, diff)


def _parallel_body(rank, world, ckpt, resave, hf_out, tp, pp, model_class):
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from pose_megatron import load_megatron_model, parallel
    from pose_megatron.config import ModelArgs
    from pose_megatron.checkpoint import store
    from pose_megatron.convert import megatron_to_hf

    parallel.initialize(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model = load_megatron_model(ckpt, model_class=model_class)
    ids, pos = _inputs()
    logits = None
    with torch.no_grad():
        if pp == 1:
            local = model(ids, pos)  # [b, s, vocab / tp]
            parts = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
            logits = torch.cat(parts, dim=-1)
        elif ps.is_pipeline_first_stage():
            hidden = model(ids, pos)  # [s, b, h], sent to the next stage
            dist.send(hidden.contiguous(), dst=1)
        else:
            args = ModelArgs.load(ckpt)
            hidden = torch.empty(TRAIN_LEN, ids.shape[0], args.hidden_size)
            dist.recv(hidden, src=0)
            model.set_input_tensor(hidden)
            logits = model(ids, pos)
    # save as a training run at this layout would, then export it back
    path = os.path.join(resave, store.iteration_dir(7))
    os.makedirs(path, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict(), "checkpoint_version": 3.0,
                             "iteration": 7}, path)
    if rank == 0:
        ModelArgs.load(ckpt).save(resave)
        store.write_tracker(resave, 7)
    dist.barrier()
    if model_class == "hybrid":  # the re-save is in the hybrid layout the reader must know
        assert store.checkpoint_hybrid_pattern(path) == "*-" * ModelArgs.load(ckpt).num_layers
    megatron_to_hf(resave, f"{hf_out}-rank{rank}", progress=False)
    parallel.destroy()
    return logits


@pytest.mark.parametrize("family,tp,pp,model_class", [
    ("qwen2", 2, 1, "gpt"),  # q/k/v biases split by query group, tied embeddings split by vocab
    ("llama3_tied", 1, 2, "gpt"),  # the last stage's copy of the tied embedding
    ("qwen3_untied", 2, 1, "gpt"),  # QK norms replicated over TP, head_dim != hidden/heads, YaRN
    ("qwen3_tied", 1, 2, "gpt"),
    # the converter's GPT checkpoint in a HybridModel (Megatron's load-time translation)
    pytest.param("qwen2", 2, 1, "hybrid", marks=needs_hybrid),
    pytest.param("llama3_untied", 1, 2, "hybrid", marks=needs_hybrid),
    pytest.param("qwen3_tied", 2, 1, "gpt", marks=pytest.mark.slow),
    pytest.param("qwen3_untied", 1, 2, "gpt", marks=pytest.mark.slow),
    pytest.param("llama3_untied", 2, 1, "gpt", marks=pytest.mark.slow),
    pytest.param("mistral", 1, 2, "gpt", marks=pytest.mark.slow),
])
def test_logits_and_resave_tp2_pp2(converted, family, tp, pp, model_class, tmp_path):
    root, hf_dirs = converted
    ckpt = str(root / f"{family}-dist")
    if not os.path.isdir(ckpt):  # run alone (e.g. -m slow): convert here instead of skipping
        run_distributed(_convert_body, 1, hf_dirs[family], ckpt)
    results = run_distributed(_parallel_body, 2, ckpt, str(tmp_path / "resave"),
                              str(tmp_path / "hf"), tp, pp, model_class)
    logits = results[0] if pp == 1 else results[1]
    diff = (logits - _hf_logits(hf_dirs[family])).abs().max().item()
    assert diff <= 1e-4, diff
    expected = hf_state(hf_dirs[family])
    for rank in range(2):
        got = hf_state(str(tmp_path / f"hf-rank{rank}"))
        assert sorted(got) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), (rank, name)


EXTENDED_ROPE = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn_pose": {"rope_type": "yarn_pose", "factor": 4.0, "original_max_position_embeddings": 32},
}


def _extended_body(rank, world, ckpts):
    from pose_megatron import load_megatron_model, parallel

    ids, pos = _inputs()
    out = {}
    for name, ckpt in ckpts.items():
        with torch.no_grad():
            out[name] = load_megatron_model(ckpt)(ids, pos)
    parallel.destroy()
    return out


def _redescribe_legacy(release, args):
    """Give a legacy checkpoint another RoPE in both places it is described, as a training run
    with that RoPE would have saved it: the settings file and the Megatron-LM args."""
    from pose_megatron.checkpoint.store import load_rank_file
    from pose_megatron.convert.megatron_lm_args import megatron_lm_args

    args.save(str(release))
    for rank_file in release.glob("mp_rank_*/model_optim_rng.pt"):
        state = load_rank_file(str(rank_file))
        state["args"] = megatron_lm_args(args, fmt="legacy")
        torch.save(state, f"{rank_file}.new")  # the loaded state still maps the old file
        os.replace(f"{rank_file}.new", rank_file)


def test_exported_rope_makes_hf_compute_the_plugins_logits(converted, tmp_path):
    """A model extended with each RoPE type exports to a config.json HF computes identically,
    including 'ntk' (as a plain RoPE base) and 'yarn_pose' (as longrope factors)."""
    from pose_megatron.config import ModelArgs
    from pose_megatron.convert import hf_to_megatron, megatron_to_hf

    _, hf_dirs = converted
    ckpts = {}
    for name, scaling in EXTENDED_ROPE.items():
        mg = tmp_path / f"{name}-mg"
        hf_to_megatron(hf_dirs["llama3_untied"], str(mg), fmt="legacy", progress=False)
        args = ModelArgs.load(str(mg / "release"))
        args.rope_theta, args.rope_scaling, args.max_position_embeddings = 10000.0, scaling, 32
        _redescribe_legacy(mg / "release", args)
        megatron_to_hf(str(mg), str(tmp_path / f"{name}-hf"), progress=False)
        ckpts[name] = str(mg)
    (got,) = run_distributed(_extended_body, 1, ckpts)
    config = json.load(open(tmp_path / "yarn_pose-hf/config.json"))
    assert config["rope_parameters"]["rope_type"] == "longrope"
    assert json.load(open(tmp_path / "ntk-hf/config.json"))["rope_scaling"] is None
    for name in EXTENDED_ROPE:
        diff = (got[name] - _hf_logits(str(tmp_path / f"{name}-hf"))).abs().max().item()
        assert diff <= 1e-4, (name, diff)


def _te_body(rank, world, ckpts):
    from pose_megatron import load_megatron_model, parallel

    ids, pos = _inputs()
    out = {}
    for name, ckpt in ckpts.items():
        model = load_megatron_model(ckpt, device="cuda", spec="te")
        with torch.no_grad():
            out[name] = model(ids.cuda(), pos.cuda()).float().cpu()
    parallel.destroy()
    return out


@pytest.mark.gpu
def test_transformer_engine_spec_loads_both_formats(converted, tmp_path):
    """Converted checkpoints (torch_dist, and legacy written with TE names) in a TE-spec model."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("transformer_engine")
    from pose_megatron.convert import hf_to_megatron

    _, hf_dirs = converted
    src = hf_dirs["qwen2"]
    ckpts = {"dist": str(tmp_path / "dist"), "legacy_te": str(tmp_path / "legacy_te")}
    hf_to_megatron(src, ckpts["legacy_te"], fmt="legacy", spec="te", progress=False)
    (got,) = run_distributed(_dist_then_te, 1, src, ckpts)
    want = _hf_logits(src)
    for name, logits in got.items():
        # TE kernels on a GPU (TF32 off by default in fp32) differ from the CPU oracle slightly
        assert (logits - want).abs().max().item() <= 1e-3, name


def _dist_then_te(rank, world, src, ckpts):
    from pose_megatron.convert import hf_to_megatron

    hf_to_megatron(src, ckpts["dist"], fmt="torch_dist", progress=False)
    return _te_body(rank, world, ckpts)
