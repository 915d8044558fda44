"""Smallest MicroPython heap the badge firmware boots in, on the real MicroPython VM.

The badge is provisioned as `tracecode flash` leaves it, with a long-running badge's flash: a
30 KB log file of today (1200 records). For each heap size (`-X heapsize`) it boots the badge,
runs 40 virtual seconds and reports whether tracing started (the radio advertised) or the boot
failed (the MemoryError the console showed, or a reset loop: a locked badge resets when its
program fails). The search bisects between
--low and --high in steps of --step bytes, in developer mode and in locked mode. The VM badge's
default heap (vmbadge.DEFAULT_HEAP) stands for an ESP32's ~100 KB on 64 bits (docs/sim.md).

    .venv/bin/python tools/bench_vm_heap.py [--low 170000] [--high 223232] [--step 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from campaign_badge import provision_fast_scan, seed_today  # noqa: E402  the power-cut campaign's workload


def boots(heap: int, locked: bool, workdir: Path) -> tuple[bool, str]:
    """(tracing started, what the console said about the failure)."""
    from tracecode.sim import Fleet

    f = Fleet(workdir, seed=7, backend="vm")
    try:
        b = f.add_badge("b", firmware_dir=ROOT / "firmware", board="esp32-devkitc", heapsize=heap)
        seed_today(b, int(f.unix_time()) // 86400, 1200, random.Random(5))
        provision_fast_scan(b, "b")
        if locked:
            b.flash.write("/tc/locked", b"")
        try:
            b.power_on()
            b.set_clock()
        except RuntimeError as e:
            # a boot that fails in locked mode resets and boots again, in a loop that
            # keeps the simulation's driver from returning
            return False, "no boot: a reset loop (%s)" % e
        for _ in range(40):
            f.run_for(1.0)
            if b.radio.stats["adv_starts"] or b.boots > 3:
                break
        text = bytes(b.console.transcript).decode("utf-8", "replace")
        err = next((ln.strip() for ln in text.splitlines() if "Error" in ln), "")
        ok = b.radio.stats["adv_starts"] > 0
        if not ok and not err:
            err = "no tracing after %d boots" % b.boots
        return ok, err
    finally:
        f.close()


def smallest(locked: bool, low: int, high: int, step: int, tmp: Path, log) -> dict:
    tried = {}

    def ok(h: int) -> bool:
        if h not in tried:
            t = time.monotonic()
            tried[h] = boots(h, locked, tmp / ("%s-%d" % ("locked" if locked else "dev", h)))
            log("%s heap %d: %s (%.0f s)" % ("locked" if locked else "developer", h,
                                             "boots" if tried[h][0] else tried[h][1],
                                             time.monotonic() - t))
        return tried[h][0]

    if not ok(high):
        return {"smallest": None, "fails_at": high, "error": tried[high][1], "tried": len(tried)}
    lo, hi = low, high                  # hi boots; lo is below the search or fails
    if ok(lo):
        return {"smallest": lo, "fails_at": None, "error": "", "tried": len(tried)}
    while hi - lo > step:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return {"smallest": hi, "fails_at": lo, "error": tried[lo][1], "tried": len(tried)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--low", type=int, default=170000, help="smallest heap tried (bytes)")
    ap.add_argument("--high", type=int, default=None, help="largest (default: the VM badge's)")
    ap.add_argument("--step", type=int, default=5000, help="search resolution (bytes)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from tracecode.sim.vmbadge import DEFAULT_HEAP, vm_available

    why = vm_available()
    if why:
        print("bench_vm_heap: the MicroPython VM is not available: %s" % why, file=sys.stderr)
        return 2
    high = a.high or DEFAULT_HEAP
    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    out = {"default_heap": DEFAULT_HEAP, "step": a.step}
    with tempfile.TemporaryDirectory(prefix="tc-heap-") as tmp:
        for mode, locked in (("developer", False), ("locked", True)):
            r = smallest(locked, a.low, high, a.step, Path(tmp), log)
            r["margin"] = (None if r["smallest"] is None
                           else round(1 - r["smallest"] / DEFAULT_HEAP, 3))
            out[mode] = r
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for mode in ("developer", "locked"):
            r = out[mode]
            if r["smallest"] is None:
                print("%-9s does not boot at the default heap %d: %s" % (mode, high, r["error"]))
            else:
                print("%-9s boots at %d bytes (fails at %s: %s); margin below the default %d: %.1f %%"
                      % (mode, r["smallest"], r["fails_at"], r["error"] or "-", DEFAULT_HEAP,
                         100 * r["margin"]))
    return 0 if out["developer"]["smallest"] and out["locked"]["smallest"] else 1


if __name__ == "__main__":
    sys.exit(main())
