"""The command line as technicians meet it: help on every option, the same exit codes everywhere, a clear word
when the daemon is not running or the user may not reach it, and `panic test` that shows where it waits."""

from __future__ import annotations

import argparse
import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import build_parser
from tests.support.agent_proc import ROOT, AgentProcess, agent_config
from tests.support.broker import Mosquitto
from tests.support.pty_gnss import PtyGnss

DAEMON_COMMANDS = [["status"], ["status", "--json"], ["monitor", "--once"], ["monitor"], ["panic", "test"],
                   ["sim", "press", "driver"], ["sim", "release", "driver"]]


def cli(*args: str, user: str | None = None, groups: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent.cli", *args]
    if user is not None:  # as another user, as a technician without root is
        command = ["setpriv", f"--reuid={user}", f"--regid={user}",
                   f"--groups={groups}" if groups else "--clear-groups", *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def walk(parser: argparse.ArgumentParser, path: str = "patrol-agent") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    yield f"{path} {name}", action
                yield from walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def test_every_option_and_subcommand_has_help_text() -> None:
    missing = []
    for where, action in walk(build_parser()):
        if isinstance(action, argparse._SubParsersAction) or not action.help or action.help == argparse.SUPPRESS:
            missing.append(where)
    assert missing == [], f"no help text: {missing}"


def test_top_level_help_lists_the_exit_codes() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for line in ("0  ok", "1  the check or operation failed", "2  bad usage or config",
                 "3  the daemon is not running", "4  permission denied"):
        assert line in done.stdout, done.stdout


@pytest.mark.parametrize("command", DAEMON_COMMANDS, ids=" ".join)
def test_every_command_that_talks_to_the_daemon_exits_3_when_it_is_not_running(
        tmp_path: Path, command: list[str]) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    done = cli(*command, "--runtime-dir", str(runtime))
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "the daemon is not running" in done.stderr and "Traceback" not in done.stderr, done.stderr
    # a socket left over by a daemon that died: nobody listens
    import socket

    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(runtime / "control.sock"))
    done = cli(*command, "--runtime-dir", str(runtime))
    assert done.returncode == 3 and "nobody listens" in done.stderr, done.stderr


def test_a_config_the_daemon_commands_cannot_read_exits_2(tmp_path: Path) -> None:
    done = cli("status", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr, done.stderr


@pytest.fixture
def shared_runtime() -> Iterator[Path]:
    """A runtime directory other users could reach if allowed: 0750, group root, as systemd makes it."""
    top = Path(tempfile.mkdtemp(prefix="patrol-run-"))
    top.chmod(0o755)
    runtime = top / "run"
    runtime.mkdir(mode=0o750)
    runtime.chmod(0o750)
    yield runtime
    shutil.rmtree(top)


def _reachable_by_others(path: Path) -> bool:
    """Another user can run the CLI from this checkout: every directory above it lets others through."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.skipif(not _reachable_by_others(ROOT), reason="the checkout is in a directory other users cannot enter")
def test_a_user_outside_the_group_is_told_what_is_missing_and_a_member_gets_in(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, shared_runtime: Path) -> None:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path,
                                                runtime_dir=str(shared_runtime)))
    agent.start()
    try:
        sock = shared_runtime / "control.sock"
        info = sock.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getegid()
        group = grp.getgrgid(shared_runtime.stat().st_gid).gr_name
        outsider = {args[0]: cli(*args, "--runtime-dir", str(shared_runtime), user="daemon")
                    for args in (["status"], ["monitor", "--once"], ["panic", "test"])}
        member = cli("status", "--runtime-dir", str(shared_runtime), user="daemon", groups=group)
    finally:
        agent.kill9()
    for name, done in outsider.items():
        assert done.returncode == 4, (name, done.stdout, done.stderr)
        hint = ("the daemon runs as root outside its unit; use sudo" if group == "root"  # never "join root"
                else f"add yourself to group {group}")
        assert f"permission denied on {shared_runtime}: {hint}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert member.returncode == 0, member.stderr
    assert "PV-TEST-1" in member.stdout


def test_panic_test_shows_where_it_waits_and_gives_up_when_nobody_acknowledges(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    try:
        began = time.monotonic()
        done = cli("panic", "test", "--runtime-dir", str(agent.runtime_dir), "--timeout", "12")
        took = time.monotonic() - began
        still_answers = agent.ask("status")[-1]["ok"]
    finally:
        agent.kill9()
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    stages = [line.split()[2] for line in lines if "test alarm" in line and line.strip()[0].isdigit()]
    assert stages == ["accepted", "delivered"], lines
    assert any("waiting for a dispatcher to acknowledge: 10 s" in line for line in lines), lines
    assert "no dispatcher acknowledged within 12 s" in lines[-1] and "Giving up" in lines[-1], lines
    assert 12 <= took < 20
    assert still_answers
