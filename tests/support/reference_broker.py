"""The SHIPPED reference broker config (config/mosquitto/) on a real mosquitto, as a technician installs it.

The files are used unchanged except for what config/mosquitto/README.md tells
a technician to change elsewhere than on Debian: the paths
(``/etc/mosquitto/patrol/``) and the ``listener`` line (here a free port on
127.0.0.1). The main file written here stands in for Debian's
``/etc/mosquitto/mosquitto.conf`` (persistence directory, log, ``include_dir``)
plus a ``user`` line: mosquitto started by root would otherwise switch to the
``mosquitto`` user, which cannot read the test's private temporary directory.
The log includes mosquitto's connection messages: tests read it.
"""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

from tests.support.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent.parent
REFERENCE = ROOT / "config" / "mosquitto"
ETC = "/etc/mosquitto/patrol/"
#: what README.md's install step copies from make_certs.py's output into /etc/mosquitto/patrol/
BROKER_FILES = ("ca.crt", "broker.crt", "broker.key", "crl.pem")


def reference_conf(etc: Path, port: int) -> str:
    """config/mosquitto/mosquitto.conf with the paths and the listener line changed, nothing else."""
    shipped = (REFERENCE / "mosquitto.conf").read_text()
    lines = shipped.splitlines()
    listeners = [i for i, line in enumerate(lines) if line.split()[:1] == ["listener"]]
    assert len(listeners) == 1, "the reference config has one listener"
    lines[listeners[0]] = f"listener {port} 127.0.0.1"
    text = "\n".join(lines).replace(ETC, f"{etc}/") + "\n"
    changed = [(a, b) for a, b in zip(shipped.splitlines(), text.splitlines(), strict=True) if a != b]
    assert all(a.startswith("listener") or ETC in a for a, _ in changed), changed
    return text


def install(pki: Path, etc: Path) -> None:
    """README.md's install step: the broker's PKI files and the ACL into its directory."""
    etc.mkdir(parents=True, exist_ok=True)
    for name in BROKER_FILES:
        shutil.copy(pki / name, etc / name)
    shutil.copy(REFERENCE / "acl", etc / "acl")


class ReferenceBroker(Mosquitto):
    """mosquitto running config/mosquitto/mosquitto.conf and acl with the PKI files of ``pki``."""

    def __init__(self, workdir: Path, pki: Path, *, port: int | None = None) -> None:
        super().__init__(workdir, port=port)
        self.pki = pki
        self.etc = workdir / "etc-mosquitto-patrol"
        self.confd = workdir / "conf.d"
        install(pki, self.etc)

    def install_crl(self) -> None:
        """README.md: install the CRL that make_certs.py (re)wrote."""
        shutil.copy(self.pki / "crl.pem", self.etc / "crl.pem")

    def write_conf(self) -> None:
        self.confd.mkdir(exist_ok=True)
        (self.confd / "patrol.conf").write_text(reference_conf(self.etc, self.port))
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"include_dir {self.confd}\n"
        )

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if needle in line]
