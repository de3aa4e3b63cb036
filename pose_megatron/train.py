"""PoSE training entry: ``python -m pose_megatron.train --help`` (or ``torchrun ... -m``).

``main(argv)`` runs a whole training job and returns rank 0's per-step metrics, so scripts (the
README's one-command demo, tests) can call it in-process.
"""

from __future__ import annotations

import sys

from pose_megatron.training.arguments import parse_args


def main(argv=None) -> list:
    args = parse_args(argv)
    from pose_megatron import parallel
    from pose_megatron.training.loop import setup, train

    trainer = setup(args)
    try:
        return train(trainer)
    finally:
        parallel.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
