"""What keeps a run's output folder whole against the world outside the process: one run per folder,
and a stop on SIGINT or SIGTERM at a point where everything on disk is consistent.

- `hold_folder`: an exclusive lock (flock) on FOLDER/.lock for the whole run, which holds the
  holder's pid. A second run on the same folder is refused at once with `FolderInUse`, naming the
  folder and that pid: two runs appending to one metrics.jsonl, or generating the same predictions,
  would each spoil the other's files. The kernel drops the lock when its process dies, however it
  dies (kill -9 included), so a crashed run never leaves the folder locked. A `.lock` that is not a
  regular file (a directory, a symbolic link, a pipe) is refused, never followed or truncated; a
  full disk is "disk full: cannot write FOLDER/.lock" (a WriteError), as for every file a run writes.
- `stop_signals`: while inside, the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption,
  `kill`) does not kill the process; it is recorded, announced on stderr, and the loop reads it with
  `stop_requested` at its next safe point (the end of a training step, an evaluation batch), saves or
  flushes, and raises `Interrupted`. A second signal stops at once (KeyboardInterrupt).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from src.errors import UserError
from src.files import write_failure, writing

LOCK_FILE = ".lock"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class FolderInUse(RuntimeError, UserError):
    """Another live run holds the output folder; the message names the folder and its pid."""


class Interrupted(Exception):
    """A run stopped at a safe point on a signal; the message says what is kept and how to go on."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's status for a process ended by this signal: 130, 143


@contextlib.contextmanager
def hold_folder(folder: Path, flag: str = "--output-dir") -> Iterator[None]:
    """Hold FOLDER/.lock exclusively while inside (creating FOLDER); FolderInUse if another process holds it.

    On the way out the lock file is removed, and so are the folders this call created if the run
    left them empty (a run refused by a later check leaves nothing behind).
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.absolute().parents) if not p.exists()]
    path = folder / LOCK_FILE
    with writing(path):  # a full disk: "disk full: cannot write FOLDER/.lock", as for any result file
        folder.mkdir(parents=True, exist_ok=True)
    descriptor = _lock(path, folder, flag)
    try:
        with writing(path):
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: whoever opens the path next gets a fresh file
        os.close(descriptor)
        for directory in created:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty


def _lock(path: Path, folder: Path, flag: str) -> int:
    """A descriptor of `path` holding its exclusive lock.

    The lock file is removed on release, so a lock just won may be on a file already unlinked (its
    holder released it between our open and our flock): then open the path again.
    """
    while True:
        try:  # never through a symbolic link: truncating the lock would truncate whatever it points at
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ELOOP):
                raise write_failure(path, error) from error  # a full disk, a folder we may not write
            raise _not_a_lock_file(path, folder, flag) from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a pipe, a socket, a device
            os.close(descriptor)
            raise _not_a_lock_file(path, folder, flag)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(descriptor)
                raise
            holder = _holder(descriptor)
            os.close(descriptor)
            raise FolderInUse(f"{flag} {folder} is in use by another run ({holder}); wait for it to end, or choose "
                              f"another {flag}") from None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _not_a_lock_file(path: Path, folder: Path, flag: str) -> UserError:
    kind = "a symbolic link" if path.is_symlink() else "a directory" if path.is_dir() else "a pipe, socket or device"
    return UserError(f"{flag} {folder}: {path} is {kind}, not a lock file; remove it (a run creates its own lock "
                     "file there)")


def _holder(descriptor: int) -> str:
    """"pid N" from the lock file (the holder writes it right after locking: look twice)."""
    for _ in range(2):
        text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        if text:
            return f"pid {text}"
        time.sleep(0.05)
    return "pid unknown"


_received: list[int] = []  # the signals received inside `stop_signals`


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Defer SIGINT and SIGTERM to the loop's next safe point while inside (see the module docstring).

    Outside the main thread (where Python delivers signals) it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handle(number: int, frame) -> None:
        if _received:
            raise KeyboardInterrupt  # the second signal: stop now
        _received.append(number)
        print(f"\n{signal.Signals(number).name} received: stopping at the next safe point, keeping everything done "
              "so far (send it again to stop at once)", file=sys.stderr, flush=True)

    for number in STOP_SIGNALS:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _received.clear()


def stop_requested() -> int | None:
    """The signal that asked the run to stop (inside `stop_signals`), or None."""
    return _received[0] if _received else None


def signal_name(number: int) -> str:
    return signal.Signals(number).name
