"""PoSE training as the pose-train command; ``python -m pose_megatron.train`` is the same.

The entry itself is ``pose_megatron.train.main`` (returns rank 0's per-step metrics; errors are
exceptions); this module gives it the command form.
"""


from pose_megatron import errors
from pose_megatron.train import main


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
