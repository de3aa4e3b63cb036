"""Tokenize a JSONL corpus (plain, .gz, .zst) into Megatron-Core .bin/.idx files.

The code lives in ``pose_megatron.data.preprocess`` (so worker processes can import it and the
bundled corpus can reuse it); run ``python tools/preprocess_data.py --help`` for the flags.
"""

from typing import NoReturn

from pose_megatron import errors
from pose_megatron.data.preprocess import main


def run(argv=None) -> NoReturn:
    """The command: console script, ``python -m`` and tools/preprocess_data.py run
    ``main`` under the error convention of pose_megatron.errors, then exit."""
    errors.run(main, argv)


if __name__ == "__main__":
    run()
