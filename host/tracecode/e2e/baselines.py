"""Exposure Notification national rules, applied to the same logs as TraceCode's scoring.

Each rule is an EN attenuation-bucket rule on the exposure windows the matcher builds (scan
attenuation = advertised TX power - RSSI, durations as EN: time since the previous scan of the
key, capped at 5 minutes, 2 minutes for a window's first scan). A person is flagged when the
rule would have notified them on some day. Where the numbers come from (docs/channel.md):

* SwissCovid (DP-3T SDK matching parameters, thresholds as raised by the FOPH on 11 Sept 2020):
  minutes at attenuation <= 55 dB count 1.0, 55-63 dB count 0.5, notify at 15 minutes a day.
* Corona-Warn-App (cwa-server main-config/v2/risk-calculation-parameters.yaml): typical
  attenuation < 63 dB weight 0.8, 63-73 dB 1.0, 73-79 dB 0.1; windows with under 5 minutes at
  < 79 dB are dropped; normalized time = weighted minutes x transmission risk value (TRL 8 for
  a confirmed test with high infectiousness x multiplier 0.2 = 1.6); high risk at >= 13 per day.
* EN v2 example (the earlier TraceCode defaults, shaped like the EN v2 DailySummariesConfig
  example: thresholds 30/50/70 dB, weights 1.5/1.0/0.5/0), notify at 15 weighted minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluate import Metrics, PersonExposure, metrics
from .groundtruth import GroundTruth


@dataclass(frozen=True)
class ENRule:
    name: str
    edges_db: tuple[int, ...]        # bucket upper edges (inclusive), ascending
    weights: tuple[float, ...]       # one weight per bucket; beyond the last edge: 0
    trigger_s: float                 # daily weighted seconds (x multiplier) that notify
    multiplier: float = 1.0
    drop_window_below_s: float = 0.0     # windows with less than this at <= drop_att_db are dropped
    drop_att_db: int = 255
    source: str = ""

    def flagged(self, e: PersonExposure) -> bool:
        if e.diagnosed or not len(e.hist):
            return e.diagnosed
        cum = np.cumsum(e.hist, axis=1)
        prev = np.zeros(len(e.hist))
        score = np.zeros(len(e.hist))
        for edge, w in zip(self.edges_db, self.weights):
            c = cum[:, min(edge, 255)]
            score += (c - prev) * w
            prev = c
        if self.drop_window_below_s:
            keep = cum[:, min(self.drop_att_db, 255)] >= self.drop_window_below_s
            score = np.where(keep, score, 0.0)
        score = score * self.multiplier
        days: dict[int, float] = {}
        for d, s in zip(e.days.tolist(), score.tolist()):
            days[d] = days.get(d, 0.0) + s
        return max(days.values(), default=0.0) >= self.trigger_s


RULES = (
    ENRule("swisscovid", (55, 63), (1.0, 0.5), 900.0,
           source="DP-3T SDK attenuation factors 1.0/0.5, 15 min; FOPH thresholds 55/63 dB (11 Sept 2020)"),
    ENRule("corona-warn-app", (62, 72, 78), (0.8, 1.0, 0.1), 13 * 60.0, multiplier=1.6,
           drop_window_below_s=5 * 60.0, drop_att_db=78,
           source="cwa-server v2 risk-calculation-parameters.yaml: <63 0.8, 63-73 1.0, 73-79 0.1; "
                  "drop windows < 5 min at < 79 dB; TRV 8 x 0.2; high risk >= 13 normalized min/day"),
    ENRule("en-v2-example", (30, 50, 70), (1.5, 1.0, 0.5), 900.0,
           source="EN v2 DailySummariesConfig-style example 30/50/70 dB, 1.5/1.0/0.5/0 (TraceCode's earlier defaults)"),
)


def codes(rule: ENRule, exposures: dict[str, PersonExposure]) -> dict[str, str]:
    return {pid: ("red" if rule.flagged(e) else "green") for pid, e in exposures.items()}


def baseline_metrics(exposures: dict[str, PersonExposure], truth: GroundTruth) -> dict[str, Metrics]:
    return {r.name: metrics(codes(r, exposures), truth) for r in RULES}
