"""Ground truth from the scenario's exact geometry (no radio): who really was a close contact."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scenario import DAY_S, Scenario, distance, walls_between


@dataclass
class Contact:
    diagnosed: str
    person: str
    minutes_by_day: list[float]           # minutes within the rule's distance, per scenario day
    intervals: list[tuple[int, int]]      # [start, end) Unix seconds of close-contact time

    @property
    def max_daily_minutes(self) -> float:
        return max(self.minutes_by_day, default=0.0)


@dataclass
class GroundTruth:
    scenario: str
    rule: str
    positives: set[str]                   # close contacts by the rule (diagnosed people excluded)
    negatives: set[str]
    diagnosed: set[str]
    contacts: list[Contact] = field(default_factory=list)   # every pair with any close time

    def minutes(self, person: str) -> float:
        """Largest daily close-contact minutes of `person` with any diagnosed person."""
        return max((c.max_daily_minutes for c in self.contacts if c.person == person), default=0.0)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "close_contacts": sorted(self.positives),
            "not_contacts": sorted(self.negatives),
            "diagnosed": sorted(self.diagnosed),
            "pairs": [{"diagnosed": c.diagnosed, "person": c.person,
                       "minutes_by_day": [round(m, 1) for m in c.minutes_by_day]}
                      for c in self.contacts],
        }


def _intervals(mask: np.ndarray, times: np.ndarray, step: int) -> list[tuple[int, int]]:
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(times[s]), int(times[e - 1]) + step) for s, e in zip(starts, ends)]


def compute(scn: Scenario, *, distance_m: float | None = None, min_minutes: float | None = None) -> GroundTruth:
    rule = scn.rule
    dist_m = rule.distance_m if distance_m is None else distance_m
    min_min = rule.min_minutes if min_minutes is None else min_minutes
    step = max(1, int(rule.step_s))
    times = np.arange(scn.start, scn.end, step, dtype=np.float64)
    pos = scn.positions(times)
    ids = scn.ids
    diag_at: dict[str, float] = {}
    for d in scn.diagnosed:
        diag_at[d.person] = min(diag_at.get(d.person, float("inf")), d.at)
    day_idx = ((times - scn.start) // DAY_S).astype(np.int64)
    contacts: list[Contact] = []
    positives: set[str] = set()
    for dj, did in enumerate(ids):
        if did not in diag_at:
            continue
        before = times < diag_at[did]
        for k, pid in enumerate(ids):
            if k == dj or pid in diag_at:
                continue
            a, b = pos[:, dj, :], pos[:, k, :]
            present = ~(np.isnan(a[:, 0]) | np.isnan(b[:, 0]))
            with np.errstate(invalid="ignore"):
                close = present & before & (distance(a, b) <= dist_m)
            if rule.walls_block and scn.walls and close.any():
                idx = np.flatnonzero(close)
                crossed, _ = walls_between(a[idx], b[idx], scn.walls)
                close[idx[crossed > 0]] = False
            if not close.any():
                continue
            per_day = np.bincount(day_idx[close], minlength=scn.days)[: scn.days] * step / 60.0
            c = Contact(did, pid, [float(m) for m in per_day], _intervals(close, times, step))
            contacts.append(c)
            if c.max_daily_minutes >= min_min:
                positives.add(pid)
    evaluated = {p for p in ids if p not in diag_at}
    text = scn.rule.describe() if distance_m is None and min_minutes is None else (
        f"within {dist_m:g} m for at least {min_min:g} cumulative minutes in one day")
    return GroundTruth(scn.name, text, positives, evaluated - positives, set(diag_at), contacts)
