"""TP=2 and PP=2 PoSE training give the losses of TP=1/PP=1 (CPU, gloo, real Megatron-Core).

All runs start from one set of weights: the single-process run writes them as a model-only
``release`` checkpoint before training, the parallel runs ``--load`` it (dist_checkpointing
reshards it to their TP/PP layout), then every run trains 5 steps on the same PoSE samples.
On megatron-core 0.19+ the same model as a HybridModel (``--model-class hybrid``, at PP=1 and
PP=2) loads that GPT-layout checkpoint through Megatron-Core's load-time translation and trains to
the same losses.
"""

import numpy as np
import pytest

from tests.distributed import run_distributed
from tests.model_classes import needs_hybrid

TRAIN_LEN, TARGET_LEN, STEPS = 32, 128, 5


def _argv(extra):
    return ["--mock-data", "--device", "cpu", "--num-layers", "4", "--hidden-size", "64",
            "--num-attention-heads", "4", "--num-query-groups", "2", "--vocab-size", "256",
            "--pose-train-len", str(TRAIN_LEN), "--pose-target-len", str(TARGET_LEN),
            "--rope-scaling-type", "linear", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(STEPS), "--lr", "1e-3",
            "--lr-warmup-iters", "1", "--clip-grad", "1.0", "--seed", "7", *extra]


def _train(rank, world, extra, save_release_to, record_positions):
    from pose_megatron.checkpoint import resumable
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    trainer = setup(parse_args(_argv(extra)))
    if save_release_to:
        resumable.save_release(save_release_to, trainer.model, trainer.model_args)
    seen = []
    if record_positions:
        def hook(module, args, kwargs):
            seen.append(np.asarray(args[1] if len(args) > 1 else kwargs["position_ids"]))
        trainer.model.module.register_forward_pre_hook(hook, with_kwargs=True)
    history = train(trainer)
    from megatron.core import parallel_state as ps
    stage = ps.get_pipeline_model_parallel_rank()
    return [(h["loss"], h["grad_norm"]) for h in history], stage, seen


@pytest.fixture(scope="module")
def init_and_ref(tmp_path_factory):
    init = str(tmp_path_factory.mktemp("init"))
    (ref,) = run_distributed(_train, 1, [], init, False)
    return init, ref


@pytest.fixture(scope="module")
def runs(init_and_ref):
    init, ref = init_and_ref
    load = ["--load", init]
    tp2 = run_distributed(_train, 2, ["--tensor-model-parallel-size", "2", *load], None, False)
    pp2 = run_distributed(_train, 2, ["--pipeline-model-parallel-size", "2", *load], None, True)
    dp2 = run_distributed(_train, 2, load, None, False)
    return ref, tp2, pp2, dp2


def _losses(result):
    return np.array([loss for loss, _ in result[0]])


def test_reference_trains(runs):
    ref, _, _, _ = runs
    losses = _losses(ref)
    assert losses.shape == (STEPS,)
    # ln(256) = 5.545 at random init; five steps at lr 1e-3 must move it down.
    assert abs(losses[0] - np.log(256)) < 0.1
    assert losses[-1] < losses[0]


# Tolerance: fp32 on CPU. TP=2 sums two half-width partial products in the row-parallel all-reduce
# and computes the vocab-parallel softmax in two halves, so rounding differs at ~1e-7 relative per
# op (fp32 epsilon 1.2e-7); over five Adam steps the loss differences measured 2.1e-8 relative
# (TP=2) and exactly 0 (PP=2: the same ops in the same order, only on two processes). 1e-6 leaves
# room for other BLAS builds while still catching any real routing error (a wrong position id or
# sample changes the loss at 1e-3 or more).
RTOL = 1e-6


def test_tp2_matches_tp1(runs):
    ref, tp2, _, _ = runs
    np.testing.assert_allclose(_losses(tp2[0]), _losses(ref), rtol=RTOL, atol=0)
    # Both TP ranks report the same loss and the same global grad norm (TP duplicates once).
    assert tp2[0][0] == tp2[1][0]
    print('TP2 max rel diff', np.max(np.abs(_losses(tp2[0]) / _losses(ref) - 1)))
    np.testing.assert_allclose([g for _, g in tp2[0][0]], [g for _, g in ref[0]], rtol=1e-4)


def test_pp2_matches_pp1(runs):
    ref, _, pp2, _ = runs
    np.testing.assert_allclose(_losses(pp2[0]), _losses(ref), rtol=RTOL, atol=0)
    print('PP2 max rel diff', np.max(np.abs(_losses(pp2[0]) / _losses(ref) - 1)))
    np.testing.assert_allclose([g for _, g in pp2[0][0]], [g for _, g in ref[0]], rtol=1e-4)


@needs_hybrid
@pytest.mark.parametrize("pp", [1, 2])
def test_hybrid_model_trains_to_the_gpt_losses(init_and_ref, pp):
    """The GPT release checkpoint in a HybridModel ('*-' per block; Megatron's load-time
    translation): the same PoSE steps give the GPTModel run's losses (PP=2: position ids at
    every stage of the hybrid pipeline too)."""
    init, ref = init_and_ref
    hybrid = run_distributed(_train, pp, ["--model-class", "hybrid", "--load", init,
                                          "--pipeline-model-parallel-size", str(pp)], None, pp > 1)
    np.testing.assert_allclose(_losses(hybrid[0]), _losses(ref), rtol=RTOL, atol=0)
    print(f'hybrid PP={pp} max rel diff', np.max(np.abs(_losses(hybrid[0]) / _losses(ref) - 1)))
    np.testing.assert_allclose([g for _, g in hybrid[0][0]], [g for _, g in ref[0]], rtol=1e-4)
    if pp > 1:  # every stage saw the position ids
        assert all(len(seen) == STEPS * 4 for _, _, seen in hybrid)


def test_dp2_matches_dp1(runs):
    """Two data-parallel ranks with 2 micro-batches each = one rank with 4 (per-token loss)."""
    ref, _, _, dp2 = runs
    np.testing.assert_allclose(_losses(dp2[0]), _losses(ref), rtol=RTOL, atol=0)
    assert dp2[0][0] == dp2[1][0]


def test_every_pipeline_stage_sees_the_sample_positions(runs):
    """Stage 0 and stage 1 get the PoSE position ids of exactly the samples being trained."""
    from pose_megatron.data.synthetic import SyntheticPoseDataset
    from pose_megatron.positions import PoseSettings

    _, _, pp2, _ = runs
    dataset = SyntheticPoseDataset(STEPS * 4, 256, PoseSettings(TRAIN_LEN, TARGET_LEN, seed=7))
    expected = [dataset[i]["position_ids"][None] for i in range(STEPS * 4)]
    assert any(e.max() >= TRAIN_LEN for e in expected)  # real skips, not 0..L-1
    stages = {}
    for _, stage, seen in pp2:
        stages[stage] = seen
    assert sorted(stages) == [0, 1]
    for stage, seen in stages.items():
        assert len(seen) == len(expected), stage
        for got, want in zip(seen, expected):
            np.testing.assert_array_equal(got, want)


def _clip(rank, world, clip):
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import (_data_iterator, make_forward_step, optimizer_step,
                                             setup)

    trainer = setup(parse_args(_argv(["--clip-grad", str(clip)])))
    trainer.model.zero_grad_buffer()
    get_forward_backward_func()(
        forward_step_func=make_forward_step("cpu"), data_iterator=_data_iterator(trainer),
        model=[trainer.model], num_microbatches=trainer.num_microbatches, seq_length=TRAIN_LEN,
        micro_batch_size=1, forward_only=False)
    params = [p for p in trainer.model.parameters()]
    raw = float(torch.sqrt(sum((p.main_grad.double() ** 2).sum() for p in params)))
    _, grad_norm = optimizer_step(trainer.optimizer, clip, "cpu")
    clipped = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)))
    return raw, grad_norm, clipped


def test_cpu_gradient_clipping():
    """Megatron-Core's clip asserts CUDA grads; ours gives the same norm and clips to max_norm."""
    raw, grad_norm, clipped = run_distributed(_clip, 1, 0.25)[0]
    assert raw > 0.25
    assert abs(grad_norm - raw) / raw < 1e-6
    assert abs(clipped - 0.25) < 1e-6
