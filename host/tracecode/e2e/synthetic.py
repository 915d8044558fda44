"""Geometry-only badges: what badges would log, computed straight from a scenario's paths.

The fast path for calibration sweeps and for checking the ground truth/report code without the
virtual-badge fleet: every person gets real EN keys (random TEKs, real RPIs/AEMs via
`tracecode.en`), RPIs rotate at every EN interval, and each badge "scans" every
`scan_every_s` (firmware default 120 s, with a per-badge phase) and logs one aggregated record
per RPI heard, like the firmware's scanner: first-seen time, mean and strongest RSSI.

Radio: log-distance path loss, RSSI = rssi_1m - 10 n log10(d) - walls crossed - body loss
+ noise, heard when above the sensitivity. The defaults follow the virtual badges' medium
(docs/sim.md) where it is available, so both paths give comparable attenuations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import en
from ..export import DiagnosisKey
from ..matcher import Sighting
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

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SyntheticBadges:
    teks: dict[str, list[tuple[int, bytes]]]           # person -> [(rolling start interval, TEK)]
    sightings: dict[str, list[Sighting]]               # listener -> sightings, time order
    radio: RadioModel = field(default_factory=RadioModel)

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


def simulate(scn: Scenario, *, radio: RadioModel | None = None, seed: int = 1) -> SyntheticBadges:
    radio = radio or RadioModel()
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
