"""Training on a real indexed corpus (--data-path blend, the data package's PoseGPTDataset)."""

import numpy as np

from tests.distributed import run_distributed


def _job(rank, world, root):
    from pose_megatron.data.corpus import build_corpus
    from pose_megatron.training.arguments import parse_args
    from pose_megatron.training.loop import setup, train

    paths = build_corpus(root, vocab_size=512, max_docs=60, quiet=True)
    args = parse_args(["--data-path", "1.0", paths["prefix"], "--tokenizer-model",
                       paths["tokenizer"], "--vocab-size", "512", "--device", "cpu",
                       "--pose-train-len", "64", "--pose-target-len", "512",
                       "--rope-scaling-type", "linear", "--train-iters", "3",
                       "--global-batch-size", "2", "--data-cache-path", f"{root}/cache"])
    trainer = setup(args)
    positions = np.stack([trainer.dataset[i]["position_ids"] for i in range(6)])
    return [h["loss"] for h in train(trainer)], positions


def test_train_on_indexed_corpus(tmp_path):
    losses, positions = run_distributed(_job, 1, str(tmp_path))[0]
    assert len(losses) == 3 and all(abs(x - np.log(512)) < 0.3 for x in losses)
    assert positions.shape == (6, 64) and positions.max() < 512
    assert positions.max() >= 64  # PoSE skips, not 0..63
    assert (positions[:, 0] == 0).all()  # the reference keeps BOS at position 0
