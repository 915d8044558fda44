"""Fleet mode: the scenario played by virtual badges running the unmodified firmware.

    badges      tracecode.sim.Fleet, one badge per person, paths from the scenario (absent =
                parked far out of range), walls from the scenario
    flash       tracecode.station.flasher.flash_badge over each badge's virtual serial console
                (install firmware + provision: time, id, pairing secret in the station DB)
    days        virtual time; every night at NIGHTLY_SYNC each badge is synced
                (tracecode.station.sync.sync_badge: authenticated pull, SQLite commit, ack)
    diagnosis   at the scenario's time: the key server issues a code, the consent button is
                pressed on the badge, tracecode.station.diagnose uploads the TEKs over HTTP
    publish     an hour later the key server publishes a signed, hash-chained batch
    match       after the last day: follow the key server by URL, match every badge's synced
                sightings (station DB), score, queue health codes; a last sync writes them to
                the badges, and the codes are read back from the badges' flash
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import export
from ..keyserver import KeyServer
from ..keyserver.client import fetch_new_batches
from ..keyserver.server import RunningServer
from ..matcher import match as match_sightings
from ..scoring import ScoringConfig
from .evaluate import PersonExposure, codes_for
from .scenario import DAY_S, Scenario

NIGHTLY_SYNC_S = 23 * 3600 + 30 * 60       # 23:30 every day
PUBLISH_DELAY_S = 3600
FAR = 10_000.0                             # where absent people are parked (out of range)
BOARD = "esp32-devkitc"
ROOT = __import__("tracecode.resources").resources.data_root()


def _sim_path(scn: Scenario, j: int, keyframes):
    from ..sim import Path as SimPath

    far = (FAR * (j + 1), FAR)               # absent badges 10 km from everyone, each other too
    pts: list[tuple[float, float, float]] = []
    last = None
    eps = 0.01
    for t, pos in keyframes:
        rel = t - scn.start
        if pos is None:
            if last is not None:
                pts.append((rel, *last))
            pts.append((rel + eps, *far))
            last = None
        else:
            if last is None:
                pts.append((rel - eps, *far))
            pts.append((rel, *pos))
            last = pos
    if not pts:
        pts = [(0.0, *far)]
    if keyframes and keyframes[0][0] > scn.start:
        pts.insert(0, (0.0, *far))
    # Path sorts by time: make the times strictly increasing so equal times keep file order.
    out, prev = [], None
    for t, x, y in pts:
        if prev is not None and t <= prev:
            t = prev + 1e-4
        out.append((t, x, y))
        prev = t
    return SimPath(out)


def fleet_radio(scn: Scenario, model):
    """The simulator's radio for a scenario: its walls and the channel `radio_for` chose."""
    from ..sim import RadioParams, Wall

    radio = RadioParams(walls=[Wall(w.a[0], w.a[1], w.b[0], w.b[1], w.attenuation_db) for w in scn.walls],
                        channel=model.channel, sensitivity_dbm=model.sensitivity_dbm, p_rx=model.p_rx)
    if model.channel.kind == "ideal":
        radio.rssi_1m = -model.channel.ideal_att_1m_db
        radio.exponent = model.channel.ideal_exponent
        radio.noise_db = model.channel.ideal_noise_db
    return radio


def run_fleet(scn: Scenario, work: Path, *, seed: int = 1, say=lambda m: None,
              scoring: ScoringConfig | None = None, radio=None) -> tuple[dict[str, PersonExposure], dict]:
    from ..sim import Fleet
    from ..station import flasher
    from ..station import sync as syncmod
    from ..station.db import Database
    from ..station.diagnose import diagnose
    from ..station.ports import BadgePort
    from ..errors import DeviceError

    t_wall = time.monotonic()
    cfg = scoring or ScoringConfig()
    from .synthetic import radio_for

    model = radio_for(scn, radio)              # the scenario's radio: and board: (docs/channel.md)
    board_name = str(scn.raw.get("board") or BOARD)
    radio = fleet_radio(scn, model)
    info_radio = {"channel": model.channel.to_json(), "board": board_name}
    # every run starts with blank badges and a new station database: badges left in WORK by
    # an earlier run are locked (no raw REPL for the flasher) and paired with its database
    import shutil
    shutil.rmtree(work / "fleet", ignore_errors=True)
    for name in ("station.sqlite", "station.sqlite-wal", "station.sqlite-shm",
                 "station.sqlite-journal"):
        (work / name).unlink(missing_ok=True)
    fleet = Fleet(workdir=work / "fleet", seed=seed, start_unix=scn.start, radio=radio)
    db = Database(work / "station.sqlite")
    clock = fleet.unix_time
    ks = KeyServer.init(work / "keyserver", clock=clock)
    info: dict = {"uploads": 0, "batches": [], "syncs": 0, "sync_errors": [], "radio": info_radio}
    timings: dict[str, float] = {}
    try:
        badges = {}
        for j, p in enumerate(scn.people):
            badges[p.id] = fleet.add_badge(p.id, path=_sim_path(scn, j, p.keyframes), board=board_name)
        fleet.power_on_all()
        board = flasher.Board.load(board_name)
        for pid, b in badges.items():
            opts = flasher.FlashOptions(board=board, skip_image=True, aioble_mip=False, badge_id=pid,
                                        firmware_dir=ROOT / "firmware", now=clock)
            try:
                flasher.flash_badge(BadgePort(b.console_url()), opts, db)
            except DeviceError as e:
                # The first step talks to the badge before anything is written. Twelve MicroPython
                # VMs starting on a loaded 2-core machine have missed its 10 s raw-REPL timeout
                # (CI, once): what an operator does then is plug in and run the flash again.
                if "raw REPL" not in str(e):
                    raise
                say(f"{pid}: {e}; flashing it again")
                flasher.flash_badge(BadgePort(b.console_url()), opts, db)
        timings["flash_s"] = round(time.monotonic() - t_wall, 1)
        say(f"{scn.name}: {len(badges)} virtual badges flashed and provisioned ({timings['flash_s']} s)")

        def sync_all() -> None:
            for pid, b in badges.items():
                try:
                    syncmod.sync_badge(db, b.console_url(), now=clock)
                    info["syncs"] += 1
                except Exception as exc:  # noqa: BLE001 - a failed sync is reported, the run goes on
                    info["sync_errors"].append(f"{pid}: {exc}")

        events: list[tuple[float, str, object]] = []
        for d in range(scn.days):
            events.append((scn.start + d * DAY_S + NIGHTLY_SYNC_S, "sync", None))
        for dg in scn.diagnosed:
            events.append((dg.at, "diagnose", dg))
            events.append((dg.at + PUBLISH_DELAY_S, "publish", None))
        events.sort(key=lambda e: (e[0], e[1]))
        with RunningServer(ks) as srv:
            for at, kind, obj in events:
                fleet.run_until(max(fleet.clock(), min(at, scn.end) - scn.start))
                if kind == "sync":
                    sync_all()
                    say(f"{scn.name}: nightly sync at day {int((at - scn.start) // DAY_S) + 1} "
                        f"({round(time.monotonic() - t_wall, 1)} s)")
                elif kind == "diagnose":
                    code, _ = ks.issue_code()
                    b = badges[obj.person]
                    b.press_button(after=1.0, duration=0.5)
                    diagnose(db, b.console_url(), obj.person, report_type=obj.report_type,
                             onset_days=obj.onset_days, keyserver=srv.url, code=code, wait_s=30.0,
                             prompt=lambda m: None, now=clock)
                    info["uploads"] += 1
                elif kind == "publish":
                    info["batches"] += ks.publish()
            fleet.run_until(scn.end - scn.start)
            info["batches"] += ks.publish()
            cache = work / "exports-cache"
            keys = []
            for p in fetch_new_batches(srv.url, cache, [ks.public_key_path()]):
                keys += export.load_batch(p, pubkeys=[ks.public_key_path()]).keys
            info["keyserver_url"] = srv.url
        info["keys_published"] = len(keys)
        sync_all()                                         # the last day's logs
        diagnosed = scn.diagnosed_ids()
        from .pipeline import offsets_for

        ch = fleet.medium.channel                          # bench calibration of each badge (docs/channel.md)
        calibration = {pid: ch.bench_calibration(pid) for pid in scn.ids} if ch is not None else {}
        # whose keys: with one diagnosed wearer all published keys are hers; else RX offsets only
        owners = [(next(iter(diagnosed)), keys)] if len(diagnosed) == 1 else []
        off = offsets_for(calibration, owners)
        exposures = {}
        for pid in scn.ids:
            sightings = db.sightings(pid)
            ms = match_sightings(keys, sightings, jobs=1) if keys else []
            exposures[pid] = PersonExposure.from_matches(pid, ms, diagnosed=pid in diagnosed, offset_db=off(pid))
        codes = codes_for(exposures, cfg)
        for pid, code in codes.items():
            if pid not in diagnosed:
                db.set_health_code(pid, code, "e2e match")
        sync_all()                                         # delivers the health codes
        on_badge = {}
        for pid, b in badges.items():
            try:
                on_badge[pid] = b.flash.read("/tc/health.txt").decode().strip()
            except FileNotFoundError:
                on_badge[pid] = None
        info["health_codes_on_badges"] = on_badge
        info["encounters_synced"] = db.encounter_count()
        timings["total_s"] = round(time.monotonic() - t_wall, 1)
        info["fleet_timings"] = timings
        return exposures, info
    finally:
        fleet.close()
        db.close()
