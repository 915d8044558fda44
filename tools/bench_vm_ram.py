"""RAM high-water mark of the badge firmware on the real MicroPython VM among a crowd.

One VM badge (the project firmware, provisioned as `tracecode flash` leaves it) in the middle
of N advertisers on the fast imitation backend, for a virtual duration. At every wait of the
VM (sleep, asyncio idle, REPL input) the badge collects garbage and reads gc.mem_alloc(): the
live heap; the highest value is the high-water mark. Printed: the 64-bit figure, the VM's own
hardware modules (C on a chip) at the end of its set-up, and the firmware's share as a 32-bit
(ESP32) equivalent: (high - modules) / 1.7 (vmbadge.HEAP_FACTOR_64BIT, docs/sim.md).
Live data at waits: transient allocations inside a wake-up (between two waits) add to it.

    .venv/bin/python tools/bench_vm_ram.py [--minutes 60] [--crowd 200] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = 1709280000 + 7 * 3600


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="virtual minutes (default 60)")
    ap.add_argument("--crowd", type=int, default=200, help="advertisers around the badge")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from tracecode.sim import Fleet
    from tracecode.sim.vmbadge import HEAP_FACTOR_64BIT, vm_available

    why = vm_available()
    if why:
        print("bench_vm_ram: " + why, file=sys.stderr)
        return 4
    rnd = random.Random(3)
    work = Path(tempfile.mkdtemp(prefix="tcvmram"))
    fleet = Fleet(work, seed=1, start_unix=START)
    profile = json.loads((ROOT / "boards" / "esp32-devkitc.json").read_text())
    badges = []
    for i in range(a.crowd + 1):
        name = "me" if i == 0 else "p%03d" % i
        pos = (0.0, 0.0) if i == 0 else (rnd.uniform(-4, 4), rnd.uniform(-4, 4))
        extra = {"backend": "vm", "ram_probe": True} if i == 0 else {}
        b = fleet.add_badge(name, firmware_dir=str(ROOT / "firmware"), position=pos,
                            board="esp32-devkitc", **extra)
        doc = {"id": name, "board": "esp32-devkitc", "secret": hashlib.sha256(name.encode()).hexdigest(),
               "config": {}, "profile": profile}
        b.flash.write("/tc/prov.json", json.dumps(doc).encode())
        badges.append(b)
    me = badges[0]
    t0 = time.time()
    try:
        fleet.power_on_all()
        for b in badges:
            b.set_clock()
        fleet.run_until(a.minutes * 60)
        wall = time.time() - t0
        records = me.radio.stats["scan_results"]
    finally:
        fleet.close()
    high = me.mem_high
    modules = me.mem[0] if me.mem else 0
    fw32 = (high - modules) / HEAP_FACTOR_64BIT
    out = {"virtual_minutes": a.minutes, "crowd": a.crowd, "wall_s": round(wall, 1),
           "scan_results": records, "boots": me.boots, "heap": me.heapsize,
           "high_water_64bit": high, "vm_modules_64bit": modules,
           "firmware_high_water_32bit_equiv": int(fw32)}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print("%-34s %s" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
