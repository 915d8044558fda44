"""Calibration: sweep attenuation thresholds and bucket weights; leave-one-scenario-out.

For each scenario, the badges' logs are matched once (`exposures`), then every setting of the
grid is scored with array operations (`PersonExposure`). The objective on a set of scenarios is
the F-beta of the pooled TP/FP/FN (beta = 2 by default: missing a close contact is worse than
a needless test). Cross-validation: for each scenario, pick the best setting on the OTHER
scenarios and report that setting's precision/recall on the held-out one; the final
recommendation is the best setting on all scenarios, reported with the cross-validated figures.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..scoring import ScoringConfig
from .evaluate import Metrics, PersonExposure, codes_for, metrics
from .groundtruth import GroundTruth

DEFAULT_GRID = {
    "t1": (30, 40, 45, 50, 55),
    "t2": (50, 53, 56, 58, 60, 63),
    "t3": (60, 63, 66, 70, 75),
    "w_immediate": (1.5, 2.0, 2.5),
    "w_near": (0.5, 1.0, 1.5),
    "w_medium": (0.0, 0.1, 0.25, 0.5),
    "w_other": (0.0,),
}


@dataclass
class Case:
    name: str
    exposures: dict[str, PersonExposure]
    truth: GroundTruth


def grid(spec: dict | None = None) -> list[ScoringConfig]:
    spec = {**DEFAULT_GRID, **(spec or {})}
    out = []
    for t1, t2, t3, wi, wn, wm, wo in itertools.product(spec["t1"], spec["t2"], spec["t3"], spec["w_immediate"],
                                                         spec["w_near"], spec["w_medium"], spec["w_other"]):
        if not t1 < t2 < t3:
            continue
        if not wi >= wn >= wm >= wo:      # closer never counts less
            continue
        out.append(ScoringConfig(thresholds_db=(t1, t2, t3), bucket_weights=(wi, wn, wm, wo)))
    return out


def rule_constraints(configs: Sequence[ScoringConfig], attenuation_at, *, distance_m: float = 2.0,
                     min_minutes: float = 15.0) -> list[ScoringConfig]:
    """Settings consistent with a written ground-truth rule ("within `distance_m` for at least
    `min_minutes`"), before any scenario data is looked at: `min_minutes` just inside the distance
    must reach yellow, and an hour at 0.6 x the distance must reach red. `attenuation_at(d)` is the
    radio model's typical attenuation at d metres."""
    near_edge = round(attenuation_at(0.95 * distance_m))
    close = round(attenuation_at(0.6 * distance_m))
    out = []
    for c in configs:
        if (60 * min_minutes * c.bucket_weights[c.bucket(near_edge)] >= c.yellow_threshold
                and 3600 * c.bucket_weights[c.bucket(close)] >= c.red_threshold):
            out.append(c)
    return out


def select(cases: Sequence[Case], configs: Sequence[ScoringConfig], train: Sequence[str], *,
           beta: float = 2.0) -> dict:
    """Choose the best setting on the `train` scenarios only; report every scenario with it,
    marking which were held out."""
    table = evaluate_all(cases, configs)
    use = [j for j, c in enumerate(cases) if c.name in set(train)]
    if not use:
        raise ValueError("no training scenario among the cases")
    i = _best(table, use, beta, configs)
    return {"chosen": _cfg_json(configs[i]), "trained_on": [cases[j].name for j in use],
            "settings_tried": len(configs),
            "figures": {c.name: {"precision": round(table[i][j].precision, 3),
                                 "recall": round(table[i][j].recall, 3),
                                 "held_out": j not in use} for j, c in enumerate(cases)}}


def f_beta(m: Metrics, beta: float) -> float:
    p, r = m.precision, m.recall
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r) if (b2 * p + r) else 0.0


def evaluate_all(cases: Sequence[Case], configs: Sequence[ScoringConfig]) -> list[list[Metrics]]:
    """metrics[config][case]."""
    return [[metrics(codes_for(c.exposures, cfg), c.truth) for c in cases] for cfg in configs]


def _pooled(row: Iterable[Metrics]) -> Metrics:
    total = Metrics(0, 0, 0, 0)
    for m in row:
        total = total + m
    return total


def _best(table: list[list[Metrics]], use: Sequence[int], beta: float, configs: Sequence[ScoringConfig]) -> int:
    def key(i: int):
        m = _pooled(table[i][j] for j in use)
        cfg = configs[i]
        # ties: prefer settings nearer the EN defaults' shape (fewer surprises), then lower thresholds
        return (round(f_beta(m, beta), 6), round(m.precision, 6), -sum(cfg.bucket_weights), -cfg.thresholds_db[1])
    return max(range(len(configs)), key=key)


def calibrate(cases: Sequence[Case], configs: Sequence[ScoringConfig] | None = None, *, beta: float = 2.0,
              baseline: ScoringConfig | None = None) -> dict:
    configs = list(configs) if configs is not None else grid()
    table = evaluate_all(cases, configs)
    n = len(cases)
    folds = []
    cv = Metrics(0, 0, 0, 0)
    for held in range(n):
        train = [j for j in range(n) if j != held] or [held]
        i = _best(table, train, beta, configs)
        m = table[i][held]
        cv = cv + m
        folds.append({"held_out": cases[held].name, "chosen": _cfg_json(configs[i]),
                      "train_f": round(f_beta(_pooled(table[i][j] for j in train), beta), 3),
                      **{k: v for k, v in m.to_json().items() if k in ("precision", "recall", "tp", "fp", "fn", "tn")}})
    best_i = _best(table, list(range(n)), beta, configs)
    base = baseline or ScoringConfig()
    base_m = [metrics(codes_for(c.exposures, base), c.truth) for c in cases]
    return {
        "objective": f"F{beta:g} of pooled yellow-or-red vs ground truth",
        "settings_tried": len(configs),
        "cross_validation": folds,
        "cross_validated": {"precision": round(cv.precision, 3), "recall": round(cv.recall, 3),
                            "f": round(f_beta(cv, beta), 3)},
        "best": _cfg_json(configs[best_i]),
        "best_in_sample": {c.name: {"precision": round(table[best_i][j].precision, 3),
                                    "recall": round(table[best_i][j].recall, 3)} for j, c in enumerate(cases)},
        "baseline": _cfg_json(base),
        "baseline_figures": {c.name: {"precision": round(m.precision, 3), "recall": round(m.recall, 3)}
                             for c, m in zip(cases, base_m)},
    }


def _cfg_json(cfg: ScoringConfig) -> dict:
    return {"thresholds_db": list(cfg.thresholds_db), "bucket_weights": list(cfg.bucket_weights),
            "yellow_threshold": cfg.yellow_threshold, "red_threshold": cfg.red_threshold}


# ---------------------------------------------------------------------------- TraceCode's rule

TRACECODE_GRID = {
    "gate_db": (62, 64, 66, 68, 70, 72, 75, 80),
    "proximity_quantile": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "proximity_db": tuple(float(x) for x in range(52, 69)),
}


def tracecode_configs(spec: dict | None = None, *, attenuation_at=None, distance_m: float = 2.0,
                      min_minutes: float = 15.0) -> list[ScoringConfig]:
    """The duration + proximity rule's settings, both sides of the written rule as constraints:
    under `min_minutes` of scans stays green (built in: the time estimate counts each scan once,
    weight 1, threshold `min_minutes`); a stay just inside `distance_m` at the channel's median
    attenuation goes yellow (proximity_db >= attenuation_at(0.95 d), gate_db >= proximity_db),
    and one clearly beyond it stays green (proximity_db < attenuation_at(1.5 d))."""
    spec = {**TRACECODE_GRID, **(spec or {})}
    out = []
    for g, q, p in itertools.product(spec["gate_db"], spec["proximity_quantile"], spec["proximity_db"]):
        if p > g:
            continue
        if attenuation_at is not None and not (attenuation_at(0.95 * distance_m) <= p < attenuation_at(1.5 * distance_m)):
            continue
        out.append(ScoringConfig.tracecode(gate_db=g, proximity_quantile=q, proximity_db=p, min_minutes=min_minutes))
    return out


def _tc_table(cases: Sequence[Case], configs: Sequence[ScoringConfig]) -> list[list[Metrics]]:
    """metrics[config][case], computing each (gate, quantile)'s estimates once per person."""
    est: dict[tuple, dict] = {}
    table = []
    for cfg in configs:
        k = (cfg.gate_db, cfg.proximity_quantile, cfg.min_minutes)
        if k not in est:
            est[k] = {j: {pid: e.estimates(cfg) for pid, e in c.exposures.items()} for j, c in enumerate(cases)}
        row = []
        for j, c in enumerate(cases):
            codes = {}
            for pid, e in c.exposures.items():
                if e.diagnosed:
                    codes[pid] = "red"
                    continue
                hit = any(t >= 60 * cfg.min_minutes and p <= cfg.proximity_db for t, p in est[k][j][pid])
                codes[pid] = "yellow" if hit else "green"
            row.append(metrics(codes, c.truth))
        table.append(row)
    return table


def calibrate_tracecode(cases: Sequence[Case], configs: Sequence[ScoringConfig], *, beta: float = 1.0) -> dict:
    """Leave-one-scenario-out over TraceCode's rule; the pooled held-out figure is the result."""
    table = _tc_table(cases, configs)
    n = len(cases)

    def best(use):
        def key(i):
            m = _pooled(table[i][j] for j in use)
            return (round(f_beta(m, beta), 6), round(m.precision, 6), configs[i].proximity_db)
        return max(range(len(configs)), key=key)

    folds, cv = [], Metrics(0, 0, 0, 0)
    for held in range(n):
        i = best([j for j in range(n) if j != held] or [held])
        m = table[i][held]
        cv = cv + m
        folds.append({"held_out": cases[held].name, "chosen": _tc_json(configs[i]),
                      **{k: v for k, v in m.to_json().items() if k in ("precision", "recall", "f1", "tp", "fp", "fn", "tn")}})
    bi = best(list(range(n)))
    return {"objective": f"F{beta:g} of pooled yellow-or-red", "settings_tried": len(configs),
            "cross_validation": folds, "cross_validated": {**{k: v for k, v in cv.to_json().items()
                                                              if k in ("precision", "recall", "f1", "tp", "fp", "fn")}},
            "held_out_metrics": cv, "best": _tc_json(configs[bi]),
            "best_in_sample": {c.name: table[bi][j].to_json() for j, c in enumerate(cases)}}


def _tc_json(cfg: ScoringConfig) -> dict:
    return {"rule": "tracecode", "gate_db": cfg.gate_db, "proximity_db": cfg.proximity_db,
            "proximity_quantile": cfg.proximity_quantile, "min_minutes": cfg.min_minutes,
            "red_minutes": cfg.red_minutes}
