"""PoSE training as the pose-train command; ``python -m pose_megatron.train`` is the same.

The entry itself is ``pose_megatron.train.main`` (returns rank 0's per-step metrics; errors are
exceptions); this module gives it the command form.
"""

from typing import NoReturn

from pose_megatron import errors
from pose_megatron.train import main


def run(argv=None) -> NoReturn:
    """The command: console script and ``python -m`` run ``main`` under the error convention of
    pose_megatron.errors, then exit."""
    errors.run(main, argv)


if __name__ == "__main__":
    run()
