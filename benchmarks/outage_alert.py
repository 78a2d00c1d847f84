"""After a long outage with an alert raised in it: how long after the broker is reachable the alert arrives.

The daemon (a real ``patrol-agent run`` process, confined to the budget)
runs with the shipped reconnect policy (back-off from 1 s doubling to 60 s,
full jitter; connect timeout 10 s; alert retry 2 s) and reaches a local
mosquitto through a TCP proxy (tests/support/proxy.py); dispatch's
subscriber is connected to the broker itself all the time. The receiver
sends at 1 Hz, one position a second goes out. The outage: the proxy resets
the connection and from then on takes new connections and passes nothing
(a tunnel: the CONNECT is sent, no CONNACK ever comes). Half-way through,
the officer presses the panic button (``sim_press`` on the control
socket). After ``--outage`` seconds the proxy resets the hanging attempt
and forwards again: the broker is reachable. Reported: the seconds from
that moment to the alert at dispatch's subscriber (target <= 5 s), and
whether it came before the first message of the backlog.

    .venv/bin/python benchmarks/outage_alert.py [--outage 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import MqttConfig
from benchmarks import budget, rig
from tests.support.agent_proc import GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.proxy import TcpProxy
from tests.support.pty_gnss import PtyGnss

SHIPPED = ("keepalive_s", "backoff_initial_s", "backoff_max_s", "connect_timeout_s", "ack_timeout_s", "alert_retry_s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=600.0, help="seconds the broker is out of reach")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        proxy = TcpProxy(broker.port)
        device = PtyGnss(work / "gnss")
        cfg = agent_config(work, proxy.port, device.path, log_level="INFO", reporting__moving_interval_s=1,
                           reporting__stopped_interval_s=1)
        defaults = MqttConfig.model_fields
        for key in SHIPPED:  # the shipped reconnect policy, not the tests' quick one
            cfg["mqtt"][key] = defaults[key].default
        dispatch = Collector(broker.port, f"patrol/{rig.VEHICLE}/#", client_id="bench-outage", persistent=False)
        feeder = GnssFeeder(device, rate_hz=1).start()
        agent = rig.start_confined(work, cfg)
        try:
            dispatch.wait_for(lambda m: any(x.topic.endswith("/position") for x in m), timeout=60)
            proxy.set_mode("reset", new_connections="blackhole")
            began = time.monotonic()
            print(f"outage of {args.outage:g} s begins", flush=True)
            time.sleep(args.outage / 2)
            agent.ask("sim_press", name="driver")
            pressed = time.monotonic()
            time.sleep(began + args.outage - time.monotonic())
            proxy.set_mode("reset", new_connections="forward")
            back = time.monotonic()
            got = dispatch.wait_for(lambda m: any(x.topic.endswith("/alert") and x.at >= back for x in m),
                                    timeout=max(120.0, args.outage))
            arrived = next(x.at for x in got if x.topic.endswith("/alert") and x.at >= back)
            time.sleep(2)
            after = [x for x in dispatch.messages if x.at >= back and not x.retain]
            first_backlog = next((i for i, x in enumerate(after)
                                  if x.topic.endswith("/position") and x.json().get("historical")), None)
            alert_at = next(i for i, x in enumerate(after) if x.topic.endswith("/alert"))
            attempts = (work / "agent.log").read_text().count("link to ")
        finally:
            agent.kill9()
            feeder.stop()
            dispatch.close()
            proxy.close()
            device.close()
            broker.kill()
    first = first_backlog is None or alert_at < first_backlog
    delay = arrived - back
    print(f"alert raised {pressed - began:.0f} s into a {args.outage:g} s outage; at dispatch {delay:.2f} s after "
          f"the broker was reachable again; before the backlog: {first}; {attempts} link messages in the log "
          f"(daemon budget {budget.name()})")
    budget.report(f"alert after a {args.outage:g} s outage: broker reachable -> alert at dispatch", delay, "s",
                  target="<= 5", note="before the backlog" if first else "AFTER a backlog message")


if __name__ == "__main__":
    main()
