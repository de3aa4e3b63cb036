#!/usr/bin/env python
"""The pose-eval-passkey command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/eval_passkey.py.
"""

from pose_megatron.commands.eval_passkey import run

if __name__ == "__main__":
    run()
