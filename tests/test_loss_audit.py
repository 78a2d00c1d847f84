"""Loss that dispatch can audit: (boot, seq) with no false gap, and a backlog that arrives oldest-first.

The real daemon against a real mosquitto; dispatch's capture is written as
JSON lines (the format ``mosquitto_sub -F %J`` prints) and read by
``patrol-agent dispatch audit``, exactly as an integrator would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import faults
from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector, Received
from tests.support.proxy import TcpProxy
from tests.support.pty_gnss import PtyGnss

WINDOW_MESSAGES = 8  # 1 s commit window at 5 positions a second, plus the events of that second


def write_capture(messages: list[Received], path: Path) -> Path:
    """Dispatch's capture, one line per received message, as ``mosquitto_sub -F %J`` writes it."""
    with path.open("w") as out:
        for m in messages:
            line: dict[str, Any] = {"topic": m.topic, "qos": 1, "retain": int(m.retain), "payloadlen": len(m.payload)}
            try:
                line["payload"] = json.loads(m.payload)
            except ValueError:
                continue
            out.write(json.dumps(line) + "\n")
    return path


def audit(capture: Path) -> tuple[int, dict[str, Any], str]:
    """``patrol-agent dispatch audit`` on a capture: exit code, its JSON report, its text report."""
    as_json = subprocess.run([sys.executable, "-m", "agent.cli", "dispatch", "audit", str(capture), "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    as_text = subprocess.run([sys.executable, "-m", "agent.cli", "dispatch", "audit", str(capture)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert as_json.returncode in (0, 1), as_json.stderr
    return as_json.returncode, json.loads(as_json.stdout), as_text.stdout


def test_the_audit_names_gaps_duplicates_and_reused_numbers(tmp_path: Path) -> None:
    def msg(boot: int, seq: int, kind: str = "position", msg_id: str | None = None) -> dict[str, Any]:
        return {"topic": f"patrol/PV-1/{kind}", "payload": {
            "schema_version": 2, "kind": kind, "vehicle_id": "PV-1", "boot": boot, "seq": seq,
            "msg_id": msg_id or f"m-{boot}-{seq}", "time": f"2026-11-30T10:00:{seq:02d}.000Z",
            "time_source": "gnss", "historical": False}}

    lines = [msg(1, 1), msg(1, 2), msg(1, 2), msg(1, 5, "alert"), msg(2, 1), msg(2, 2, msg_id="other"),
             msg(2, 2), msg(2, 3)]
    retained = {"topic": "patrol/PV-1/status", "payload": {"schema_version": 2, "kind": "status",
                                                           "vehicle_id": "PV-1", "boot": 2, "state": "online"}}
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(json.dumps(line) for line in [*lines, retained]) + "\nnot json\n")
    status, report, text = audit(capture)
    boots = {b["boot"]: b for b in report["vehicles"]["PV-1"]}
    assert status == 1
    assert boots[1]["gaps"] == [{"from": 3, "to": 4, "missing": 2, "received_after": 1}]
    assert boots[1]["duplicates"] == 1 and boots[1]["received"] == 3
    assert boots[2]["gaps"] == [] and boots[2]["reused"] == [2]
    assert report["unreadable"] == 1
    assert "boot 1" in text and "3-4" in text and "reused" in text


def test_30_kill_9_rounds_the_audit_shows_only_a_window_lost_at_the_end_of_a_boot(tmp_path: Path) -> None:
    outcome, messages, accepted = faults.kill9_capture(tmp_path / "kill9", 30, seed=30)
    _, report, text = audit(write_capture(messages, tmp_path / "capture.jsonl"))
    print(f"\n{outcome}\n{text}")
    boots = report["vehicles"]["PV-TEST-1"]
    assert len(boots) == 31, f"30 killed boots and the last one: {[b['boot'] for b in boots]}"
    by_key = {(m.json()["boot"], m.json()["seq"]): m.json() for m in messages
              if m.topic.endswith(("/alert", "/position", "/event", "/reply", "/health"))}
    for boot in boots:
        assert boot["reused"] == [], f"boot {boot['boot']}: numbers reused {boot['reused']}"
        assert boot["first"] == 1, f"boot {boot['boot']} starts at {boot['first']}"
        for gap in boot["gaps"]:
            assert gap["missing"] <= WINDOW_MESSAGES, f"boot {boot['boot']}: gap {gap} beyond a commit window"
            after = [by_key[(boot["boot"], s)]["kind"] for s in range(gap["to"] + 1, boot["last"] + 1)
                     if (boot["boot"], s) in by_key]
            assert set(after) <= {"alert"}, f"boot {boot['boot']}: gap {gap} is not at the end of the boot: {after}"
    received = {(a["boot"], a["seq"]) for a in (m.json() for m in messages if m.topic.endswith("/alert"))}
    missing_alerts = [a for a in accepted if (a["boot"], a["seq"]) not in received]
    assert not missing_alerts, f"accepted test alarms missing at dispatch: {missing_alerts}"
    assert len(accepted) >= 30


def test_after_each_of_20_reconnects_the_backlog_arrives_oldest_first(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    proxy = TcpProxy(broker.port)
    cfg = agent_config(tmp_path, proxy.port, gnss_pty.path, mqtt__backoff_max_s=0.5, mqtt__keepalive_s=2)
    dispatch = Collector(broker.port, "patrol/#", client_id="reconnect-order-dispatch")
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    windows = []
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 5)
        for i in range(20):
            proxy.set_mode("reset", new_connections="blackhole")  # the link dies; reconnects hang
            time.sleep(2 + i % 3)  # a backlog of 10-20 positions builds up, some of it on disk
            restored = time.monotonic()
            proxy.set_mode("reset")  # the hanging attempt is dropped; the next one gets through
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status = agent.ask("status")[-1]["status"]
                if status["link"]["connected"] and status["outbox"]["depth"] <= 2:
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            windows.append((restored, time.monotonic()))
    finally:
        feeder.stop()
        agent.kill9()
        proxy.close()
        dispatch.close()
    misordered = []
    for n, (began, ended) in enumerate(windows):
        arrived = [m.json() for m in dispatch.messages if began <= m.at < ended and not m.retain
                   and m.topic.endswith("/position")]
        backlog = [(p.get("boot", 0), p["seq"]) for p in arrived if p["historical"]]
        late = [key for i, key in enumerate(backlog) if any(key < before for before in backlog[:i])]
        if late:
            misordered.append(f"reconnect {n}: {len(late)} of {len(backlog)} backlog messages after newer ones")
        first_live = next((i for i, p in enumerate(arrived) if not p["historical"]), None)
        if backlog and (first_live is None or first_live > 0):
            misordered.append(f"reconnect {n}: the newest position did not come before the backlog")
    assert len(windows) == 20
    assert not misordered, "\n".join(misordered)


def test_watch_writes_a_capture_that_the_audit_reads(tmp_path: Path, broker: Mosquitto) -> None:
    capture = tmp_path / "capture.jsonl"
    watcher = subprocess.Popen([sys.executable, "-m", "agent.cli", "watch", "--broker",
                                f"mqtt://127.0.0.1:{broker.port}", "--capture", str(capture)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sender = Collector(broker.port, "nothing/#", client_id="capture-sender")
    try:
        deadline = time.monotonic() + 10
        while not capture.exists() or not capture.read_text():
            body = {"schema_version": 2, "kind": "event", "vehicle_id": "PV-9", "boot": 4, "seq": 1,
                    "msg_id": "m-1", "time": "2026-11-30T10:00:00.000Z", "time_source": "gnss",
                    "historical": False, "event": "input", "name": "door", "active": True, "detail": None}
            for seq in (1, 3):
                sender.client.publish("patrol/PV-9/event", json.dumps({**body, "seq": seq, "msg_id": f"m-{seq}"}),
                                      qos=1).wait_for_publish(5)
            time.sleep(0.5)
            assert time.monotonic() < deadline, "watch wrote nothing"
    finally:
        watcher.terminate()
        watcher.wait(10)
        sender.close()
    code, report, _ = audit(capture)
    assert code == 1
    assert report["vehicles"]["PV-9"][0]["gaps"][0]["from"] == 2
