"""The station as a normal package: a built wheel, installed into a clean virtual environment
outside the checkout, demos, plans a flash, boots a virtual badge, flashes and queries it.

Everything the wheel needs at run time (firmware/, boards/, scenarios/) must come from the
installed package (tracecode/_bundled), never from this checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "out", "*.egg-info", "__pycache__",
                              ".pytest_cache", "typings", "*.so")


def _run(cmd, cwd, timeout=120, check=True, **kw):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} -> {p.returncode}\nstdout:\n{p.stdout[-3000:]}\n"
                             f"stderr:\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(base / "dist"), str(src)], cwd=base, timeout=300)
    wheels = list((base / "dist").glob("tracecode-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    # The dependencies come from the index (or pip's cache), exactly as for a user.
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
         cwd=base, timeout=600)
    work = base / "work"
    work.mkdir()
    return env_dir / "bin", work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_carries_firmware_boards_and_scenarios(installed):
    bin_dir, work = installed
    out = _run([str(bin_dir / "python"), "-c",
                "from tracecode import resources as r; print(r.firmware_dir()); "
                "print(r.board_names()); print(sorted(p.name for p in r.scenarios_dir().iterdir()))"],
               cwd=work).stdout.splitlines()
    assert "site-packages/tracecode/_bundled/firmware" in out[0]
    assert not out[0].startswith(str(ROOT))
    assert "esp32-devkitc" in out[1]
    assert "office.yaml" in out[2]


def test_installed_demo_and_dry_run(installed):
    bin_dir, work = installed
    tc = str(bin_dir / "tracecode")
    demo = _run([tc, "demo", "--host-only"], cwd=work)
    assert "health codes: alice red, bob red, carol green" in demo.stdout
    dry = _run([tc, "flash", "--dry-run", "--board", "esp32-devkitc", "--skip-image",
                "--port", "socket://127.0.0.1:9"], cwd=work)
    assert re.search(r"site-packages/tracecode/_bundled/firmware/main\.py -> /main\.py", dry.stdout)
    assert not (work / "tracecode.sqlite").exists()   # a dry run creates nothing


def test_installed_sim_badge_boots_the_shipped_firmware(installed):
    bin_dir, work = installed
    tc = str(bin_dir / "tracecode")
    fw = _run([str(bin_dir / "python"), "-c",
               "from tracecode import resources; print(resources.firmware_dir())"],
              cwd=work).stdout.strip()
    port = _free_port()
    badge = subprocess.Popen([tc, "sim", "badge", "--port-socket", str(port), "--firmware", fw,
                              "--set-clock", "--seconds", "60"], cwd=work,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = badge.stdout.readline()
        assert re.match(r"virtual badge \S+ \(id tc-[0-9a-f]{12}\) running", line), line
        url = f"socket://127.0.0.1:{port}"
        _run([tc, "db", "init", "--db", "st.sqlite"], cwd=work)
        deadline = time.monotonic() + 20
        while True:   # the shipped firmware answers the host protocol once it has booted
            st = _run([tc, "status", "--port", url, "--db", "st.sqlite", "--json"], cwd=work,
                      check=False, timeout=60)
            doc = json.loads(st.stdout) if st.stdout.strip() else {}
            live = [b for b in doc.get("badges", []) if b.get("attached") == url]
            if live and live[0].get("fw") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert live and live[0]["fw"], (st.stdout, st.stderr)
        shipped = re.search(r'VERSION\s*=\s*"([^"]+)"',
                            (Path(fw) / "tcbadge" / "__init__.py").read_text()).group(1)
        assert live[0]["fw"] == shipped
        # not provisioned by this station: the firmware says so, it did not crash
        assert "unknown badge" in live[0]["error"]
    finally:
        badge.terminate()
        badge.wait(10)


def test_installed_flash_then_status_on_a_virtual_badge(installed):
    bin_dir, work = installed
    tc = str(bin_dir / "tracecode")
    port = _free_port()
    badge = subprocess.Popen([tc, "sim", "badge", "--port-socket", str(port), "--seconds", "60"],
                             cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = badge.stdout.readline()
        assert re.match(r"virtual badge \S+ \(id tc-[0-9a-f]{12}\) running", line), line
        url = f"socket://127.0.0.1:{port}"
        fl = _run([tc, "flash", "--skip-image", "--no-aioble", "--board", "esp32-devkitc",
                   "-p", url, "--db", "fleet.sqlite", "--json"], cwd=work, timeout=120)
        flashed = json.loads(fl.stdout)       # stdout holds only the JSON
        assert flashed[0]["board"] == "esp32-devkitc" and flashed[0]["badge_id"]
        st = json.loads(_run([tc, "status", "--port", url, "--db", "fleet.sqlite", "--json"],
                             cwd=work).stdout)
        assert st["errors"] == []
        assert st["badges"][0]["running"] is True and st["badges"][0]["board"] == "esp32-devkitc"
    finally:
        badge.terminate()
        badge.wait(10)
