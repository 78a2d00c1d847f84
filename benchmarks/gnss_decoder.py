"""Throughput of the agent's NMEA decoder against bare ``pynmea2.parse`` on the same input.

Both run in the same process on the same bytes (the nine shared receiver
captures when present, else the simulated patrol track), interleaved over
several rounds, so the ratio holds on a noisy shared machine. Prints
sentences per second for each and the ratio.

    .venv/bin/python benchmarks/gnss_decoder.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pynmea2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.gnss import NmeaDecoder
from drivers.gnss.simulate import track

CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "nmea-captures"


def corpus() -> tuple[str, bytes]:
    if CAPTURES.is_dir():
        chunks = []
        for log in sorted(CAPTURES.glob("*.log")):
            chunks.append(b"".join(line for line in log.read_bytes().splitlines(keepends=True)
                                   if not line.startswith(b"#")))
        return "nine shared receiver captures", b"".join(chunks)
    return "simulated patrol track", "".join(text for _, text in track()).encode()


def bare_pynmea2(lines: list[str]) -> int:
    parsed = 0
    for line in lines:
        try:
            pynmea2.parse(line, check=True)
            parsed += 1
        except pynmea2.ParseError:
            pass
    return parsed


def agent_decoder(data: bytes) -> int:
    decoder = NmeaDecoder()
    for start in range(0, len(data), 512):  # as a serial port delivers it
        decoder.feed(data[start:start + 512])
    decoder.flush(end_of_stream=True)
    return decoder.counters.sentences


def main() -> None:
    name, data = corpus()
    lines = [line.decode("ascii", "replace") for line in data.splitlines() if line.startswith(b"$")]
    ours_rates, bare_rates = [], []
    for _ in range(7):
        began = time.perf_counter()
        sentences = agent_decoder(data)
        ours_rates.append(sentences / (time.perf_counter() - began))
        began = time.perf_counter()
        parsed = bare_pynmea2(lines)
        bare_rates.append(parsed / (time.perf_counter() - began))
    ours, bare = statistics.median(ours_rates), statistics.median(bare_rates)
    print(f"input: {name}, {len(data)} bytes, {len(lines)} lines")
    print(f"agent decoder (framing, checksum, fields, epochs -> Fix): {ours:10,.0f} sentences/s ({sentences} accepted)")
    print(f"bare pynmea2.parse(check=True), pre-split lines:          {bare:10,.0f} sentences/s ({parsed} parsed)")
    print(f"ratio agent / bare pynmea2: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
