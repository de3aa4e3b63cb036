#!/usr/bin/env python
"""Compare the plugin's Megatron-LM dest names and defaults with a real Megatron-LM parser.

Run with a Megatron-LM checkout first on PYTHONPATH (tools/check_megatron_lm.sh does): builds the
parser of that checkout's ``megatron/training/arguments.py`` and checks, for every flag the
converters write or read (``MODEL_FLAGS``), that ``megatron_lm_dest`` and ``megatron_lm_default``
give the parser's ``dest`` and ``default``. Exit 1 naming each flag that differs.
"""

import argparse
import sys


def main() -> int:
    from megatron.training.arguments import add_megatron_arguments

    from pose_megatron.convert.megatron_lm_args import (MODEL_FLAGS, megatron_lm_default,
                                                        megatron_lm_dest)

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    actions = {s: a for a in parser._actions for s in a.option_strings}
    bad = []
    for flag in MODEL_FLAGS:
        action = actions.get(flag)
        if action is None:
            bad.append(f"{flag}: not a flag of this Megatron-LM")
            continue
        ours = (megatron_lm_dest(flag), megatron_lm_default(flag))
        if ours != (action.dest, action.default):
            bad.append(f"{flag}: Megatron-LM dest {action.dest!r} default {action.default!r}, "
                       f"ours {ours[0]!r} {ours[1]!r}")
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    if not bad:
        print(f"dest names and defaults of {len(MODEL_FLAGS)} model flags agree with "
              f"Megatron-LM's parser")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
