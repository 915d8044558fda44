#!/usr/bin/env python3
"""Scan schedule trade-off: estimated battery life beside accuracy, for a few scan settings.

    python tools/bench_battery.py [--seeds 1] [--battery-mah 1000] [--json]

Battery (per badge, average current from the radio's duty cycle):
  I = I_idle + (window / period) x (I_rx - I_idle) + adverts/s x (E_adv event charge)
with the ESP32 figures of Espressif's ESP32 datasheet (v4.x, "RF Power-Consumption
Specifications" and "Power Consumption by Power Modes"): BLE receive 95-100 mA (100 used), BLE
transmit at 0 dBm 130 mA, modem-sleep with the CPU at 80 MHz 20-31 mA (31 used: MicroPython's
idle loop keeps the CPU awake), light-sleep 0.8 mA. An advertising event sends a 31-byte
non-connectable advert on the 3 advertising channels: 3 x 376 us on air at 1 Mbit/s (Bluetooth
Core Spec: 8 + 8*(2+37) + 24 bits = 376 us) plus ~150 us of radio ramp-up each, at TX current,
and ~1 ms of wake-up at modem-sleep current. Two idle cases: `awake` (modem-sleep, what the
MicroPython firmware does today) and `light-sleep` (the CPU sleeps between radio events, what
ESP-IDF's BLE power management can reach; not implemented in the firmware).

Accuracy: every scenario in scenarios/ on the synthetic runner (fitted channel, the scenario's
own radio: section, the shipped TraceCode rule, not re-tuned per setting), pooled P/R/F1 of
yellow-or-red against the written rule, beside the SwissCovid rule on the same logs.
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
from tracecode.e2e.baselines import RULES  # noqa: E402
from tracecode.e2e.evaluate import Metrics, codes_for, metrics  # noqa: E402
from tracecode.e2e.pipeline import exposures_synthetic  # noqa: E402
from tracecode.e2e.scenario import load_scenario  # noqa: E402
from tracecode.scoring import ScoringConfig  # noqa: E402

I_RX_MA = 100.0          # ESP32 datasheet: BLE RX 95-100 mA
I_TX_MA = 130.0          # ESP32 datasheet: BLE TX at 0 dBm, 130 mA
I_MODEM_SLEEP_MA = 31.0  # ESP32 datasheet: modem-sleep, CPU 80 MHz, 20-31 mA
I_LIGHT_SLEEP_MA = 0.8   # ESP32 datasheet: light-sleep 0.8 mA
ADV_AIR_S = 3 * (376e-6 + 150e-6)   # 3 channels x (31-byte advert on air + ramp-up)
ADV_WAKE_S = 1e-3

SETTINGS = [  # (scan every s, window ms, advertising interval ms)
    (60, 4000, 250), (120, 2000, 250), (120, 4000, 250), (120, 8000, 250), (300, 4000, 250), (120, 4000, 500),
]


def current_ma(period_s: float, window_ms: float, adv_ms: float, idle_ma: float) -> float:
    duty = window_ms / 1000.0 / period_s
    adv_per_s = 1000.0 / adv_ms
    adv_charge = ADV_AIR_S * I_TX_MA + ADV_WAKE_S * I_MODEM_SLEEP_MA      # mA*s per event
    adv_ma = adv_per_s * adv_charge - adv_per_s * (ADV_AIR_S + ADV_WAKE_S) * idle_ma
    return idle_ma + duty * (I_RX_MA - idle_ma) + adv_ma


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="*", type=int, default=[1])
    ap.add_argument("--battery-mah", type=float, default=1000.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    scns = [load_scenario(f) for f in sorted(glob.glob(str(root / "scenarios" / "*.yaml")))]
    scns = [s for s in scns if "ground_truth" in s.raw and s.diagnosed]
    truths = {s.name: groundtruth.compute(s) for s in scns}
    cfg = ScoringConfig.tracecode()
    sw = next(r for r in RULES if r.name == "swisscovid")
    rows = []
    t0 = time.monotonic()
    for period, window, adv in SETTINGS:
        t1 = time.monotonic()
        tc, base = Metrics(0, 0, 0, 0), Metrics(0, 0, 0, 0)
        for s in scns:
            spec = s.raw.get("radio")
            spec = dict(spec) if isinstance(spec, dict) else ({} if spec in (None, "fitted") else {"model": spec})
            spec.update({"scan_every_s": period, "adverts_per_scan": max(1, round(window / adv))})
            for seed in args.seeds:
                ex = exposures_synthetic(s, seed=seed, radio=spec)
                tc += metrics(codes_for(ex, cfg), truths[s.name])
                base += metrics({p: ("red" if sw.flagged(e) else "green") for p, e in ex.items()}, truths[s.name])
        awake = current_ma(period, window, adv, I_MODEM_SLEEP_MA)
        sleep = current_ma(period, window, adv, I_LIGHT_SLEEP_MA)
        rows.append({"scan_every_s": period, "scan_window_ms": window, "adv_interval_ms": adv,
                     "current_ma_awake": round(awake, 2), "days_awake": round(args.battery_mah / awake / 24, 1),
                     "current_ma_light_sleep": round(sleep, 2),
                     "days_light_sleep": round(args.battery_mah / sleep / 24, 1),
                     "tracecode": tc.to_json(), "swisscovid": base.to_json(),
                     "wall_s": round(time.monotonic() - t1, 1)})
    out = {"battery_mah": args.battery_mah, "seeds": args.seeds, "scenarios": [s.name for s in scns],
           "settings": rows, "wall_s": round(time.monotonic() - t0, 1)}
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    print(f"{len(scns)} scenarios x {len(args.seeds)} seed(s), fitted channel, shipped TraceCode rule; "
          f"battery {args.battery_mah:g} mAh")
    print(f"  {'scan':>6} {'window':>7} {'adv':>6} | {'mA awake':>8} {'days':>5} | {'mA l-sleep':>10} {'days':>5} | "
          f"{'TraceCode P/R/F1':>17} | {'SwissCovid P/R/F1':>17}")
    for r in rows:
        t, b = r["tracecode"], r["swisscovid"]
        print(f"  {r['scan_every_s']:>5}s {r['scan_window_ms']:>5}ms {r['adv_interval_ms']:>4}ms | "
              f"{r['current_ma_awake']:>8.2f} {r['days_awake']:>5} | {r['current_ma_light_sleep']:>10.2f} "
              f"{r['days_light_sleep']:>5} | {t['precision']:.2f}/{t['recall']:.2f}/{t['f1']:.2f}      | "
              f"{b['precision']:.2f}/{b['recall']:.2f}/{b['f1']:.2f}")
    print(f"wall time {out['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
