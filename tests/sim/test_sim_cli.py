"""`tracecode sim run` / `tracecode sim badge`, scenario parsing and the link throttle."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim_helpers import MINI_FW, raw_transport, write_flash
from tracecode.errors import InputError
from tracecode.sim.scenario import load_scenario, parse_duration

ROOT = Path(__file__).resolve().parents[2]
TRACECODE = Path(sys.executable).with_name("tracecode")
MPREMOTE = Path(sys.executable).with_name("mpremote")


def test_durations():
    assert parse_duration("1d2h30m") == 86400 + 2 * 3600 + 1800
    assert parse_duration("08:30") == 8.5 * 3600
    assert parse_duration(90) == 90
    with pytest.raises(InputError):
        parse_duration("soon")


def test_example_scenario_loads():
    sc = load_scenario(ROOT / "scenarios" / "two-badges.yaml")
    assert [p.name for p in sc.people] == ["alice", "bob"]
    bob = sc.people[1]
    assert bob.path.at(0) == (1.2, 0) and bob.path.at(3 * 3600) == (60, 0)
    assert bob.diagnosed["at_s"] == 86400
    assert sc.radio.walls and sc.radio.walls[0].loss_db == 12
    assert sc.duration == 3 * 3600


@pytest.mark.parametrize("text,msg", [
    ("people: []", "no people"),
    ("people: [{name: a}]", "give a path or a position"),
    ("people: [{name: a, position: [1]}]", "expected [x, y]"),
    ("radio: {foo: 1}\npeople: [{name: a, position: [0, 0]}]", "unknown setting"),
    ("people: [{name: a, position: [0, 0]}, {name: a, position: [1, 1]}]", "unique"),
    ("people: [{name: a, path: [[zzz, 0, 0]]}]", "duration"),
    ("{", "not valid YAML"),
])
def test_bad_scenarios_one_line_error(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    r = subprocess.run([str(TRACECODE), "sim", "run", str(p), "--radio-only"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_sim_run_json_with_project_firmware(tmp_path):
    if not (ROOT / "firmware" / "main.py").is_file():
        pytest.skip("firmware/ not present")
    r = subprocess.run([str(TRACECODE), "sim", "run", str(ROOT / "scenarios" / "two-badges.yaml"), "--radio-only",
                        "--json", "--duration", "1h", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["simulated_seconds"] == 3600
    by = {b["badge"]: b for b in res["badges"]}
    assert set(by) == {"alice", "bob"}
    for b in by.values():
        assert b["adverts"] > 10000          # ~250 ms adverts for an hour
        assert b["scans"] > 10
        assert b["records_logged"] > 0       # they sat 1.2 m apart for the hour
    assert not list(tmp_path.rglob("*Traceback*"))


def test_sim_badge_cli_serves_mpremote(tmp_path):
    proc = subprocess.Popen([str(TRACECODE), "sim", "badge", "--firmware", str(MINI_FW),
                             "--flash", str(tmp_path / "flash"), "--seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 20
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            m = re.search(r"mpremote connect (socket://\S+)", line)
            if m:
                url = m.group(1)
        assert url
        r = subprocess.run([str(MPREMOTE), "connect", url, "eval", "__import__('sys').platform"],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "esp32", r.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "flash" / "main.py").is_file()


def test_link_throttle(fleet):
    b = fleet.add_badge("slow")
    write_flash(b, "blob.bin", "q" * 6000)
    b.power_on()
    t = raw_transport(b)
    try:
        t0 = time.monotonic()
        t.fs_readfile("blob.bin", chunk_size=1024)
        fast = time.monotonic() - t0
        b.console.throttle(20000)              # ~200 kbaud
        t0 = time.monotonic()
        data = t.fs_readfile("blob.bin", chunk_size=1024)
        slow = time.monotonic() - t0
    finally:
        t.close()
    assert data == b"q" * 6000
    # >= 6000 payload bytes (plus repr framing) at 20000 B/s
    assert slow >= 0.3 and slow > fast


def test_sim_run_plays_the_whole_pipeline(tmp_path):
    """Without --radio-only, `sim run` is the end-to-end pipeline: flash, days, sync, diagnose,
    key server, match, health codes on the badges, figures against the ground truth."""
    r = subprocess.run([str(TRACECODE), "sim", "run", str(ROOT / "scenarios" / "two-badges.yaml"),
                        "--json", "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["scenarios"][0]
    assert res["mode"] == "fleet"
    assert res["health_codes"] == {"alice": "red", "bob": "red"}   # bob diagnosed, alice sat by him
    assert res["recall"] == 1.0 and res["precision"] == 1.0
    assert (tmp_path / "two-badges" / "two-badges.html").is_file()
    assert (tmp_path / "two-badges" / "two-badges.png").is_file()
