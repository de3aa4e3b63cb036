"""Tokenize a JSONL corpus (plain, .gz, .zst) into Megatron-Core .bin/.idx files.

The code lives in ``pose_megatron.data.preprocess`` (so worker processes can import it and the
bundled corpus can reuse it); run ``python tools/preprocess_data.py --help`` for the flags.
"""


from pose_megatron import errors
from pose_megatron.data.preprocess import main


# what the pose-* console script, python -m and tools/ start
run = errors.command(main)


if __name__ == "__main__":
    run()
