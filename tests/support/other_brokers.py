"""NATS (JetStream + MQTT) and RabbitMQ (MQTT plugin) as real processes on free ports of 127.0.0.1.

Each broker is the installed binary with a configuration of the test's own
in its own directory: never the system instances (4222, 5672, 1883, epmd on
4369) that may run on the same machine. RabbitMQ gets its own node name,
AMQP, distribution and epmd ports, mnesia and log directories, enabled
plugins file and Erlang cookie (``HOME`` points at its directory), and is
run as the current user through RabbitMQ's own start script, not Debian's
``/usr/sbin`` wrapper (which switches to the ``rabbitmq`` user, who cannot
read a test's private directory, and logs under /var/log).

Each process is started in a session of its own and stopped by that
process group's id, so that a broker leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.support.broker import free_port

RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def mqtt_ready(port: int, *, timeout: float, host: str = "127.0.0.1") -> None:
    """Until an MQTT 3.1.1 CONNECT (clean session) gets a CONNACK, accepting or not (a broker with
    authentication refuses the anonymous probe): a listening port is not enough (RabbitMQ and NATS accept
    TCP a moment before their MQTT side can answer)."""
    client_id = b"patrol-ready-probe"
    body = struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 10)
    body += struct.pack("!H", len(client_id)) + client_id
    packet = b"\x10" + bytes([len(body)]) + body
    deadline = time.monotonic() + timeout
    last = "nothing listens"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.sendall(packet)
                reply = sock.recv(4)
                if len(reply) == 4 and reply[0] == 0x20:
                    if reply[3] == 0:
                        sock.sendall(b"\xe0\x00")
                    return
                last = f"CONNACK {reply!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"no MQTT session on {host}:{port} after {timeout:g} s ({last})")


class _Process:
    """One broker process group; ``port`` (MQTT) stays the same across restarts."""

    name = "broker"
    start_timeout = 20.0

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0  # seconds from exec to the first accepted MQTT session
        workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write the configuration (before each start)."""

    def start(self) -> None:
        if self.running:
            return
        self.prepare()
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=self.environment(),
                                         cwd=self.workdir, start_new_session=True)
        try:
            mqtt_ready(self.port, timeout=self.start_timeout)
        except TimeoutError as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.tail()}") from None
        self.started_in = time.monotonic() - began

    def tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader: its pid is the group's id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break  # the whole group is gone (RabbitMQ's script, beam, its helpers)
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM: the broker shuts down cleanly and keeps its sessions."""
        self._signal_group(signal.SIGTERM, 30.0)

    def kill(self) -> None:
        """kill -9 of the whole group."""
        self._signal_group(signal.SIGKILL, 10.0)

    def close(self) -> None:
        self.kill()


class NatsServer(_Process):
    """nats-server with JetStream (store under ``workdir``) and an MQTT listener."""

    name = "nats"
    start_timeout = 15.0

    def __init__(self, workdir: Path, *, port: int | None = None, extra_conf: str = "") -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.binary).exists():
            raise FileNotFoundError("nats-server is not installed (apt-get install nats-server)")
        super().__init__(workdir, port=port)
        self.client_port = free_port()
        self.conf = workdir / "nats.conf"
        self.extra_conf = extra_conf  # e.g. an authorization block

    def prepare(self) -> None:
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"server_name: patrol-test-{self.port}\n"  # MQTT needs JetStream, which needs a server name
            f'jetstream {{ store_dir: "{self.workdir / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
            + self.extra_conf
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]


class Epmd(_Process):
    """Erlang's port mapper on a port of its own, so that the test node never meets the system's."""

    name = "epmd"

    def __init__(self, workdir: Path) -> None:
        found = shutil.which("epmd") or next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        if found is None:
            raise FileNotFoundError("epmd (Erlang) is not installed")
        self.binary = found
        super().__init__(workdir)

    def command(self) -> list[str]:
        return [self.binary, "-port", str(self.port), "-address", "127.0.0.1"]

    def start(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"epmd did not start: {self.tail()}")


class RabbitMq(_Process):
    """RabbitMQ with the rabbitmq_mqtt plugin, anonymous MQTT as ``guest`` on 127.0.0.1."""

    name = "rabbitmq"
    start_timeout = 60.0  # ~8 s here: the MQTT plugin waits 3-6 s for cluster peers before its Raft election

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        script = RABBITMQ_SCRIPT if RABBITMQ_SCRIPT.exists() else None
        if script is None or shutil.which("erl") is None:
            raise FileNotFoundError(f"rabbitmq-server is not installed ({RABBITMQ_SCRIPT} and erl are needed)")
        self.script = script
        super().__init__(workdir, port=port)
        self.epmd = Epmd(workdir / "epmd")
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.node = f"patrol-test-{self.port}@localhost"

    def prepare(self) -> None:
        home = self.workdir
        (home / "rabbitmq-env.conf").write_text("# the test's own: not /etc/rabbitmq/rabbitmq-env.conf\n")
        (home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            "log.console = true\nlog.console.level = info\nlog.file = false\n"
        )
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(12).hex().upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie that others can read
        self.epmd.start()

    def environment(self) -> dict[str, str]:
        home = self.workdir
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_")) and key != "CONF_ENV_FILE"}
        env.update(
            HOME=str(home),
            RABBITMQ_CONF_ENV_FILE=str(home / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(home / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(home / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(home / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(home / "mnesia"),
            RABBITMQ_LOG_BASE=str(home / "log"),
            RABBITMQ_PID_FILE=str(home / "rabbitmq.pid"),
            ERL_EPMD_PORT=str(self.epmd.port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def command(self) -> list[str]:
        return [str(self.script)]

    def close(self) -> None:
        super().kill()
        self.epmd.kill()


def available() -> dict[str, str | None]:
    """Each broker and why it cannot run here (None when it can)."""
    reasons: dict[str, str | None] = {}
    nats = shutil.which("nats-server") or "/usr/sbin/nats-server"
    reasons["nats"] = None if Path(nats).exists() else "nats-server is not installed"
    if not RABBITMQ_SCRIPT.exists():
        reasons["rabbitmq"] = f"rabbitmq-server is not installed ({RABBITMQ_SCRIPT} missing)"
    elif shutil.which("erl") is None:
        reasons["rabbitmq"] = "erl (Erlang) is not installed"
    else:
        reasons["rabbitmq"] = None
    return reasons
