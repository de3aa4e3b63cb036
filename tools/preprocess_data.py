"""Tokenize a JSONL corpus (plain, .gz, .zst) into Megatron-Core .bin/.idx files.

The code lives in ``pose_megatron.data.preprocess`` (so worker processes can import it and the
bundled corpus can reuse it); run ``python tools/preprocess_data.py --help`` for the flags.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from pose_megatron.data.preprocess import main  # noqa: E402

if __name__ == "__main__":
    from pose_megatron import errors

    errors.run(main)
