"""RAM high-water mark of the badge firmware on the real MicroPython VM among a crowd.

One VM badge (the project firmware, provisioned as `tracecode flash` leaves it) in the middle
of N advertisers for a virtual duration: badges running the firmware on the fast imitation
backend (`--crowd-kind badges`), or phones (`--crowd-kind phones`): EN v1.2 advertisers that
only broadcast (RPI and AEM from a random TEK, a new RPI and random address every 10 minutes,
every 250 ms), cheap enough for a virtual day. The badge under test sees the same thing
either way: N distinct RPIs in every scan. At every wait of the
VM (sleep, asyncio idle, REPL input) the badge collects garbage and reads gc.mem_alloc(): the
live heap; the highest value is the high-water mark. Printed: the 64-bit figure, the VM's own
hardware modules (C on a chip) at the end of its set-up, and the firmware's share as a 32-bit
(ESP32) equivalent: (high - modules) / 1.7 (vmbadge.HEAP_FACTOR_64BIT, docs/sim.md).
Live data at waits: transient allocations inside a wake-up (between two waits) add to it.

    .venv/bin/python tools/bench_vm_ram.py [--minutes 60] [--crowd 200] [--crowd-kind phones] [--json]
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


class Phone:
    """An EN advertiser that only broadcasts: what the medium needs of a radio (`badge`,
    `segments`) and of a transmitter (`name`, `position`, TX power, body loss)."""

    INTERVAL_S = 600

    def __init__(self, fleet, name: str, pos: tuple[float, float], rng: random.Random):
        from tracecode import en

        self.badge = self
        self.name = name
        self.fleet = fleet
        self._pos = pos
        self.tx_power_dbm = 0.0
        self.body_loss_db = 0.0
        self._tek = rng.randbytes(16)
        self._rpik, self._aemk = en.rpik(self._tek), en.aemk(self._tek)
        self._meta = en.encode_metadata(0)
        self._rng = rng
        self._cache: dict[int, object] = {}
        fleet.medium.attach(self)

    def position(self, t: float | None = None) -> tuple[float, float]:
        return self._pos

    def _segment(self, k: int):
        from tracecode import en
        from tracecode.sim.radio import AdvSegment

        seg = self._cache.get(k)
        if seg is None:
            t0 = k * self.INTERVAL_S
            interval = en.enin(self.fleet.start_unix + t0)
            rpi = en.rpi(self._rpik, interval)
            addr = bytes([self._rng.randrange(64)]) + self._rng.randbytes(5)  # non-resolvable private
            seg = AdvSegment(float(t0), float(t0 + self.INTERVAL_S), 1, addr, 3,
                             en.advertisement(rpi, en.aem(self._aemk, rpi, self._meta)), 0.25)
            self._cache = {j: v for j, v in self._cache.items() if j >= k - 1}
            self._cache[k] = seg
        return seg

    @property
    def segments(self) -> list:
        k = int(self.fleet.clock() // self.INTERVAL_S)
        return [s for s in (self._segment(k - 1) if k else None, self._segment(k)) if s is not None]

    @segments.setter
    def segments(self, value) -> None:   # the medium prunes ended segments: they are made on demand
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="virtual minutes (default 60)")
    ap.add_argument("--crowd", type=int, default=200, help="advertisers around the badge")
    ap.add_argument("--crowd-kind", choices=("badges", "phones"), default="badges",
                    help="badges: the firmware on the imitation (default); phones: broadcast-only EN advertisers")
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
        if i and a.crowd_kind == "phones":
            Phone(fleet, name, pos, rnd)
            continue
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
    out = {"virtual_minutes": a.minutes, "crowd": a.crowd, "crowd_kind": a.crowd_kind, "wall_s": round(wall, 1),
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
