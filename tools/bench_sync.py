#!/usr/bin/env python3
"""Sync throughput: payload bytes/s and payload/wire ratio of `tracecode sync`.

A virtual badge is flashed and provisioned by the station code, then its flash folder gets
14 days of 200 encounters per hour written directly in the documented log format
(docs/log-format.md), and the station syncs it over the virtual console throttled to a
UART's byte rate (baud / 10). Printed per baud rate: payload bytes, wire bytes during the
pull, seconds, payload bytes/s, payload/wire ratio, and the link utilisation
(wire bytes/s during the pull over the link's bytes/s).

    .venv/bin/python tools/bench_sync.py [--days 14] [--per-hour 200] [--baud 115200 921600]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.sim import Fleet  # noqa: E402
from tracecode.station import flasher, logfmt  # noqa: E402
from tracecode.station.db import Database  # noqa: E402
from tracecode.station.ports import BadgePort  # noqa: E402
from tracecode.station.sync import sync_badge  # noqa: E402


def write_log(flash_root: Path, today: int, days: int, per_hour: int, seed: int) -> int:
    """Fill /log with `days` whole past days of encounter records; returns payload bytes."""
    rnd = random.Random(seed)
    log = flash_root / "log"
    log.mkdir(exist_ok=True)
    total = 0
    for day in range(today - days, today):
        recs = []
        n = per_hour * 24
        for i in range(n):
            first = i * 86400 // n
            recs.append(logfmt.encode_record(rnd.randbytes(16), rnd.randbytes(4), first,
                                             rnd.randint(0, 8), rnd.randint(1, 20),
                                             -90, -55, rnd.randint(-85, -60)))
        data = logfmt.encode_header(day) + b"".join(recs)
        (log / f"{day}.tcl").write_bytes(data)
        total += len(data)
    return total


def bench(baud: int, days: int, per_hour: int, workdir: Path) -> dict:
    start_unix = int(time.time())
    fleet = Fleet(workdir=workdir / f"fleet-{baud}", seed=1, start_unix=start_unix)
    try:
        badge = fleet.add_badge("bench", position=(0, 0), board="esp32-devkitc",
                                flash_size=8 * 1024 * 1024)
        badge.power_on()
        url = badge.console_url()
        db = Database(workdir / f"station-{baud}.sqlite")
        opts = flasher.FlashOptions(board=flasher.Board.load("esp32-devkitc"), skip_image=True,
                                    aioble_mip=False, now=fleet.unix_time)
        flasher.flash_badge(BadgePort(url), opts, db)
        today = int(fleet.unix_time()) // 86400
        payload = write_log(Path(badge.flash.root), today, days, per_hour, seed=baud)
        badge.flash.rescan()
        badge.console.throttle(baud / 10)
        rep = sync_badge(db, url, now=fleet.unix_time, baudrate=baud)
        assert rep.records_new == days * per_hour * 24, rep.records_new
        assert rep.payload_bytes == payload, (rep.payload_bytes, payload)
        db.close()
        return {"baud": baud, "payload": rep.payload_bytes, "wire": rep.pull_wire_bytes,
                "seconds": rep.pull_seconds, "rate": rep.throughput, "ratio": rep.ratio,
                "link": rep.pull_wire_bytes / rep.pull_seconds / (baud / 10), "records": rep.records_new}
    finally:
        fleet.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--per-hour", type=int, default=200)
    ap.add_argument("--baud", type=int, nargs="+", default=[115200, 921600])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        print(f"badge log: {args.days} days x {args.per_hour} encounters/hour = "
              f"{args.days * args.per_hour * 24} records "
              f"({args.days * (16 + args.per_hour * 24 * 32)} bytes)")
        print(f"{'baud':>8} {'payload B':>10} {'wire B':>10} {'seconds':>8} "
              f"{'payload B/s':>12} {'ratio':>6} {'wire use':>8}")
        for baud in args.baud:
            r = bench(baud, args.days, args.per_hour, Path(tmp))
            print(f"{r['baud']:>8} {r['payload']:>10} {r['wire']:>10} {r['seconds']:>8.1f} "
                  f"{r['rate']:>12.0f} {r['ratio']:>6.3f} {r['link']:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
