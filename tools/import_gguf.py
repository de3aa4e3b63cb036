#!/usr/bin/env python
"""The pose-import-gguf command as a script (same flags, output and exit status).

The tool is pose_megatron/commands/import_gguf.py.
"""

from pose_megatron.commands.import_gguf import run

if __name__ == "__main__":
    run()
