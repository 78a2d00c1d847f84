"""Real storage faults for tests: a small tmpfs filled to ENOSPC, an ext4 card the kernel makes read-only.

Both need root (``mount``); a test that cannot mount skips with the reason.

- :func:`tmpfs` mounts a small tmpfs (mode 0700) at a path, the state dir
  of the agent under test; :func:`fill` writes a filler file into it until
  the kernel answers ENOSPC. Removing the filler gives the space back.
- :class:`Ext4Card` is an ext4 image on a loop device, mounted
  ``errors=remount-ro`` as an SD card's root file system is.
  :meth:`Ext4Card.fail` makes the kernel record a file-system error
  (``/sys/fs/ext4/<dev>/trigger_fs_error``), after which it remounts the
  file system read-only under the running daemon: every write then fails
  with EROFS, exactly as after the I/O errors of a dying card. The kernel
  will not remount it read-write (``emergency_ro``); :meth:`Ext4Card.repair`
  does what a technician does: unmount (possible only once the daemon has
  let go of its files), ``e2fsck``, mount again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def umount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # the test is over: detach whatever still holds it


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (created), mode 0700, owned by this user; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={os.getuid()},gid={os.getgid()}",
                "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (root is needed): {done.stderr.strip()}")
    try:
        yield path
    finally:
        umount(path)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file into ``directory`` until the file system answers ENOSPC; return it."""
    filler = directory / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class Ext4Card:
    """An ext4 image on a loop device, mounted ``errors=remount-ro`` at ``mountpoint``."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int = 32) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mb = size_mb

    def __enter__(self) -> Ext4Card:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as f:
            f.truncate(self.size_mb << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-E", f"root_owner={os.getuid()}:{os.getgid()}", str(self.image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.mount()
        os.chmod(self.mountpoint, 0o700)
        return self

    def __exit__(self, *_: object) -> None:
        umount(self.mountpoint)

    def mount(self) -> None:
        done = _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mountpoint))
        if done.returncode != 0:
            pytest.skip(f"cannot loop-mount an ext4 image (root and loop devices are needed): {done.stderr.strip()}")

    @property
    def device(self) -> str:
        return _run("findmnt", "-n", "-o", "SOURCE", str(self.mountpoint)).stdout.strip()

    @property
    def read_only(self) -> bool:
        options = _run("findmnt", "-n", "-o", "OPTIONS", str(self.mountpoint)).stdout.strip().split(",")
        return "ro" in options

    def fail(self) -> None:
        """An ext4 error, as after the card's I/O errors: the kernel remounts it read-only."""
        trigger = Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"{trigger} is missing: this kernel cannot inject an ext4 error")
        trigger.write_text("injected by the test: the card failed")
        probe = self.mountpoint / ".probe"
        try:
            probe.write_text("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("the file system is still writable after the injected error")

    def repair(self) -> str:
        """Unmount (fails while a process holds a file open on it), fsck, mount again; '' or why not."""
        done = _run("umount", str(self.mountpoint))
        if done.returncode != 0:
            return f"umount: {done.stderr.strip()}"
        _run("e2fsck", "-f", "-y", str(self.image))
        self.mount()
        return ""
