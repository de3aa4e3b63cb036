#!/usr/bin/env python
"""The pose-preprocess-data command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/preprocess_data.py.
"""

from pose_megatron.commands.preprocess_data import run

if __name__ == "__main__":
    run()
