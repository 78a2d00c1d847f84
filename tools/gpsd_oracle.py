"""Record gpsd's verdict on the generated NMEA cases: golden fixtures for the decoder.

Every case of ``tests/support/nmea_cases.py`` is written to
``tests/fixtures/nmea/gpsd/NAME.nmea`` and fed through gpsd exactly as gpsd's
own regression tests do (``gpsfake -s 38400 -1 -p``); what gpsd printed, with
the same filter as gpsd's ``regress-driver``, goes to ``NAME.nmea.chk``: its
TPV reports only (SKY is satellites, not fixes, and the echoed sentences are
in the ``.nmea``), each cut to the verdict: mode, time, status, lat, lon,
altMSL.
``tests/test_gnss_oracle.py`` then compares the decoder with those files, so
CI needs no gpsd. Run it again after changing the cases (needs Debian's
``gpsd`` and ``gpsd-clients``; takes about two seconds per case):

    .venv/bin/python tools/gpsd_oracle.py [--only PREFIX] [--check]

``--check`` regenerates the streams without gpsd and fails if a committed
``.nmea`` differs from what the generator gives (the fixtures are the
generator's, not edited by hand).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.nmea_cases import Case, all_cases  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "nmea" / "gpsd"

# regress-driver's GPSFILTER
_DROP = re.compile(r"^gpsd:|^gpsfake|GPS-DATA|WATCH|DEVICE|VERSION")
_DEVICE_FIELD = re.compile(r',"device":[^,}]*')
_KEPT = ("class", "mode", "time", "status", "lat", "lon", "altMSL")  # a fix's verdict; SKY, errors, speeds dropped


def gpsd_verdict(case: Case, workdir: Path, attempts: int = 3) -> str:
    log = workdir / f"{case.name}.log"
    log.write_text(case.text())
    for attempt in range(attempts):  # gpsfake sometimes loses the race with its gpsd on a loaded machine
        result = subprocess.run(["gpsfake", "-s", "38400", "-1", "-p", str(log)], capture_output=True, text=True,
                                timeout=300, check=False)
        if result.returncode == 0:
            break
        time.sleep(1 + attempt)
    else:
        raise RuntimeError(f"gpsfake failed on {case.name}: {result.stderr[-500:]}")
    kept = []
    for line in result.stdout.splitlines():
        if '"class":"TPV"' in line and not _DROP.search(line):
            tpv = json.loads(_DEVICE_FIELD.sub("", line))
            kept.append(json.dumps({k: tpv[k] for k in _KEPT if k in tpv}, separators=(",", ":")))
    return "\n".join(kept) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="only the cases whose name starts with this")
    parser.add_argument("--check", action="store_true", help="compare the committed streams with the generator")
    parser.add_argument("--resume", action="store_true", help="skip cases whose stream and verdict are there")
    args = parser.parse_args()
    cases = [c for c in all_cases() if c.name.startswith(args.only)]
    if args.check:
        stale = [c.name for c in cases if not (OUT / f"{c.name}.nmea").exists()
                 or (OUT / f"{c.name}.nmea").read_text() != c.text()]
        for name in stale:
            print(f"differs from the generator: {name}")
        return 1 if stale else 0
    if shutil.which("gpsfake") is None:
        print("gpsfake not found: apt-get install gpsd gpsd-clients", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases, 1):
            done = OUT / f"{case.name}.nmea"
            if args.resume and done.exists() and done.read_text() == case.text() and \
                    done.with_name(done.name + ".chk").exists():
                continue
            chk = gpsd_verdict(case, Path(tmp))
            (OUT / f"{case.name}.nmea").write_text(case.text())
            (OUT / f"{case.name}.nmea.chk").write_text(chk)
            tpvs = chk.count('"class":"TPV"')
            print(f"[{i}/{len(cases)}] {case.name}: {len(case.lines)} sentences, {tpvs} TPV", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
