#!/usr/bin/env python
"""The pose-eval-ruler command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/eval_ruler.py.
"""

from pose_megatron.commands.eval_ruler import run

if __name__ == "__main__":
    run()
