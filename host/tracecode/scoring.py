"""EN v2 exposure windows, scores and health codes.

Defaults (documented in docs/matching.md and printed by `tracecode match --json`):

* attenuation thresholds 30 / 68 / 69 dB split each scan's time into immediate / near /
  medium / other buckets, weighted 1.5 / 0.5 / 0.0 / 0.0. Chosen by
  `tools/calibrate.py --train bus carehome --rule-constraints`: among the settings consistent
  with the written close-contact rule (15 minutes just inside 2 m reaches yellow, an hour at
  1.2 m red), the best F2 on the bus and care-home scenarios; office and classroom are held out;
* report-type weights: CONFIRMED_TEST, CONFIRMED_CLINICAL_DIAGNOSIS and UNKNOWN 1.0,
  SELF_REPORT 0.8, RECURSIVE 0.0, REVOKED never scores;
* infectiousness from days since symptom onset: high (1.0) in -2..+5, standard (0.6) in
  -14..-3 and +6..+14, none outside; unknown onset counts as high (the cautious choice);
* a window is at most 30 minutes; a scan stands for the time since the previous scan of the
  same key, capped at 5 minutes, and 2 minutes when unknown (the first scan of a window);
* daily sum of window scores >= 900 (15 weighted minutes) is red, >= 300 (5) yellow.

`rule="tracecode"` (`ScoringConfig.tracecode()`, the end-to-end default; docs/channel.md)
decides from a duration and a proximity estimate per diagnosis key and day instead of the
linear bucket sum: the time together is the EN time of the scans at most `gate_db` away; the
proximity is a quantile of those scans' attenuations (the 15-minute-best scan when they are
few, at least the `proximity_quantile` of all of them when there are many, so a long stay
further away does not add up to a short close one). Yellow when the time is at least
`min_minutes` and the proximity at most `proximity_db`; red when the time is also at least
`red_minutes`. Under `min_minutes` of scans stays green whatever the signal (the written rule's
first side); windows are EN's, so phones' keys and exports match unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

WINDOW_S = 30 * 60
SCAN_CAP_S = 300
SCAN_UNKNOWN_S = 120


@dataclass
class ScoringConfig:
    thresholds_db: tuple[int, int, int] = (30, 68, 69)
    bucket_weights: tuple[float, float, float, float] = (1.5, 0.5, 0.0, 0.0)
    report_type_weights: dict[int, float] = field(
        default_factory=lambda: {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.8, 4: 0.0, 5: 0.0}
    )
    infectiousness_high: float = 1.0
    infectiousness_standard: float = 0.6
    red_threshold: float = 900.0
    yellow_threshold: float = 300.0
    rule: str = "en"                    # "en" (bucket sums) or "tracecode" (duration + proximity)
    gate_db: int = 62                   # tools/calibrate.py (fitted channel, all scenarios)
    proximity_db: float = 59.0
    proximity_quantile: float = 0.6
    min_minutes: float = 15.0
    red_minutes: float = 30.0
    bench_calibration: bool = True      # subtract the badges' bench-measured offsets (e2e runners)

    @classmethod
    def tracecode(cls, **over) -> "ScoringConfig":
        """TraceCode's duration + proximity rule (calibrated by tools/calibrate.py, its default --rule tracecode)."""
        return cls(rule="tracecode", **over)

    def bucket(self, attenuation_db: int) -> int:
        for i, t in enumerate(self.thresholds_db):
            if attenuation_db <= t:
                return i
        return 3

    def infectiousness(self, dsos: int | None) -> float:
        if dsos is None or -2 <= dsos <= 5:
            return self.infectiousness_high
        if -14 <= dsos <= 14:
            return self.infectiousness_standard
        return 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        if self.rule != "tracecode":
            for k in ("gate_db", "proximity_db", "proximity_quantile", "min_minutes", "red_minutes",
                      "bench_calibration"):
                d.pop(k)
        d["report_type_weights"] = {str(k): v for k, v in self.report_type_weights.items()}
        return d


BUCKETS = ("immediate", "near", "medium", "other")


@dataclass
class Window:
    key_data: bytes
    start: int
    end: int
    report_type: int
    dsos: int | None
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    min_attenuation: int = 255
    scans: int = 0
    score: float = 0.0
    scan_attenuations: list[int] = field(default_factory=list)
    scan_seconds: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "key_data": self.key_data.hex(),
            "window_start": self.start,
            "duration_s": int(round(sum(self.seconds))),
            "attenuations": {b: int(round(s)) for b, s in zip(BUCKETS, self.seconds)},
            "min_attenuation_db": self.min_attenuation,
            "scans": self.scans,
            "report_type": self.report_type,
            "days_since_onset_of_symptoms": self.dsos,
            "score": round(self.score, 1),
        }


def window_scans(matches):
    """Group matches (objects with key, time, duration_s) into EN v2 exposure windows.

    Yields `(new_window, match, seconds)` in window order: matches of one diagnosis key, by time;
    a window starts at its first scan and holds the scans of the next 30 minutes; `seconds` is
    the time that scan stands for. The one place this rule lives: `exposure_windows` builds
    `Window`s from it and the calibration's histograms (tracecode.e2e.evaluate) reuse it."""
    by_key = defaultdict(list)
    for m in matches:
        by_key[m.key.key_data].append(m)
    for ms in by_key.values():
        ms.sort(key=lambda m: m.time)
        start: int | None = None
        prev_t: int | None = None
        for m in ms:
            new = start is None or m.time >= start + WINDOW_S
            if new:
                start, prev_t = m.time, None
            if m.duration_s is not None:
                secs = float(min(m.duration_s, SCAN_CAP_S))
            elif prev_t is None:
                secs = float(SCAN_UNKNOWN_S)
            else:
                secs = float(min(m.time - prev_t, SCAN_CAP_S))
            prev_t = m.time
            yield new, m, secs


def exposure_windows(matches, cfg: ScoringConfig) -> list[Window]:
    """Group matches (objects with key, time, attenuation, min_attenuation, duration_s) into
    windows per diagnosis key and score them."""
    windows: list[Window] = []
    w: Window | None = None
    for new, m, secs in window_scans(matches):
        if new:
            w = Window(m.key.key_data, m.time, m.time, m.key.report_type, m.key.days_since_onset_of_symptoms)
            windows.append(w)
        assert w is not None
        w.seconds[cfg.bucket(m.attenuation)] += secs
        w.scan_attenuations.append(int(m.attenuation))
        w.scan_seconds.append(secs)
        w.min_attenuation = min(w.min_attenuation, m.min_attenuation)
        w.end = max(w.end, m.time)
        w.scans += 1
    for w in windows:
        weighted = sum(s * bw for s, bw in zip(w.seconds, cfg.bucket_weights))
        w.score = (
            weighted
            * cfg.report_type_weights.get(w.report_type, 1.0)
            * cfg.infectiousness(w.dsos)
        )
    windows.sort(key=lambda w: (w.start, w.key_data))
    return windows


def daily_scores(windows: list[Window]) -> dict[int, float]:
    """Sum of window scores per UTC day number."""
    days: dict[int, float] = defaultdict(float)
    for w in windows:
        days[w.start // 86400] += w.score
    return dict(days)


def contact_estimate(atts, secs, cfg: ScoringConfig) -> tuple[float, float]:
    """(seconds together, proximity estimate in dB) of one key's scans in one day."""
    pairs = sorted((a, s) for a, s in zip(atts, secs) if a <= cfg.gate_db)
    if not pairs:
        return 0.0, 255.0
    total = sum(s for _, s in pairs)
    n = len(pairs)
    k = 0
    acc = 0.0
    for k, (_, s) in enumerate(pairs):     # the scans that make up min_minutes, best first
        acc += s
        if acc >= 60 * cfg.min_minutes:
            break
    q = max((k + 1) / n, cfg.proximity_quantile)
    idx = min(n - 1, max(0, int(round(q * n)) - 1))
    return total, float(pairs[idx][0])


def tracecode_code(windows: list[Window], cfg: ScoringConfig) -> str:
    groups: dict[tuple[int, bytes], tuple[list, list]] = {}
    for w in windows:
        if cfg.report_type_weights.get(w.report_type, 1.0) <= 0 or cfg.infectiousness(w.dsos) <= 0:
            continue
        a, s = groups.setdefault((w.start // 86400, w.key_data), ([], []))
        a.extend(w.scan_attenuations)
        s.extend(w.scan_seconds)
    code = "green"
    for a, s in groups.values():
        total, prox = contact_estimate(a, s, cfg)
        if total >= 60 * cfg.min_minutes and prox <= cfg.proximity_db:
            if total >= 60 * cfg.red_minutes:
                return "red"
            code = "yellow"
    return code


def health_code(windows: list[Window], cfg: ScoringConfig, diagnosed: bool = False) -> str:
    if diagnosed:
        return "red"
    if cfg.rule == "tracecode":
        return tracecode_code(windows, cfg)
    best = max(daily_scores(windows).values(), default=0.0)
    if best >= cfg.red_threshold:
        return "red"
    if best >= cfg.yellow_threshold:
        return "yellow"
    return "green"
