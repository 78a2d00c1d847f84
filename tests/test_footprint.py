"""What the running daemon holds: the technicians' tools are imported on first use, never by ``run``.

The daemon is started in a child interpreter exactly as ``patrol-agent run``
starts it (``agent.cli.main``), on a real broker and a pty receiver; once it
has published its online status, a probe thread in that interpreter lists
the modules loaded and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support.agent_proc import AgentProcess, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

ROOT = Path(__file__).resolve().parent.parent

# only a technician's command needs these: the daemon must not pay for them in memory or start-up time
NOT_IN_THE_DAEMON = (
    "rich", "cryptography", "agent.apidoc", "agent.tui", "agent.doctor", "agent.doctor_hw", "agent.doctor_link",
    "agent.dispatch", "agent.audit", "agent.provision", "agent.gnss_decode", "agent.panic_check",
    "drivers.gnss.simulate",
    "difflib",  # the "did you mean" of a config error: only when the config has an unknown key
)

PROBE = """
import json, os, signal, sys, threading, time
from pathlib import Path
from agent import cli

def probe():
    flag = Path(sys.argv[2])
    while not flag.exists():
        time.sleep(0.05)
    print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
sys.exit(cli.main(["run", "--config", sys.argv[1]]))
"""


def test_the_running_daemon_imports_none_of_the_technicians_tools(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, log_level="WARNING")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg))
    online = tmp_path / "online"
    collector = Collector(broker.port, "patrol/+/status", client_id="footprint", persistent=False)
    child = subprocess.Popen([sys.executable, "-c", PROBE, str(config), str(online)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        collector.wait_for(lambda m: any(b'"online"' in r.payload for r in m), timeout=60)
        online.touch()
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        collector.close()
    lines = [line for line in out.splitlines() if line.startswith("MODULES ")]
    assert lines, f"the daemon never listed its modules: {out[-2000:]} {err[-3000:]}"
    loaded = json.loads(lines[0].removeprefix("MODULES "))
    assert "agent.app" in loaded and "agent.uplink" in loaded, "the probe ran inside the daemon"
    found = sorted(m for m in loaded if any(m == bad or m.startswith(bad + ".") for bad in NOT_IN_THE_DAEMON))
    assert found == [], f"patrol-agent run imported what only technicians' commands need: {found}"
    assert child.returncode == 0, err[-3000:]


def test_the_daemons_threads_carry_their_names_in_the_kernel(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    """``top -H`` and /proc tell the threads apart (the benchmarks read each thread's CPU by name)."""
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path, log_level="WARNING"))
    agent.start()
    wanted = {"gnss-reader", "uplink", "control", "outbox-checkpoi"}
    try:
        assert agent.proc is not None
        deadline = time.monotonic() + 15  # the status answers once "control" runs; the reader starts just after
        while True:
            names = set()
            for task in Path(f"/proc/{agent.proc.pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a connection's thread that just ended
                    names.add((task / "comm").read_text().strip())
            if wanted <= names or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        agent.kill9()
    assert wanted <= names, names
