"""The state dir: whose it is, how its files are made, and what a storage error means.

No thread of its own: the daemon's start checks the directory (main
thread), the outbox opens its files through here (core thread).

- The state dir must belong to the daemon's user and be writable by no one
  else (systemd's ``StateDirectoryMode=0700`` gives exactly that): anything
  else is refused at start, with exit status 2. A directory of ours that
  others can read is narrowed to 0700; a missing one is created 0700.
- Every file the outbox keeps there is created 0600 without following a
  symlink (``O_NOFOLLOW``), and SQLite's files are checked before SQLite
  opens them. A file found where one should be that is a symlink, not a
  regular file, not ours, or linked elsewhere too, is never followed: it is
  moved aside (renamed ``<name>.refused-<time>``) and reported.
- A storage error is one of two faults: ``disk_full`` (ENOSPC, EDQUOT,
  SQLITE_FULL) or ``storage_failed`` (EROFS, EIO, SQLITE_IOERR,
  SQLITE_READONLY...). SQLite reports some writes refused for want of space
  as SQLITE_IOERR: an SQLite error on a writable file system with less than
  ``FULL_BELOW`` bytes free is ``disk_full``. :class:`StorageState` keeps which files fail and
  reports each fault once, and its clearing once no file fails any more.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DISK_FULL = "disk_full"
STORAGE_FAILED = "storage_failed"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
FULL_BELOW = 256 * 1024  # free bytes under which an SQLite I/O error is the card being full


def dir_problem(path: Path) -> str | None:
    """None when ``path`` is fit to be the state dir (created 0700 if missing); else why not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = os.stat(path)
    except OSError as exc:
        return f"state_dir {path}: cannot create or read it: {exc.strerror or exc}"
    if not stat.S_ISDIR(found.st_mode):
        return f"state_dir {path}: not a directory"
    if found.st_uid != os.geteuid():
        return f"state_dir {path} belongs to uid {found.st_uid}, not to this user (uid {os.geteuid()})"
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o022:
        return (f"state_dir {path} is writable by {'others' if mode & 0o002 else 'its group'} ({mode:04o}): "
                "it must be the daemon's own (chmod 0700)")
    if mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:  # a read-only card: a storage fault later, not a reason to refuse
            log.warning("state_dir %s: cannot narrow it to 0700: %s", path, exc.strerror or exc)
    return None


def refuse_foreign(path: Path, *, clock: Callable[[], float] = time.time) -> str | None:
    """Move aside whatever sits at ``path`` that is not a plain file of ours; return what was done."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path.name}: cannot inspect it: {exc.strerror or exc}"
    if stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid() and found.st_nlink == 1:
        return None
    what = ("a symlink" if stat.S_ISLNK(found.st_mode) else "not a regular file" if not stat.S_ISREG(found.st_mode)
            else "not ours" if found.st_uid != os.geteuid() else "linked elsewhere too")
    aside = path.with_name(f"{path.name}.refused-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(clock()))}")
    os.rename(path, aside)  # renames the link itself: never followed
    log.error("state file %s was %s: moved aside to %s", path, what, aside.name)
    return f"{path.name} was {what}: moved aside to {aside.name}"


def open_file(path: Path, flags: int) -> int:
    """``os.open`` of a state file: 0600, never through a symlink; a file with looser modes is narrowed."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{path.name} is not a regular file of ours")
        if stat.S_IMODE(found.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def precreate(path: Path) -> None:
    """An empty 0600 file at ``path`` if none is there (SQLite gives its -wal and -shm that mode)."""
    os.close(open_file(path, os.O_RDONLY | os.O_CREAT))


def classify(exc: BaseException) -> str | None:
    """``disk_full``, ``storage_failed``, or None for a passing contention (SQLITE_BUSY) that is no fault."""
    if isinstance(exc, OSError):
        return DISK_FULL if exc.errno in _FULL_ERRNOS else STORAGE_FAILED
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
        if primary == _SQLITE_FULL:
            return DISK_FULL
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return None
    if isinstance(exc, sqlite3.Error) and "full" in str(exc).lower():
        return DISK_FULL
    return STORAGE_FAILED


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)[:120]


def free_bytes(path: Path) -> int | None:
    """Space left for this user under ``path``; None when the file system is read-only or unreadable."""
    try:
        found = os.statvfs(path)
    except OSError:
        return None
    if found.f_flag & os.ST_RDONLY:
        return None
    return found.f_bavail * found.f_frsize


class StorageState:
    """Which state files fail and why; reports ``disk_full`` / ``storage_failed`` and their clearing."""

    def __init__(self, on_fault: Callable[[str, str], None], on_clear: Callable[[str], None], *,
                 directory: Path | None = None) -> None:
        self._on_fault = on_fault
        self._on_clear = on_clear
        self._directory = directory  # where the files are: an SQLite I/O error there may be a full card
        self.failing: dict[str, tuple[str, str]] = {}  # file name -> (fault code, reason)
        self._reported: dict[str, str] = {}  # fault code -> detail last reported

    @property
    def codes(self) -> set[str]:
        return {code for code, _ in self.failing.values()}

    def failed(self, name: str, exc: BaseException) -> str | None:
        code = classify(exc)
        if code == STORAGE_FAILED and isinstance(exc, sqlite3.Error) and self._directory is not None:
            free = free_bytes(self._directory)  # None: read-only or unreadable, a failure indeed
            if free is not None and free < FULL_BELOW:
                code = DISK_FULL
        if code is not None:
            if self.failing.get(name, ("", ""))[0] != code:
                log.error("%s on %s: %s", code, name, describe(exc))
            self.failing[name] = (code, describe(exc))
            self._report()
        return code

    def ok(self, name: str) -> None:
        if self.failing.pop(name, None) is not None:
            log.warning("%s is written again", name)
            self._report()

    def _report(self) -> None:
        """Each fault once when it begins (with the file and the error that began it), once when it ends."""
        now: dict[str, str] = {}
        for name, (code, reason) in self.failing.items():
            now.setdefault(code, f"{name}: {reason}")
        for code, first in now.items():
            if code not in self._reported:
                lead = "disk full" if code == DISK_FULL else "storage failing"
                self._reported[code] = first
                self._on_fault(code, f"{lead} ({first}); alerts are kept in RAM and published, telemetry kept "
                                     "in RAM up to outbox.ram_ring messages; all written again as soon as the card "
                                     "takes writes")
        for code in [c for c in self._reported if c not in now]:
            del self._reported[code]
            self._on_clear(code)
