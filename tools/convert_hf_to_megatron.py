#!/usr/bin/env python
"""The pose-convert-hf-to-megatron command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/convert_hf_to_megatron.py.
"""

from pose_megatron.commands.convert_hf_to_megatron import run

if __name__ == "__main__":
    run()
