"""mqtt.protocol: auto (the default): a connection attempt that times out on a bad link (TCP up, no CONNACK)
says nothing about the MQTT version: the unit stays on MQTT 5 once the link heals."""
from __future__ import annotations

import time
from pathlib import Path

from tests.support.agent_proc import AgentProcess, agent_config
from tests.support.broker import Mosquitto
from tests.support.proxy import TcpProxy
from tests.support.pty_gnss import PtyGnss


def test_a_lost_connack_never_downgrades_the_protocol(tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    proxy = TcpProxy(broker.port)
    proxy.set_mode("blackhole", new_connections="blackhole")  # a weak cell at boot: TCP up, nothing passes
    cfg = agent_config(tmp_path, proxy.port, gnss_pty.path)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        time.sleep(4.5)  # > connect_timeout_s (3): one attempt without a CONNACK
        proxy.set_mode("forward", new_connections="forward")
        deadline = time.monotonic() + 30
        link: dict[str, object] = {}
        while time.monotonic() < deadline:
            link = agent.ask("status")[-1]["status"]["link"]
            if link.get("connected"):
                break
            time.sleep(0.3)
        time.sleep(10)
        proxy.set_mode("reset")  # later reconnections: does it ever go back to 5?
        time.sleep(8)
        link2 = agent.ask("status")[-1]["status"]["link"]
        assert link.get("protocol") == "5", link
        assert link2.get("protocol") == "5", "fell back to MQTT 3.1.1 for good after one lost CONNACK"
    finally:
        agent.kill9()
        proxy.close()
