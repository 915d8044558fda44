"""Match diagnosis keys against heard sightings.

For every diagnosis key the matcher derives the RPIs of its whole validity (one HKDF and one
AES-ECB call over all its intervals), then looks them up among the heard RPIs. The lookup is
vectorised: the 64-bit prefixes of all derived RPIs of a chunk of keys go through a bitmap of
the heard prefixes in numpy, and only the few candidates are checked exactly. Chunks of keys
are spread over worker processes (`jobs`). When the optional native kernel is available
(tracecode.native: derivation and lookup in C with AES-NI, without the GIL) it scans the chunks
instead, on threads; the hits are the same.

A candidate becomes a match only when (protocol.md sections 4-5):
* the sighting time is within +-12 intervals of the interval the RPI encodes,
* the key is not REVOKED (duplicates of a key count once, the latest revision wins),
* the AEM decrypted with the key's AEMK gives a TX power in [-50, +20] dBm.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import en, native
from .errors import InputError
from .export import REVOKED, DiagnosisKey
from .scoring import ScoringConfig, Window, daily_scores, exposure_windows, health_code

MATCH_WINDOW_INTERVALS = 12
TX_POWER_MIN, TX_POWER_MAX = -50, 20
CHUNK_KEYS = 4096
_TABLE_BITS = 22
_TABLE_MASK = (1 << _TABLE_BITS) - 1


@dataclass(frozen=True)
class Sighting:
    time: int  # Unix seconds (first seen in this scan)
    rpi: bytes
    aem: bytes
    rssi: int  # dBm (mean over the scan when aggregated)
    rssi_max: int | None = None  # strongest reading of the scan, for the minimum attenuation
    duration_s: int | None = None  # seconds this scan stands for, when the logger knows it


@dataclass
class Match:
    key: DiagnosisKey
    interval: int
    time: int
    rpi: bytes
    tx_power: int
    rssi: int
    attenuation: int
    min_attenuation: int
    duration_s: int | None
    sighting_index: int


@dataclass
class MatchStats:
    keys_in: int = 0
    keys_unique: int = 0
    keys_revoked: int = 0
    candidates: int = 0
    rejected_time: int = 0
    rejected_tx_power: int = 0
    matches: int = 0


@dataclass
class MatchResult:
    matches: list[Match]
    windows: list[Window]
    health_code: str
    daily_scores: dict[int, float]
    stats: MatchStats
    config: ScoringConfig = field(default_factory=ScoringConfig)

    @property
    def exposures(self) -> list[Window]:
        return self.windows

    def to_json(self) -> dict:
        return {
            "exposures": [w.to_json() for w in self.windows],
            "health_code": self.health_code,
            "daily_scores": {str(d * 86400): round(s, 1) for d, s in sorted(self.daily_scores.items())},
            "matched_sightings": len(self.matches),
            "stats": self.stats.__dict__,
            "scoring": self.config.to_json(),
        }


# ----------------------------------------------------------------------------- keys


def dedupe_keys(keys: Iterable[DiagnosisKey], revised: Iterable[DiagnosisKey] = ()) -> tuple[list[DiagnosisKey], int]:
    """One entry per key_data; a revision replaces the original; REVOKED drops the key.

    Returns (usable keys, number revoked)."""
    keys = keys if isinstance(keys, list) else list(keys)
    # The first occurrence of a key wins (built from the end so that it is the one kept).
    latest: dict[bytes, DiagnosisKey] = {k.key_data: k for k in reversed(keys)}
    latest.update((k.key_data, k) for k in revised)
    usable = [k for k in latest.values() if k.report_type != REVOKED]
    return usable, len(latest) - len(usable)


# ----------------------------------------------------------------------------- candidates

# Worker state, inherited through fork (set before the pool starts).
_STATE: dict = {}


def _prefixes(buf: bytes) -> np.ndarray:
    return np.frombuffer(buf, dtype="<u8")[0::2]


def _build_table(heard: Iterable[bytes]) -> np.ndarray:
    table = np.zeros(1 << _TABLE_BITS, dtype=bool)
    rpis = b"".join(heard)
    if rpis:
        table[_prefixes(rpis) & _TABLE_MASK] = True
    return table


def _scan_chunk(chunk: Sequence[tuple[bytes, int, int]], base: int) -> list[tuple[int, int, bytes]]:
    """Hits (key index, interval, rpi) of a chunk of (tek, start, period) keys."""
    index = _STATE.get("native")
    if index is not None:  # native kernel (tracecode.native): same hits, same order
        return index.scan(chunk, base)
    table: np.ndarray = _STATE["table"]
    heard: set = _STATE["heard"]
    rpik = en.rpik
    aes = en.aes_ecb
    run = en.padded_run
    parts = []
    offsets = np.empty(len(chunk) + 1, dtype=np.int64)
    n = 0
    for i, (tek, start, period) in enumerate(chunk):
        offsets[i] = n
        parts.append(aes(rpik(tek), run(start, period)))
        n += period
    offsets[len(chunk)] = n
    buf = b"".join(parts)
    cand = np.flatnonzero(table[_prefixes(buf) & _TABLE_MASK])
    hits = []
    for block in cand.tolist():
        r = buf[16 * block : 16 * block + 16]
        if r in heard:
            ki = int(np.searchsorted(offsets, block, side="right")) - 1
            hits.append((base + ki, chunk[ki][1] + block - int(offsets[ki]), r))
    return hits


def _worker(args):
    return _scan_chunk(*args)


def candidates(
    keys: Sequence[DiagnosisKey],
    heard: set[bytes],
    *,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[int, int, bytes]]:
    """(key index, interval, rpi) for every derived RPI that was heard."""
    jobs = jobs or os.cpu_count() or 1
    _STATE["heard"] = heard
    _STATE["native"] = index = native.HeardIndex(heard) if native.available() else None
    _STATE["table"] = _build_table(heard) if index is None else None
    tuples = [(k.key_data, k.rolling_start_interval_number, k.rolling_period) for k in keys]
    tasks = [(tuples[i : i + CHUNK_KEYS], i) for i in range(0, len(tuples), CHUNK_KEYS)]
    hits: list[tuple[int, int, bytes]] = []
    done = 0
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for t in tasks:
                hits.extend(_worker(t))
                done += len(t[0])
                if progress:
                    progress(done, len(tuples))
        elif index is not None:  # the native kernel releases the GIL: threads, no fork/pickling
            with ThreadPoolExecutor(jobs) as tpool:
                for t, res in zip(tasks, tpool.map(_worker, tasks)):
                    hits.extend(res)
                    done += len(t[0])
                    if progress:
                        progress(done, len(tuples))
        else:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(jobs) as pool:
                for t, res in zip(tasks, pool.imap(_worker, tasks)):
                    hits.extend(res)
                    done += len(t[0])
                    if progress:
                        progress(done, len(tuples))
    finally:
        _STATE.clear()
    return hits


# ----------------------------------------------------------------------------- matching


def match(
    keys: Iterable[DiagnosisKey],
    sightings: Sequence[Sighting],
    *,
    revised_keys: Iterable[DiagnosisKey] = (),
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats: MatchStats | None = None,
) -> list[Match]:
    keys = list(keys)
    stats = stats if stats is not None else MatchStats()
    stats.keys_in = len(keys)
    usable, stats.keys_revoked = dedupe_keys(keys, revised_keys)
    stats.keys_unique = len(usable) + stats.keys_revoked
    by_rpi: dict[bytes, list[int]] = {}
    for i, s in enumerate(sightings):
        by_rpi.setdefault(s.rpi, []).append(i)
    hits = candidates(usable, set(by_rpi), jobs=jobs, progress=progress)
    stats.candidates = len(hits)
    out: list[Match] = []
    aemk_cache: dict[bytes, bytes] = {}
    for ki, interval, r in hits:
        key = usable[ki]
        for si in by_rpi[r]:
            s = sightings[si]
            if abs(en.enin(s.time) - interval) > MATCH_WINDOW_INTERVALS:
                stats.rejected_time += 1
                continue
            k_aem = aemk_cache.get(key.key_data)
            if k_aem is None:
                k_aem = aemk_cache[key.key_data] = en.aemk(key.key_data)
            meta = en.decrypt_aem(k_aem, r, s.aem)
            tx = meta[1] - 256 if meta[1] > 127 else meta[1]
            if not TX_POWER_MIN <= tx <= TX_POWER_MAX:
                stats.rejected_tx_power += 1
                continue
            att = max(0, tx - s.rssi)
            min_att = max(0, tx - (s.rssi_max if s.rssi_max is not None else s.rssi))
            out.append(Match(key, interval, s.time, r, tx, s.rssi, att, min_att, s.duration_s, si))
    out.sort(key=lambda m: (m.time, m.key.key_data))
    stats.matches = len(out)
    return out


def evaluate(
    keys: Iterable[DiagnosisKey],
    sightings: Sequence[Sighting],
    *,
    revised_keys: Iterable[DiagnosisKey] = (),
    config: ScoringConfig | None = None,
    jobs: int | None = None,
    diagnosed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> MatchResult:
    """Match, group into exposure windows, score, and give the log's health code."""
    cfg = config or ScoringConfig()
    stats = MatchStats()
    matches = match(keys, sightings, revised_keys=revised_keys, jobs=jobs, progress=progress, stats=stats)
    windows = exposure_windows(matches, cfg)
    return MatchResult(
        matches=matches,
        windows=windows,
        health_code=health_code(windows, cfg, diagnosed),
        daily_scores=daily_scores(windows),
        stats=stats,
        config=cfg,
    )


def evaluate_many(
    keys: Iterable[DiagnosisKey],
    logs: dict[str, Sequence[Sighting]],
    *,
    revised_keys: Iterable[DiagnosisKey] = (),
    config: ScoringConfig | None = None,
    jobs: int | None = None,
    diagnosed: Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, MatchResult]:
    """`evaluate` for many logs (one per badge) at the cost of one key derivation pass."""
    cfg = config or ScoringConfig()
    diagnosed = set(diagnosed)
    owners: list[str] = []
    merged: list[Sighting] = []
    for name, log in logs.items():
        merged.extend(log)
        owners.extend([name] * len(log))
    stats = MatchStats()
    matches = match(keys, merged, revised_keys=revised_keys, jobs=jobs, progress=progress, stats=stats)
    per: dict[str, list[Match]] = {name: [] for name in logs}
    for m in matches:
        per[owners[m.sighting_index]].append(m)
    out = {}
    for name, ms in per.items():
        windows = exposure_windows(ms, cfg)
        st = MatchStats(**{**stats.__dict__, "matches": len(ms)})
        out[name] = MatchResult(ms, windows, health_code(windows, cfg, name in diagnosed),
                                daily_scores(windows), st, cfg)
    return out


# ----------------------------------------------------------------------------- CSV


def read_sightings_csv(path: str | Path) -> list[Sighting]:
    """`time,rpi,aem,rssi` (Unix seconds, hex, hex, dBm); optional `rssi_max,duration_s`."""
    p = Path(path)
    out: list[Sighting] = []
    try:
        fh = p.open(newline="")
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        need = {"time", "rpi", "aem", "rssi"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise InputError(f"{p}: expected a CSV header with time,rpi,aem,rssi")
        for line, row in enumerate(reader, start=2):
            try:
                rpi = bytes.fromhex(row["rpi"])
                aem = bytes.fromhex(row["aem"])
                if len(rpi) != 16 or len(aem) != 4:
                    raise ValueError("length")
                s = Sighting(
                    time=int(row["time"]),
                    rpi=rpi,
                    aem=aem,
                    rssi=int(row["rssi"]),
                    rssi_max=int(row["rssi_max"]) if row.get("rssi_max") else None,
                    duration_s=int(row["duration_s"]) if row.get("duration_s") else None,
                )
            except (TypeError, ValueError):
                raise InputError(f"{p}:{line}: malformed sighting (need Unix time, 16-byte RPI hex, 4-byte AEM hex, integer RSSI)") from None
            out.append(s)
    return out


def write_sightings_csv(path: str | Path, sightings: Iterable[Sighting]) -> None:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "rpi", "aem", "rssi"])
        for s in sightings:
            w.writerow([s.time, s.rpi.hex(), s.aem.hex(), s.rssi])
