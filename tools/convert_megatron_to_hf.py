#!/usr/bin/env python
"""The pose-convert-megatron-to-hf command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/convert_megatron_to_hf.py.
"""

from pose_megatron.commands.convert_megatron_to_hf import run

if __name__ == "__main__":
    run()
