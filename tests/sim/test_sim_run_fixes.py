"""`tracecode sim run`: every shipped scenario through --radio-only, scenarios by name (an
installed station has no scenarios/ folder), progress only on a terminal (stderr)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracecode.sim.scenario import is_e2e_format, load_scenario

ROOT = Path(__file__).resolve().parents[2]
TRACECODE = Path(sys.executable).with_name("tracecode")
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_loads_for_radio_only(path):
    import yaml

    doc = yaml.safe_load(path.read_text())
    sc = load_scenario(path)                       # what `sim run FILE --radio-only` loads
    assert len(sc.people) >= 2 and sc.duration > 0
    assert (sc.firmware_dir / "main.py").is_file()
    if is_e2e_format(doc):                         # the end-to-end format (docs/e2e.md)
        assert sc.duration == doc["days"] * 86400
        assert len(sc.radio.walls) == len(doc.get("walls") or [])
        assert [p.name for p in sc.people] == [str(p["id"]) for p in doc["people"]]
        if isinstance(doc.get("radio"), dict) and "model" in doc["radio"]:
            assert sc.radio.channel is not None
    else:
        assert path.stem == "two-badges"


def test_radio_only_by_name_outside_a_checkout(tmp_path):
    """office (end-to-end format) by name from an empty folder, briefly; JSON only on stdout,
    nothing on stderr when it is not a terminal."""
    r = subprocess.run([str(TRACECODE), "sim", "run", "office", "--radio-only", "--duration", "2m",
                        "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    res = json.loads(r.stdout)
    assert res["scenario"] == "office" and res["simulated_seconds"] == 120
    assert len(res["badges"]) == 12


def test_full_run_by_name_prints_only_summaries_when_not_a_terminal(tmp_path):
    r = subprocess.run([str(TRACECODE), "sim", "run", "two-badges", "--mode", "synthetic", "--no-report",
                        "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                          # no milestone lines, no bar
    assert r.stdout.startswith("two-badges ") and "precision" in r.stdout
    r = subprocess.run([str(TRACECODE), "sim", "run", "no-such-place", "--radio-only"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("tracecode: error: no scenario 'no-such-place'")
    assert r.stderr.count("\n") == 1


def test_progress_bars_silent_when_stderr_is_not_a_terminal(capsys):
    from tracecode.progress import progress_bar, virtual_time_bar

    with virtual_time_bar("simulating", 3600) as update:
        update(1800, note="half")
        update(3600)
    with progress_bar("matching") as update:
        update(1, 2)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_fleet_clock_steps_and_restores(tmp_path):
    from tracecode.e2e.cli import _fleet_clock
    from tracecode.sim.fleet import Fleet

    seen = []
    assert "run_until" not in Fleet.__dict__
    with Fleet(tmp_path) as fleet, _fleet_clock(seen.append):
        fleet.run_until(4000.0)
        assert fleet.now == 4000.0
    assert seen == [1800.0, 3600.0, 4000.0]
    assert "run_until" not in Fleet.__dict__          # the class is as it was
    with _fleet_clock(None):
        assert "run_until" not in Fleet.__dict__
