"""`make demo`, as a new user runs it: dispatch's view shows the alert raised, acknowledged and cleared,
and Ctrl-C ends it cleanly (no traceback, no `make: *** Error 130`)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import time

from tests.support.agent_proc import ROOT


def read_until(fd: int, pattern: str, seen: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, seen.decode(errors="replace"), re.MULTILINE):
            return True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            seen.extend(chunk)
    return bool(re.search(pattern, seen.decode(errors="replace"), re.MULTILINE))


def test_make_demo_shows_raise_acknowledgement_and_clear_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "DEMO_PRESS_AFTER": "6", "DEMO_CLEAR_AFTER": "8"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: make, in a terminal of its own, as a user types it
        os.chdir(ROOT)
        os.execvpe("make", ["make", "-o", ".venv/.installed", "demo"], env)  # noqa: S606 - as a user types it
    seen = bytearray()
    try:
        cleared = read_until(fd, r"ALERT CLEARED[\s\S]*the vehicle answered: PV-DEMO-1 ok", seen, 60)
        read_until(fd, r"position", seen, 3)  # the demo goes on after the clear
        os.write(fd, b"\x03")  # Ctrl-C at the terminal: SIGINT to make, the script and every child
        read_until(fd, r"demo: stopped", seen, 15)
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            read_until(fd, r"$^", seen, 0.2)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    text = seen.decode(errors="replace")
    assert cleared, text[-3000:]
    raised = text.index("ALERT RAISED")
    acknowledged = text.index("ALERT ACKNOWLEDGED")
    clear = text.index("ALERT CLEARED")
    assert raised < acknowledged < clear, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "Error 130" not in text and "make: ***" not in text, text[-3000:]
    assert "demo: stopped" in text, text[-2000:]
    assert status is not None and (os.WIFEXITED(status) or os.WTERMSIG(status) == signal.SIGINT), status
