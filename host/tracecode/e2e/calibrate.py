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
