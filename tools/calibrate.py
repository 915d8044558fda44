#!/usr/bin/env python3
"""Calibrate the attenuation thresholds and bucket weights on the scenarios.

    python tools/calibrate.py [--scenarios scenarios/*.yaml] [--seeds 1 2] [--beta 2] [--json]
                              [--out calibration.json]

Each scenario's badges are simulated from its geometry (tracecode.e2e.synthetic: real EN keys,
RPIs, AEMs and the real matcher; the radio is the geometry-only model) once per seed; then the
grid of settings (tracecode.e2e.calibrate.DEFAULT_GRID) is scored. Leave-one-scenario-out: the
setting reported for a scenario was chosen on the other scenarios only. Prints the best setting,
the cross-validated precision/recall, and the current defaults' figures for comparison.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from tracecode.e2e import groundtruth  # noqa: E402
from tracecode.e2e.calibrate import Case, calibrate, grid, rule_constraints, select  # noqa: E402
from tracecode.e2e.pipeline import exposures_synthetic  # noqa: E402
from tracecode.e2e.scenario import load_scenario  # noqa: E402


FINE_GRID = {
    "t2": (50, 53, 56, 58, 60, 63, 65, 66, 68),
    "t3": (60, 63, 66, 68, 69, 70, 72, 75),
    "w_medium": (0.0, 0.1, 0.25, 0.5, 1.0),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--scenarios", nargs="*", default=None, help="scenario files (default: scenarios/*.yaml "
                    "with a ground_truth section)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2], help="radio noise seeds (a case per seed)")
    ap.add_argument("--beta", type=float, default=2.0, help="F-beta objective (2: recall weighs more)")
    ap.add_argument("--train", nargs="*", metavar="NAME",
                    help="choose the setting on these scenarios only and report the others as held out")
    ap.add_argument("--rule-constraints", action="store_true",
                    help="only settings consistent with the written ground-truth rule (15 min just inside "
                         "2 m reaches yellow, an hour at 1.2 m red), on a finer grid")
    ap.add_argument("--rule", choices=("tracecode", "en"), default="tracecode",
                    help="tracecode: the duration + proximity rule, rule-constrained, leave-one-scenario-out, "
                         "beside the EN national rules on the same logs (default); en: the bucket-weight sweep")
    ap.add_argument("--no-bench-calibration", action="store_true",
                    help="TraceCode's rule without the badges' bench-measured offsets")
    ap.add_argument("--radio", default=None, help="override every scenario's radio: (ideal or fitted)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="write the full result as JSON here")
    args = ap.parse_args(argv)
    files = args.scenarios or sorted(glob.glob(str(root / "scenarios" / "*.yaml")))
    t0 = time.monotonic()
    cases_by_scenario: dict[str, list[Case]] = {}
    for f in files:
        scn = load_scenario(f)
        if "ground_truth" not in scn.raw or not scn.diagnosed:
            continue
        truth = groundtruth.compute(scn)
        for seed in args.seeds:
            cases_by_scenario.setdefault(scn.name, []).append(
                Case(scn.name, exposures_synthetic(scn, seed=seed, radio=args.radio), truth))
    if len(cases_by_scenario) < 2:
        print("calibrate: need at least two scenarios with ground truth", file=sys.stderr)
        return 2
    # One case per scenario for leave-one-scenario-out: merge the seeds of a scenario by prefixing ids.
    cases = []
    for name, cs in cases_by_scenario.items():
        exp, pos, neg = {}, set(), set()
        diag = set()
        for k, c in enumerate(cs):
            exp.update({f"{k}:{p}": e for p, e in c.exposures.items()})
            pos |= {f"{k}:{p}" for p in c.truth.positives}
            neg |= {f"{k}:{p}" for p in c.truth.negatives}
            diag |= {f"{k}:{p}" for p in c.truth.diagnosed}
        truth = groundtruth.GroundTruth(name, cs[0].truth.rule, pos, neg, diag)
        cases.append(Case(name, exp, truth))
    t_sim = time.monotonic() - t0
    if args.rule == "tracecode":
        return _tracecode(args, cases, t0, t_sim)
    configs = grid(FINE_GRID if args.rule_constraints else None)
    if args.rule_constraints:
        import math

        from tracecode.e2e.synthetic import RadioModel

        radio = RadioModel()
        configs = rule_constraints(  # attenuation = TX power - RSSI in the scenarios' radio model
            configs,
            lambda d: radio.tx_power_dbm - (radio.rssi_1m_dbm - 10 * radio.exponent * math.log10(d)),
        )
    if args.train:
        res = select(cases, configs, args.train, beta=args.beta)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        if args.json:
            json.dump(res, sys.stdout, indent=2)
            print()
            return 0
        c = res["chosen"]
        print(f"{res['settings_tried']} settings; chosen on {', '.join(res['trained_on'])}: "
              f"thresholds {c['thresholds_db']} dB, weights {c['bucket_weights']}")
        for name, m in res["figures"].items():
            tag = "held out" if m["held_out"] else "training"
            print(f"  {name:<10} precision {m['precision']:.3f} recall {m['recall']:.3f} ({tag})")
        return 0
    res = calibrate(cases, configs, beta=args.beta)
    res["seeds"] = args.seeds
    res["wall_s"] = {"simulate_and_match": round(t_sim, 1), "total": round(time.monotonic() - t0, 1)}
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    print(f"calibration over {len(cases)} scenarios x {len(args.seeds)} seeds, {res['settings_tried']} settings, "
          f"objective {res['objective']}")
    print("leave-one-scenario-out:")
    for f in res["cross_validation"]:
        c = f["chosen"]
        print(f"  {f['held_out']:<10} precision {f['precision']:.3f} recall {f['recall']:.3f}   "
              f"(chosen on the others: thresholds {c['thresholds_db']} weights {c['bucket_weights']})")
    cv = res["cross_validated"]
    print(f"  pooled     precision {cv['precision']:.3f} recall {cv['recall']:.3f}")
    b = res["best"]
    print(f"best setting on all scenarios: thresholds {b['thresholds_db']} dB, weights {b['bucket_weights']}")
    for name, m in res["best_in_sample"].items():
        print(f"  {name:<10} precision {m['precision']:.3f} recall {m['recall']:.3f} (in sample)")
    print(f"current defaults {res['baseline']['thresholds_db']} / {res['baseline']['bucket_weights']}:")
    for name, m in res["baseline_figures"].items():
        print(f"  {name:<10} precision {m['precision']:.3f} recall {m['recall']:.3f}")
    print(f"wall time: {res['wall_s']['total']} s (simulate + match {res['wall_s']['simulate_and_match']} s)")
    return 0


def _tracecode(args, cases, t0, t_sim) -> int:
    from tracecode.e2e.baselines import RULES, baseline_metrics
    from tracecode.e2e.calibrate import calibrate_tracecode, tracecode_configs
    from tracecode.e2e.evaluate import Metrics
    from tracecode.sim.channel import params_from

    ch = params_from(args.radio)
    configs = tracecode_configs(attenuation_at=ch.mean_attenuation)
    for c in configs:
        c.bench_calibration = not args.no_bench_calibration
    res = calibrate_tracecode(cases, configs, beta=1.0 if args.beta == 2.0 else args.beta)
    cvm = res.pop("held_out_metrics")
    base = {c.name: baseline_metrics(c.exposures, c.truth) for c in cases}
    pooled = {r.name: Metrics(0, 0, 0, 0) for r in RULES}
    for c in cases:
        for r in RULES:
            pooled[r.name] = pooled[r.name] + base[c.name][r.name]
    res["baselines"] = {c.name: {k: v.to_json() for k, v in base[c.name].items()} for c in cases}
    res["baselines_pooled"] = {k: v.to_json() for k, v in pooled.items()}
    best_name = max(pooled, key=lambda k: pooled[k].f1)
    res["headline"] = {"tracecode_held_out_f1": round(cvm.f1, 3), "best_baseline": best_name,
                       "best_baseline_f1": round(pooled[best_name].f1, 3),
                       "margin": round(cvm.f1 - pooled[best_name].f1, 3)}
    res["channel"] = ch.kind
    res["seeds"] = args.seeds
    res["wall_s"] = {"simulate_and_match": round(t_sim, 1), "total": round(time.monotonic() - t0, 1)}
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    names = [r.name for r in RULES]
    print(f"{len(cases)} scenarios x {len(args.seeds)} seeds, {ch.kind} channel; TraceCode rule: {len(configs)} "
          f"rule-consistent settings, leave-one-scenario-out (held-out P/R/F1) vs EN rules on the same logs")
    print(f"  {'scenario':<16} {'TraceCode':>16} " + " ".join(f"{n:>16}" for n in names))
    for f in res["cross_validation"]:
        b = res["baselines"][f["held_out"]]
        print(f"  {f['held_out']:<16} {f['precision']:.2f}/{f['recall']:.2f}/{f['f1']:.2f}   " +
              " ".join(f"  {b[n]['precision']:.2f}/{b[n]['recall']:.2f}/{b[n]['f1']:.2f}" for n in names))
    cv = res["cross_validated"]
    print(f"  {'pooled':<16} {cv['precision']:.2f}/{cv['recall']:.2f}/{cv['f1']:.2f}   " +
          " ".join(f"  {pooled[n].precision:.2f}/{pooled[n].recall:.2f}/{pooled[n].f1:.2f}" for n in names))
    h = res["headline"]
    print(f"held-out F1 {h['tracecode_held_out_f1']} vs best EN rule ({h['best_baseline']}) {h['best_baseline_f1']}: "
          f"margin {h['margin']:+.3f}")
    b = res["best"]
    print(f"best on all: gate {b['gate_db']} dB, proximity <= {b['proximity_db']} dB at quantile "
          f"{b['proximity_quantile']}, >= {b['min_minutes']} min (red >= {b['red_minutes']} min)")
    print(f"wall time: {res['wall_s']['total']} s (simulate + match {res['wall_s']['simulate_and_match']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
