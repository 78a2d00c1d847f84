"""provision: the files in place with the right modes, absolute paths, panic buttons, and nothing written
that the daemon would refuse; the result runs as the service would, from /."""

from __future__ import annotations

import argparse
import grp
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.control import request
from agent.provision import panic_button
from tests.support.reference_broker import ReferenceBroker

ROOT = Path(__file__).resolve().parent.parent
VEHICLE = "PV-0421"


def service_gid() -> int | None:
    try:
        return grp.getgrnam("patrol-agent").gr_gid if os.geteuid() == 0 else None
    except KeyError:
        return None


def cli(*args: str, cwd: Path | str = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "init", str(pki),
                           "--broker-host", "localhost", "--vehicle", VEHICLE, "--vehicle", "PV-0422"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return pki


def provision(tmp_path: Path, *extra: str, cwd: Path, port: int = 8883) -> subprocess.CompletedProcess[str]:
    return cli("provision", "--root", str(tmp_path / "root"), "--vehicle-id", VEHICLE, "--unit", "Traffic Sofia",
               "--directorate", "traffic", "--broker", f"mqtts://localhost:{port}", "--gnss-port",
               str(tmp_path / "gnss"), "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run"),
               "--no-doctor", *extra, cwd=cwd)


def test_provision_with_buttons_and_relative_paths_runs_from_root_with_the_files_under_etc(
        tmp_path: Path, fleet: Path) -> None:
    broker = ReferenceBroker(tmp_path / "broker", fleet)
    broker.start()
    daemon = None
    try:
        done = provision(tmp_path, "--ca", "ca.crt", "--cert", f"{VEHICLE}.crt", "--key", f"{VEHICLE}.key",
                         "--panic-button", "driver:17", "--panic-button", "passenger:27:press,active_high",
                         "--simulation", cwd=fleet, port=broker.port)  # relative paths, from the PKI's directory
        assert done.returncode == 0, done.stderr
        etc = tmp_path / "root" / "etc" / "patrol-agent"
        config = etc / "agent.yaml"
        data = yaml.safe_load(config.read_text())
        tls = data["mqtt"]["tls"]
        assert tls == {"ca_file": str(etc / "ca.crt"), "cert_file": str(etc / "vehicle.crt"),
                       "key_file": str(etc / "vehicle.key")}
        assert all(Path(p).is_absolute() and Path(p).read_bytes() for p in tls.values())
        assert (etc / "vehicle.key").read_bytes() == (fleet / f"{VEHICLE}.key").read_bytes()
        assert data["inputs"]["panic_buttons"] == [
            {"name": "driver", "pin": 17},
            {"name": "passenger", "pin": 27, "trigger": "press", "pull": "down"}]
        gid = service_gid()
        modes = {name: stat.S_IMODE((etc / name).stat().st_mode) for name in ("ca.crt", "vehicle.crt", "vehicle.key",
                                                                             "agent.yaml")}
        assert modes["ca.crt"] == modes["vehicle.crt"] == 0o644
        assert modes["vehicle.key"] == modes["agent.yaml"] == (0o640 if gid is not None else 0o600), modes
        if gid is not None:
            assert (etc / "vehicle.key").stat().st_gid == gid and (etc / "vehicle.key").stat().st_uid == 0
        assert not [p.name for p in etc.iterdir() if p.name.startswith(".")], "no staged file left behind"
        # as the service runs it: from /, the same check, then the daemon itself
        checked = cli("config", "check", str(config), cwd="/")
        assert checked.returncode == 0, checked.stderr
        daemon = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd="/",
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        status = wait_for_link(tmp_path / "run", daemon)
        assert set(status["inputs"]) >= {"driver", "passenger"}, status["inputs"]
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait(10)
        broker.kill()


def wait_for_link(runtime_dir: Path, daemon: subprocess.Popen[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            output = daemon.stdout.read() if daemon.stdout else ""
            raise AssertionError(f"the daemon exited with {daemon.returncode}: {output}")
        try:
            status: dict[str, Any] = list(request(runtime_dir, "status", timeout=2))[-1]["status"]
            if status["link"]["connected"]:
                return status
        except (OSError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise AssertionError("the provisioned daemon never connected to the broker over TLS")


def test_without_certificates_provision_refuses_with_the_reason_unless_lab(tmp_path: Path) -> None:
    done = provision(tmp_path, cwd=tmp_path)
    assert done.returncode == 2
    assert "mqtt.tls.ca_file: not set" in done.stderr and "nothing written" in done.stderr, done.stderr
    etc = tmp_path / "root" / "etc" / "patrol-agent"
    assert not (etc / "agent.yaml").exists() and not list(etc.glob("*")), list(etc.glob("*"))
    lab = provision(tmp_path, "--lab", cwd=tmp_path)
    assert lab.returncode == 0, lab.stderr
    assert "LAB MODE" in lab.stderr and "no panic button configured" in lab.stderr
    assert yaml.safe_load((etc / "agent.yaml").read_text())["mqtt"]["lab_mode"] is True


def test_provision_refuses_another_vehicles_certificate_and_keeps_what_was_there(
        tmp_path: Path, fleet: Path) -> None:
    good = provision(tmp_path, "--ca", str(fleet / "ca.crt"), "--cert", str(fleet / f"{VEHICLE}.crt"),
                     "--key", str(fleet / f"{VEHICLE}.key"), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    etc = tmp_path / "root" / "etc" / "patrol-agent"
    before = {p.name: p.read_bytes() for p in etc.iterdir()}
    again = provision(tmp_path, "--ca", str(fleet / "ca.crt"), "--cert", str(fleet / f"{VEHICLE}.crt"),
                      "--key", str(fleet / f"{VEHICLE}.key"), cwd=tmp_path)
    assert again.returncode == 2 and "exists (use --force" in again.stderr
    wrong = provision(tmp_path, "--force", "--ca", str(fleet / "ca.crt"), "--cert", str(fleet / "PV-0422.crt"),
                      "--key", str(fleet / "PV-0422.key"), cwd=tmp_path)
    assert wrong.returncode == 2
    assert f"{etc / 'agent.yaml'}:" in wrong.stderr and "issued to 'PV-0422', but this vehicle is 'PV-0421'" in \
        wrong.stderr, wrong.stderr
    assert ".new" not in wrong.stderr, "problems name the files as they would be installed"
    assert {p.name: p.read_bytes() for p in etc.iterdir()} == before


def test_the_example_that_install_put_in_place_is_replaced_without_force(tmp_path: Path, fleet: Path) -> None:
    etc = tmp_path / "root" / "etc" / "patrol-agent"
    etc.mkdir(parents=True)
    (etc / "agent.yaml").write_text((ROOT / "config" / "agent.example.yaml").read_text())
    done = provision(tmp_path, "--ca", str(fleet / "ca.crt"), "--cert", str(fleet / f"{VEHICLE}.crt"),
                     "--key", str(fleet / f"{VEHICLE}.key"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((etc / "agent.yaml").read_text())["vehicle"]["id"] == VEHICLE


def test_a_contradictory_button_is_refused_by_the_config_check(tmp_path: Path) -> None:
    done = provision(tmp_path, "--lab", "--panic-button", "driver:17:pull=up,active_high", cwd=tmp_path)
    assert done.returncode == 2 and "with pull: up the input is active low" in done.stderr, done.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("driver:17", {"name": "driver", "pin": 17}),
    ("passenger:27:press,active_high", {"name": "passenger", "pin": 27, "trigger": "press", "pull": "down"}),
    ("rear:5:hold=2.5,pull=none,active_low,debounce=50",
     {"name": "rear", "pin": 5, "trigger": "hold", "hold_s": 2.5, "pull": "none", "active": "low", "debounce_ms": 50}),
    ("d:4:active_low", {"name": "d", "pin": 4, "pull": "up"}),
])
def test_panic_button_options(text: str, expected: dict[str, Any]) -> None:
    assert panic_button(text) == expected


@pytest.mark.parametrize("text", ["driver", "driver:x", "driver:17:fly", "d:1:hold=long", ":17", "d:1:2:3"])
def test_a_malformed_panic_button_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        panic_button(text)
    done = cli("provision", "--vehicle-id", "V", "--unit", "u", "--directorate", "d", "--broker", "mqtts://h",
               "--panic-button", text)
    assert done.returncode == 2 and "--panic-button" in done.stderr
