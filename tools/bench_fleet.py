#!/usr/bin/env python3
"""Fleet benchmark: N virtual badges running the project firmware for D simulated days.

People work in groups (an office of 5 desks 1.5 m apart, 09:00-17:00 on workdays) and go home
(100 m apart) otherwise, so each badge hears its group by day and nobody by night.
Prints: badges, simulated days, wall seconds, simulated-seconds per wall-second, events,
adverts on air, scans, scan results, records logged.

    .venv/bin/python tools/bench_fleet.py --badges 50 --days 14
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.sim import Fleet, Path as SimPath  # noqa: E402

START = 1709280000 - 8 * 3600   # 2024-03-01 00:00 UTC (a Friday)


def daily_path(i: int, group_size: int) -> SimPath:
    g, k = divmod(i, group_size)
    home = (1000.0 + 100.0 * i, 1000.0)
    desk = (30.0 * g + 1.5 * k, 0.0)
    h = 3600.0
    pts = [(0, *home), (9 * h - 600, *home), (9 * h, *desk), (17 * h, *desk),
           (17 * h + 600, *home), (24 * h, *home)]
    return SimPath(pts, repeat=86400.0)


def provision(badge, name: str, board: str) -> None:
    fd = Path(badge.flash.root)
    (fd / "tc").mkdir(parents=True, exist_ok=True)
    profile = json.loads((ROOT / "boards" / (board + ".json")).read_text())
    doc = {"id": name, "board": board, "secret": hashlib.sha256(name.encode()).hexdigest(),
           "config": {}, "profile": profile}
    (fd / "tc" / "prov.json").write_text(json.dumps(doc))
    badge.flash.rescan()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--badges", type=int, default=50)
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--firmware", default=str(ROOT / "firmware"))
    ap.add_argument("--board", default="esp32-devkitc")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        fleet = Fleet(tmp, seed=1, start_unix=START)
        try:
            for i in range(args.badges):
                name = "b%03d" % i
                b = fleet.add_badge(name, firmware_dir=args.firmware, board=args.board,
                                    path=daily_path(i, args.group))
                provision(b, name, args.board)
            fleet.power_on_all()
            for b in fleet.badges.values():
                b.set_clock()
            t0 = time.perf_counter()
            c0 = time.process_time()
            end = args.days * 86400
            step = 86400.0
            t = 0.0
            while t < end:
                t = min(end, t + step)
                fleet.run_until(t)
                if not args.json:
                    print("  day %5.1f  wall %6.1f s" % (t / 86400, time.perf_counter() - t0),
                          file=sys.stderr, flush=True)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            summ = fleet.summary()
            crashed = [s["badge"] for s in summ if b"Traceback" in bytes(fleet.badges[s["badge"]].console.transcript)]
            res = {
                "badges": args.badges,
                "simulated_days": args.days,
                "wall_seconds": round(wall, 2),
                "process_cpu_seconds": round(cpu, 2),
                "sim_seconds_per_wall_second": round(end / wall, 1),
                "badge_sim_seconds_per_wall_second": round(end * args.badges / wall, 1),
                "events": fleet.events_processed,
                "adverts_on_air": sum(s["adverts"] for s in summ),
                "scans": sum(s["scans"] for s in summ),
                "scan_results": sum(s["scan_results"] for s in summ),
                "records_logged": sum(s["records_logged"] for s in summ),
                "badges_with_tracebacks": crashed,
            }
        finally:
            fleet.close()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print("%-34s %s" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
