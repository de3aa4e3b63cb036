"""Each --rope-scaling-type with its own parameters, away from their defaults where it has any.

One table for the two places that train every type: tests/test_rope_types_cli.py (through
``python -m pose_megatron.train``) and tools/check_megatron_lm.sh (through Megatron-LM's patched
``pretrain_gpt.py``). The LongRoPE lists have 8 entries: head dim 16 (hidden 64, 4 heads) / 2.

  python -m tests.rope_type_flags TYPE   prints TYPE's flags, one per line
"""

import sys

_LONGROPE = ["--rope-short-factor", *map(str, [1, 1, 1.5, 2, 2.5, 3, 3.5, 4]),
             "--rope-long-factor", *map(str, [1, 1.2, 1.6, 2, 2.6, 3.2, 3.6, 4])]
ROPE_FLAGS = {
    "none": [],
    "linear": [],
    "ntk": [],
    "dynamic": [],
    "yarn": ["--rope-beta-fast", "16", "--rope-beta-slow", "2", "--rope-mscale", "0.9",
             "--rope-mscale-all-dim", "0.8"],
    "yarn_pose": ["--rope-beta-fast", "24"],
    "llama3": ["--rope-low-freq-factor", "2", "--rope-high-freq-factor", "8"],
    "longrope": _LONGROPE,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ROPE_FLAGS:
        sys.exit(f"usage: python -m tests.rope_type_flags {{{','.join(ROPE_FLAGS)}}}")
    sys.stdout.write("".join(flag + "\n" for flag in ROPE_FLAGS[sys.argv[1]]))
