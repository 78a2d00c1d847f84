"""``patrol-agent gnss decode``: a raw receiver capture in, one JSON line per epoch out.

The technicians' tool for a capture from the field, and our conformance
harness against gpsd. Runs in the CLI process; no thread of its own. Each
line says why an epoch has no fix (``no_fix_reason``) and whether the
receiver is in simulator mode (``simulated``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from datetime import date
from typing import IO

from drivers.gnss import DecoderCounters, Fix, NmeaDecoder


def iter_fixes(lines: Iterable[bytes], decoder: NmeaDecoder) -> Iterator[Fix]:
    """Every epoch of ``lines`` (raw bytes; lines starting with ``#`` are skipped)."""
    for raw in lines:
        if not raw.startswith(b"#"):
            yield from decoder.feed(raw)
    yield from decoder.flush(end_of_stream=True)


def decode_stream(lines: Iterable[bytes], out: IO[str], default_day: date | None) -> DecoderCounters:
    decoder = NmeaDecoder(default_day=default_day)
    for fix in iter_fixes(lines, decoder):
        out.write(json.dumps(fix.as_report()) + "\n")
    return decoder.counters


def run(path: str, day: date | None, *, summary: bool) -> int:
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"patrol-agent gnss decode: {path}: {exc.strerror}", file=sys.stderr)
        return 2
    with stream:
        counters = decode_stream(stream, sys.stdout, day)
    if summary:
        print(
            "sentences {sentences}, checksum errors {checksum_errors}, invalid {invalid_sentences}, "
            "garbage bytes {garbage_bytes}, epochs {epochs}, fixes {fixes}, late {late}, "
            "held and dropped {held_dropped}".format(**counters.as_dict()),
            file=sys.stderr,
        )
    if counters.sentences == 0:
        print("patrol-agent gnss decode: no NMEA found (wrong baud rate when captured?)", file=sys.stderr)
        return 1
    return 0
