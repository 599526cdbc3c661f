"""One run at a time per output folder: an exclusive lock that ``score`` / ``eval`` / ``embed`` hold while they
read, compute and publish a folder's state.

Two runs writing one folder at once would append rows of two run keys to one table under one
``settings.json`` (the second run starts before the first has recorded anything to refuse) or publish over
each other's appends. The lock is an advisory ``flock`` on ``FOLDER/.pisces.lock`` (a hidden file that stays;
it holds the pid of the run holding it). The kernel drops it when the process ends, however it ends, so a
killed run never leaves the folder locked. Under ``torchrun`` rank 0 holds it for the whole job. Where
``flock`` does not exist (not POSIX), or the lock file cannot be created (a read-only folder, whose re-run
writes nothing), no lock is taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import IO

from pisces_cli.errors import UsageError

LOCK_FILE = ".pisces.lock"


class FolderLock:
    """The lock of one output folder, held by this process until :meth:`release` (or the end of a ``with``)."""

    def __init__(self, handle: IO[str] | None = None) -> None:
        self._handle = handle

    @classmethod
    def acquire(cls, folder: Path) -> FolderLock:
        """Take the lock of ``folder`` (created if missing) without waiting.

        Raises:
            UsageError: another run holds it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            return cls()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held past this call
        except OSError:  # a folder this process cannot write: nothing it does there needs guarding
            return cls()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(
                f"{folder} is being written by another pisces run (pid {holder}); two runs in one folder would "
                "mix their rows. Wait for it to finish, or choose another folder with --output DIR."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        """Drop the lock (closing the file releases it); safe to call twice."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
