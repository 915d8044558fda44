"""Scenario files (YAML or JSON): people, their paths over time, walls, radio, diagnoses.

`load_scenario(path) -> Scenario`; `Scenario.build(workdir) -> Fleet`; `Scenario.run(workdir)`.
The format is documented in docs/sim.md; scenarios/two-badges.yaml is the example.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time as _time
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Callable

import yaml

from ..errors import InputError
from .fleet import DEFAULT_START_UNIX, Fleet
from .radio import Path, RadioParams, Wall

REPO_ROOT = __import__("tracecode.resources").resources.data_root()
_DUR = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(v: Any, what: str = "time") -> float:
    """Seconds from a number, "1d2h30m10s" or "HH:MM[:SS]"."""
    if isinstance(v, bool):
        raise InputError("%s: expected a duration, got %r" % (what, v))
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        m = re.match(r"^(\d{1,3}):(\d{2})(?::(\d{2}))?$", s)
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3) or 0)
        m = _DUR.match(s)
        if m and any(m.groups()):
            d, h, mi, se = (float(x) if x else 0.0 for x in m.groups())
            return d * 86400 + h * 3600 + mi * 60 + se
        try:
            return float(s)
        except ValueError:
            pass
    raise InputError("%s: can't read %r as a duration (use seconds, '1d2h30m' or 'HH:MM')" % (what, v))


def parse_start(v: Any) -> float:
    if v is None:
        return float(DEFAULT_START_UNIX)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if hasattr(v, "timetuple"):   # YAML gave a datetime/date
        return float(calendar.timegm(v.timetuple()))
    s = str(v).strip().replace("Z", "")
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(_time.strptime(s, fmt)))
        except ValueError:
            continue
    raise InputError("start: can't read %r as a UTC date/time (e.g. 2024-03-04T08:00:00Z)" % (v,))


def _xy(v: Any, what: str) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise InputError("%s: expected [x, y] in metres, got %r" % (what, v))
    try:
        return float(v[0]), float(v[1])
    except (TypeError, ValueError):
        raise InputError("%s: expected numbers, got %r" % (what, v)) from None


@dataclass
class Person:
    name: str
    path: Path
    board: str
    body_loss_db: float = 0.0
    clock_set: bool = True
    power: list[tuple[float, str]] = field(default_factory=list)
    diagnosed: dict | None = None
    raw: dict = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    source: FsPath | None
    start_unix: float
    duration: float
    seed: int
    firmware_dir: FsPath
    board: str
    radio: RadioParams
    people: list[Person]
    ground_truth: dict
    raw: dict

    def build(self, workdir: str | FsPath, *, firmware_dir: str | FsPath | None = None,
              provision: bool = True, realtime: bool = False) -> Fleet:
        """A powered-on fleet at t=0 (badges provisioned directly on flash unless told not to)."""
        fw = FsPath(firmware_dir) if firmware_dir is not None else self.firmware_dir
        if not (fw / "main.py").is_file():
            raise InputError("firmware folder %s has no main.py" % fw)
        fleet = Fleet(workdir, seed=self.seed, start_unix=self.start_unix, radio=self.radio,
                      realtime=realtime)
        for p in self.people:
            b = fleet.add_badge(p.name, firmware_dir=fw, path=p.path, board=p.board,
                                body_loss_db=p.body_loss_db)
            if provision:
                provision_direct(b, p.name, p.board)
        fleet.power_on_all()
        for p in self.people:
            b = fleet.badges[p.name]
            if p.clock_set:
                b.set_clock()
            for t, what in p.power:
                fleet.schedule(t, b._power_cut if what == "off" else b._power_on)
        return fleet

    def run(self, workdir: str | FsPath, *, firmware_dir: str | FsPath | None = None,
            step: float = 3600.0, progress: Callable[[float, float], None] | None = None) -> dict:
        fleet = self.build(workdir, firmware_dir=firmware_dir)
        t0 = _time.perf_counter()
        try:
            t = 0.0
            while t < self.duration:
                t = min(self.duration, t + step)
                fleet.run_until(t)
                if progress:
                    progress(t, self.duration)
            wall = _time.perf_counter() - t0
            return {"scenario": self.name, "simulated_seconds": self.duration,
                    "wall_seconds": round(wall, 3), "events": fleet.events_processed,
                    "badges": fleet.summary()}
        finally:
            fleet.close()


def provision_direct(badge, name: str, board: str) -> None:
    """Write the provisioning file the firmware reads (/tc/prov.json, docs/firmware.md) straight
    onto the flash, as `tracecode flash` would leave it; the pairing secret is derived from the
    badge name (simulation only)."""
    prof_path = REPO_ROOT / "boards" / (board + ".json")
    try:
        profile = json.loads(prof_path.read_text())
    except (OSError, ValueError):
        profile = badge.profile or {}
    fd = FsPath(badge.flash.root) / "tc"
    fd.mkdir(parents=True, exist_ok=True)
    doc = {"id": name, "board": board, "secret": hashlib.sha256(b"sim-secret:" + name.encode()).hexdigest(),
           "config": {}, "profile": profile}
    (fd / "prov.json").write_text(json.dumps(doc))
    badge.flash.rescan()


def load_scenario(path: str | FsPath) -> Scenario:
    p = FsPath(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InputError("can't read scenario %s: %s" % (p, e.strerror or e)) from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise InputError("scenario %s is not valid %s: %s" % (
            p.name, "JSON" if p.suffix == ".json" else "YAML", str(e).splitlines()[0])) from None
    if is_e2e_format(doc):
        return scenario_from_e2e(p)
    return scenario_from_dict(doc, p)


def is_e2e_format(doc: Any) -> bool:
    """The end-to-end runner's scenario format (docs/e2e.md: `days`, daily keyframes
    ["08:00", [x, y]], people with `id`, walls as [[x1, y1], [x2, y2], dB], `radio: {model: ...}`)
    rather than the simulator's own (docs/sim.md)."""
    if not isinstance(doc, dict):
        return False
    if any(k in doc for k in ("days", "diagnosed", "area")):
        return True
    if isinstance(doc.get("radio"), dict) and ("model" in doc["radio"] or "environment" in doc["radio"]):
        return True
    if any(isinstance(w, (list, tuple)) for w in doc.get("walls") or []):
        return True
    for pd in doc.get("people") or []:
        if isinstance(pd, dict) and "id" in pd and "name" not in pd:
            return True
        path = pd.get("path") if isinstance(pd, dict) else None
        if isinstance(path, list) and path and isinstance(path[0], (list, tuple)) and len(path[0]) == 2:
            return True
    return False


def scenario_from_e2e(path: FsPath) -> Scenario:
    """An end-to-end scenario as a simulator Scenario: loaded by tracecode.e2e's loader, each
    person's keyframes as a badge path (absent = parked far out of range, as the full pipeline's
    fleet does), walls and the scenario's radio channel (docs/channel.md)."""
    try:
        from ..e2e import scenario as e2e_scenario
        from ..e2e.fleet import BOARD, _sim_path, fleet_radio
        from ..e2e.synthetic import radio_for
    except ImportError:
        raise InputError("%s is an end-to-end scenario (docs/e2e.md) and tracecode.e2e is not "
                         "installed: run it without --radio-only" % path.name) from None
    scn = e2e_scenario.load_scenario(path)
    radio = fleet_radio(scn, radio_for(scn))
    board = str(scn.raw.get("board") or BOARD)
    people = []
    for j, p in enumerate(scn.people):
        diag = next(({"at_s": d.at - scn.start, "report_type": d.report_type, "onset_days": d.onset_days}
                     for d in scn.diagnosed if d.person == p.id), None)
        people.append(Person(name=p.id, path=_sim_path(scn, j, p.keyframes), board=board,
                             diagnosed=diag, raw={"id": p.id, "role": p.role}))
    return Scenario(name=scn.name, source=path, start_unix=float(scn.start),
                    duration=float(scn.days * 86400), seed=int(scn.raw.get("seed", 0)),
                    firmware_dir=REPO_ROOT / "firmware", board=board, radio=radio, people=people,
                    ground_truth={}, raw=scn.raw)


def scenario_from_dict(doc: Any, source: FsPath | None = None) -> Scenario:
    if not isinstance(doc, dict):
        raise InputError("scenario: expected a mapping at the top level")
    base = source.parent if source is not None else FsPath.cwd()
    fw = doc.get("firmware")
    firmware_dir = (base / fw).resolve() if fw else REPO_ROOT / "firmware"
    board = str(doc.get("board", "esp32-devkitc"))
    radio_doc = doc.get("radio") or {}
    if not isinstance(radio_doc, dict):
        raise InputError("radio: expected a mapping")
    radio = RadioParams()
    for k, v in radio_doc.items():
        if not hasattr(radio, k) or k == "walls":
            raise InputError("radio: unknown setting %r" % k)
        setattr(radio, k, type(getattr(radio, k))(v))
    for i, w in enumerate(doc.get("walls") or []):
        if not isinstance(w, dict):
            raise InputError("walls[%d]: expected a mapping with from, to, loss_db" % i)
        (x1, y1), (x2, y2) = _xy(w.get("from"), "walls[%d].from" % i), _xy(w.get("to"), "walls[%d].to" % i)
        radio.walls.append(Wall(x1, y1, x2, y2, float(w.get("loss_db", 10.0))))
    default_clock = str(doc.get("clock", "set")) != "unset"
    people = []
    seen = set()
    for i, pd in enumerate(doc.get("people") or []):
        if not isinstance(pd, dict) or "name" not in pd:
            raise InputError("people[%d]: expected a mapping with a name" % i)
        name = str(pd["name"])
        if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", name) or name in seen:
            raise InputError("people[%d]: name %r must be unique, 1-32 of [A-Za-z0-9_.-]" % (i, name))
        seen.add(name)
        repeat = parse_duration(pd["repeat"], name + ".repeat") if pd.get("repeat") else None
        if "path" in pd:
            pts = []
            for j, wp in enumerate(pd["path"] or []):
                what = "%s.path[%d]" % (name, j)
                if isinstance(wp, dict):
                    t = parse_duration(wp.get("t", 0), what + ".t")
                    x, y = _xy(wp.get("at"), what + ".at")
                elif isinstance(wp, (list, tuple)) and len(wp) == 3:
                    t = parse_duration(wp[0], what)
                    x, y = _xy(wp[1:], what)
                else:
                    raise InputError("%s: expected {t: ..., at: [x, y]} or [t, x, y]" % what)
                pts.append((t, x, y))
            if not pts:
                raise InputError("%s.path: needs at least one point" % name)
            path = Path(pts, repeat=repeat)
        elif "position" in pd:
            path = Path.fixed(*_xy(pd["position"], name + ".position"))
        else:
            raise InputError("%s: give a path or a position" % name)
        power = []
        for j, ev in enumerate(pd.get("power") or []):
            if not isinstance(ev, dict) or len(ev) != 1 or next(iter(ev)) not in ("off", "on"):
                raise InputError("%s.power[%d]: expected {off: T} or {on: T}" % (name, j))
            what, t = next(iter(ev.items()))
            power.append((parse_duration(t, "%s.power[%d]" % (name, j)), what))
        diag = pd.get("diagnosed")
        if diag is not None:
            if not isinstance(diag, dict) or "at" not in diag:
                raise InputError("%s.diagnosed: expected {at: T, ...}" % name)
            diag = dict(diag)
            diag["at_s"] = parse_duration(diag["at"], name + ".diagnosed.at")
        people.append(Person(name=name, path=path, board=str(pd.get("board", board)),
                             body_loss_db=float(pd.get("body_loss_db", 0.0)),
                             clock_set=str(pd.get("clock", "set" if default_clock else "unset")) != "unset",
                             power=power, diagnosed=diag, raw=pd))
    if not people:
        raise InputError("scenario: no people")
    duration = parse_duration(doc.get("duration", "1h"), "duration")
    if duration <= 0:
        raise InputError("duration: must be positive")
    return Scenario(name=str(doc.get("name", source.stem if source else "scenario")), source=source,
                    start_unix=parse_start(doc.get("start")), duration=duration,
                    seed=int(doc.get("seed", 0)), firmware_dir=firmware_dir, board=board,
                    radio=radio, people=people, ground_truth=dict(doc.get("ground_truth") or {}),
                    raw=doc)
