"""The one error convention of every command-line tool.

An expected failure (a bad file, a bad flag, a full disk, a refused resume) ends the tool with
one line ``error: ...`` on stderr that names the file or flag, and exit status 2; no traceback.
``--debug`` (every tool's parser has it) or ``POSE_MEGATRON_DEBUG=1`` shows the full traceback
instead. Under torchrun only rank 0 prints; every rank exits non-zero, and each writes its line
to torchrun's error file (``TORCHELASTIC_ERROR_FILE``), so torchrun's failure report names the
error and ``python -m pose_megatron.launch`` can print the line of a failed rank other than 0.

Usage in a tool::

    def build_parser():
        p = argparse.ArgumentParser(...)
        errors.add_debug_argument(p)
        ...

    if __name__ == "__main__":
        errors.run(main)   # main(argv) -> int | None; raises on failure
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sys
import time
from typing import Callable, Optional, Sequence

from pose_megatron.megatron_compat import CHECKPOINT_WRITER_LOGGER
from pose_megatron.startup_warnings import filter_startup_warnings

DEBUG_ENV = "POSE_MEGATRON_DEBUG"
EXIT_ERROR = 2
# Set by torchrun for each worker; the agent reads {"message", "timestamp"} back when it fails.
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


class UsageError(SystemExit):
    """The package's one error type for an expected failure; the message names the file or flag.

    A ``SystemExit`` whose code is the ``error: ...`` line, so the line is all a user sees both
    under ``run`` and where nothing of ours catches it (the helpers running inside Megatron-LM's
    ``pretrain_gpt.py``: Python prints a string exit code and exits 1, no traceback).
    """

    def __init__(self, message: str):
        super().__init__(message if message.startswith("error: ") else f"error: {message}")

    def __str__(self) -> str:
        return self.code[len("error: "):]


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error instead of one line (also: "
                             f"{DEBUG_ENV}=1)")
    return parser


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _expected_types() -> tuple:
    types = [UsageError, OSError, ValueError, KeyError, EOFError, MemoryError,
             json.JSONDecodeError, UnicodeDecodeError]
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:
        pass
    core = sys.modules.get("megatron.core.dist_checkpointing.core")  # raised only once imported
    if core is not None and hasattr(core, "CheckpointingException"):
        types.append(core.CheckpointingException)
    return tuple(types)


def error_message(err: BaseException) -> str:
    """The one line for ``err`` (without the ``error:`` prefix)."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        where = err.filename or ""
        text = f"{where}: {err.strerror}" if where else err.strerror
        if err.errno == errno.ENOSPC:
            text += " (the disk is full: free space or write elsewhere; the earlier output, " \
                    "if any, is kept)"
        return text
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err) or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # e.g. torch's CheckpointException carries each rank's traceback
        text = next((line for line in reversed(lines)
                     if re.match(r"^[\w.]+(Error|Exception): ", line)), lines[0])
    if not isinstance(err, _expected_types()):
        text = f"unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"
    return text


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # noqa: BLE001
        pass
    return int(os.environ.get("RANK", "0") or 0)


def _report(line: str) -> None:
    """Rank 0 prints the error line; under torchrun every rank also records it for the agent."""
    if _rank() == 0:
        print(line, file=sys.stderr, flush=True)
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "w") as f:
                json.dump({"message": line[len("error: "):], "timestamp": int(time.time())}, f)
        except OSError:
            pass  # the agent then reports the exit status alone


@contextlib.contextmanager
def _one_line_usage_errors():
    """argparse's own errors (a missing or malformed flag) as one line, not usage + message."""
    original = argparse.ArgumentParser.error

    def error(parser, message):
        raise UsageError(f"{message} (see {parser.prog} --help)")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run(main: Callable, argv: Optional[Sequence[str]] = None, *, exit: bool = True):
    """Run ``main(argv)`` under the convention above; exits with its status unless ``exit`` is
    False (then the status is returned)."""
    filter_startup_warnings()  # before the tool's first Megatron-Core import emits them
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if not debug:
        # Megatron-Core's checkpoint writer logs a failed write before raising it; the raised
        # error becomes the one line below (megatron_compat says more)
        logging.getLogger(CHECKPOINT_WRITER_LOGGER).setLevel(logging.CRITICAL)
    code = 0
    try:
        with _one_line_usage_errors():
            result = main(argv)
        code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        if isinstance(stop.code, str):  # UsageError, or argparse's one line
            text = stop.code if stop.code.startswith("error:") else f"error: {stop.code}"
            _report(text)
            code = EXIT_ERROR
        elif not exit:
            raise  # --help and the like: as argparse does
        else:
            code = stop.code or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr, flush=True)
        code = 130
    except BaseException as err:  # noqa: BLE001 - the point: one line instead of a traceback
        if debug:
            raise
        _report(f"error: {error_message(err)}")
        code = EXIT_ERROR
    if not exit:
        return code
    if code and _rank() != 0:
        # torchrun ends the other ranks as soon as one exits: give rank 0 time to print the line
        time.sleep(3)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def command(main: Callable) -> Callable:
    """``main`` as a command: ``start(argv=None)`` runs it under this convention, then exits. What
    a ``pose-*`` console script, ``python -m pose_megatron.commands.X`` and ``tools/X.py`` start."""

    def start(argv: Optional[Sequence[str]] = None):
        run(main, argv)

    start.__doc__ = (f"The command: ``{main.__module__}.{main.__name__}`` under "
                     "pose_megatron.errors.")
    return start
