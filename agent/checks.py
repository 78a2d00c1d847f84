"""The results of doctor's checks: PASS / WARN / FAIL, each with a detail and a hint.

Used in the CLI process by agent/doctor.py and agent/doctor_hw.py (which
make them) and agent/tui.py (which prints them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

@dataclass
class Check:
    name: str
    result: str
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "result": self.result, "detail": self.detail, "hint": self.hint}


Progress = Callable[[str], None]


def silent(_text: str) -> None:
    pass


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    on_check: Callable[[Check], None] | None = None
    progress: Progress = silent

    def add(self, name: str, result: str, detail: str, hint: str = "") -> Check:
        check = Check(name, result, detail, hint)
        self.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)
        return check

    @property
    def failed(self) -> bool:
        return any(c.result == FAIL for c in self.checks)
