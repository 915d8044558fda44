"""Run a scenario end to end and score the health codes against the scenario's ground truth.

    run_scenario(path, workdir, mode="synthetic" | "fleet", scoring=None, seed=1) -> dict

Both modes go through the real key server and matcher:
  1. ground truth from the scenario's exact geometry;
  2. badges: "fleet" runs the unmodified firmware on virtual badges (tracecode.sim), flashed and
     provisioned by the sync station code, synced nightly over their serial consoles;
     "synthetic" computes what badges would log straight from the geometry (fast; e2e.synthetic);
  3. each diagnosis: the key server issues a one-time code, the wearer's keys are uploaded over
     HTTP with it (in "fleet" mode by `tracecode.station.diagnose` after the consent button press);
  4. the key server publishes signed batches (hash-chained) at the next publish time;
  5. the matcher follows the key server by URL (chain verified), matches every badge's log,
     scores exposure windows, gives health codes (in "fleet" mode also written to the badges);
  6. precision/recall of yellow-or-red against the ground truth, exposure minutes by attenuation
     bucket, and the report (PNG + HTML) in workdir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import export
from ..errors import InputError
from ..keyserver import KeyServer
from ..keyserver.client import fetch_new_batches, upload_keys
from ..keyserver.server import RunningServer
from ..matcher import match as match_sightings
from ..scoring import ScoringConfig
from . import groundtruth as gtmod
from .evaluate import PersonExposure, codes_for, metrics
from .scenario import Scenario, fmt_time, load_scenario
from .synthetic import RadioModel, radio_for, simulate

PUBLISH_DELAY_S = 3600      # the key server publishes an hour after a diagnosis


class VirtualClock:
    def __init__(self, t: float):
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


def scoring_from(obj: Any) -> ScoringConfig:
    """A ScoringConfig from None (defaults), a ScoringConfig, a dict, or a JSON file path."""
    if obj is None:
        return ScoringConfig.tracecode()
    if isinstance(obj, ScoringConfig):
        return obj
    if isinstance(obj, (str, Path)):
        try:
            obj = json.loads(Path(obj).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{obj}: cannot read scoring settings ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError("scoring settings must be a JSON object")
    obj = obj.get("scoring", obj)
    cfg = ScoringConfig.tracecode() if obj.get("rule", "tracecode" if "proximity_db" in obj else "en") == "tracecode" \
        else ScoringConfig()
    for name in ("gate_db",):
        if name in obj:
            setattr(cfg, name, int(obj[name]))
    for name in ("proximity_db", "proximity_quantile", "min_minutes", "red_minutes"):
        if name in obj:
            setattr(cfg, name, float(obj[name]))
    if "thresholds_db" in obj:
        cfg.thresholds_db = tuple(int(x) for x in obj["thresholds_db"])
    if "bucket_weights" in obj:
        cfg.bucket_weights = tuple(float(x) for x in obj["bucket_weights"])
    for name in ("red_threshold", "yellow_threshold"):
        if name in obj:
            setattr(cfg, name, float(obj[name]))
    if len(cfg.thresholds_db) != 3 or len(cfg.bucket_weights) != 4 or list(cfg.thresholds_db) != sorted(cfg.thresholds_db):
        raise InputError("scoring: three ascending thresholds and four weights are needed")
    return cfg


def run_scenario(path: str | Path | Scenario, workdir: str | Path, *, mode: str = "synthetic",
                 scoring: Any = None, seed: int = 1, radio: Any = None,
                 report: bool = True, progress=None) -> dict:
    """`radio`: None = the scenario's `radio:` section (the fitted channel when it has none),
    "ideal" / "fitted", a mapping like the section, or a RadioModel."""
    t_wall = time.monotonic()
    scn = path if isinstance(path, Scenario) else load_scenario(path)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = scoring_from(scoring)
    say = progress or (lambda msg: None)
    truth = gtmod.compute(scn)
    say(f"{scn.name}: ground truth {len(truth.positives)} close contacts of {len(truth.positives | truth.negatives)}")

    if mode == "synthetic":
        exposures, extra = _run_synthetic(scn, work, seed=seed, radio=radio, say=say)
    elif mode == "fleet":
        from .fleet import run_fleet  # needs tracecode.sim + tracecode.station

        exposures, extra = run_fleet(scn, work, seed=seed, say=say, scoring=cfg, radio=radio)
    else:
        raise InputError(f"unknown mode {mode!r} (synthetic or fleet)")

    codes = codes_for(exposures, cfg)
    m = metrics(codes, truth)
    from .baselines import RULES, baseline_metrics

    base = baseline_metrics(exposures, truth)
    best_base = max(base.values(), key=lambda b: b.f1)
    people = []
    for pid in scn.ids:
        e = exposures[pid]
        people.append({
            "id": pid,
            "role": scn.person(pid).role,
            "health_code": codes[pid],
            "diagnosed": pid in truth.diagnosed,
            "close_contact": pid in truth.positives,
            "ground_truth_minutes": round(truth.minutes(pid), 1),
            "exposure_minutes": e.minutes_by_bucket(cfg),
            "max_daily_score": round(max(e.daily(cfg).values(), default=0.0), 1),
            "windows": int(len(e.starts)),
        })
    result = {
        "scenario": scn.name,
        "mode": mode,
        "people": len(scn.ids),
        "days": scn.days,
        "rule": truth.rule,
        "diagnosed": [{"person": d.person, "at": fmt_time(d.at, scn.start)} for d in scn.diagnosed],
        "precision": round(m.precision, 3),
        "recall": round(m.recall, 3),
        "f1": round(m.f1, 3),
        "metrics": m.to_json(),
        "baselines": {r.name: {**base[r.name].to_json(), "source": r.source} for r in RULES},
        "f1_minus_best_baseline": round(m.f1 - best_base.f1, 3),
        "scoring": cfg.to_json(),
        "health_codes": codes,
        "per_person": people,
        "ground_truth": truth.to_json(),
        **extra,
    }
    result["wall_s"] = round(time.monotonic() - t_wall, 2)
    if report:
        from .report import write_report

        paths = write_report(scn, truth, exposures, result, work, cfg)
        result["report"] = {k: str(v) for k, v in paths.items()}
        result["wall_s"] = round(time.monotonic() - t_wall, 2)
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return result


def publish_and_match(scn: Scenario, work: Path, uploads: list[tuple[float, list]], sightings: dict,
                      *, say=lambda m: None) -> tuple[dict[str, list], dict]:
    """Key server round trip: codes, uploads over HTTP, publish, follow by URL, match."""
    clock = VirtualClock(scn.start)
    ks = KeyServer.init(work / "keyserver", clock=clock)
    cache = work / "exports-cache"
    info: dict = {"uploads": 0, "batches": []}
    all_keys: list = []
    with RunningServer(ks) as srv:
        for at, keys in sorted(uploads, key=lambda u: u[0]):
            clock.t = at
            code, _ = ks.issue_code()
            upload_keys(srv.url, code, keys)
            info["uploads"] += 1
            clock.t = at + PUBLISH_DELAY_S
            info["batches"] += ks.publish()
        for p in fetch_new_batches(srv.url, cache, [ks.public_key_path()]):
            all_keys += export.load_batch(p, pubkeys=[ks.public_key_path()]).keys
        info["keyserver_url"] = srv.url
    info["keys_published"] = len(all_keys)
    say(f"{scn.name}: {info['uploads']} upload(s), {len(info['batches'])} batch(es), {len(all_keys)} keys")
    matches = {pid: (match_sightings(all_keys, s, jobs=1) if all_keys else []) for pid, s in sightings.items()}
    return matches, info


def _run_synthetic(scn: Scenario, work: Path, *, seed: int, radio: Any, say) -> tuple[dict, dict]:
    badges = simulate(scn, radio=radio, seed=seed)
    say(f"{scn.name}: {sum(len(s) for s in badges.sightings.values())} logged sightings (synthetic radio)")
    uploads = [(d.at, badges.diagnosis_keys(d.person, d.at, report_type=d.report_type, onset_days=d.onset_days))
               for d in scn.diagnosed]
    matches, info = publish_and_match(scn, work, uploads, badges.sightings, say=say)
    diagnosed = scn.diagnosed_ids()
    off = offsets_for(badges.calibration, [(d.person, ks) for d, (_, ks) in zip(scn.diagnosed, uploads)])
    exposures = {pid: PersonExposure.from_matches(pid, matches[pid], diagnosed=pid in diagnosed, offset_db=off(pid))
                 for pid in scn.ids}
    info["sightings"] = sum(len(s) for s in badges.sightings.values())
    info["radio"] = badges.radio.to_json()
    return exposures, info


def offsets_for(calibration: dict, uploads):
    """offset_db(listener) -> (match -> TX offset of the key's owner + RX offset of the listener),
    from the badges' bench calibration; `uploads` [(owner, keys)] tells whose keys are whose
    (the station knows which badge uploaded them)."""
    owner = {}
    for who, ks in uploads:
        for k in ks:
            owner[k.key_data] = who

    def for_listener(pid):
        rx = calibration.get(pid, (0.0, 0.0))[1]
        return lambda m: calibration.get(owner.get(m.key.key_data), (0.0, 0.0))[0] + rx
    return for_listener


def exposures_synthetic(scn: Scenario, *, seed: int = 1, radio: Any = None) -> dict[str, PersonExposure]:
    """Matches without the key server round trip (calibration sweeps run this many times)."""
    badges = simulate(scn, radio=radio, seed=seed)
    keys = []
    uploads = []
    for d in scn.diagnosed:
        ks = badges.diagnosis_keys(d.person, d.at, report_type=d.report_type, onset_days=d.onset_days)
        keys += ks
        uploads.append((d.person, ks))
    diagnosed = scn.diagnosed_ids()
    off = offsets_for(badges.calibration, [(p, ks) for p, ks in uploads])
    return {pid: PersonExposure.from_matches(pid, match_sightings(keys, badges.sightings[pid], jobs=1),
                                             diagnosed=pid in diagnosed, offset_db=off(pid))
            for pid in scn.ids}
