"""``patrol-agent panic test``: a test alarm through the whole path, with its progress shown as it goes.

Runs in the CLI process. Asks the daemon (control socket ``panic_test``) to
raise a test alarm and prints each stage as the daemon reports it:
accepted (on disk), delivered (the broker's PUBACK), acknowledged (by
dispatch). While it waits, a line says what it waits for and for how long
(rewritten in place on a terminal, every 10 s otherwise). When dispatch does
not acknowledge within ``timeout`` it says so, closes its connection (the
daemon ends the test alarm when that connection closes) and exits 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO

from agent.daemon_client import Session

WAITING_FOR = {None: "the daemon to accept the test alarm", "accepted": "the broker to confirm delivery",
               "delivered": "a dispatcher to acknowledge"}
SPINNER = "|/-\\"


class _Waiting:
    """The "waiting for ... N s" indicator."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = False
        self.last_plain = 0.0
        self.turn = 0

    def show(self, what: str, elapsed: float) -> None:
        if self.tty:
            self.turn += 1
            self.out.write(f"\r  {SPINNER[self.turn % 4]} waiting for {what}: {elapsed:4.0f} s ")
            self.out.flush()
            self.shown = True
        elif elapsed - self.last_plain >= 10:
            self.last_plain = elapsed
            print(f"  ... waiting for {what}: {elapsed:.0f} s", file=self.out, flush=True)

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * 60 + "\r")
            self.out.flush()
            self.shown = False


def run(runtime_dir: Path, *, timeout: float = 60.0, out: IO[str] = sys.stdout) -> int:
    began = time.monotonic()
    stage: str | None = None
    waiting = _Waiting(out)
    print(f"panic test: raising the alarm, then waiting up to {timeout:g} s for dispatch to acknowledge", file=out,
          flush=True)
    with Session(runtime_dir, "panic_test") as session:
        try:
            while True:
                elapsed = time.monotonic() - began
                if elapsed >= timeout:
                    break
                try:
                    reply = session.next_reply(min(0.25, timeout - elapsed))
                except EOFError:
                    waiting.clear()
                    print("the daemon ended the test before it was acknowledged (see journalctl -u patrol-agent)",
                          file=out)
                    return 1
                if reply is None:
                    waiting.show(WAITING_FOR.get(stage, "the daemon"), time.monotonic() - began)
                    continue
                waiting.clear()
                if "stage" not in reply:
                    print(f"error: {reply.get('error')}", file=out)
                    return 1
                stage = str(reply["stage"])
                extra = f" by {reply['operator']}" if reply.get("operator") else ""
                print(f"{time.monotonic() - began:6.2f} s  {stage:<13} test alarm {reply.get('alert_id')}{extra}",
                      file=out, flush=True)
                if stage in ("acknowledged", "cleared"):
                    return 0
        except KeyboardInterrupt:
            waiting.clear()
            print("interrupted: the test alarm ends as this connection closes", file=out)
            return 130
    waiting.clear()
    if stage is None:
        print(f"FAIL: the daemon did not accept the test alarm within {timeout:g} s", file=out)
    elif stage == "accepted":
        print(f"FAIL: not delivered to the broker within {timeout:g} s: is the link up? (patrol-agent status); "
              "giving up, the test alarm is ended", file=out)
    else:
        print(f"FAIL: delivered, but no dispatcher acknowledged within {timeout:g} s: is dispatch watching this "
              "vehicle? Giving up: the test alarm is ended", file=out)
    return 1
