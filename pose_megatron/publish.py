"""Publishing outputs so that nothing half-written is visible and nothing earlier is lost.

Every tool that writes a directory or a file other tools read (the converters' ``--out``,
training's ``--save``) goes through here:

- the output is built in a temporary sibling ``.NAME.tmp-PID-XXXX`` and renamed into place only
  once complete and flushed to disk, so a killed writer leaves the previous output as it was;
- an output may not be, contain or lie inside one of the writer's inputs (``--force`` would
  otherwise replace the input it is reading);
- one writer per output: an ``fcntl`` lock on ``.NAME.lock`` beside it, so a second writer
  refuses instead of interleaving;
- each temporary records its writer (host and pid), so the next writer of the same output
  removes the temporaries of writers that are gone, and only those;
- files and directories get the modes the umask gives (not ``tempfile``'s private 0700).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

WRITER_RECORD = ".writer.json"


class OutputError(OSError):
    """An output that cannot be published as asked; the message names the flag and path."""


class OutputExistsError(OutputError, FileExistsError):
    """``--out`` holds something that may not be replaced."""


# ----------------------------------------------------------------------------- durability


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Flush every file and directory under ``root`` to disk.

    The rename that publishes an output must not reach the disk before its contents do, or a
    crash leaves a complete-looking output of empty files.
    """
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)


@contextmanager
def atomic_file(path: str, binary: bool = False) -> Iterator:
    """Write the file ``path`` through the yielded file object; it replaces ``path`` atomically
    and durably when the block ends, and a failed or killed writer leaves the old file (its
    temporary, named by ``temp_file_prefix``, is removed or later cleaned by ``clean_stale_files``).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    clean_stale_files(path)
    tmp = f"{temp_file_prefix(path)}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def move_into_place(src: str, dst: str) -> None:
    """Publish the finished ``src`` (a file or a directory beside ``dst``) as ``dst`` in one
    rename, durably. A file ``dst`` is replaced; a directory ``dst`` must be gone already."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def copy_tree(src: str, dst: str) -> None:
    """Copy the directory ``src`` to a new ``dst``: all of it appears at once or none of it."""
    tmp = f"{temp_file_prefix(dst)}.{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp)
        fsync_tree(tmp)
        move_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str, text: str) -> None:
    """Replace the file ``path`` by ``text`` atomically and durably."""
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: str, data, *, sort_keys: bool = True) -> str:
    """Replace the file ``path`` by ``data`` as indented JSON, atomically; returns ``path``."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
    return path


# ----------------------------------------------------------------------------- a full disk


# Below this much free space after a failed write, the failure is taken for a full disk: torch's
# zip writer (torch.save, torch_dist shards) reports ENOSPC as "unexpected pos N vs M", without
# the errno.
_FULL_DISK_BYTES = 16 << 20


def disk_full(path: str, err: BaseException) -> bool:
    """Whether ``err``, raised while writing under ``path``, came from a full filesystem.
    Ask before removing the partial output: that frees the space this looks at."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    if "No space left on device" in str(err):
        return True
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_DISK_BYTES


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (the disk a full-disk error names)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


# ----------------------------------------------------------------------------- inputs vs output


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_output_apart(out: str, inputs: Dict[str, Optional[str]], out_flag: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` ({flag: path})."""
    real_out = os.path.realpath(out)
    for flag, path in inputs.items():
        if not path:
            continue
        real_in = os.path.realpath(path)
        if real_in == real_out:
            raise OutputError(f"{out_flag} {out} is the same directory as {flag} {path}: "
                              f"write the output elsewhere")
        if _inside(real_in, real_out):
            raise OutputError(f"{out_flag} {out} contains {flag} {path}: replacing it would "
                              f"delete the input; write the output elsewhere")
        if _inside(real_out, real_in):
            raise OutputError(f"{out_flag} {out} lies inside {flag} {path}: write the output "
                              f"outside the input")


# ----------------------------------------------------------------------------- one writer


def _lock_path(out: str) -> str:
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock")


class OutputLock:
    """Exclusive lock on an output (``.NAME.lock`` beside it), held until ``release()``.

    The lock file exists only while held: the holder removes it before unlocking, and a writer
    that locked a file someone removed meanwhile (its inode is no longer the path's) retries on
    the new one, so removing it cannot let two writers in.
    """

    def __init__(self, out: str, flag: str = "--out"):
        self.out, self.flag = os.path.abspath(out), flag
        self.path = _lock_path(self.out)
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        while True:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise OutputError(f"{self.flag} {self.out}: cannot create the lock file "
                                  f"{self.path}: {err.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = ""
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                except OSError:
                    pass
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"{self.flag} {self.out} is being written by another process"
                        f"{' (' + holder + ')' if holder else ''}; wait for it or choose "
                        f"another {self.flag}") from None
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed it as we opened it: lock the current file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self):
        self.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ----------------------------------------------------------------------------- stale temporaries


def _record_writer(directory: str) -> None:
    with open(os.path.join(directory, WRITER_RECORD), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)


def _writer_gone(directory: str) -> bool:
    """True when ``directory``'s recorded writer ran on this host and no longer exists."""
    try:
        with open(os.path.join(directory, WRITER_RECORD)) as f:
            record = json.load(f)
        host, pid = record["host"], int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours, or not yet recorded: leave it
    if host != socket.gethostname():
        return False  # cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    return False


def clean_stale(out: str) -> list:
    """Remove the temporaries of dead writers of ``out``; returns what was removed.

    Call with the output's lock held. A writer killed between moving the previous output aside
    and renaming the new one into place leaves no ``out`` but an ``.old-`` directory holding the
    previous output: that one is put back, not removed.
    """
    out = os.path.abspath(out)
    parent, name = os.path.dirname(out), os.path.basename(out)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.old-") and os.path.isdir(path) and _writer_gone(path):
            kept = os.path.join(path, "previous")
            if os.path.exists(kept) and not os.path.lexists(out):
                os.replace(kept, out)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif entry.startswith(f".{name}.tmp-") and os.path.isdir(path) and _writer_gone(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_temp_dir(out: str, kind: str = "tmp") -> str:
    """A fresh sibling ``.NAME.KIND-PID-XXXX`` of ``out``, mode from the umask, writer recorded."""
    out = os.path.abspath(out)
    path = os.path.join(os.path.dirname(out),
                        f".{os.path.basename(out)}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)  # 0777 & ~umask, like any directory the user creates
    _record_writer(path)
    return path


# ----------------------------------------------------------------------------- temporary files


def _host_tag() -> str:
    import hashlib

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_file_prefix(path: str) -> str:
    """``PATH.tmp-PID-HOST``: where a writer builds files it renames to ``PATH.*`` when done;
    the name says which writer, so ``clean_stale_files`` can tell a dead one's leftovers."""
    return f"{path}.tmp-{os.getpid()}-{_host_tag()}"


def clean_stale_files(path: str) -> list:
    """Remove ``PATH.tmp-PID-HOST*`` files whose writer ran on this host and is gone."""
    directory, base = os.path.split(os.path.abspath(path))
    removed = []
    marker = f"{base}.tmp-"
    for entry in os.listdir(directory or "."):
        if not entry.startswith(marker):
            continue
        tag = entry[len(marker):].split(".", 1)[0]
        pid, _, host = tag.partition("-")
        if not pid.isdigit() or host != _host_tag():
            continue  # not named by temp_file_prefix, or another host's
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        full = os.path.join(directory, entry)
        if os.path.isfile(full):
            os.unlink(full)
            removed.append(full)
    return removed


# ----------------------------------------------------------------------------- publishing


def check_replaceable(out: str, force: bool, flag: str = "--out") -> None:
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise OutputExistsError(f"{flag} {out} exists and is not a directory")
        if os.listdir(out) and not force:
            raise OutputExistsError(f"{flag} {out} is not empty; pass --force to replace it")


@contextmanager
def publish_dir(out: str, *, force: bool = False, inputs: Optional[Dict[str, str]] = None,
                flag: str = "--out") -> Iterator[str]:
    """Yield a temporary directory that becomes ``out`` only if the body succeeds.

    ``inputs`` ({flag: path}) are the directories the body reads; ``out`` may not overlap them.
    A non-empty ``out`` is replaced only with ``force``, and only once the new one is complete.
    """
    out = os.path.abspath(out)
    check_output_apart(out, inputs or {}, flag)
    check_replaceable(out, force, flag)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{flag} {out}: cannot create {parent}: {err.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{flag} {out}: {parent} is not writable")
    with OutputLock(out, flag):
        clean_stale(out)
        check_replaceable(out, force, flag)  # another writer may have published meanwhile
        try:
            tmp = make_temp_dir(out)
        except OSError as err:
            raise OutputError(f"{flag} {out}: cannot write in {parent}: {err.strerror}") from None
        try:
            yield tmp
            os.unlink(os.path.join(tmp, WRITER_RECORD))
            fsync_tree(tmp)
        except BaseException as err:
            # not only Exception: torch's CheckpointException derives from BaseException
            full = (not isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit))
                    and disk_full(parent, err))
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                kept = "; the previous output is kept" if os.path.lexists(out) else ""
                raise OutputError(
                    f"{flag} {out}: no space left on device (the filesystem at "
                    f"{mount_point(parent)}) while writing it; the partial output is removed"
                    f"{kept}: free space or pass another {flag}") from err
            raise
        if os.path.lexists(out):
            # Keep the previous output until the new one is complete, then swap. Killed between
            # the two renames, the next writer's clean_stale puts the previous one back.
            old = make_temp_dir(out, "old")
            os.replace(out, os.path.join(old, "previous"))
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_dir(parent)
