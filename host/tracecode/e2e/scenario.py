"""Scenario geometry for ground truth and reports: people, paths over time, walls, diagnoses.

The e2e layer reads these fields of a scenario YAML file (docs/e2e.md):

    name: office
    start: "2024-03-04T00:00:00Z"      # midnight UTC of day 1
    days: 2
    area: [20, 12]                      # width, height in metres (for the floor plan)
    walls:                              # segments [[x1, y1], [x2, y2]] (+ optional loss)
      - [[0, 6], [8, 6]]
      - {from: [8, 0], to: [8, 12], attenuation_db: 12}
    people:
      - id: alice
        path:                           # keyframes [time, position]; position null = away
          - ["08:00", [2, 2]]           # "HH:MM" repeats every day ...
          - ["17:00", [2, 2]]
          - ["17:00", null]
      - id: bob
        path:
          - ["d1 08:00", [3, 2]]        # ... "dN HH:MM" is day N only (1-based)
    diagnosed:
      - {person: alice, at: "d2 12:00", report_type: 1, onset_days: 0}
    ground_truth:
      distance_m: 2.0                   # close contact: within this distance ...
      min_minutes: 15                   # ... for at least this many cumulative minutes ...
      per: day                          # ... in one UTC day
      walls_block: true                 # a wall between two people means no contact
      step_s: 10                        # sampling step of the exact geometry

Between two keyframes with positions a person moves in a straight line; a keyframe with
`null` makes them absent (out of range of everyone) until their next keyframe. A diagnosed
person is absent from the diagnosis time on (sent home).
"""

from __future__ import annotations

import calendar
import re
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import InputError

DAY_S = 86400
_TIME_RE = re.compile(r"^\s*(?:d(\d+)\s+)?(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


@dataclass(frozen=True)
class Wall:
    a: tuple[float, float]
    b: tuple[float, float]
    attenuation_db: float = 10.0


@dataclass
class Person:
    id: str
    keyframes: list[tuple[float, tuple[float, float] | None]]   # absolute Unix times, sorted
    role: str = ""
    color: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    person: str
    at: float
    report_type: int = 1
    onset_days: int | None = 0


@dataclass(frozen=True)
class GroundTruthRule:
    distance_m: float = 2.0
    min_minutes: float = 15.0
    per: str = "day"
    walls_block: bool = True
    step_s: int = 10

    def describe(self) -> str:
        walls = ", no wall in between" if self.walls_block else ""
        return (f"within {self.distance_m:g} m of a diagnosed person{walls} for at least "
                f"{self.min_minutes:g} cumulative minutes in one {self.per}, before the diagnosis")


@dataclass
class Scenario:
    name: str
    path: Path | None
    start: int
    days: int
    area: tuple[float, float]
    walls: list[Wall]
    people: list[Person]
    diagnosed: list[Diagnosis]
    rule: GroundTruthRule
    description: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.days * DAY_S

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.people]

    def person(self, pid: str) -> Person:
        for p in self.people:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def diagnosed_ids(self) -> set[str]:
        return {d.person for d in self.diagnosed}

    def positions(self, times: np.ndarray) -> np.ndarray:
        """Array [len(times), people, 2] of positions; NaN where a person is away."""
        out = np.full((len(times), len(self.people), 2), np.nan)
        for j, p in enumerate(self.people):
            out[:, j, :] = _interp(p.keyframes, times)
        return out


def _interp(keyframes, times: np.ndarray) -> np.ndarray:
    res = np.full((len(times), 2), np.nan)
    for (t0, p0), (t1, p1) in zip(keyframes, keyframes[1:]):
        if p0 is None or t1 < t0:
            continue
        sel = (times >= t0) & (times < t1)
        if not sel.any():
            continue
        if p1 is None or t1 == t0:
            res[sel] = p0
        else:
            f = ((times[sel] - t0) / (t1 - t0))[:, None]
            res[sel] = np.asarray(p0) * (1 - f) + np.asarray(p1) * f
    if keyframes and keyframes[-1][1] is not None:
        res[times >= keyframes[-1][0]] = keyframes[-1][1]
    return res


def _parse_start(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    if hasattr(value, "timetuple"):             # yaml may give a datetime
        return int(calendar.timegm(value.utctimetuple()))
    s = str(value).strip().replace("Z", "")
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return int(calendar.timegm(_time.strptime(s, fmt)))
        except ValueError:
            continue
    raise InputError(f"scenario start: cannot read {value!r} (use 2024-03-04T00:00:00Z)")


def parse_time(value: Any, start: int, *, where: str) -> tuple[int | None, float]:
    """("dN HH:MM" | "HH:MM" | seconds) -> (day index or None for every day, seconds in the day)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None, float(value)
    m = _TIME_RE.match(str(value))
    if not m or int(m.group(3)) > 59 or int(m.group(4) or 0) > 59:
        raise InputError(f"{where}: bad time {value!r} (use 'HH:MM' or 'dN HH:MM')")
    day = int(m.group(1)) - 1 if m.group(1) else None
    secs = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + int(m.group(4) or 0)
    if secs > DAY_S:
        raise InputError(f"{where}: time of day past 24:00")
    return day, float(secs)


def _point(v: Any, where: str) -> tuple[float, float] | None:
    if v is None:
        return None
    if isinstance(v, dict):
        v = [v.get("x"), v.get("y")]
    if not isinstance(v, (list, tuple)) or len(v) < 2:
        raise InputError(f"{where}: a position is [x, y] in metres or null")
    try:
        return float(v[0]), float(v[1])
    except (TypeError, ValueError):
        raise InputError(f"{where}: a position is [x, y] in metres or null") from None


def _keyframes(raw: list, start: int, days: int, where: str) -> list[tuple[float, tuple[float, float] | None]]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: 'path' must be a non-empty list of [time, position]")
    parsed = []
    for i, kf in enumerate(raw):
        if isinstance(kf, dict):
            kf = [kf.get("t", kf.get("at")), kf.get("pos", kf.get("position"))]
        if not isinstance(kf, (list, tuple)) or len(kf) != 2:
            raise InputError(f"{where}[{i}]: a keyframe is [time, [x, y] | null]")
        day, secs = parse_time(kf[0], start, where=f"{where}[{i}]")
        parsed.append((day, secs, _point(kf[1], f"{where}[{i}]")))
    out: list[tuple[float, tuple[float, float] | None]] = []
    daily = [p for p in parsed if p[0] is None]
    fixed = [p for p in parsed if p[0] is not None]
    for d in range(days):
        for _, secs, pos in daily:
            out.append((start + d * DAY_S + secs, pos))
    for d, secs, pos in fixed:
        out.append((start + d * DAY_S + secs, pos))
    out.sort(key=lambda kf: kf[0])       # stable: keyframes at equal times keep file order
    return out


def _duration(v: Any, what: str) -> float:
    from ..sim.scenario import parse_duration   # the simulator's duration syntax ("1h30m", "1d")

    return parse_duration(v, what)


def _sim_style(raw: list) -> bool:
    """The simulator's path items: [t, x, y] or {t: ..., at: [x, y]}."""
    first = raw[0]
    return (isinstance(first, (list, tuple)) and len(first) == 3) or (isinstance(first, dict) and "at" in first
                                                                       and "t" in first)


def _sim_keyframes(raw: list, start: int, where: str) -> list[tuple[float, tuple[float, float] | None]]:
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            t, pos = item.get("t"), item.get("at")
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            t, pos = item[0], item[1:]
        else:
            raise InputError(f"{where}[{i}]: expected [t, x, y] or {{t: ..., at: [x, y]}}")
        out.append((start + _duration(t, f"{where}[{i}]"), _point(pos, f"{where}[{i}]")))
    out.sort(key=lambda kf: kf[0])
    return out


def load_scenario(path: str | Path | dict) -> Scenario:
    if isinstance(path, dict):
        doc, src = path, None
    else:
        src = Path(path)
        try:
            doc = yaml.safe_load(src.read_text())
        except OSError as exc:
            raise InputError(f"{src}: cannot read scenario ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise InputError(f"{src}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a scenario is a YAML mapping")
    name = str(doc.get("name") or (src.stem if src else "scenario"))
    start = _parse_start(doc.get("start", "2024-03-04T00:00:00Z"))
    if "days" in doc:
        days = int(doc["days"])
    elif "duration" in doc:                   # the simulator's format (docs/sim.md)
        days = max(1, -(-int(_duration(doc["duration"], "duration")) // DAY_S))
    else:
        days = 1
    if not 1 <= days <= 14:
        raise InputError(f"{name}: days must be 1..14")
    area_raw = doc.get("area", [20, 20])
    if isinstance(area_raw, dict):
        area_raw = [area_raw.get("width", 20), area_raw.get("height", 20)]
    area = (float(area_raw[0]), float(area_raw[1]))
    walls = []
    for i, w in enumerate(doc.get("walls") or []):
        if isinstance(w, dict):
            a, b = w.get("from"), w.get("to")
            att = float(w.get("attenuation_db", w.get("loss_db", 10.0)))
        else:
            a, b, att = w[0], w[1], float(w[2]) if len(w) > 2 else 10.0
        pa, pb = _point(a, f"walls[{i}]"), _point(b, f"walls[{i}]")
        if pa is None or pb is None:
            raise InputError(f"walls[{i}]: both ends are needed")
        walls.append(Wall(pa, pb, att))
    people = []
    seen = set()
    sim_diagnosed = []
    for i, p in enumerate(doc.get("people") or []):
        if not isinstance(p, dict) or ("id" not in p and "name" not in p):
            raise InputError(f"people[{i}]: needs an id")
        pid = str(p.get("id", p.get("name")))
        if pid in seen:
            raise InputError(f"people[{i}]: duplicate id {pid!r}")
        seen.add(pid)
        raw_path = p.get("path")
        if raw_path is None and "position" in p:
            kfs = [(float(start), _point(p["position"], f"people[{pid}].position"))]
        elif isinstance(raw_path, list) and raw_path and _sim_style(raw_path):
            kfs = _sim_keyframes(raw_path, start, f"people[{pid}].path")
        else:
            kfs = _keyframes(raw_path, start, days, f"people[{pid}].path")
        people.append(Person(pid, kfs, role=str(p.get("role", "")), color=p.get("color")))
        if isinstance(p.get("diagnosed"), dict):
            d = dict(p["diagnosed"])
            d["person"] = pid
            d["at"] = start + _duration(d.get("at", 0), f"people[{pid}].diagnosed.at")
            sim_diagnosed.append(d)
    if len(people) < 2:
        raise InputError(f"{name}: a scenario needs at least two people")
    diagnosed = []
    for d in sim_diagnosed:
        onset = d.get("onset_days", 0)
        diagnosed.append(Diagnosis(d["person"], float(d["at"]), int(d.get("report_type", 1)),
                                   None if onset is None else int(onset)))
    for i, d in enumerate(doc.get("diagnosed") or []):
        pid = str(d.get("person"))
        if pid not in seen:
            raise InputError(f"diagnosed[{i}]: unknown person {pid!r}")
        day, secs = parse_time(d.get("at"), start, where=f"diagnosed[{i}].at")
        if day is None:
            raise InputError(f"diagnosed[{i}].at: give the day ('dN HH:MM')")
        onset = d.get("onset_days", 0)
        diagnosed.append(Diagnosis(pid, start + day * DAY_S + secs, int(d.get("report_type", 1)),
                                   None if onset is None else int(onset)))
    # A diagnosed wearer is sent home: absent from the diagnosis on.
    for d in diagnosed:
        person = next(p for p in people if p.id == d.person)
        kept = [kf for kf in person.keyframes if kf[0] < d.at]
        person.keyframes = kept + [(d.at, None)]
    gt = doc.get("ground_truth") or {}
    rule = GroundTruthRule(distance_m=float(gt.get("distance_m", 2.0)),
                           min_minutes=float(gt.get("min_minutes", gt.get("minutes", 15))),
                           per=str(gt.get("per", "day")),
                           walls_block=bool(gt.get("walls_block", True)),
                           step_s=int(gt.get("step_s", 10)))
    if rule.per != "day":
        raise InputError(f"{name}: ground_truth.per must be 'day'")
    return Scenario(name, src, start, days, area, walls, people, diagnosed, rule,
                    description=str(doc.get("description", "")), raw=doc)


def walls_between(a: np.ndarray, b: np.ndarray, walls: list[Wall]) -> tuple[np.ndarray, np.ndarray]:
    """For arrays of point pairs [..., 2]: (number of walls crossed, summed wall loss in dB)."""
    count = np.zeros(a.shape[:-1], dtype=np.int32)
    loss = np.zeros(a.shape[:-1])
    for w in walls:
        c = np.asarray(w.a)
        d = np.asarray(w.b)
        hit = _segments_cross(a, b, c, d)
        count += hit
        loss += hit * w.attenuation_db
    return count, loss


def _orient(p, q, r):
    return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])


def _segments_cross(a, b, c, d) -> np.ndarray:
    c = np.broadcast_to(c, a.shape)
    d = np.broadcast_to(d, a.shape)
    o1 = _orient(a, b, c)
    o2 = _orient(a, b, d)
    o3 = _orient(c, d, a)
    o4 = _orient(c, d, b)
    with np.errstate(invalid="ignore"):
        return ((o1 * o2 < 0) & (o3 * o4 < 0)).astype(np.int32)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])


def fmt_time(t: float, start: int) -> str:
    d = int((t - start) // DAY_S) + 1
    s = int(t - start) % DAY_S
    return f"d{d} {s // 3600:02d}:{s % 3600 // 60:02d}"

