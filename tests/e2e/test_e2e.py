"""End-to-end layer: scenarios, ground truth, scoring against ground truth, report, calibration."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest

from tracecode.e2e import groundtruth
from tracecode.e2e.calibrate import Case, calibrate, grid
from tracecode.e2e.evaluate import Metrics, PersonExposure, metrics
from tracecode.e2e.pipeline import exposures_synthetic, run_scenario, scoring_from
from tracecode.e2e.scenario import load_scenario
from tracecode.e2e.synthetic import simulate
from tracecode.errors import InputError
from tracecode.matcher import match
from tracecode.scoring import ScoringConfig, daily_scores, exposure_windows, health_code

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["office", "classroom", "bus", "carehome"]
NEW_SCENARIOS = ["tram", "restaurant", "openplan", "dormitory", "waitingroom"]   # issue 11


def _pair(**over) -> dict:
    doc = {
        "name": "pair", "start": "2024-03-04T00:00:00Z", "days": 1, "area": [10, 10],
        "walls": [],
        "people": [
            {"id": "a", "path": [["09:00", [1, 1]], ["09:20", [1, 1]], ["09:20", None]]},
            {"id": "b", "path": [["09:00", [2.5, 1]], ["09:20", [2.5, 1]], ["09:20", None]]},
        ],
        "diagnosed": [{"person": "a", "at": "d1 18:00"}],
        "ground_truth": {"distance_m": 2.0, "min_minutes": 15, "step_s": 10},
    }
    doc.update(over)
    return doc


# ---------------------------------------------------------------------------- ground truth


def test_ground_truth_counts_exact_minutes():
    gt = groundtruth.compute(load_scenario(_pair()))
    assert gt.positives == {"b"} and gt.diagnosed == {"a"}
    (c,) = gt.contacts
    assert c.minutes_by_day == [20.0]
    assert c.intervals == [(1709542800, 1709542800 + 1200)]


def test_ground_truth_distance_duration_and_walls():
    far = _pair()
    far["people"][1]["path"] = [["09:00", [3.2, 1]], ["09:20", [3.2, 1]], ["09:20", None]]
    assert groundtruth.compute(load_scenario(far)).positives == set()
    short = _pair()
    short["people"][1]["path"] = [["09:00", [2, 1]], ["09:10", [2, 1]], ["09:10", None]]
    gt = groundtruth.compute(load_scenario(short))
    assert gt.positives == set() and gt.contacts[0].minutes_by_day == [10.0]
    walled = _pair(walls=[[[1.8, 0], [1.8, 5], 12]])
    assert groundtruth.compute(load_scenario(walled)).positives == set()
    open_wall = _pair(walls=[[[1.8, 0], [1.8, 5], 12]], ground_truth={"walls_block": False})
    assert groundtruth.compute(load_scenario(open_wall)).positives == {"b"}


def test_contact_after_the_diagnosis_does_not_count():
    late = _pair(diagnosed=[{"person": "a", "at": "d1 09:05"}])
    gt = groundtruth.compute(load_scenario(late))
    assert gt.positives == set() and gt.contacts[0].minutes_by_day == [5.0]


def test_daily_routine_repeats_and_minutes_are_per_day():
    two = _pair(days=2, diagnosed=[{"person": "a", "at": "d2 18:00"}])
    gt = groundtruth.compute(load_scenario(two))
    assert gt.contacts[0].minutes_by_day == [20.0, 20.0]


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["people"][0]["path"].append(["9am", [1, 1]]), "bad time"),
    (lambda d: d["people"][0]["path"].append(["10:75", [1, 1]]), "bad time"),
    (lambda d: d["people"][0]["path"].append(["25:00", [1, 1]]), "past 24:00"),
    (lambda d: d.update(diagnosed=[{"person": "zed", "at": "d1 10:00"}]), "unknown person"),
    (lambda d: d["people"].append({"id": "a", "path": [["09:00", [1, 1]]]}), "duplicate"),
    (lambda d: d["people"][1]["path"].append(["10:00", [1]]), "position"),
    (lambda d: d.update(days=40), "days"),
])
def test_bad_scenarios_are_one_line_errors(mutate, msg):
    d = _pair()
    mutate(d)
    with pytest.raises(InputError, match=msg):
        load_scenario(d)


@pytest.mark.parametrize("name", SCENARIOS + NEW_SCENARIOS)
def test_shipped_scenarios_have_both_classes(name):
    scn = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    gt = groundtruth.compute(scn)
    assert 8 <= len(scn.people) <= 20 and 1 <= scn.days <= 3
    assert gt.positives and gt.negatives, (gt.positives, gt.negatives)
    assert "ground_truth" in scn.raw and scn.diagnosed


# ---------------------------------------------------------------------------- scoring


def test_fast_scoring_equals_the_matcher_scoring():
    scn = load_scenario(ROOT / "scenarios" / "office.yaml")
    badges = simulate(scn, seed=3, radio="ideal")
    d = scn.diagnosed[0]
    keys = badges.diagnosis_keys(d.person, d.at, onset_days=d.onset_days)
    checked = 0
    for cfg in (ScoringConfig(), ScoringConfig(thresholds_db=(45, 55, 63), bucket_weights=(2.0, 1.0, 0.25, 0.0))):
        for pid in ("p02", "p04", "p07", "p08"):
            ms = match(keys, badges.sightings[pid], jobs=1)
            fast = PersonExposure.from_matches(pid, ms)
            windows = exposure_windows(ms, cfg)
            ref = daily_scores(windows)
            got = fast.daily(cfg)
            assert set(got) == set(ref)
            for day in ref:
                assert got[day] == pytest.approx(ref[day], rel=1e-9, abs=1e-6)
            assert fast.health_code(cfg) == health_code(windows, cfg)
            checked += len(windows)
    assert checked > 20


def test_metrics_precision_recall():
    gt = groundtruth.GroundTruth("x", "rule", {"a", "b", "c"}, {"d", "e"}, {"z"})
    m = metrics({"a": "red", "b": "yellow", "c": "green", "d": "yellow", "e": "green", "z": "red"}, gt)
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 1)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.false_positives == ["d"] and m.false_negatives == ["c"]
    assert Metrics(0, 0, 0, 3).precision == 1.0


def test_scoring_settings_from_json(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"best": {}, "thresholds_db": [40, 55, 63], "bucket_weights": [2, 1, 0.25, 0]}))
    cfg = scoring_from(p)
    assert cfg.thresholds_db == (40, 55, 63) and cfg.bucket_weights == (2.0, 1.0, 0.25, 0.0)
    with pytest.raises(InputError):
        scoring_from({"thresholds_db": [60, 50, 70]})


# ---------------------------------------------------------------------------- pipeline + report


def test_office_end_to_end_synthetic(tmp_path):
    # the old channel and EN bucket scoring: the figures this test holds were set on them
    res = run_scenario(ROOT / "scenarios" / "office.yaml", tmp_path, mode="synthetic", radio="ideal",
                       scoring=ScoringConfig())
    gt = set(res["ground_truth"]["close_contacts"])
    assert gt == {"p02", "p03", "p05", "p06"}
    flagged = {p for p, c in res["health_codes"].items() if c in ("yellow", "red")}
    assert res["health_codes"]["p01"] == "red"                       # the diagnosed wearer
    m = res["metrics"]
    assert m["tp"] == len(gt & flagged) and m["fn"] == len(gt - flagged)
    assert res["recall"] == pytest.approx(m["tp"] / (m["tp"] + m["fn"]), abs=1e-3)
    assert res["recall"] >= 0.9
    # far desks in the other office stay green
    assert all(res["health_codes"][p] == "green" for p in ("p08", "p09", "p10"))
    # key server round trip really happened: one upload, one signed, chained batch
    assert res["uploads"] == 1 and len(res["batches"]) == 1 and res["keys_published"] >= 2
    ks = tmp_path / "keyserver" / "www"
    assert (ks / "tc" / "index.txt").read_text() == res["batches"][0]
    with zipfile.ZipFile(ks / res["batches"][0]) as zf:
        assert zf.read("export.bin")[:16] == b"EK Export v1    "
    assert (ks / res["batches"][0].replace(".zip", ".chain")).exists()
    # report files
    png = Path(res["report"]["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    page = Path(res["report"]["html"]).read_text()
    assert "Precision" in page and "office.png" in page and "p05" in page
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["precision"] == res["precision"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_runs_end_to_end(tmp_path, name):
    res = run_scenario(ROOT / "scenarios" / f"{name}.yaml", tmp_path, mode="synthetic", report=False,
                       radio="ideal", scoring=ScoringConfig())
    assert res["uploads"] == len(res["diagnosed"])
    assert 0.0 <= res["precision"] <= 1.0 and res["recall"] >= 0.8
    per = {p["id"]: p for p in res["per_person"]}
    for d in res["diagnosed"]:
        assert per[d["person"]]["health_code"] == "red"


# ---------------------------------------------------------------------------- calibration


def _cases(seed=1):
    out = []
    for name in ("office", "classroom", "bus"):
        scn = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        out.append(Case(name, exposures_synthetic(scn, seed=seed, radio="ideal"), groundtruth.compute(scn)))
    return out


def test_calibration_never_tunes_on_the_held_out_scenario():
    cases = _cases()
    configs = grid({"t1": (30, 45), "t2": (50, 56, 60), "t3": (63, 70), "w_immediate": (1.5,),
                    "w_near": (0.5, 1.0), "w_medium": (0.0, 0.5)})
    base = calibrate(cases, configs)
    # Turn the held-out scenario's ground truth upside down: its fold's chosen setting must not move.
    flipped = copy.copy(cases)
    t = cases[0].truth
    flipped[0] = Case(cases[0].name, cases[0].exposures,
                      groundtruth.GroundTruth(t.scenario, t.rule, t.negatives, t.positives, t.diagnosed))
    again = calibrate(flipped, configs)
    assert again["cross_validation"][0]["chosen"] == base["cross_validation"][0]["chosen"]
    # ... while the in-sample best may use it, and the fold's reported figures do change
    assert again["cross_validation"][0]["precision"] != base["cross_validation"][0]["precision"] or \
        again["cross_validation"][0]["recall"] != base["cross_validation"][0]["recall"]
    assert base["settings_tried"] == len(configs)
    assert {f["held_out"] for f in base["cross_validation"]} == {"office", "classroom", "bus"}


# ---------------------------------------------------------------------------- fleet mode (virtual badges)


def _vm_reason():
    from tracecode.sim.vmbadge import vm_available
    return vm_available()


VM = pytest.param("vm", marks=pytest.mark.skipif(_vm_reason() is not None, reason=str(_vm_reason())))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", [
    "imitation",
    # make test-slow: on a loaded 2-core machine a VM badge can miss the station's raw-REPL
    # timeout (81-156 s a run); see docs/sim.md
    pytest.param("vm", marks=[pytest.mark.slow, VM.marks[0]]),
])
def test_fleet_mode_end_to_end_on_virtual_badges(tmp_path, backend, monkeypatch):
    """The whole pipeline (flash, provision, trace, sync, consent, key server, match, health
    codes read back from the flash) on badges running the real MicroPython VM."""
    sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not built")
    pytest.importorskip("tracecode.station.flasher", reason="sync station not built")
    assert hasattr(sim, "Fleet")
    monkeypatch.setenv("TRACECODE_SIM_BACKEND", backend)
    doc = _pair()
    doc["people"] = [
        {"id": "a", "path": [["08:00", [1, 1]], ["09:00", [1, 1]], ["09:00", None]]},
        {"id": "b", "path": [["08:00", [2.2, 1]], ["09:00", [2.2, 1]], ["09:00", None]]},
        {"id": "c", "path": [["08:00", [9, 9]], ["09:00", [9, 9]], ["09:00", None]]},
    ]
    doc["diagnosed"] = [{"person": "a", "at": "d1 12:00"}]
    res = run_scenario(load_scenario(doc), tmp_path, mode="fleet", report=False, radio="ideal",
                       scoring=ScoringConfig())
    assert res["ground_truth"]["close_contacts"] == ["b"]
    assert res["health_codes"] == {"a": "red", "b": "red", "c": "green"}
    # the codes really reached the badges (read back from their flash after the last sync)
    assert res["health_codes_on_badges"] == {"a": "red", "b": "red", "c": "green"}
    assert res["uploads"] == 1 and len(res["batches"]) == 1 and res["keys_published"] >= 1
    assert res["sync_errors"] == [] and res["encounters_synced"] > 0
    per = {p["id"]: p for p in res["per_person"]}
    assert sum(per["b"]["exposure_minutes"].values()) >= 45          # an hour side by side
    assert per["c"]["max_daily_score"] == 0                          # 11 m away: heard, not scored
    assert res["precision"] == 1.0 and res["recall"] == 1.0


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name, backend", [
    ("office", "imitation"),
    # `make test-slow` (each takes minutes): the other scenarios, and the office on the VM
    pytest.param("classroom", "imitation", marks=pytest.mark.slow),
    pytest.param("bus", "imitation", marks=pytest.mark.slow),
    pytest.param("carehome", "imitation", marks=pytest.mark.slow),
    pytest.param("office", "vm", marks=[pytest.mark.slow, VM.marks[0]]),
])
def test_scenario_on_virtual_badges(tmp_path, name, backend, monkeypatch):
    """Every scenario end to end on virtual badges running the firmware; the issue's bar
    (recall >= 0.9, precision >= 0.8 at the default setting) for the office and the classroom."""
    pytest.importorskip("tracecode.station.flasher", reason="sync station not built")
    sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not built")
    assert hasattr(sim, "Fleet")
    monkeypatch.setenv("TRACECODE_SIM_BACKEND", backend)
    res = run_scenario(ROOT / "scenarios" / f"{name}.yaml", tmp_path, mode="fleet", report=(name == "office"),
                       radio="ideal", scoring=ScoringConfig())
    assert res["sync_errors"] == [] and res["uploads"] == len(res["diagnosed"])
    assert res["health_codes_on_badges"] == res["health_codes"]
    per = {p["id"]: p for p in res["per_person"]}
    for d in res["diagnosed"]:
        assert per[d["person"]]["health_code"] == "red"
    if name in ("office", "classroom"):
        assert res["recall"] >= 0.9 and res["precision"] >= 0.8, res["metrics"]
    else:
        assert res["recall"] >= 0.8, res["metrics"]
    if name == "office":
        assert Path(res["report"]["png"]).stat().st_size > 20_000


def test_reads_the_simulator_scenario_format():
    """scenarios/two-badges.yaml (docs/sim.md format): fixed positions, [t, x, y] paths, per-person diagnosis."""
    pytest.importorskip("tracecode.sim.scenario", reason="simulator scenario format not built")
    scn = load_scenario(ROOT / "scenarios" / "two-badges.yaml")
    gt = groundtruth.compute(scn)
    assert scn.diagnosed and scn.diagnosed[0].person == "bob"
    assert gt.positives == {"alice"}                  # an hour at 1.2 m before bob walks behind the wall
    assert 55 <= gt.contacts[0].max_daily_minutes <= 65
