"""From matches to health codes, exposure minutes and precision/recall against ground truth.

`Exposures` keeps, per person, the EN v2 exposure windows with the seconds of each window as a
histogram over attenuation (0..255 dB). Any attenuation thresholds/weights then give bucket
seconds, window scores, daily sums and a health code with a few array operations, which is
what the calibration sweep needs. `scores()` follows `tracecode.scoring.exposure_windows` /
`health_code` exactly (a test checks both give the same codes and scores).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..scoring import BUCKETS, ScoringConfig, contact_estimate, window_scans
from .groundtruth import GroundTruth

POSITIVE_CODES = ("yellow", "red")


@dataclass
class PersonExposure:
    person: str
    hist: np.ndarray            # [windows, 256] seconds by attenuation
    weights: np.ndarray         # [windows] report-type x infectiousness weight (per config: see below)
    report_types: list[int]
    dsos: list[int | None]
    days: np.ndarray            # [windows] UTC day number of the window start
    starts: np.ndarray          # [windows] window start (Unix s)
    ends: np.ndarray            # [windows] last scan time in the window
    diagnosed: bool = False
    # per scan (for the duration + proximity rule): (day, key) group, attenuation, EN seconds
    scan_group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scan_att: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scan_secs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scan_offset: np.ndarray = field(default_factory=lambda: np.zeros(0))   # bench calibration (dB)

    @classmethod
    def from_matches(cls, person: str, matches, *, diagnosed: bool = False,
                     offset_db=None) -> "PersonExposure":
        """`offset_db(match)`: the bench-calibrated TX + RX offset of the scan's two badges
        (subtracted by the TraceCode rule when `cfg.bench_calibration`)."""
        hists, rts, dsos, starts, ends = [], [], [], [], []
        groups: dict[tuple[int, bytes], int] = {}
        sg, sa, ss, so = [], [], [], []
        for new, m, secs in window_scans(matches):
            if new:
                hists.append(np.zeros(256))
                rts.append(m.key.report_type)
                dsos.append(m.key.days_since_onset_of_symptoms)
                starts.append(m.time)
                ends.append(m.time)
            hists[-1][min(int(m.attenuation), 255)] += secs
            ends[-1] = max(ends[-1], m.time)
            g = groups.setdefault((starts[-1] // 86400, m.key.key_data), len(groups))
            sg.append(g)
            sa.append(float(m.attenuation))
            ss.append(secs)
            so.append(float(offset_db(m)) if offset_db is not None else 0.0)
        hist = np.array(hists) if hists else np.zeros((0, 256))
        st = np.array(starts, dtype=np.int64)
        return cls(person, hist, np.ones(len(hists)), rts, dsos, st // 86400, st, np.array(ends, dtype=np.int64),
                   diagnosed, np.array(sg, dtype=np.int64), np.array(sa), np.array(ss), np.array(so))

    def estimates(self, cfg: ScoringConfig, offset_db: float = 0.0) -> list[tuple[float, float]]:
        """(seconds together, proximity dB) per (day, key) group, as tracecode.scoring."""
        out = []
        if not len(self.scan_group):
            return out
        order = np.argsort(self.scan_group, kind="stable")
        g = self.scan_group[order]
        a = self.scan_att[order] - offset_db
        if cfg.bench_calibration and len(self.scan_offset) == len(self.scan_att):
            a = a - self.scan_offset[order]
        s = self.scan_secs[order]
        bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            out.append(contact_estimate(a[lo:hi].tolist(), s[lo:hi].tolist(), cfg))
        return out

    def bucket_seconds(self, cfg: ScoringConfig) -> np.ndarray:
        """[windows, 4] seconds in immediate/near/medium/other."""
        if not len(self.hist):
            return np.zeros((0, 4))
        cum = np.cumsum(self.hist, axis=1)
        t1, t2, t3 = (min(int(t), 255) for t in cfg.thresholds_db)
        total = cum[:, -1]
        c1, c2, c3 = cum[:, t1], cum[:, t2], cum[:, t3]
        return np.stack([c1, c2 - c1, c3 - c2, total - c3], axis=1)

    def window_scores(self, cfg: ScoringConfig) -> np.ndarray:
        b = self.bucket_seconds(cfg)
        if not len(b):
            return np.zeros(0)
        w = b @ np.asarray(cfg.bucket_weights, dtype=float)
        mult = np.array([cfg.report_type_weights.get(rt, 1.0) * cfg.infectiousness(d)
                         for rt, d in zip(self.report_types, self.dsos)])
        return w * mult

    def daily(self, cfg: ScoringConfig) -> dict[int, float]:
        s = self.window_scores(cfg)
        out: dict[int, float] = defaultdict(float)
        for day, v in zip(self.days.tolist(), s.tolist()):
            out[int(day)] += v
        return dict(out)

    def health_code(self, cfg: ScoringConfig) -> str:
        if self.diagnosed:
            return "red"
        if cfg.rule == "tracecode":
            code = "green"
            for total, prox in self.estimates(cfg):
                if total >= 60 * cfg.min_minutes and prox <= cfg.proximity_db:
                    if total >= 60 * cfg.red_minutes:
                        return "red"
                    code = "yellow"
            return code
        best = max(self.daily(cfg).values(), default=0.0)
        if best >= cfg.red_threshold:
            return "red"
        if best >= cfg.yellow_threshold:
            return "yellow"
        return "green"

    def minutes_by_bucket(self, cfg: ScoringConfig) -> dict[str, float]:
        b = self.bucket_seconds(cfg).sum(axis=0) if len(self.hist) else np.zeros(4)
        return {name: round(float(s) / 60.0, 1) for name, s in zip(BUCKETS, b)}


@dataclass
class Metrics:
    tp: int
    fp: int
    fn: int
    tn: int
    false_positives: list[str] = field(default_factory=list)
    false_negatives: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: "Metrics") -> "Metrics":
        return Metrics(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn,
                       self.false_positives + other.false_positives,
                       self.false_negatives + other.false_negatives)

    def to_json(self) -> dict:
        return {"precision": round(self.precision, 3), "recall": round(self.recall, 3),
                "f1": round(self.f1, 3), "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "false_positives": sorted(self.false_positives),
                "false_negatives": sorted(self.false_negatives)}


def metrics(codes: dict[str, str], truth: GroundTruth) -> Metrics:
    """Precision/recall of "yellow or red" against the close contacts (diagnosed people excluded)."""
    tp = fp = fn = tn = 0
    fps, fns = [], []
    for pid in sorted(truth.positives | truth.negatives):
        flagged = codes.get(pid, "green") in POSITIVE_CODES
        if pid in truth.positives:
            if flagged:
                tp += 1
            else:
                fn += 1
                fns.append(pid)
        elif flagged:
            fp += 1
            fps.append(pid)
        else:
            tn += 1
    return Metrics(tp, fp, fn, tn, fps, fns)


def codes_for(exposures: dict[str, PersonExposure], cfg: ScoringConfig) -> dict[str, str]:
    return {pid: e.health_code(cfg) for pid, e in exposures.items()}
