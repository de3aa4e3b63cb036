#!/usr/bin/env python
"""The pose-make-tiny-llama command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/make_tiny_llama.py.
"""

from pose_megatron.commands.make_tiny_llama import run

if __name__ == "__main__":
    run()
