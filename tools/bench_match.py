#!/usr/bin/env python3
"""Matcher benchmark: N diagnosis keys against a log of heard RPIs with planted true matches.

Prints keys/s on one core and on all cores. Exits non-zero if a planted match is missed or a
false one is found. Usage: tools/bench_match.py [--keys 200000] [--heard 10000] [--planted 20]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from tracecode import en, native
from tracecode.export import DiagnosisKey
from tracecode.matcher import Sighting, match

BASE_ENIN = 2_900_000 // 144 * 144  # a day in 2025


def build(n_keys: int, n_heard: int, n_planted: int, seed: int):
    rng = random.Random(seed)
    days = 14
    keys = [
        DiagnosisKey(rng.randbytes(16), BASE_ENIN + 144 * rng.randrange(days), 144)
        for _ in range(n_keys)
    ]
    planted = set()
    sightings = []
    meta = en.encode_metadata(-8)
    for i in rng.sample(range(n_keys), n_planted):
        k = keys[i]
        j = rng.randrange(144)
        interval = k.rolling_start_interval_number + j
        r = en.rpi(en.rpik(k.key_data), interval)
        a = en.aem(en.aemk(k.key_data), r, meta)
        t = interval * 600 + rng.randrange(600)
        sightings.append(Sighting(t, r, a, -60))
        planted.add((k.key_data, interval))
    while len(sightings) < n_heard:
        t = (BASE_ENIN + rng.randrange(144 * days)) * 600 + rng.randrange(600)
        sightings.append(Sighting(t, rng.randbytes(16), rng.randbytes(4), -70))
    rng.shuffle(sightings)
    return keys, sightings, planted


def run(keys, sightings, planted, jobs):
    t0 = time.perf_counter()
    got = match(keys, sightings, jobs=jobs)
    dt = time.perf_counter() - t0
    found = {(m.key.key_data, m.interval) for m in got}
    missed = planted - found
    false = found - planted
    return dt, missed, false


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--heard", type=int, default=10_000)
    ap.add_argument("--planted", type=int, default=25)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    keys, sightings, planted = build(args.keys, args.heard, args.planted, args.seed)
    cores = os.cpu_count() or 1
    print(f"matcher benchmark: {len(keys):,} diagnosis keys x {len(sightings):,} heard RPIs, {len(planted)} planted matches")
    print(f"  kernel: {native.kernel_name()}")
    ok = True
    for jobs in (1, cores):
        dt, missed, false = run(keys, sightings, planted, jobs)
        print(f"  jobs={jobs}: {dt:6.2f} s  {len(keys) / dt:>10,.0f} keys/s  ({len(keys) * 144 / dt:,.0f} RPIs/s)")
        if missed or false:
            ok = False
            print(f"  FAIL: {len(missed)} planted matches missed, {len(false)} false matches", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
