"""One training run at a time per workspace: an advisory lock on `adapters/.train.lock`.

Two apps (or an app and a CLI) may share a workspace: chatting and curating work side by side
because the store is SQLite in WAL mode. Training does not: two runs would compete for the same
GPU memory, and one run's clean-up of interrupted staging folders must not race another run's
publication. So `sftchat train` holds an exclusive `flock` for its whole life, and a second run
fails at once with a message naming the run that holds it.

`flock` is released by the kernel when the holding process dies, even by kill -9, so a crash
never leaves a stale lock behind (a file left by a killed run is simply locked again). The
file's content (pid, adapter name, start time) is only there to make the refusal useful; the
lock itself is the `flock`. A run that ends normally removes the file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sftchat.errors import SftchatError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not serialised there.
    fcntl = None

LOCK_FILE = ".train.lock"


class WorkspaceBusyError(SftchatError, RuntimeError):
    """Another training run holds this workspace (the message names it and what to do)."""


def _describe_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    parts = []
    if holder.get("name"):
        parts.append(f"adapter {holder['name']}")
    if holder.get("pid"):
        parts.append(f"pid {holder['pid']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return f" ({', '.join(parts)})" if parts else ""


class HeldLock:
    """The lock while held; `record(name)` tells a refused run which adapter is training."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def record(self, name: str) -> None:
        if self._fd is None:
            return
        holder = {"pid": os.getpid(), "name": name,
                  "started": dt.datetime.now().strftime("%H:%M:%S")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode("utf-8"), 0)


@contextmanager
def training_lock(adapters_dir: Path) -> Iterator[HeldLock]:
    """Hold the workspace's training lock, or raise `WorkspaceBusyError` at once."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    lock_path = adapters_dir / LOCK_FILE
    if fcntl is None:
        yield HeldLock(None)
        return
    fd = _acquire(lock_path)
    try:
        yield HeldLock(fd)
    finally:
        # Removed while still locked, so a run that opened the old file before the removal
        # notices (in `_acquire`) that it locked a file nobody else will ever see.
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock_path: Path) -> int:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkspaceBusyError(
                f"another training run is using this workspace{_describe_holder(lock_path)}; "
                "wait for it to finish, or stop it (ctrl+b in the app or ctrl+c in the terminal "
                "that started it)"
            ) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev,
                                                                         opened.st_ino):
            return fd
        os.close(fd)  # the previous holder removed the file between our open and lock
