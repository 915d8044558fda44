"""Geometry-only badges: what badges would log, computed straight from a scenario's paths.

The fast path for calibration sweeps and for checking the ground truth/report code without the
virtual-badge fleet: every person gets real EN keys (random TEKs, real RPIs/AEMs via
`tracecode.en`), RPIs rotate at every EN interval, and each badge "scans" every
`scan_every_s` (firmware default 120 s, with a per-badge phase) and logs one aggregated record
per RPI heard, like the firmware's scanner: first-seen time, mean and strongest RSSI.

Radio: the channel model of `tracecode.sim.channel` (docs/channel.md), the same one the virtual
badges' medium calls. `fitted` (default): each scan window hears every advertiser's adverts
(window / advertising interval x p_rx readings), each reading with its own attenuation from the
fitted channel (slow fading per pair, orientation and carrying position per badge, per-channel
and per-reading fading, device offsets, walls); the badge logs their mean and strongest RSSI.
Scan starts get a random boot phase per badge and +- jitter per scan. `ideal` (unit tests): the
old model, RSSI = rssi_1m - 10 n log10(d) - walls - body loss + noise on a scan's mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import en
from ..export import DiagnosisKey
from ..matcher import Sighting
from ..sim.channel import Channel, ChannelParams
from .scenario import DAY_S, Scenario, distance, walls_between


@dataclass
class RadioModel:
    tx_power_dbm: int = 3           # board profile TX power: radiated and written into the AEM (esp32-devkitc)
    rssi_1m_dbm: float = -57.0      # RSSI one metre away, no obstacles (tracecode.sim.radio: tx - 60 dB)
    exponent: float = 3.0           # path-loss exponent (as tracecode.sim.radio)
    noise_db: float = 2.5           # std dev of one scan's mean RSSI (4 dB per reading, ~3 readings)
    body_loss_db: float = 0.0       # mean extra loss from bodies/orientation (exponential, per pair and 10 min)
    sensitivity_dbm: float = -92.0
    scan_every_s: int = 120
    adverts_per_scan: int = 16      # 4 s window / 250 ms advertising interval
    channel: ChannelParams = field(default_factory=ChannelParams)   # fitted unless told otherwise
    p_rx: float = 0.9               # chance an advert inside the window is received (as the medium)

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "channel"}
        d["channel"] = self.channel.to_json()
        return d


DEFAULT_BOARD = "esp32-devkitc"


def board_tx_power(board: str) -> int:
    """TX power (dBm) of a board profile (boards/<name>.json): radiated and written into the AEM."""
    import json

    from ..errors import InputError
    from ..resources import data_root

    f = data_root() / "boards" / f"{board}.json"
    try:
        prof = json.loads(f.read_text())
    except OSError:
        raise InputError(f"board: no profile {board!r} (boards/{board}.json)") from None
    return int(prof.get("tx_power_dbm", 0) or 0)


def radio_for(scn: Scenario, override=None) -> RadioModel:
    """The radio a scenario asks for: its `radio:` section (None = the fitted channel; "ideal"
    = the old model; a mapping with `model:`, `environment:`, channel fields, `sensitivity_dbm`,
    `scan_every_s`), and its `board:` (TX power). `override` (a RadioModel, ChannelParams,
    "ideal"/"fitted" or a mapping) replaces the scenario's `radio:`."""
    from ..sim.channel import params_from

    if isinstance(override, RadioModel):
        return override
    spec = scn.raw.get("radio") if override is None else override
    board = scn.raw.get("board") or DEFAULT_BOARD
    r = RadioModel(tx_power_dbm=board_tx_power(str(board)), channel=params_from(spec))
    r.rssi_1m_dbm = r.tx_power_dbm - r.channel.att_1m()
    r.exponent = r.channel.slope() / 10.0
    if isinstance(spec, dict):
        for k in ("sensitivity_dbm", "scan_every_s", "adverts_per_scan", "p_rx"):
            if k in spec:
                setattr(r, k, type(getattr(r, k))(spec[k]))
        if r.channel.kind == "ideal" and "noise_db" in spec:
            r.noise_db = float(spec["noise_db"]) / 1.6   # a scan's mean of ~3 readings
    return r


@dataclass
class SyntheticBadges:
    teks: dict[str, list[tuple[int, bytes]]]           # person -> [(rolling start interval, TEK)]
    sightings: dict[str, list[Sighting]]               # listener -> sightings, time order
    radio: RadioModel = field(default_factory=RadioModel)
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)   # bench (TX, RX) offsets

    def diagnosis_keys(self, person: str, at: float, *, report_type: int = 1,
                       onset_days: int | None = 0) -> list[DiagnosisKey]:
        """The keys a diagnosed wearer uploads: the last 14 days up to the diagnosis day."""
        day_now = en.enin(at) // 144
        out = []
        for rsin, tek in self.teks[person]:
            day = rsin // 144
            if day_now - 14 < day <= day_now:
                dsos = None if onset_days is None else (day - day_now) + onset_days
                out.append(DiagnosisKey(key_data=tek, rolling_start_interval_number=rsin, rolling_period=144,
                                        report_type=report_type, days_since_onset_of_symptoms=dsos))
        return out


def simulate(scn: Scenario, *, radio=None, seed: int = 1) -> SyntheticBadges:
    radio = radio_for(scn, radio)
    rng = np.random.default_rng(seed)
    ids = scn.ids
    n = len(ids)
    first_day = scn.start // DAY_S
    teks: dict[str, list[tuple[int, bytes]]] = {}
    rpi_of: dict[str, dict[int, tuple[bytes, bytes]]] = {}
    meta = en.encode_metadata(radio.tx_power_dbm)
    for pid in ids:
        teks[pid] = []
        table: dict[int, tuple[bytes, bytes]] = {}
        for d in range(scn.days + 1):
            rsin = (first_day + d) * 144
            tek = bytes(rng.integers(0, 256, 16, dtype=np.uint8)) if seed is not None else os.urandom(16)
            teks[pid].append((rsin, tek))
            k_aem = en.aemk(tek)
            for j, r in enumerate(en.rpis(tek, rsin, 144)):
                table[rsin + j] = (r, en.aem(k_aem, r, meta))
        rpi_of[pid] = table

    if radio.channel.kind != "ideal":
        sightings, ch = _fitted_sightings(scn, radio, rng, seed, rpi_of)
        return SyntheticBadges(teks, sightings, radio, {pid: ch.bench_calibration(pid) for pid in ids})
    step = radio.scan_every_s
    phases = rng.integers(0, step, n)
    sightings: dict[str, list[Sighting]] = {pid: [] for pid in ids}
    base_times = np.arange(scn.start, scn.end, step, dtype=np.float64)
    for li, lid in enumerate(ids):
        times = base_times + phases[li]
        times = times[times < scn.end]
        pos = scn.positions(times)
        me = pos[:, li, :]
        rows: list[tuple[float, int, float, float]] = []
        for ai, aid in enumerate(ids):
            if ai == li:
                continue
            other = pos[:, ai, :]
            present = ~(np.isnan(me[:, 0]) | np.isnan(other[:, 0]))
            if not present.any():
                continue
            idx = np.flatnonzero(present)
            a, b = me[idx], other[idx]
            d = np.maximum(distance(a, b), 0.1)
            _, wall_loss = walls_between(a, b, scn.walls) if scn.walls else (None, np.zeros(len(idx)))
            # body/orientation loss: one draw per pair and EN interval (people turn, sit, stand)
            intervals = (times[idx] // 600).astype(np.int64)
            uniq, inv = np.unique(intervals, return_inverse=True)
            body = rng.exponential(radio.body_loss_db, len(uniq))[inv] if radio.body_loss_db > 0 else 0.0
            mean = (radio.rssi_1m_dbm - 10 * radio.exponent * np.log10(d) - wall_loss - body
                    + rng.normal(0, radio.noise_db, len(idx)))
            heard = mean >= radio.sensitivity_dbm
            spread = np.abs(rng.normal(0, radio.noise_db, len(idx))) + 1.0
            for t, m, s in zip(times[idx][heard], mean[heard], spread[heard]):
                rows.append((float(t), ai, float(m), float(s)))
        rows.sort()
        out = sightings[lid]
        for t, ai, m, s in rows:
            rpi, aem = rpi_of[ids[ai]][int(t) // 600]
            out.append(Sighting(int(t), rpi, aem, int(round(m)), rssi_max=int(round(m + s))))
    return SyntheticBadges(teks, sightings, radio)


def _fitted_sightings(scn: Scenario, radio: RadioModel, rng: np.random.Generator, seed: int,
                      rpi_of: dict) -> tuple[dict[str, list[Sighting]], Channel]:
    """Scans through the fitted channel (see the module docstring)."""
    ids = scn.ids
    n = len(ids)
    p = radio.channel
    ch = Channel(p, seed=seed, t0=float(scn.start), horizon_s=float(scn.end - scn.start) + DAY_S)
    step = radio.scan_every_s
    phases = rng.uniform(0, step, n)                       # boot offsets
    base_times = np.arange(scn.start, scn.end, step, dtype=np.float64)
    times_of = []
    for li in range(n):
        jitter = rng.uniform(-p.scan_jitter_s, p.scan_jitter_s, len(base_times))
        t = base_times + phases[li] + jitter
        times_of.append(t[(t >= scn.start) & (t < scn.end)])
    k = max(1, int(round(radio.adverts_per_scan * radio.p_rx)))
    rows: dict[str, list[tuple[float, int, float, float]]] = {pid: [] for pid in ids}
    floor = radio.tx_power_dbm - radio.sensitivity_dbm      # attenuation beyond which nothing is heard
    margin = ch.best_case_margin_db()
    # unordered pairs: both directions go through the pair's reciprocal slow fading in time order
    for li in range(n):
        for ai in range(li + 1, n):
            per_dir = []
            for rx_i, tx_i in ((li, ai), (ai, li)):
                times = times_of[rx_i]
                pos = scn.positions(times)
                me, other = pos[:, rx_i, :], pos[:, tx_i, :]
                present = ~(np.isnan(me[:, 0]) | np.isnan(other[:, 0]))
                idx = np.flatnonzero(present)
                if len(idx):
                    d = np.maximum(distance(me[idx], other[idx]), 0.1)
                    reach = p.att_1m() + p.slope() * np.log10(d) - margin <= floor
                    idx, d = idx[reach], d[reach]
                per_dir.append((rx_i, tx_i, times, me, other, idx, d))
            if not any(len(x[5]) for x in per_dir):
                continue
            # one time-ordered call per pair keeps the slow processes consistent across directions
            allt = np.concatenate([x[2][x[5]] for x in per_dir])
            order = np.argsort(allt, kind="stable")
            dd = np.concatenate([x[6] for x in per_dir])
            rx_xy = np.concatenate([x[3][x[5]] for x in per_dir])
            tx_xy = np.concatenate([x[4][x[5]] for x in per_dir])
            wl = (walls_between(rx_xy, tx_xy, scn.walls)[1] if scn.walls else np.zeros(len(allt)))
            dirs = np.concatenate([np.full(len(x[5]), j) for j, x in enumerate(per_dir)])
            att = np.empty((len(allt), k))
            # geometry in direction 0's terms (the body losses at both ends are reciprocal)
            flip = dirs == 1
            tx_xy[flip], rx_xy[flip] = rx_xy[flip].copy(), tx_xy[flip].copy()
            att[order] = _pair_attenuations(ch, ids, per_dir, dirs[order], allt[order], dd[order], wl[order],
                                            tx_xy[order], rx_xy[order], k)
            rssi = radio.tx_power_dbm - att
            heard = rssi >= radio.sensitivity_dbm
            cnt = heard.sum(axis=1)
            ok = cnt > 0
            mean = np.where(ok, np.where(heard, rssi, 0).sum(axis=1) / np.maximum(cnt, 1), 0)
            mx = np.where(heard, rssi, -999).max(axis=1)
            for i in np.flatnonzero(ok):
                rx_i, tx_i = per_dir[dirs[i]][0], per_dir[dirs[i]][1]
                rows[ids[rx_i]].append((float(allt[i]), tx_i, float(mean[i]), float(mx[i])))
    out: dict[str, list[Sighting]] = {pid: [] for pid in ids}
    for pid in ids:
        rs = sorted(rows[pid])
        for t, ai, m, mx in rs:
            rpi, aem = rpi_of[ids[ai]][int(t) // 600]
            out[pid].append(Sighting(int(t), rpi, aem, int(round(m)), rssi_max=int(round(mx))))
    return out, ch


def _pair_attenuations(ch: Channel, ids, per_dir, dirs, times, d, wl, tx_xy, rx_xy, k) -> np.ndarray:
    """Attenuations [len, k] for a pair's readings in time order (both directions interleaved):
    the pair's slow fading and body losses run once through all of them; each reading gets its
    direction's TX and RX device offsets."""
    (rx0, tx0, *_a), (rx1, tx1, *_b) = per_dir
    a_ids = (ids[tx0], ids[rx0])
    att = ch.attenuations(a_ids[0], a_ids[1], times, d, wl, tx_xy, rx_xy, n=k)
    # attenuations() applied direction 0's device offsets to all rows: swap them for direction 1
    b0t, b0r = ch.badge(ids[tx0]), ch.badge(ids[rx0])
    b1t, b1r = ch.badge(ids[tx1]), ch.badge(ids[rx1])
    if ch.p.kind != "ideal":
        fix = (b1t.tx_off + b1r.rx_off) - (b0t.tx_off + b0r.rx_off)
        att[dirs == 1] += fix
    return att
