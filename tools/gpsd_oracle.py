"""gpsd as the oracle: record its verdict on NMEA streams, and score the decoder against it.

The golden fixtures: every case of ``tests/support/nmea_cases.py`` is written
to ``tests/fixtures/nmea/gpsd/NAME.nmea`` and fed through gpsd exactly as
gpsd's own regression tests do (``gpsfake -s 38400 -1 -p``); what gpsd
printed, with the same filter as gpsd's ``regress-driver``, goes to
``NAME.nmea.chk``: gpsd's VERSION line first (which gpsd said it), then its
TPV reports only (SKY is satellites, not fixes, and the echoed sentences are
in the ``.nmea``), each cut to the verdict: mode, time, status, lat, lon,
altMSL. ``tests/test_gnss_oracle.py`` then compares the decoder with those
files, so CI needs no gpsd.

The oracle is the gpsd that graded the shared captures (a recent master;
Debian's 3.27.5 from sid reproduces their .chk files line for line), not
bookworm's 3.22. It is built from Debian's source package into a prefix
(``--gpsd /opt/gpsd-3.27.5``, or ``GPSD_PREFIX``), never over the system's:

    apt-get install scons python3-dev
    # gpsd_3.27.5.orig.tar.xz from deb.debian.org/debian/pool/main/g/gpsd/
    scons prefix=/opt/gpsd-3.27.5 python_libdir=/opt/gpsd-3.27.5/lib/python3 \\
        udevdir=/opt/gpsd-3.27.5/lib/udev unitdir=/opt/gpsd-3.27.5/lib/systemd qt=no xgps=no \\
        dbus_export=no bluez=no manbuild=no systemd=no libgpsmm=no install

Commands (about two seconds per stream):

    .venv/bin/python tools/gpsd_oracle.py [--only PREFIX] [--resume]   # regenerate the fixtures
    .venv/bin/python tools/gpsd_oracle.py check     # the committed streams are the generator's
    .venv/bin/python tools/gpsd_oracle.py run --out DIR LOG...          # gpsd's verdict on any capture
    .venv/bin/python tools/gpsd_oracle.py score [--chk-dir DIR] LOG...  # the decoder against it

``score`` prints recall, mode agreement and positions where gpsd has no fix,
per stream and in total, with gpsd's fix for an epoch read two ways: the last
TPV of the highest mode (the shared captures' README) and the last TPV.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.conformance import Comparison, compare  # noqa: E402
from tests.support.nmea_cases import all_cases  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "nmea" / "gpsd"

# regress-driver's GPSFILTER
_DROP = re.compile(r"^gpsd:|^gpsfake|GPS-DATA|WATCH|DEVICE")
_DEVICE_FIELD = re.compile(r',"device":[^,}]*')
_KEPT = ("class", "mode", "time", "status", "lat", "lon", "altMSL")  # a fix's verdict; SKY, errors, speeds dropped
_VERSION_KEPT = ("class", "release", "rev")


def gpsd_env(prefix: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if prefix:
        root = Path(prefix)
        env["PATH"] = f"{root / 'sbin'}:{root / 'bin'}:{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(root / "lib" / "python3")
        env["LD_LIBRARY_PATH"] = str(root / "lib")
    return env


def gpsd_verdict(log: Path, env: dict[str, str], attempts: int = 3) -> str:
    """gpsd's VERSION line and its TPVs (cut to the verdict) for one capture."""
    for attempt in range(attempts):  # gpsfake sometimes loses the race with its gpsd on a loaded machine
        result = subprocess.run(["gpsfake", "-s", "38400", "-1", "-p", str(log)], capture_output=True, text=True,
                                timeout=1800, check=False, env=env)
        if result.returncode == 0:
            break
        time.sleep(1 + attempt)
    else:
        raise RuntimeError(f"gpsfake failed on {log.name}: {result.stderr[-500:]}")
    kept: list[str] = []
    for line in result.stdout.splitlines():
        if _DROP.search(line):
            continue
        if '"class":"VERSION"' in line and not kept:
            version = json.loads(line)
            kept.append(json.dumps({k: version[k] for k in _VERSION_KEPT if k in version}, separators=(",", ":")))
        elif '"class":"TPV"' in line:
            tpv = json.loads(_DEVICE_FIELD.sub("", line))
            kept.append(json.dumps({k: tpv[k] for k in _KEPT if k in tpv}, separators=(",", ":")))
    if not kept or '"VERSION"' not in kept[0]:
        raise RuntimeError(f"gpsd did not say its version on {log.name}")
    return "\n".join(kept) + "\n"


def fixtures(args: argparse.Namespace, env: dict[str, str]) -> int:
    cases = [c for c in all_cases() if c.name.startswith(args.only)]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases, 1):
            done = OUT / f"{case.name}.nmea"
            if args.resume and done.exists() and done.read_text() == case.text() and \
                    done.with_name(done.name + ".chk").exists():
                continue
            log = Path(tmp) / f"{case.name}.log"
            log.write_text(case.text())
            chk = gpsd_verdict(log, env)
            (OUT / f"{case.name}.nmea").write_text(case.text())
            (OUT / f"{case.name}.nmea.chk").write_text(chk)
            tpvs = chk.count('"class":"TPV"')
            print(f"[{i}/{len(cases)}] {case.name}: {len(case.lines)} sentences, {tpvs} TPV", flush=True)
    return 0


def check(args: argparse.Namespace) -> int:
    cases = [c for c in all_cases() if c.name.startswith(args.only)]
    stale = [c.name for c in cases if not (OUT / f"{c.name}.nmea").exists()
             or (OUT / f"{c.name}.nmea").read_text() != c.text()]
    for name in stale:
        print(f"differs from the generator: {name}")
    return 1 if stale else 0


def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for log in map(Path, args.logs):
        chk = out / f"{log.name}.chk"
        if args.resume and chk.exists():
            continue
        chk.write_text(gpsd_verdict(log, env))
        print(f"{log.name}: {chk.read_text().count('TPV')} TPV", flush=True)
    return 0


def score(args: argparse.Namespace) -> int:
    for verdict in ("best", "last"):
        total = Comparison("TOTAL")
        print(f"--- gpsd's fix per epoch: {'last TPV of the highest mode' if verdict == 'best' else 'last TPV'}")
        for log in map(Path, args.logs):
            chk = Path(args.chk_dir) / f"{log.name}.chk" if args.chk_dir else log.with_name(log.name + ".chk")
            if not chk.exists():
                continue
            result = compare(log, chk=chk, verdict=verdict, gpsd_322=args.gpsd_322)
            if args.verbose or result.false_positions or result.matched < result.gpsd_fixes or \
                    result.mode_agree < result.matched:
                print(result.line())
                for miss in result.misses[: args.misses]:
                    print("    " + miss[:220])
            for name in ("gpsd_fixes", "matched", "mode_agree", "false_positions", "simulated", "ours"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
        print(f"{total.line()}  recall {total.match_ratio:.4f} mode {total.mode_ratio:.4f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="fixtures", choices=("fixtures", "check", "run", "score"))
    parser.add_argument("logs", nargs="*", help="captures (run, score)")
    parser.add_argument("--check", action="store_true", help="same as the check command")
    parser.add_argument("--gpsd", default=os.environ.get("GPSD_PREFIX", ""), help="prefix of the gpsd to use")
    parser.add_argument("--only", default="", help="only the cases whose name starts with this")
    parser.add_argument("--resume", action="store_true", help="skip streams whose verdict is there")
    parser.add_argument("--out", default="", help="run: directory for the NAME.chk files")
    parser.add_argument("--chk-dir", default="", help="score: gpsd's verdicts (default: NAME.chk beside NAME)")
    parser.add_argument("--gpsd-322", action="store_true", help="score: the verdicts are gpsd 3.22's")
    parser.add_argument("--misses", type=int, default=4, help="score: misses shown per stream")
    parser.add_argument("-v", "--verbose", action="store_true", help="score: every stream, not only imperfect ones")
    args = parser.parse_intermixed_args()
    if args.check or args.command == "check":
        return check(args)
    if args.command == "score":
        return score(args)
    env = gpsd_env(args.gpsd)
    if shutil.which("gpsfake", path=env["PATH"]) is None:
        print("gpsfake not found: build gpsd into a prefix (see --help) and pass --gpsd PREFIX", file=sys.stderr)
        return 2
    if args.command == "run":
        if not args.out:
            parser.error("run needs --out DIR")
        return run(args, env)
    return fixtures(args, env)


if __name__ == "__main__":
    sys.exit(main())
