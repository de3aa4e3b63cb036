#!/usr/bin/env python
"""The pose-eval-ppl command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/eval_ppl.py.
"""

from pose_megatron.commands.eval_ppl import run

if __name__ == "__main__":
    run()
