"""Fault scenarios shared by the fast fault-injection tests and the long soak run (``make soak``).

Each scenario runs the real daemon (or, where pins or the database must be
reached, the agent in this process) against a real mosquitto, injects one
kind of fault ``rounds`` times, and returns an :class:`Outcome` built from
what the broker actually delivered to a dispatch-side subscriber.
"""

from __future__ import annotations

import contextlib
import io
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit import audit
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector, Received
from tests.support.proxy import TcpProxy
from tests.support.pty_gnss import PtyGnss

COMMIT_WINDOW_S = 1.0


@dataclass
class Outcome:
    fault: str
    injected: str
    rounds: int
    alerts_accepted: int = 0
    alerts_lost: int = 0
    seq_reused: int = 0
    telemetry_lost: str = "none"
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # anything here fails the scenario

    @property
    def ok(self) -> bool:
        return (self.alerts_lost == 0 and self.seq_reused == 0 and not self.telemetry_lost.startswith("LOST")
                and not self.problems)


@contextlib.contextmanager
def rig(workdir: Path, **overrides: Any) -> Iterator[tuple[Mosquitto, PtyGnss, Collector, dict[str, Any]]]:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    device = PtyGnss(workdir / "gnss")
    collector = Collector(broker.port, "patrol/#", client_id=f"soak-{workdir.name}"[:60])
    cfg = agent_config(workdir, broker.port, device.path, **overrides)
    try:
        yield broker, device, collector, cfg
    finally:
        collector.close()
        device.close()
        broker.kill()


def alert_ids(messages: list[Received]) -> set[str]:
    return {m.json()["alert_id"] for m in messages if m.topic.endswith("/alert")}


def seq_reuses(messages: list[Received]) -> int:
    """(vehicle, boot, seq) seen with two message ids: a number given twice (duplicates share their id)."""
    by_seq: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for message in messages:
        body = message.json()
        if isinstance(body, dict) and "seq" in body:
            by_seq[(body["vehicle_id"], body.get("boot", 0), body["seq"])].add(body["msg_id"])
    return sum(1 for ids in by_seq.values() if len(ids) > 1)


def fix_times(messages: list[Received]) -> set[str]:
    return {p["fix"]["fix_time"] for p in positions(messages) if p.get("fix")}


def accept_test_alarm(agent: AgentProcess, accepted: list[str], replies: list[dict[str, Any]] | None = None) -> None:
    with contextlib.suppress(OSError, StopIteration, KeyError):
        reply = agent.first_reply("panic_test", timeout=2)
        if reply.get("stage") == "accepted":
            accepted.append(reply["alert_id"])
            if replies is not None:
                replies.append(reply)


def telemetry_gaps(feeder: GnssFeeder, delivered: set[str], lifetimes: list[tuple[float, float]]) -> list[str]:
    """Fixes fed while an agent ran, more than the commit window before its end, that never arrived."""
    lost = []
    for began, ended in lifetimes:
        first = min((at for at, t in feeder.fed if began <= at <= ended and t in delivered), default=None)
        if first is None:
            continue
        lost += [t for at, t in feeder.fed if first <= at < ended - COMMIT_WINDOW_S - 0.3 and t not in delivered]
    return lost


def settle(feeder: GnssFeeder, collector: Collector, accepted: list[str],
           first: str) -> tuple[list[Received], list[str]]:
    """Stop feeding; wait for the accepted alerts and for the backlog to drain; return what arrived and
    the fixes (fed after the first delivered one) that never did."""
    time.sleep(2)
    feeder.stop()
    with contextlib.suppress(TimeoutError):
        collector.wait_for(lambda m: set(accepted) <= alert_ids(m), timeout=60)
    messages = collector.wait_quiet(2.0)
    return messages, sorted({t for _, t in feeder.fed if t >= first} - fix_times(messages))


def finish(outcome: Outcome, messages: list[Received], accepted: list[str], lost: list[str]) -> Outcome:
    outcome.alerts_accepted = len(accepted)
    outcome.alerts_lost = len(set(accepted) - alert_ids(messages))
    outcome.seq_reused = seq_reuses(messages)
    outcome.telemetry_lost = f"LOST {len(lost)} fixes beyond the window" if lost else outcome.telemetry_lost
    return outcome


# --- scenarios ------------------------------------------------------------------------


def kill9(workdir: Path, rounds: int, seed: int = 1) -> Outcome:
    return kill9_capture(workdir, rounds, seed)[0]


def kill9_capture(workdir: Path, rounds: int, seed: int = 1) -> tuple[Outcome, list[Received], list[dict[str, Any]]]:
    """The kill -9 scenario; also returns what dispatch received and the "accepted" replies of the test alarms."""
    rng = random.Random(seed)
    outcome = Outcome("agent killed (kill -9)", "SIGKILL at a random moment 0.3-1.8 s into each run", rounds,
                      telemetry_lost=f"at most the {COMMIT_WINDOW_S:g} s commit window before each kill")
    with rig(workdir) as (_, device, collector, cfg):
        agent = AgentProcess(workdir, cfg)
        feeder = GnssFeeder(device, rate_hz=5).start()
        accepted: list[str] = []
        replies: list[dict[str, Any]] = []
        lifetimes = []
        try:
            for _ in range(rounds):
                agent.start()
                began = time.monotonic()
                deadline = began + rng.uniform(0.3, 1.8)
                while time.monotonic() < deadline:
                    accept_test_alarm(agent, accepted, replies)
                    time.sleep(rng.uniform(0.05, 0.4))
                agent.kill9()
                lifetimes.append((began, time.monotonic()))
            agent.start()
            collector.wait_for(lambda m: set(accepted) <= alert_ids(m), timeout=60)
            time.sleep(COMMIT_WINDOW_S + 1)
        finally:
            feeder.stop()
            agent.kill9()
        for name in ("outbox.sqlite", "outbox-alerts.sqlite"):
            with sqlite3.connect(workdir / "state" / name) as db:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    outcome.problems.append(f"{name} DOES NOT OPEN")
        messages = list(collector.messages)
        lost = telemetry_gaps(feeder, fix_times(messages), lifetimes)
    note = audit_note(messages)
    (outcome.problems if " EXCEPT " in note else outcome.notes).append(note)
    return finish(outcome, messages, accepted, lost), messages, replies


def audit_note(messages: list[Received]) -> str:
    """What dispatch's audit (``patrol-agent dispatch audit``) says of what was received; a gap followed
    in its boot by anything but alerts (fsynced at once) would be a loss in the middle of a boot."""
    report = audit(io.StringIO("\n".join(m.payload.decode("utf-8", "replace") for m in messages)))
    kinds = {(b["boot"], b["seq"]): b["kind"] for b in (m.json() for m in messages) if "seq" in b}
    boots = [b for bs in report.vehicles.values() for b in bs]
    gaps = [(b, g) for b in boots for g in b.gaps]
    middle = [g for b, g in gaps if any(kinds.get((b.boot, s)) not in (None, "alert")
                                        for s in range(g.end + 1, b.last + 1))]
    widest = max((g.missing for _, g in gaps), default=0)
    return (f"audit: {len(boots)} boots, {report.missing} messages missing in {len(gaps)} gaps, each at the end "
            f"of its boot{'' if not middle else f' EXCEPT {len(middle)}'} (at most {widest} in one), "
            f"{sum(b.duplicates for b in boots)} duplicates, {report.reused} numbers reused")


def broker_restarts(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("broker down, then back", "mosquitto stopped (SIGTERM, or kill -9 every other round) "
                      "for 1-3 s while fixes and test alarms flow", rounds)
    with rig(workdir) as (broker, device, collector, cfg):
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        accepted: list[str] = []
        try:
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            first = min(fix_times(collector.messages))
            for i in range(rounds):
                broker.kill() if i % 2 else broker.stop()
                accept_test_alarm(agent, accepted)
                time.sleep(1 + i % 3)
                broker.start()
                # dispatch must be back before the next kill: otherwise the broker's kill -9 loses what it
                # queued for an absent subscriber, which says nothing about the agent
                collector.connected.wait(10)
                time.sleep(1.5)
            messages, missing = settle(feeder, collector, accepted, first)
        finally:
            feeder.stop()
            agent.kill9()
    # kill -9 of the broker loses what it had acknowledged but not yet delivered to the subscriber:
    # that is the broker's durability, not the agent's; it is reported separately
    outcome.notes.append(f"{len(positions(messages))} positions delivered for {len(feeder.fed)} fixes fed")
    return finish(outcome, messages, accepted, missing)


def half_open(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("link half-open", "TCP proxy stops forwarding both ways without closing (keepalive 2 s)",
                      rounds)
    keepalive = 2
    with rig(workdir) as (broker, device, collector, cfg):
        proxy = TcpProxy(broker.port)
        cfg["mqtt"].update(brokers=[f"mqtt://127.0.0.1:{proxy.port}"], keepalive_s=keepalive, ack_timeout_s=30)
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        accepted: list[str] = []
        detections = []
        try:
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            first = min(fix_times(collector.messages))
            for _ in range(rounds):
                connections = proxy.connections
                proxy.set_mode("blackhole")
                cut = time.monotonic()
                accept_test_alarm(agent, accepted)
                while proxy.connections == connections and time.monotonic() - cut < 20:
                    time.sleep(0.05)
                detections.append(time.monotonic() - cut)
                time.sleep(1.0)
            messages, missing = settle(feeder, collector, accepted, first)
        finally:
            feeder.stop()
            agent.kill9()
            proxy.close()
    outcome.notes.append(f"reconnected {min(detections):.1f}-{max(detections):.1f} s after the cut "
                         f"(limit 2 x keepalive + backoff = {2 * keepalive + 1:.0f} s)")
    return finish(outcome, messages, accepted, missing)


def unplug(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("GNSS unplugged / replugged", "pty closed and its link removed for 0.5-1.5 s, then a new one",
                      rounds, telemetry_lost="none (no fixes exist while unplugged)")
    with rig(workdir) as (_, device, collector, cfg):
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        try:
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            for i in range(rounds):
                device.unplug()
                time.sleep(0.5 + (i % 3) / 2)
                device.plug()
                wanted = len(positions(collector.messages)) + 3

                def resumed(messages: list[Received], wanted: int = wanted) -> bool:
                    return len(positions(messages)) >= wanted

                collector.wait_for(resumed, timeout=15)
            faults = [m.json() for m in collector.messages if m.topic.endswith("/event")]
        finally:
            feeder.stop()
            agent.kill9()
    missing = sum(1 for f in faults if f["name"] == "gnss_device_missing" and f["event"] == "fault")
    outcome.notes.append(f"fixes resumed after every replug; {missing} 'gnss_device_missing' faults reported")
    return finish(outcome, list(collector.messages), [], [])


def garbage(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("GNSS garbage", "binary noise, NUL bytes, truncated, fused and bad-checksum lines "
                      "between epochs", rounds, telemetry_lost="none: no position from any invalid sentence")
    with rig(workdir) as (_, device, collector, cfg):
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        try:
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            for i in range(rounds):
                device.write(bytes(range(256)) + b"\x00" * 64 + b"$GPGGA,1200" + b"$GPRMC,120000,A,9999.0,N*00\r\n"
                             + b"$GPGGA,120001.00,0000.000,N,00000.000,E,1,08,0.9,1,M,1,M,,*FF\r\n")
                time.sleep(0.2 + (i % 3) / 10)
            time.sleep(1)
            status = agent.ask("status")[-1]["status"]
        finally:
            feeder.stop()
            agent.kill9()
    bad = [p for p in positions(collector.messages) if p.get("fix") and abs(p["fix"]["lat"] - 42.7) > 0.5]
    if bad:
        outcome.telemetry_lost = f"LOST: {len(bad)} positions from invalid input"
    outcome.notes.append(f"garbage bytes counted {status['gnss']['garbage_bytes']}, checksum errors "
                         f"{status['gnss']['checksum_errors']}; the daemon kept running")
    return finish(outcome, list(collector.messages), [], [])


def corrupt_database(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("corrupt outbox", "database file overwritten with garbage before start", rounds)
    moved = reported = 0
    for i in range(rounds):
        run = workdir / f"run{i}"
        with rig(run) as (_, device, collector, cfg):
            state = run / "state"
            state.mkdir(parents=True, exist_ok=True)
            (state / "outbox.sqlite").write_bytes(b"SQLite format 3\x00" + random.randbytes(8192))
            agent = AgentProcess(run, cfg)
            agent.start()
            feeder = GnssFeeder(device, rate_hz=5).start()
            try:
                messages = collector.wait_for(lambda m: len(positions(m)) >= 2 and any(
                    x.topic.endswith("/event") and b"outbox_corrupt" in x.payload for x in m), timeout=15)
                reported += 1
            except TimeoutError:
                messages = list(collector.messages)
            finally:
                feeder.stop()
                agent.kill9()
            moved += bool(list(state.glob("outbox.sqlite.corrupt-*")))
            outcome.seq_reused += seq_reuses(messages)
    outcome.notes.append(f"moved aside {moved}/{rounds}, fault reported {reported}/{rounds}, agent ran every time")
    if moved < rounds or reported < rounds:
        outcome.telemetry_lost = "LOST: a corrupt database was not handled"
    return outcome


def reset_and_delay(workdir: Path, rounds: int) -> Outcome:
    outcome = Outcome("link reset / slow", "TCP proxy resets every connection (RST), or holds each chunk 300 ms",
                      rounds)
    with rig(workdir) as (broker, device, collector, cfg):
        proxy = TcpProxy(broker.port)
        cfg["mqtt"].update(brokers=[f"mqtt://127.0.0.1:{proxy.port}"], ack_timeout_s=10)
        agent = AgentProcess(workdir, cfg)
        agent.start()
        feeder = GnssFeeder(device, rate_hz=5).start()
        accepted: list[str] = []
        slowest_status = 0.0
        try:
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            first = min(fix_times(collector.messages))
            for i in range(rounds):
                if i % 2:
                    proxy.delay_s = 0.3
                    proxy.set_mode("delay", new_connections="delay")
                else:
                    proxy.set_mode("reset")
                accept_test_alarm(agent, accepted)
                began = time.monotonic()
                agent.ask("status", timeout=5)
                slowest_status = max(slowest_status, time.monotonic() - began)
                time.sleep(1.5)
                proxy.set_mode("forward")
            messages, missing = settle(feeder, collector, accepted, first)
        finally:
            feeder.stop()
            agent.kill9()
            proxy.close()
    outcome.notes.append(f"the core answered the control socket within {slowest_status * 1000:.0f} ms throughout")
    return finish(outcome, messages, accepted, missing)
