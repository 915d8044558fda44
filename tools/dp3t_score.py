#!/usr/bin/env python3
"""Score the DP-3T EPFL field traces (a local copy) with TraceCode's rule and the EN national rules.

    python tools/dp3t_score.py /path/to/bt-measurements [--json] [--experiments exp34 exp05]

Data: github.com/DP-3T/bt-measurements (CC BY-ND; read from a local copy, nothing of it is
copied here), the per-reading tables of experiments 05 (pre-GAEN app) and 34 (GAEN) with the
video ground-truth distance attached to each reading.

* Ground truth, per pair of phones and scenario: the written rule, within 2 m for at least 15
  cumulative minutes. The distance between readings is the video distance of the nearest reading
  of the pair (either direction) within `hold` seconds (exp05 40 s: it scans 20 s of every
  60 s; exp34 150 s: GAEN scans every ~4-5 min); time without a nearby reading is not close.
* Logs: per directed pair (receiver hears transmitter), readings closer than 15 s apart form one
  scan (EN scan instance): typical attenuation = mean, EN durations (time since the previous
  scan, capped at 5 min, 2 min for the first). A directed pair is positive when its ground truth
  is, and flagged when the rule would notify the receiver had the transmitter been diagnosed.
* Attenuation as recorded: exp34 with Google's per-model calibration (TX -24 dBm, RX +5 dB for
  these models), exp05 with the app's advertised TX power (-20/-21 dBm, no RX correction).
* Deployable calibration (no ground truth): (a) per device, self-calibration across devices of
  the experiment: RX offset = median attenuation the device received minus the median over
  devices, TX offset likewise for what others received of it; (b) for exp05, whose TX power
  field is not EN calibrated, one shift so that the experiment's median attenuation equals
  exp34's (same soldiers, phones, building and scenarios; a stand-in for a bench measurement).
  The rules are then scored on the calibrated attenuations, TraceCode and the baselines alike,
  and the baselines also raw (as phones would have decided).
* TraceCode's rule uses the setting calibrated on the simulated scenarios (tools/calibrate.py),
  never these traces; "hindsight" rows pick the best proximity threshold on the traces
  themselves, as an upper bound for any single-threshold rule.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from tracecode.e2e.baselines import RULES  # noqa: E402
from tracecode.e2e.evaluate import Metrics, PersonExposure, metrics  # noqa: E402
from tracecode.e2e.groundtruth import GroundTruth  # noqa: E402
from tracecode.scoring import ScoringConfig  # noqa: E402

SCENARIOS = ["scenario01-lunch", "scenario02-train", "scenario03-office", "scenario04-queue", "scenario05-party"]
FOLDERS = {"exp05": "exp05-epfl-soldiers", "exp34": "exp34-epfl-soldiers"}
HOLD_S = {"exp05": 40.0, "exp34": 150.0}
SCAN_GAP_S = 15.0
DIST_M, MIN_MIN = 2.0, 15.0


def load(root: Path, exp: str, scen: str) -> dict:
    f = root / FOLDERS[exp] / f"{scen}.sqlite"
    if not f.exists():
        raise SystemExit(f"dp3t_score: {f} not found (pass the root of a local bt-measurements copy)")
    con = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
    rows = con.execute("SELECT timestamp, receiver_id, transmitter_id, rssi, tx_power, ground_truth_distance "
                       "FROM results ORDER BY timestamp").fetchall()
    con.close()
    t = np.array([r[0] for r in rows], dtype=float)
    if exp == "exp05":
        t = t / 1000.0
        att = np.array([(r[4] or 0) - r[3] for r in rows], dtype=float)
    else:
        att = np.array([-24.0 - (r[3] + 5.0) for r in rows])
    gtd = np.array([r[5] if r[5] is not None and r[5] > 0 else np.nan for r in rows], dtype=float)
    return {"t": t, "rx": [str(int(r[1])) for r in rows], "tx": [str(int(r[2])) for r in rows], "att": att,
            "gtd": gtd}


def truth_minutes(data: dict, hold: float) -> dict[frozenset, float]:
    by_pair: dict[frozenset, list[int]] = defaultdict(list)
    for i, (a, b) in enumerate(zip(data["rx"], data["tx"])):
        if a != b and not np.isnan(data["gtd"][i]):
            by_pair[frozenset((a, b))].append(i)
    t0, t1 = data["t"].min(), data["t"].max()
    grid = np.arange(t0, t1, 10.0)
    out = {}
    for pair, idx in by_pair.items():
        ts, ds = data["t"][idx], data["gtd"][idx]
        j = np.clip(np.searchsorted(ts, grid), 1, len(ts) - 1) if len(ts) > 1 else np.zeros(len(grid), dtype=int)
        if len(ts) > 1:
            left, right = ts[j - 1], ts[j]
            near = np.where(np.abs(grid - left) <= np.abs(right - grid), j - 1, j)
        else:
            near = j
        ok = np.abs(ts[near] - grid) <= hold
        out[pair] = float(((ds[near] <= DIST_M) & ok).sum() * 10.0 / 60.0)
    return out


def scans(data: dict, att: np.ndarray) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """(time, mean attenuation, min attenuation) per EN scan instance per directed pair."""
    per: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (a, b) in enumerate(zip(data["rx"], data["tx"])):
        if a != b:
            per[(a, b)].append(i)
    out = {}
    for k, idx in per.items():
        ts = data["t"][idx]
        aa = att[idx]
        cut = np.flatnonzero(np.r_[True, np.diff(ts) > SCAN_GAP_S, True])
        out[k] = [(float(ts[cut[i]]), float(aa[cut[i]:cut[i + 1]].mean()), float(aa[cut[i]:cut[i + 1]].min()))
                  for i in range(len(cut) - 1)]
    return out


class _Key:
    def __init__(self, tag: str):
        self.key_data = tag.encode().ljust(16, b"\0")[:16]
        self.report_type = 1
        self.days_since_onset_of_symptoms = 0


def exposures(sc: dict) -> dict[str, PersonExposure]:
    out = {}
    for (rx, tx), ss in sc.items():
        key = _Key(tx)
        ms = [SimpleNamespace(key=key, time=int(t), attenuation=int(round(a)), min_attenuation=int(round(mn)),
                              duration_s=None) for t, a, mn in ss]
        out[f"{rx}<-{tx}"] = PersonExposure.from_matches(f"{rx}<-{tx}", ms)
    return out


def self_calibration(datas: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-device RX and TX offsets from the whole experiment, without ground truth."""
    rx_att: dict[str, list] = defaultdict(list)
    tx_att: dict[str, list] = defaultdict(list)
    for d in datas:
        for r, t, a in zip(d["rx"], d["tx"], d["att"]):
            rx_att[r].append(a)
            tx_att[t].append(a)
    rx_med = {k: float(np.median(v)) for k, v in rx_att.items()}
    tx_med = {k: float(np.median(v)) for k, v in tx_att.items()}
    mr, mt = float(np.median(list(rx_med.values()))), float(np.median(list(tx_med.values())))
    return ({k: v - mr for k, v in rx_med.items()}, {k: v - mt for k, v in tx_med.items()})


def score_experiment(root: Path, exp: str, cfg: ScoringConfig, ref_median: float | None) -> dict:
    datas = {s: load(root, exp, s) for s in SCENARIOS}
    rx_off, tx_off = self_calibration(list(datas.values()))
    all_att = np.concatenate([d["att"] for d in datas.values()])
    shift = 0.0 if ref_median is None else float(np.median(all_att)) - ref_median
    rows = {}
    pooled: dict[str, Metrics] = defaultdict(lambda: Metrics(0, 0, 0, 0))
    hindsight_cases = []
    for s, d in datas.items():
        tm = truth_minutes(d, HOLD_S[exp])
        cal = d["att"] - shift - np.array([rx_off[r] + tx_off[t] for r, t in zip(d["rx"], d["tx"])])
        ex_raw = exposures(scans(d, d["att"]))
        ex_cal = exposures(scans(d, cal))
        ids = set(ex_raw) | set(ex_cal)
        pos = {i for i in ids if tm.get(frozenset(i.split("<-")), 0.0) >= MIN_MIN}
        truth = GroundTruth(s, "2 m, 15 min", pos, ids - pos, set())
        r = {"pairs": len(ids), "close_contacts": len(pos)}
        m = metrics({p: e.health_code(cfg) for p, e in ex_cal.items()}, truth)
        r["tracecode_calibrated"] = m.to_json()
        pooled["tracecode_calibrated"] += m
        for rule in RULES:
            for tag, ex in (("raw", ex_raw), ("calibrated", ex_cal)):
                m = metrics({p: ("red" if rule.flagged(e) else "green") for p, e in ex.items()}, truth)
                r[f"{rule.name}_{tag}"] = m.to_json()
                pooled[f"{rule.name}_{tag}"] += m
        rows[s] = r
        hindsight_cases.append((ex_cal, truth))
    # hindsight: the best proximity threshold on these traces themselves (an upper bound)
    best = None
    for p in np.arange(45.0, 75.0, 1.0):
        c = ScoringConfig.tracecode(gate_db=cfg.gate_db, proximity_quantile=cfg.proximity_quantile,
                                    proximity_db=float(p))
        tot = Metrics(0, 0, 0, 0)
        for ex, truth in hindsight_cases:
            tot += metrics({q: e.health_code(c) for q, e in ex.items()}, truth)
        if best is None or tot.f1 > best[1].f1:
            best = (float(p), tot)
    return {"scenarios": rows, "pooled": {k: v.to_json() for k, v in pooled.items()},
            "calibration": {"shift_db": round(shift, 2),
                            "rx_offset_sd_db": round(float(np.std(list(rx_off.values()))), 2),
                            "tx_offset_sd_db": round(float(np.std(list(tx_off.values()))), 2)},
            "hindsight_tracecode": {"proximity_db": best[0], **best[1].to_json()},
            "_median": float(np.median(all_att))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--experiments", nargs="*", default=["exp34", "exp05"])
    ap.add_argument("--scoring", type=Path, help="TraceCode settings JSON (default: the shipped tracecode rule)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    from tracecode.e2e.pipeline import scoring_from

    cfg = scoring_from(args.scoring)
    out: dict = {"scoring": cfg.to_json(), "rule": f"within {DIST_M:g} m for {MIN_MIN:g} cumulative minutes"}
    ref = None
    for exp in ["exp34"] + [e for e in args.experiments if e != "exp34"]:
        res = score_experiment(args.root, exp, cfg, None if exp == "exp34" else ref)
        if exp == "exp34":
            ref = res["_median"]
        res.pop("_median")
        if exp in args.experiments:
            out[exp] = res
    out["wall_s"] = round(time.monotonic() - t0, 1)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    cols = ["tracecode_calibrated"] + [f"{r.name}_{t}" for r in RULES for t in ("raw", "calibrated")]
    for exp in args.experiments:
        res = out[exp]
        c = res["calibration"]
        print(f"{exp}: self-calibration RX sd {c['rx_offset_sd_db']} dB, TX sd {c['tx_offset_sd_db']} dB, "
              f"shift {c['shift_db']} dB; P/R/F1 per scenario (directed pairs)")
        print(f"  {'scenario':<18} {'pairs':>5} {'close':>5} " + " ".join(f"{k[:22]:>22}" for k in cols))
        for s, r in res["scenarios"].items():
            print(f"  {s:<18} {r['pairs']:>5} {r['close_contacts']:>5} " +
                  " ".join(f"{r[k]['precision']:>8.2f}/{r[k]['recall']:.2f}/{r[k]['f1']:.2f}" for k in cols))
        p = res["pooled"]
        print(f"  {'pooled':<18} {'':>5} {'':>5} " +
              " ".join(f"{p[k]['precision']:>8.2f}/{p[k]['recall']:.2f}/{p[k]['f1']:.2f}" for k in cols))
        h = res["hindsight_tracecode"]
        print(f"  hindsight (best proximity threshold on these traces, {h['proximity_db']} dB): "
              f"P {h['precision']:.2f} R {h['recall']:.2f} F1 {h['f1']:.2f}")
    print(f"wall time {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
