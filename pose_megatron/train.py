"""PoSE training entry: ``python -m pose_megatron.train --help`` (or ``torchrun ... -m``).

``main(argv)`` runs a whole training job and returns rank 0's per-step metrics, so scripts (the
README's one-command demo, tests) can call it in-process; its errors are exceptions. Run as a
command, expected failures end in one ``error:`` line (``pose_megatron.errors``).
"""

from __future__ import annotations

from pose_megatron.training.arguments import parse_args


def main(argv=None) -> list:
    args = parse_args(argv)
    from pose_megatron import parallel
    from pose_megatron.training.loop import setup, train

    try:
        trainer = setup(args)
        try:
            return train(trainer)
        finally:
            if trainer.save_lock is not None:
                trainer.save_lock.release()
    finally:
        parallel.destroy()


if __name__ == "__main__":
    from pose_megatron import errors

    errors.run(main)
