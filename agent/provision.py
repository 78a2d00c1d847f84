"""``patrol-agent provision``: write a vehicle's config from flags, set file modes, run doctor.

Runs in the CLI process, as root on the unit (or into any path for a lab).
The config is written 0640 and, where the service group exists, owned by
root:patrol-agent; the private key gets the same. An existing config is
only replaced with ``--force``.
"""

from __future__ import annotations

import contextlib
import grp
import os
from pathlib import Path
from typing import Any

import yaml

from agent.config import AgentConfig

GROUP = "patrol-agent"


def build(args: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle": {"id": args.vehicle_id, "unit": args.unit, "directorate": args.directorate},
        "gnss": {"port": args.gnss_port, "baudrate": args.baudrate},
        "mqtt": {"brokers": args.broker, "tls": {"ca_file": args.ca, "cert_file": args.cert, "key_file": args.key}},
    }
    if args.state_dir:
        data["state_dir"] = args.state_dir
    if args.runtime_dir:
        data["runtime_dir"] = args.runtime_dir
    if args.lab:
        data["mqtt"]["lab_mode"] = True
    if args.simulation:
        data["simulation"] = True
    AgentConfig.model_validate(data)  # refuse to write what the daemon would refuse to read
    return data


def secure(path: Path) -> None:
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # no service group here (a lab): root-only is still safe
            os.chown(path, 0, grp.getgrnam(GROUP).gr_gid)


def write(args: Any) -> Path:
    path = Path(args.config)
    if path.exists() and not args.force:
        raise FileExistsError(f"{path} exists (use --force to replace it)")
    data = build(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# patrol-agent config for vehicle {args.vehicle_id}, written by `patrol-agent provision`.\n"
              "# Every other key keeps its default: see config/agent.example.yaml.\n")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as out:
        out.write(header + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    secure(path)
    if args.key:
        secure(Path(args.key))
    return path
