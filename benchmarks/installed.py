"""The daemon as installed: its bytecode compiled ahead, as ``pip install`` (tools/install.sh) leaves it.

A checkout run with ``PYTHONDONTWRITEBYTECODE=1`` in the environment (or from
a read-only tree, as the service is under ``ProtectSystem=strict``) would
otherwise compile every module of ``agent`` and ``drivers`` from source at
each start: about a quarter of a second of CPU on this machine, and memory
the installed daemon never spends. Benchmarks that time a start or measure
memory call :func:`compile_bytecode` before they start the daemon.
"""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Write the ``__pycache__`` of ``agent`` and ``drivers`` (no-op where it is up to date)."""
    for package in ("agent", "drivers"):
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise SystemExit(f"cannot compile {ROOT / package}")
