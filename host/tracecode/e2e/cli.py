"""Command-line front of the end-to-end runner.

`python -m tracecode.e2e SCENARIO... [--mode synthetic|fleet] [--out DIR] [--scoring JSON] [--json]`

`tracecode sim run` (SIM's CLI) can delegate to it: `add_arguments(parser)` adds the options,
`run(args)` runs the scenarios and prints the figures (one JSON document with --json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO",
                   help="scenario YAML file(s), or names of shipped scenarios (office, bus, ...)")
    add_pipeline_options(p)


def add_pipeline_options(p: argparse.ArgumentParser, *, out: str = "out/e2e", mode: str = "synthetic") -> None:
    """The runner's options (without the scenario argument); `tracecode sim run` shares them."""
    p.add_argument("--mode", choices=("synthetic", "fleet"), default=mode,
                   help="fleet: virtual badges running the firmware, synced by the station code; "
                        "synthetic: badge logs computed from the geometry (fast)")
    p.add_argument("--out", type=Path, default=Path(out), help=f"report folder (default {out})")
    p.add_argument("--scoring", help="JSON with thresholds_db / bucket_weights (e.g. tools/calibrate.py --out)")
    p.add_argument("--radio", help="override the scenario's radio: section (ideal or fitted; docs/channel.md)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document")


def run(args) -> int:
    from ..progress import _tty, virtual_time_bar
    from ..resources import scenario_file
    from .pipeline import run_scenario
    from .scenario import DAY_S, load_scenario

    results = []
    paths = [scenario_file(s) for s in args.scenarios]   # files, or shipped scenarios by name ("office")
    for path in paths:
        # On a terminal (stderr): a bar of simulated time with the current stage; elsewhere
        # nothing but the summary lines below.
        days = load_scenario(path).days
        live = _tty() and not args.json
        with virtual_time_bar(f"{path.stem} ({args.mode})", days * DAY_S, enabled=live) as update, \
                _fleet_clock(update if live and args.mode == "fleet" else None):
            def say(msg: str) -> None:
                update(_VT["t"], note=msg.split(": ", 1)[-1])
            res = run_scenario(path, args.out / path.stem, mode=args.mode, scoring=args.scoring, seed=args.seed,
                               report=not args.no_report, progress=say, radio=getattr(args, "radio", None))
        results.append(res)
    if args.json:
        from ..cli import print_json

        keep = ("scenario", "mode", "people", "days", "precision", "recall", "f1", "metrics", "baselines",
                "f1_minus_best_baseline", "health_codes", "per_person", "rule", "scoring", "radio", "wall_s", "report")
        print_json({"scenarios": [{k: r[k] for k in keep if k in r} for r in results]})
        return 0
    for r in results:
        m = r["metrics"]
        print(f"{r['scenario']:<10} precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
              f"(TP {m['tp']} FP {m['fp']} FN {m['fn']} TN {m['tn']})  wall {r['wall_s']:.1f} s  [{r['mode']}]")
        for name, b in r.get("baselines", {}).items():
            print(f"           {name:<16} precision {b['precision']:.3f}  recall {b['recall']:.3f}  F1 {b['f1']:.3f}"
                  f"  (same logs)")
        if "f1" in r:
            print(f"           TraceCode F1 {r['f1']:.3f}, {r['f1_minus_best_baseline']:+.3f} vs the best EN rule")
        codes = " ".join(f"{p}={c}" for p, c in r["health_codes"].items())
        print(f"           health codes: {codes}")
        if "report" in r:
            print(f"           report: {r['report']['html']}")
    return 0


_VT = {"t": 0.0}


class _fleet_clock:
    """While a fleet-mode scenario runs, report the fleet's simulated time to `update`: the
    fleet's `run_until` is run in steps of STEP_S simulated seconds (the same events in the
    same order) with an update after each. Without `update` nothing changes."""

    STEP_S = 1800.0

    def __init__(self, update):
        self.update = update
        self.saved = None

    def __enter__(self):
        _VT["t"] = 0.0
        if self.update is None:
            return self
        from ..sim.fleet import Fleet

        self.saved = Fleet.__dict__.get("run_until")
        base = Fleet.run_until
        update = self.update
        step = self.STEP_S

        def run_until(fleet, t: float) -> None:
            while fleet.now + step < t:
                base(fleet, fleet.now + step)
                _VT["t"] = fleet.now
                update(fleet.now)
            base(fleet, t)
            _VT["t"] = max(_VT["t"], t)
            update(_VT["t"])
        Fleet.run_until = run_until
        return self

    def __exit__(self, *exc):
        if self.update is None:
            return
        from ..sim.fleet import Fleet

        if self.saved is None:
            del Fleet.run_until
        else:
            Fleet.run_until = self.saved


def main(argv: list[str] | None = None) -> int:
    from ..errors import TraceCodeError

    p = argparse.ArgumentParser(prog="python -m tracecode.e2e", description="Run scenarios end to end and "
                                "score the health codes against the scenarios' ground truth.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except TraceCodeError as exc:
        print(f"tracecode: error: {exc}", file=sys.stderr)
        return exc.exit_code
