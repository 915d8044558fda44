#!/usr/bin/env python3
"""Fit TraceCode's radio channel model to the DP-3T BLE field measurements (a local copy).

    python tools/dp3t_fit.py /path/to/bt-measurements [--json] [--plot docs/channel-fit.png]

The data (github.com/DP-3T/bt-measurements, CC BY-ND) is read from a local copy and never
copied into this repository: only the figures derived here are (docs/channel.md). Used: the
per-reading tables `results` of experiment 05 (EPFL, April 2020, pre-GAEN app, TX power in the
row) and experiment 34 (EPFL, July 2020, GAEN, attenuation from Google's per-model calibration:
TX -24 dBm, RX +5 dB for all the Samsung models used), with the video ground-truth distance.

Fitted, per experiment and pooled:
  * attenuation vs distance: least squares att = a + s * log10(d) on readings at 0.2..10 m,
    together with one TX offset per transmitting device and one RX offset per receiving device
    (alternating means, offsets centred), so the slope is not bent by the device mix;
  * the medians per distance bin (0-1, 1-1.5, 1.5-2, 2-3, 3-5, 5+ m);
  * the residual spread after distance and device offsets (sd, per reading);
  * the time correlation of the residual of one (receiver, transmitter) pair at lags of
    10 s .. 10 min (Pearson over all reading pairs at that lag +- 20 %);
  * the device offsets' sd (TX and RX).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

EXPERIMENTS = {
    "exp05": ("exp05-epfl-soldiers", ["scenario01-lunch", "scenario02-train", "scenario03-office",
                                      "scenario04-queue", "scenario05-party"]),
    "exp34": ("exp34-epfl-soldiers", ["scenario01-lunch", "scenario02-train", "scenario03-office",
                                      "scenario04-queue", "scenario05-party"]),
}
EXP34_TX_DBM = -24.0       # Google's calibration table for these models (as used by DP-3T's processing)
EXP34_RX_CORR_DB = 5.0
BINS = [(0.0, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, 99.0)]
LAGS_S = [10, 30, 60, 120, 300, 600]


def load(root: Path, exp: str, scen: str) -> dict[str, np.ndarray]:
    """Readings with a ground-truth distance: t (s), rx, tx (device ids), att (dB), d (m)."""
    folder, _ = EXPERIMENTS[exp]
    f = root / folder / f"{scen}.sqlite"
    if not f.exists():
        raise SystemExit(f"dp3t_fit: {f} not found (pass the root of a local bt-measurements copy)")
    con = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
    rows = con.execute("SELECT timestamp, receiver_id, transmitter_id, rssi, tx_power, ground_truth_distance "
                       "FROM results WHERE ground_truth_distance IS NOT NULL AND ground_truth_distance > 0").fetchall()
    con.close()
    a = np.array([(r[0], r[3], r[4] or 0, r[5]) for r in rows], dtype=float)
    rx = np.array([f"{exp}:{r[1]}" for r in rows])
    tx = np.array([f"{exp}:{r[2]}" for r in rows])
    t = a[:, 0] / 1000.0 if exp == "exp05" else a[:, 0]
    if exp == "exp05":
        att = a[:, 2] - a[:, 1]
    else:
        att = EXP34_TX_DBM - (a[:, 1] + EXP34_RX_CORR_DB)
    return {"t": t, "rx": rx, "tx": tx, "att": att, "d": a[:, 3], "scen": np.array([f"{exp}/{scen}"] * len(rows))}


def concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fit(data: dict[str, np.ndarray], iters: int = 30) -> dict:
    sel = (data["d"] >= 0.2) & (data["d"] <= 10.0)
    att, d = data["att"][sel], data["d"][sel]
    rx, tx = data["rx"][sel], data["tx"][sel]
    x = np.log10(d)
    rxu, rxi = np.unique(rx, return_inverse=True)
    txu, txi = np.unique(tx, return_inverse=True)
    orx = np.zeros(len(rxu))
    otx = np.zeros(len(txu))
    a = s = 0.0
    for _ in range(iters):
        y = att - orx[rxi] - otx[txi]
        s, a = np.polyfit(x, y, 1)
        r = att - (a + s * x)
        otx = np.bincount(txi, r - orx[rxi], len(txu)) / np.maximum(np.bincount(txi, None, len(txu)), 1)
        otx -= otx.mean()
        orx = np.bincount(rxi, r - otx[txi], len(rxu)) / np.maximum(np.bincount(rxi, None, len(rxu)), 1)
        orx -= orx.mean()
    s_raw, a_raw = np.polyfit(x, att, 1)
    resid = att - (a + s * x) - orx[rxi] - otx[txi]
    medians = {}
    for lo, hi in BINS:
        m = (data["d"] >= lo) & (data["d"] < hi)
        medians[f"{lo:g}-{hi:g}" if hi < 99 else f"{lo:g}+"] = (round(float(np.median(data["att"][m])), 1)
                                                                 if m.any() else None)
    return {
        "readings": int(sel.sum()),
        "slope_db_per_decade": round(float(s), 2),
        "att_at_1m_db": round(float(a), 1),
        "slope_raw_db_per_decade": round(float(s_raw), 2),
        "residual_sd_db": round(float(resid.std()), 2),
        "raw_sd_about_line_db": round(float((att - (a_raw + s_raw * x)).std()), 2),
        "tx_offset_sd_db": round(float(otx.std()), 2),
        "rx_offset_sd_db": round(float(orx.std()), 2),
        "medians_by_distance_m": medians,
        "time_correlation": time_correlation(data["t"][sel], rx, tx, data["scen"][sel], resid),
        "_resid": resid, "_x": x, "_att": att, "_a": a, "_s": s,
    }


def time_correlation(t, rx, tx, scen, resid) -> dict[str, float]:
    """Pearson correlation of one pair's residuals `lag` seconds apart (+- 20 %), all pairs pooled."""
    key = np.array([f"{s}|{a}|{b}" for s, a, b in zip(scen, rx, tx)])
    order = np.lexsort((t, key))
    key, t, resid = key[order], t[order], resid[order]
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    out = {}
    rng = np.random.default_rng(0)
    for lag in LAGS_S:
        xs, ys = [], []
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            tt, rr = t[lo:hi], resid[lo:hi]
            if len(tt) < 4:
                continue
            j = np.searchsorted(tt, tt + 0.8 * lag)
            k = np.searchsorted(tt, tt + 1.2 * lag)
            ok = j < k
            if not ok.any():
                continue
            idx = np.flatnonzero(ok)
            pick = j[idx] + (rng.random(len(idx)) * (k[idx] - j[idx])).astype(int)
            xs.append(rr[idx])
            ys.append(rr[pick])
        if xs:
            xa, ya = np.concatenate(xs), np.concatenate(ys)
            out[f"{lag}s"] = round(float(np.corrcoef(xa, ya)[0, 1]), 3) if len(xa) > 30 else None
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    for name, col in (("exp05", "tab:blue"), ("exp34", "tab:orange")):
        r = results[name]
        x, att = r["_x"], r["_att"]
        # derived figures only: 5/25/50/75/95 % quantiles of attenuation per 0.1-decade bin
        edges = np.arange(-0.7, 1.01, 0.1)
        mids, q = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (x >= lo) & (x < hi)
            if m.sum() >= 30:
                mids.append(10 ** ((lo + hi) / 2))
                q.append(np.percentile(att[m], [10, 25, 50, 75, 90]))
        q = np.array(q)
        ax.fill_between(mids, q[:, 0], q[:, 4], color=col, alpha=0.12)
        ax.fill_between(mids, q[:, 1], q[:, 3], color=col, alpha=0.25)
        ax.plot(mids, q[:, 2], "o", color=col, ms=4, label=f"{name}: median, 25-75 %, 10-90 % per bin")
        dd = np.logspace(-0.7, 1.0, 50)
        ax.plot(dd, r["_a"] + r["_s"] * np.log10(dd), "-", color=col,
                label=f"{name} fit: {r['_a']:.1f} + {r['_s']:.1f} log10 d")
    dd = np.logspace(-0.7, 1.0, 50)
    ax.plot(dd, 60 + 30 * np.log10(dd), "k--", label="old ideal channel: 60 + 30 log10 d")
    ax.set_xscale("log")
    ax.set_xlabel("ground-truth distance (m, video)")
    ax.set_ylabel("attenuation (dB)")
    ax.set_title("DP-3T EPFL field data: attenuation vs distance")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, col in (("exp05", "tab:blue"), ("exp34", "tab:orange")):
        tc = results[name]["time_correlation"]
        lags = [int(k[:-1]) for k, v in tc.items() if v is not None]
        ax.plot(lags, [v for v in tc.values() if v is not None], "o-", color=col, label=f"{name} data")
    model = results.get("model_correlation")
    if model:
        ax.plot([int(k[:-1]) for k in model], list(model.values()), "k--", label="TraceCode channel model")
    ax.set_xscale("log")
    ax.set_xlabel("lag (s)")
    ax.set_ylabel("correlation of a pair's residual")
    ax.set_ylim(0, 1)
    ax.set_title("time correlation of the residual")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name, col in (("exp05", "tab:blue"), ("exp34", "tab:orange")):
        r = results[name]["_resid"]
        h, e = np.histogram(r, bins=np.arange(-25, 26, 1.0), density=True)
        ax.step(e[:-1], h, where="post", color=col, label=f"{name} residual sd {r.std():.1f} dB")
    xs = np.linspace(-25, 25, 200)
    sd = results.get("model_sd")
    if sd:
        ax.plot(xs, np.exp(-xs ** 2 / (2 * sd ** 2)) / (sd * np.sqrt(2 * np.pi)), "k--", label=f"model sd {sd:.1f} dB")
    ax.set_xlabel("residual after distance + device offsets (dB)")
    ax.set_title("per-reading spread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="local copy of github.com/DP-3T/bt-measurements")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, help="write the fit beside the data as a PNG (derived figures only)")
    args = ap.parse_args(argv)
    results: dict = {}
    per_scenario: dict = {}
    for exp, (_, scens) in EXPERIMENTS.items():
        parts = []
        for s in scens:
            p = load(args.root, exp, s)
            parts.append(p)
            r = fit(p)
            per_scenario[f"{exp}/{s}"] = {k: v for k, v in r.items() if not k.startswith("_") and k != "time_correlation"}
        results[exp] = fit(concat(parts))
    from tracecode.sim.channel import ChannelParams, model_correlation  # the model, for the comparison

    params = ChannelParams()
    results["model_correlation"] = {f"{lag}s": round(model_correlation(params, lag), 3) for lag in LAGS_S}
    results["model_sd"] = params.total_sd_db()
    out = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) and "_x" in v else v)
           for k, v in results.items()}
    out["per_scenario"] = per_scenario
    if args.plot:
        plot(results, args.plot)
        out["plot"] = str(args.plot)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    for exp in EXPERIMENTS:
        r = out[exp]
        print(f"{exp}: {r['readings']} readings; att = {r['att_at_1m_db']} + {r['slope_db_per_decade']} log10 d "
              f"(raw slope {r['slope_raw_db_per_decade']}); residual sd {r['residual_sd_db']} dB "
              f"(about the raw line {r['raw_sd_about_line_db']}); device offsets sd TX {r['tx_offset_sd_db']} "
              f"RX {r['rx_offset_sd_db']} dB")
        print(f"   medians by distance: {r['medians_by_distance_m']}")
        print(f"   time correlation: {r['time_correlation']}")
    print("per scenario (slope dB/decade, att at 1 m, residual sd):")
    for k, r in per_scenario.items():
        print(f"   {k:<26} {r['slope_db_per_decade']:6.1f} {r['att_at_1m_db']:6.1f} {r['residual_sd_db']:5.1f}  "
              f"n={r['readings']}")
    print(f"model: residual sd {out['model_sd']:.2f} dB, correlation {out['model_correlation']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))
    sys.exit(main())
