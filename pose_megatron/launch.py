"""torchrun, ending a failed job with one line instead of torchrun's report and traceback.

    python -m pose_megatron.launch [torchrun flags] -m pose_megatron.train [training flags]

The flags are torchrun's own (``torch.distributed.run``), passed through unchanged. When a rank
fails, torchrun raises ``ChildFailedError`` and prints its traceback and a failure report after
the rank's own ``error:`` line; this launcher prints at most one line instead:
- rank 0 failed with an expected error: it already printed the line, nothing is added;
- another rank failed with one (only rank 0 prints): its line, from torchrun's error file;
- a rank crashed or was killed without a line: which rank, and its exit status or signal.
The exit status is the failed rank's (2 for expected errors). ``--debug`` (also passed on to the
script) or ``POSE_MEGATRON_DEBUG=1`` keeps torchrun's own output.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from pose_megatron import errors


def _failure_line(err) -> tuple:
    """(line or None, exit status) for torchrun's ChildFailedError."""
    rank, failure = err.get_first_failure()
    data = failure.error_file_data or {}
    recorded = data.get("message") if isinstance(data.get("message"), str) else None
    if recorded and recorded != "<NONE>":
        return (None if rank == 0 else f"error: rank {rank}: {recorded}"), errors.EXIT_ERROR
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
        status = 128 - failure.exitcode
    else:
        how = f"exited with status {failure.exitcode}"
        status = failure.exitcode or 1
    return (f"error: {err.name}: rank {rank} (local rank {failure.local_rank}, pid "
            f"{failure.pid}) {how} without an error line (rerun with --debug for torchrun's "
            f"report)"), status


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = errors.debug_requested(argv)
    if not debug:
        # the agent's "Sending process N closing signal SIGTERM" / "failed (exitcode: 2)" lines
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = torchrun.parse_args(argv)
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        if debug:
            raise
        line, status = _failure_line(err)
        if line:
            print(line, file=sys.stderr, flush=True)
        return status
    return 0


if __name__ == "__main__":
    errors.run(main)
