"""``patrol-agent provision``: install a vehicle's certificate and key, write its config, then run doctor.

Runs in the CLI process, as root on the unit (or under ``--root`` for a lab
or a test). It copies the CA, the client certificate and its key into the
config directory (``/etc/patrol-agent``): certificates 0644, the key and the
config 0640 root:patrol-agent where that group exists, 0600 otherwise. The
config names them by ABSOLUTE path (the service runs from ``/``). Nothing is
written that ``run`` would refuse: the copies and the config are checked by
the same function ``run``, ``config check`` and doctor use
(:func:`agent.security.check`) under temporary names, and only then put in
place. Without ``--ca/--cert/--key`` that check refuses (the reason is shown)
unless ``--lab`` says this is a lab. An existing config is only replaced with
``--force``, except the example that ``make install`` put there.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
from pathlib import Path
from typing import Any

import yaml

from agent.errors import ConfigError

GROUP = "patrol-agent"
#: the first line of config/agent.example.yaml, which `make install` puts in place until provision replaces it
EXAMPLE_TITLE = "# patrol-agent configuration: every key, with its default and why."
CONFIG_DIR = Path("etc/patrol-agent")  # under --root (default /)
MAX_PEM_BYTES = 1 << 20

def panic_button(text: str) -> dict[str, Any]:
    """``NAME:PIN[:OPTIONS]`` -> a ``inputs.panic_buttons`` entry (validated later, with the whole config)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:PIN[:OPTION,...], e.g. driver:17:press")
    button: dict[str, Any] = {"name": parts[0], "pin": int(parts[1])}
    level = None
    for option in filter(None, (parts[2].split(",") if len(parts) == 3 else [])):
        name, _, value = option.partition("=")
        if name in ("press", "hold") and (not value or name == "hold"):
            button["trigger"] = name
            if value:
                button["hold_s"] = _number(text, option, value)
        elif name in ("active_low", "active_high") and not value:
            level = name.removeprefix("active_")
        elif name == "pull" and value in ("up", "down", "none"):
            button["pull"] = value
        elif name == "debounce" and value.isdigit():
            button["debounce_ms"] = int(value)
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown option {option!r} (see --help)")
    if level is not None:
        if button.get("pull") == "none":
            button["active"] = level
        else:
            button.setdefault("pull", "down" if level == "high" else "up")
            if (button["pull"] == "down") != (level == "high"):
                button["active"] = level  # contradicts the pull: the config check says why
    return button


def _number(text: str, option: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {option!r} needs a number of seconds") from None


def build(args: Any, files: dict[str, Path | None]) -> dict[str, Any]:
    tls = {key: str(path) if path is not None else None for key, path in files.items()}
    data: dict[str, Any] = {
        "vehicle": {"id": args.vehicle_id, "unit": args.unit, "directorate": args.directorate},
        "gnss": {"port": args.gnss_port, "baudrate": args.baudrate},
        "mqtt": {"brokers": args.broker, "tls": tls},
    }
    if args.panic_button:
        data["inputs"] = {"panic_buttons": args.panic_button}
    if args.state_dir:
        data["state_dir"] = str(Path(args.state_dir).absolute())
    if args.runtime_dir:
        data["runtime_dir"] = str(Path(args.runtime_dir).absolute())
    if args.lab:
        data["mqtt"]["lab_mode"] = True
    if args.simulation:
        data["simulation"] = True
    return data


def _service_gid() -> int | None:
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:  # no service group here (a lab): owner-only is still safe
        return None


def _write(path: Path, data: bytes, mode: int, gid: int | None) -> None:
    """A new file (never through a symlink), with its mode and owner set before anything is in it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if gid is not None:
            os.fchown(fd, 0, gid)
        elif os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_source(label: str, path: Path) -> bytes:
    try:
        with path.open("rb") as src:
            return src.read(MAX_PEM_BYTES)
    except OSError as exc:
        raise ConfigError([f"--{label} {path}: {exc.strerror or exc}"]) from None


def write(args: Any) -> tuple[Path, list[str]]:
    """Install the files and the config; return the config's path and the check's warnings."""
    from agent.security import check

    root = Path(args.root or "/").absolute()
    conf_dir = root / CONFIG_DIR
    config = Path(args.config).absolute() if args.config else conf_dir / "agent.yaml"
    if config.exists() and not args.force and not _is_the_example(config):
        raise FileExistsError(f"{config} exists (use --force to replace it)")
    gid = _service_gid()
    sources = {"ca_file": ("ca", args.ca, "ca.crt", 0o644), "cert_file": ("cert", args.cert, "vehicle.crt", 0o644),
               "key_file": ("key", args.key, "vehicle.key", 0o640 if gid is not None else 0o600)}
    contents = {key: _read_source(label, Path(src)) for key, (label, src, _, _) in sources.items() if src}
    conf_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(conf_dir, 0, gid if gid is not None else 0)
    os.chmod(conf_dir, 0o750 if gid is not None else 0o755)
    config.parent.mkdir(parents=True, exist_ok=True)
    final = {key: (conf_dir / sources[key][2] if key in contents else None) for key in sources}
    staged = {key: path.with_name(f".{path.name}.new") for key, path in final.items() if path is not None}
    staged_config = config.with_name(f".{config.name}.new")
    header = (f"# patrol-agent config for vehicle {args.vehicle_id}, written by `patrol-agent provision`.\n"
              "# Every other key keeps its default: see config/agent.example.yaml.\n").encode()
    mode = 0o640 if gid is not None else 0o600
    try:
        for key, path in staged.items():
            _write(path, contents[key], sources[key][3], gid)
        staged_files: dict[str, Path | None] = {key: staged.get(key) for key in sources}
        _write(staged_config, header + yaml.safe_dump(build(args, staged_files), sort_keys=False).encode(), mode, gid)
        checked = check(staged_config, {})  # what `run` will say; the environment is the service's business
        if checked.problems:
            renames = [(str(staged_config), str(config)), *((str(staged[k]), str(final[k])) for k in staged)]
            raise ConfigError([_unstage(problem, renames) for problem in checked.problems])
        for key, path in staged.items():
            os.replace(path, final[key])  # type: ignore[arg-type]
        _write(staged_config, header + yaml.safe_dump(build(args, final), sort_keys=False).encode(), mode, gid)
        os.replace(staged_config, config)
    finally:
        for path in (*staged.values(), staged_config):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    checked = check(config, {})
    if checked.problems:  # cannot happen unless the files changed under us: say so rather than pass
        raise ConfigError(checked.problems)
    return config, checked.warnings


def _is_the_example(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as src:
            return src.readline().rstrip("\n") == EXAMPLE_TITLE
    except OSError:
        return False


def _unstage(problem: str, renames: list[tuple[str, str]]) -> str:
    for staged, final in renames:
        problem = problem.replace(staged, final)
    return problem
