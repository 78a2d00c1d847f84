"""Kernel names for the daemon's threads, so that ``top -H`` and ``/proc/<pid>/task/*/comm`` tell them apart.

Python's thread names stay inside the interpreter (before 3.14). The main
thread (start-up, then the core loop) keeps the process's own name.
"""

from __future__ import annotations

import contextlib


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (at most 15 bytes are kept).

    Where /proc cannot be written, the thread simply stays unnamed there.
    """
    with contextlib.suppress(OSError), open("/proc/thread-self/comm", "w") as comm:
        comm.write(name[:15])
