"""Telling whether a file or a process is still the one a writer started with."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeloom.db import MEMORY
from pipeloom.errors import DatabaseError

__all__ = ["FileIdentity", "pid_alive"]

log = logging.getLogger("pipeloom.writer")


class FileIdentity:
    """The database file (and its WAL) a writer opened, by device and inode.

    Deleting or replacing the file under a running writer does not stop SQLite: it keeps
    writing to the open, now unreachable, inode. Comparing the path's identity with the one
    at open after each commit turns that silent loss into an error.
    """

    __slots__ = ("_wal", "db", "label", "path", "wal_path")

    def __init__(self, label: str, path: str, db: tuple[int, int], wal_path: str | None) -> None:
        self.label = label
        self.path = path
        self.db = db
        self.wal_path = wal_path
        self._wal: tuple[int, int] | None = None

    @classmethod
    def of(cls, db_path: str | Path, *, wal: bool) -> FileIdentity | None:
        """Record the identity of ``db_path`` now (None for ``:memory:`` or no file)."""
        label = str(db_path)
        if label == MEMORY or not label:
            return None
        path = os.path.abspath(label)  # a worker's os.chdir must not move the path
        try:
            st = os.stat(path)
        except OSError as exc:
            log.warning("%s: cannot stat the database (%s); not watching it for removal", path, exc)
            return None
        identity = cls(label, path, (st.st_dev, st.st_ino), path + "-wal" if wal else None)
        identity.check()  # records the WAL's identity when it exists already
        return identity

    def check(self) -> None:
        """Raise if the path (or its WAL) is no longer the file opened.

        Raises:
            DatabaseError: it was deleted or replaced.
        """
        tail = (
            "while the run was writing to it; the rows of this run are in the file that was "
            "removed, which nothing reading the path will see. Leave the database in place "
            "while a run writes to it"
        )
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise DatabaseError(f"{self.label} was deleted (or moved) {tail}") from None
        except OSError as exc:
            log.debug("%s: cannot stat the database (%s); not checked this time", self.path, exc)
            return
        if (st.st_dev, st.st_ino) != self.db:
            raise DatabaseError(f"{self.label} was replaced by another file {tail}")
        if self.wal_path is None:
            return
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            if self._wal is not None:
                raise DatabaseError(
                    f"{self.label}-wal (the write-ahead log of {self.label}) was deleted {tail}"
                ) from None
            return
        except OSError as exc:
            log.debug("%s: cannot stat the WAL (%s); not checked this time", self.wal_path, exc)
            return
        wal = (st.st_dev, st.st_ino)
        if self._wal is None:
            self._wal = wal
        elif wal != self._wal:
            raise DatabaseError(
                f"{self.label}-wal (the write-ahead log of {self.label}) was replaced {tail}"
            )


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
