"""Storage faults under the running daemon, for the tests and the soak run: a full card, a card gone read-only.

The faults are real (:mod:`tests.support.storage`): the state dir on a small
tmpfs filled to ENOSPC by another file, or on an ext4 card image that the
kernel remounts read-only after an injected file-system error.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_proc import AgentProcess, GnssFeeder, positions
from tests.support.broker import Mosquitto
from tests.support.faults import COMMIT_WINDOW_S, Outcome, rig, seq_reuses
from tests.support.mqtt import Collector, Received
from tests.support.storage import Ext4Card, fill, tmpfs

PRESSES = 10


def _press(agent: AgentProcess, name: str = "driver") -> None:
    agent.ask("sim_press", name=name)
    time.sleep(0.1)
    agent.ask("sim_release", name=name)


def _status(agent: AgentProcess) -> dict[str, Any]:
    reply = agent.ask("status")[-1]
    return reply["status"]  # type: ignore[no-any-return]


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, IndexError):
            if predicate():
                return True
        time.sleep(0.1)
    return False


def _storage_round(agent: AgentProcess, broker: Mosquitto, collector: Collector, feeder: GnssFeeder,
                   inject: Any, recover: Any, code: str, outcome: Outcome) -> None:
    """One storage fault under the running daemon (see :func:`storage_fault`)."""
    inject()
    broker.stop()
    began = time.monotonic()
    for _ in range(PRESSES):
        _press(agent)
        time.sleep(2.1)  # a press during an emergency publishes it again once 2 s have passed
    status = _status(agent)
    if code not in status["faults"]:
        outcome.problems.append(f"{code} NOT REPORTED (faults {status['faults']})")
    alert_id = (status.get("emergency") or {}).get("alert_id")
    broker.start()
    collector.connected.wait(10)

    def delivered(messages: list[Received]) -> list[dict[str, Any]]:
        return [m.json() for m in messages if m.topic.endswith("/alert") and m.at > began
                and m.json()["alert_id"] == alert_id]

    with contextlib.suppress(TimeoutError):
        collector.wait_for(lambda m: len(delivered(m)) >= PRESSES, timeout=30)
    got = delivered(list(collector.messages))
    outcome.alerts_accepted += PRESSES
    outcome.alerts_lost += max(0, PRESSES - len(got))
    # the card is still failing: a backlog that exists only in RAM, to be written once it takes writes
    broker.stop()
    time.sleep(2.0)
    problem = recover()
    if problem:
        outcome.problems.append(f"could not recover the storage: {problem}")
    cleared = _wait(lambda: code not in _status(agent)["faults"], 20)
    written = _wait(lambda: _status(agent)["outbox"]["held_in_ram"] == 0, 20)
    if not cleared or not written:
        outcome.problems.append(f"AFTER RECOVERY: fault cleared {cleared}, RAM backlog written {written}")
    restored = (agent.ask("alert")[-1].get("emergency") or {}).get("alert_id")
    box = _status(agent)["outbox"]
    time.sleep(COMMIT_WINDOW_S + 0.5)  # everything produced so far has outlived its commit window
    if not agent.running:
        outcome.problems.append("THE DAEMON EXITED")
    agent.kill9()  # what is in RAM now is lost: only what was written to the card comes back
    agent.start()
    broker.start()
    collector.connected.wait(10)
    wanted = {(box["boot"], seq) for seq in range(1, box["seq"] + 1)}

    def received(messages: list[Received]) -> set[tuple[int, int]]:
        return {(b["boot"], b["seq"]) for b in (m.json() for m in messages) if "seq" in b}

    try:
        collector.wait_for(lambda m: wanted <= received(m), timeout=30)
    except TimeoutError:
        missing = sorted(wanted - received(list(collector.messages)))
        outcome.telemetry_lost = f"LOST {len(missing)} messages of the boot the card failed in: {missing[:10]}"
    after = (agent.ask("alert")[-1].get("emergency") or {}).get("alert_id")
    if not (restored == after == alert_id):
        outcome.problems.append(f"EMERGENCY NOT KEPT: raised {alert_id}, before kill {restored}, after {after}")
    if alert_id:
        send_clear(broker.port, collector, alert_id)


def send_clear(port: int, collector: Collector, alert_id: str, *, wait: bool = True) -> None:
    """Dispatch clears an alert; returns once the vehicle has published it as cleared (``wait``)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="faults-dispatch-clear")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish("patrol/PV-TEST-1/alert/ack",
                       json.dumps({"alert_id": alert_id, "action": "clear", "operator": "soak"}),
                       qos=1).wait_for_publish(5)
        if not wait:
            return
        collector.wait_for(lambda m: any(x.topic.endswith("/alert") and x.json()["alert_id"] == alert_id
                                         and x.json()["state"] == "cleared" for x in m), timeout=15)
    finally:
        client.loop_stop()
        client.disconnect()


def storage_fault(workdir: Path, rounds: int, kind: str) -> Outcome:
    """The state dir on real storage that fails under the running daemon, broker down, 10 panic presses.

    ``full``: a 6 MB tmpfs filled to ENOSPC by another file, later removed.
    ``read_only``: an ext4 card image mounted errors=remount-ro, made read-only by an injected ext4
    error, later unmounted, checked and mounted again. Each round: the fault, the broker stopped, 10
    presses (one emergency, published 10 times), the broker back (10 alerts expected), the broker stopped
    again while the card still fails (positions in RAM only), the storage back: the fault must clear and
    the RAM backlog be written, proved by a kill -9 and restart that delivers it.
    """
    code = "disk_full" if kind == "full" else "storage_failed"
    what = ("state dir on a 6 MB tmpfs filled to ENOSPC by another file, then the file removed"
            if kind == "full" else
            "state dir on an ext4 image (errors=remount-ro) made read-only by an injected ext4 error "
            "(/sys/fs/ext4/<dev>/trigger_fs_error), then unmounted, e2fsck'd and mounted again")
    outcome = Outcome("disk full" if kind == "full" else "card read-only", what + "; broker down; "
                      f"{PRESSES} panic presses", rounds, telemetry_lost="none")
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    with contextlib.ExitStack() as stack:
        if kind == "full":
            stack.enter_context(tmpfs(state, "6m"))
            card = None
        else:
            card = stack.enter_context(Ext4Card(workdir / "card.img", state))
        broker, device, collector, cfg = stack.enter_context(
            rig(workdir, inputs__panic_buttons=[{"name": "driver", "pin": 17, "trigger": "press", "debounce_ms": 0}]))
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        stack.callback(agent.kill9)
        stack.callback(feeder.stop)
        collector.wait_for(lambda m: len(positions(m)) >= 3)
        filler: list[Path] = []

        def fill_up() -> None:
            filler.append(fill(state))

        def free_up() -> str:
            filler.pop().unlink()
            return ""

        for _ in range(rounds):
            inject, recover = (fill_up, free_up) if card is None else (card.fail, card.repair)
            _storage_round(agent, broker, collector, feeder, inject, recover, code, outcome)
        messages = list(collector.messages)
        faults = {(f["boot"], f["seq"]): f for f in (m.json() for m in messages if m.topic.endswith("/event"))
                  if f["name"] == code}  # by (boot, seq): a duplicate delivery is not a second report
    raised = sum(1 for f in faults.values() if f["event"] == "fault")
    cleared = sum(1 for f in faults.values() if f["event"] == "fault_cleared")
    outcome.notes.append(f"'{code}' reported {raised} times, cleared {cleared} times, for {rounds} faults; "
                         f"alerts published from RAM while the card refused them")
    if raised < rounds or cleared < rounds:
        outcome.telemetry_lost = f"LOST: {code} reported {raised}/{rounds}, cleared {cleared}/{rounds}"
    outcome.seq_reused = seq_reuses(messages)
    return outcome


def disk_full(workdir: Path, rounds: int) -> Outcome:
    return storage_fault(workdir, rounds, "full")


def read_only(workdir: Path, rounds: int) -> Outcome:
    return storage_fault(workdir, rounds, "read_only")
