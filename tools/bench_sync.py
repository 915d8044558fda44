#!/usr/bin/env python3
"""Sync throughput: payload bytes/s and payload/wire ratio of `tracecode sync`.

A virtual badge is flashed and provisioned by the station code (locked: host protocol
version 2, frames; or `--protocol 1`: developer mode, raw REPL + base64), then its flash
folder gets a log written directly in the documented format (docs/log-format.md), and the
station syncs it over the virtual console throttled to a UART's byte rate (baud / 10),
end to end through the command users run (`tracecode sync --port URL --json`).

Logs (`--log`):
  classroom  (default) log v2, 14 school days of one badge among 30 people in a classroom,
             8 h a day, everyone in range, the firmware's default scan schedule (a scan every
             120 s) and RPIs rotating every 10 min + 0..120 s: one v2 record per heard RPI
             lifetime (~6 scans), about 40 KB a day
  dense-v1   log v1, 200 encounters per hour around the clock (the figures of earlier docs)

Printed per baud rate: payload bytes, wire bytes during the pull, seconds, payload bytes/s,
payload/wire ratio, link utilisation (wire bytes/s during the pull over the link's bytes/s),
and the whole command's time.

    .venv/bin/python tools/bench_sync.py [--log classroom|dense-v1] [--days 14]
        [--protocol 2|1] [--baud 115200 921600]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.station import logfmt  # noqa: E402

CLASS_SIZE = 30
SCHOOL_HOURS = (8, 16)
SCAN_EVERY_S = 120
ROTATE_S = (600, 720)


def classroom_day(day: int, rnd: random.Random, *, people: int = CLASS_SIZE,
                  hours: tuple[int, int] = SCHOOL_HOURS, scan_every_s: int = SCAN_EVERY_S,
                  generation: int | None = None) -> bytes:
    """One day's v2 segment of a badge in a classroom: every other person in range from
    `hours[0]` to `hours[1]`, a scan every `scan_every_s` (a neighbour missed in 5% of
    scans), each neighbour's RPI changing every 600..720 s; one record per RPI lifetime
    (at most 24 scans), written in the order the badge writes them (when a lifetime ends)."""
    start, stop = hours[0] * 3600, hours[1] * 3600
    scans = list(range(start + rnd.randrange(scan_every_s), stop, scan_every_s))
    recs: list[tuple[int, bytes]] = []
    for _ in range(people - 1):
        t = start - rnd.randrange(*ROTATE_S)
        base = rnd.randint(-82, -58)
        while t < stop:
            life = rnd.randrange(*ROTATE_S)
            heard = [s for s in scans if t <= s < t + life and rnd.random() > 0.05]
            rpi, aem = rnd.randbytes(16), rnd.randbytes(4)
            for i in range(0, len(heard), 24):
                part = heard[i:i + 24]
                t0 = part[0] + rnd.randrange(4)
                entries, prev = [], t0
                for j, s in enumerate(part):
                    d = 0 if j == 0 else round((s - prev) / 2)
                    prev = prev + 2 * d if j else t0
                    typ = max(-100, min(-30, base + rnd.randint(-6, 6)))
                    entries.append((min(d, 255), typ, min(-30, typ + rnd.randint(0, 8))))
                recs.append((part[-1], logfmt.encode_v2(rpi, aem, t0, entries)))
            t += life
    recs.sort(key=lambda r: r[0])
    gen = generation if generation is not None else rnd.randrange(1, 1 << 32)
    return logfmt.encode_header(day, 2, gen) + b"".join(r for _, r in recs)


def dense_v1_day(day: int, rnd: random.Random, per_hour: int = 200) -> bytes:
    recs = []
    n = per_hour * 24
    for i in range(n):
        recs.append(logfmt.encode_record(rnd.randbytes(16), rnd.randbytes(4), i * 86400 // n,
                                         rnd.randint(0, 8), rnd.randint(1, 20),
                                         -90, -55, rnd.randint(-85, -60)))
    return logfmt.encode_header(day) + b"".join(recs)


def write_log(flash_root: Path, today: int, days: int, kind: str = "classroom",
              seed: int = 1, per_hour: int = 200) -> tuple[int, int]:
    """Fill /log with `days` whole past days; returns (payload bytes, records the station
    stores: one per v1 record, one per scan entry of a v2 record)."""
    rnd = random.Random(seed)
    log = flash_root / "log"
    log.mkdir(exist_ok=True)
    total = rows = 0
    for day in range(today - days, today):
        if kind == "classroom":
            data = classroom_day(day, rnd)
            parsed = logfmt.parse_segment(data, 0, day, 2)
        else:
            data = dense_v1_day(day, rnd, per_hour)
            parsed = logfmt.parse_segment(data, 0, day, 1)
        assert parsed.crc_errors == 0 and parsed.end == len(data)
        (log / f"{day}.tcl").write_bytes(data)
        total += len(data)
        rows += len(parsed.records)
    return total, rows


def bench(baud: int, days: int, workdir: Path, *, kind: str = "classroom", protocol: int = 2,
          per_hour: int = 200, backend: str | None = None) -> dict:
    from tracecode.cli import main as cli_main
    from tracecode.sim import Fleet
    from tracecode.station import flasher
    from tracecode.station.db import Database
    from tracecode.station.ports import BadgePort

    start_unix = int(time.time())
    fleet = Fleet(workdir=workdir / f"fleet-{baud}-{protocol}", seed=1, start_unix=start_unix,
                  backend=backend)
    try:
        badge = fleet.add_badge("bench", position=(0, 0), board="esp32-devkitc",
                                flash_size=8 * 1024 * 1024)
        badge.power_on()
        url = badge.console_url()
        dbp = workdir / f"station-{baud}-{protocol}.sqlite"
        opts = flasher.FlashOptions(board=flasher.Board.load("esp32-devkitc"), skip_image=True,
                                    aioble_mip=False, now=fleet.unix_time, lock=protocol == 2)
        with Database(dbp) as db:
            flasher.flash_badge(BadgePort(url), opts, db)
        today = int(fleet.unix_time()) // 86400
        payload, rows = write_log(Path(badge.flash.root), today, days, kind, seed=baud,
                                  per_hour=per_hour)
        badge.flash.rescan()
        badge.console.throttle(baud / 10)
        out = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stdout(out):
            rc = cli_main(["sync", "--port", url, "--db", str(dbp), "--baud", str(baud),
                           "--json"])
        wall = time.monotonic() - t0
        assert rc == 0, out.getvalue()[-2000:]
        rep = json.loads(out.getvalue())[0]
        assert rep["records_new"] == rows, (rep["records_new"], rows)
        assert rep["payload_bytes"] == payload, (rep["payload_bytes"], payload)
        assert rep["protocol"] == protocol, rep["protocol"]
        return {"baud": baud, "protocol": protocol, "payload": rep["payload_bytes"],
                "wire": rep["pull_wire_bytes"], "seconds": rep["pull_seconds"],
                "rate": rep["payload_bytes_per_s"], "ratio": rep["payload_wire_ratio"],
                "link": rep["pull_wire_bytes"] / rep["pull_seconds"] / (baud / 10),
                "records": rep["records_new"], "command_s": wall,
                "rerequests": rep.get("rerequests", 0)}
    finally:
        fleet.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", choices=("classroom", "dense-v1"), default="classroom")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--per-hour", type=int, default=200, help="dense-v1: encounters per hour")
    ap.add_argument("--protocol", type=int, choices=(1, 2), default=2,
                    help="2: locked badge, framed protocol (default); 1: developer mode")
    ap.add_argument("--baud", type=int, nargs="+", default=[115200, 921600])
    ap.add_argument("--backend", choices=("imitation", "vm"), default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        print(f"badge log: {args.log}, {args.days} days; host protocol {args.protocol}")
        print(f"{'baud':>8} {'payload B':>10} {'wire B':>10} {'records':>8} {'pull s':>7} "
              f"{'payload B/s':>12} {'ratio':>6} {'wire use':>8} {'command s':>9}")
        for baud in args.baud:
            r = bench(baud, args.days, Path(tmp), kind=args.log, protocol=args.protocol,
                      per_hour=args.per_hour, backend=args.backend)
            print(f"{r['baud']:>8} {r['payload']:>10} {r['wire']:>10} {r['records']:>8} "
                  f"{r['seconds']:>7.1f} {r['rate']:>12.0f} {r['ratio']:>6.3f} "
                  f"{r['link']:>8.2f} {r['command_s']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
