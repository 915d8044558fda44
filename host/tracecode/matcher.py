"""Match diagnosis keys against heard sightings.

For every diagnosis key the matcher derives the RPIs of its whole validity (one HKDF and one
AES-ECB call over all its intervals), then looks them up among the heard RPIs. The lookup is
vectorised: the 64-bit prefixes of all derived RPIs of a chunk of keys go through a bitmap of
the heard prefixes in numpy, and only the few candidates are checked exactly. Chunks of keys
are spread over worker processes (`jobs`). When the optional native kernel is available
(tracecode.native: derivation and lookup in C with the platform's OpenSSL libcrypto, without
the GIL) it scans the chunks instead, on threads; the hits are the same. Heard 8-byte RPI
prefixes (log format v2) take the same chunks: the kernel derives them as columns, numpy
filters them.

A candidate becomes a match only when (protocol.md sections 4-5):
* the sighting time is within +-12 intervals of the interval the RPI encodes,
* the key is not REVOKED anywhere (a key published several times counts once: see "keys"
  below and docs/matching.md),
* the AEM decrypted with the key's AEMK gives a TX power in [-50, +20] dBm.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import en, native
from .errors import InputError
from .export import REVOKED, DiagnosisKey, ExportBatch, KeyColumns
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


# ----------------------------------------------------------------------------- sightings


class SightingTable:
    """Sightings as columns: `time` (int64), `rpi` (16 bytes each, one buffer), `aem` (4 bytes
    each), `rssi`, `rssi_max`, `duration_s` (int32; `has_rssi_max`/`has_duration` say which are
    given). The matcher reads these; `Sighting` objects are made only for what it reports."""

    __slots__ = ("time", "rpi", "aem", "rssi", "rssi_max", "has_rssi_max", "duration_s", "has_duration")

    def __init__(self, time, rpi: bytes, aem: bytes, rssi, rssi_max=None, has_rssi_max=None,
                 duration_s=None, has_duration=None):
        self.time = np.asarray(time, dtype=np.int64)
        n = len(self.time)
        self.rpi = bytes(rpi)
        self.aem = bytes(aem)
        self.rssi = np.asarray(rssi, dtype=np.int32)
        self.rssi_max = np.zeros(n, np.int32) if rssi_max is None else np.asarray(rssi_max, dtype=np.int32)
        self.has_rssi_max = np.zeros(n, bool) if has_rssi_max is None else np.asarray(has_rssi_max, dtype=bool)
        self.duration_s = np.zeros(n, np.int32) if duration_s is None else np.asarray(duration_s, dtype=np.int32)
        self.has_duration = np.zeros(n, bool) if has_duration is None else np.asarray(has_duration, dtype=bool)
        if len(self.rpi) != 16 * n or len(self.aem) != 4 * n or any(
                len(a) != n for a in (self.rssi, self.rssi_max, self.has_rssi_max, self.duration_s, self.has_duration)):
            raise ValueError("sighting columns of different lengths")

    def __len__(self) -> int:
        return len(self.time)

    @classmethod
    def from_sightings(cls, sightings: Iterable[Sighting]) -> "SightingTable":
        ss = sightings if isinstance(sightings, list) else list(sightings)
        return cls(
            [s.time for s in ss], b"".join(s.rpi.ljust(16, b"\0") for s in ss), b"".join(s.aem for s in ss), [s.rssi for s in ss],
            [s.rssi_max or 0 for s in ss], [s.rssi_max is not None for s in ss],
            [s.duration_s or 0 for s in ss], [s.duration_s is not None for s in ss],
        )

    @classmethod
    def concat(cls, parts: Sequence["SightingTable"]) -> "SightingTable":
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls([], b"", b"", [])
        return cls(np.concatenate([p.time for p in parts]), b"".join(p.rpi for p in parts),
                   b"".join(p.aem for p in parts),
                   *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__[3:]))

    def sighting(self, i: int) -> Sighting:
        return Sighting(int(self.time[i]), self.rpi[16 * i : 16 * i + 16], self.aem[4 * i : 4 * i + 4],
                        int(self.rssi[i]), int(self.rssi_max[i]) if self.has_rssi_max[i] else None,
                        int(self.duration_s[i]) if self.has_duration[i] else None)

    def to_sightings(self) -> list[Sighting]:
        return [self.sighting(i) for i in range(len(self))]


def _as_table(sightings) -> SightingTable:
    return sightings if isinstance(sightings, SightingTable) else SightingTable.from_sightings(sightings)


# ----------------------------------------------------------------------------- keys
#
# A key (key_data) may appear several times: in several batches, in `keys` and in
# `revised_keys`, with different rolling periods or starts. What that means is a rule, not the
# order of the files (docs/matching.md):
# * REVOKED anywhere (either field, any batch) wins: the key produces nothing.
# * Its RPIs are looked up over the union of all its occurrences' [start, start + period).
# * Report type, transmission risk and days since onset come from the latest occurrence:
#   later = a later batch (start_timestamp, then batch_num), and within one batch
#   `revised_keys` after `keys`. Equally late occurrences (the same key twice in one field, or
#   two batches with the same start and number) are decided by their values: the smallest
#   (report type, transmission risk, days since onset; absent onset first).


class KeyOccurrences:
    """Every published occurrence of every key (columns) with its lateness `rank`."""

    __slots__ = ("cols", "rank")

    def __init__(self, cols: KeyColumns, rank):
        self.cols = cols
        self.rank = np.asarray(rank, dtype=np.int64)
        if len(self.rank) != len(cols):
            raise ValueError("one rank per key")

    def __len__(self) -> int:
        return len(self.cols)

    @classmethod
    def from_keys(cls, keys: Iterable[DiagnosisKey], revised: Iterable[DiagnosisKey] = ()) -> "KeyOccurrences":
        k = KeyColumns.from_keys(keys)
        r = KeyColumns.from_keys(revised)
        return cls(KeyColumns.concat([k, r]), np.r_[np.zeros(len(k), np.int64), np.ones(len(r), np.int64)])

    @classmethod
    def from_batches(cls, batches: Sequence[ExportBatch]) -> "KeyOccurrences":
        order = sorted({(b.start_timestamp, b.batch_num) for b in batches})
        rank_of = {o: i for i, o in enumerate(order)}
        parts, ranks = [], []
        for b in batches:
            r = 2 * rank_of[(b.start_timestamp, b.batch_num)]
            for field_rank, cols in ((r, b.key_columns), (r + 1, b.revised_columns)):
                if len(cols):
                    parts.append(cols)
                    ranks.append(np.full(len(cols), field_rank, np.int64))
        if not parts:
            return cls(KeyColumns.empty(), [])
        return cls(KeyColumns.concat(parts), np.concatenate(ranks))


class ResolvedKeys:
    """What the kernel scans: one entry per disjoint validity range of a usable key.

    `teks` (16 bytes an entry), `start`, `period` (uint32) and `rep`, the index of the
    occurrence whose report type etc. the entry carries."""

    __slots__ = ("teks", "start", "period", "rep", "occ", "keys_in", "keys_unique", "keys_revoked")

    def __len__(self) -> int:
        return len(self.start)

    def key(self, i: int) -> DiagnosisKey:
        k = self.occ.cols.key(int(self.rep[i]))
        return DiagnosisKey(k.key_data, int(self.start[i]), int(self.period[i]), k.report_type,
                            k.transmission_risk_level, k.days_since_onset_of_symptoms)


def resolve_keys(occ: KeyOccurrences) -> ResolvedKeys:
    """Apply the rule above (vectorised: the cost is a sort of the keys' first 8 bytes).

    The entries come out in one deterministic order whatever the input order: by key_data,
    then start. Keys whose first 8 bytes are unique come from that one sort; keys sharing them
    (duplicates, ~3% in practice) are sorted among themselves and merged in."""
    cols = occ.cols
    n = len(cols)
    out = ResolvedKeys()
    out.occ = occ
    out.keys_in = n
    kv = np.frombuffer(cols.key_data, dtype=">u8").reshape(n, 2) if n else np.zeros((0, 2), ">u8")
    hi = kv[:, 0].astype(np.uint64)  # native byte order: sorts faster
    order = np.argsort(hi, kind="stable")
    hs = hi[order]
    shared = np.zeros(n, bool)
    if n > 1:
        eq = hs[1:] == hs[:-1]
        shared[1:] |= eq
        shared[:-1] |= eq
    single = order[~shared]  # ascending by key_data (their first 8 bytes are unique)
    multi = order[shared]
    single_revoked = cols.report_type[single] == REVOKED
    s_keep = single[~single_revoked]
    s_start = cols.start[s_keep].astype(np.int64)
    s_end = s_start + cols.period[s_keep]
    unique = len(single)
    revoked = int(single_revoked.sum())
    m_start = m_end = m_rep = np.zeros(0, np.int64)
    if len(multi):
        m = multi
        lo_m, hi_m = kv[m, 1], kv[m, 0]
        # groups of equal key_data, each sorted by start
        o = np.lexsort((cols.start[m], lo_m, hi_m))
        m = m[o]
        lo_m, hi_m = lo_m[o], hi_m[o]
        new_group = np.ones(len(m), bool)
        new_group[1:] = (lo_m[1:] != lo_m[:-1]) | (hi_m[1:] != hi_m[:-1])
        gid = np.cumsum(new_group) - 1
        g_first = np.flatnonzero(new_group)
        unique += len(g_first)
        g_revoked = np.logical_or.reduceat(cols.report_type[m] == REVOKED, g_first)
        revoked += int(g_revoked.sum())
        # representative: the latest occurrence, ties by the smallest values
        dso = np.where(cols.has_onset[m], cols.days_since_onset[m].astype(np.int64), -(1 << 40))
        o2 = np.lexsort((dso, cols.transmission_risk[m], cols.report_type[m], -occ.rank[m], gid))
        rep_of_group = m[o2[np.flatnonzero(np.r_[True, gid[o2][1:] != gid[o2][:-1]])]]
        # union of ranges: merge overlapping or adjacent ranges within a group
        st = cols.start[m].astype(np.int64)
        en_ = st + cols.period[m]
        off = gid.astype(np.int64) << 34
        run_end = np.maximum.accumulate(en_ + off)
        new_run = new_group.copy()
        new_run[1:] |= (st[1:] + off[1:]) > run_end[:-1]
        r_first = np.flatnonzero(new_run)
        r_gid = gid[r_first]
        keep = ~g_revoked[r_gid]
        # runs come out by (key_data, start), like the single keys by key_data
        m_start = st[r_first][keep]
        m_end = np.maximum.reduceat(en_, r_first)[keep]
        m_rep = rep_of_group[r_gid[keep]]
    # merge the two ordered sequences; their first 8 bytes never coincide, so they decide
    total = len(s_keep) + len(m_rep)
    m_pos = np.searchsorted(hi[s_keep], hi[m_rep]) + np.arange(len(m_rep))
    is_m = np.zeros(total, bool)
    is_m[m_pos] = True
    rep = np.empty(total, np.int64)
    start = np.empty(total, np.int64)
    end = np.empty(total, np.int64)
    for dst, a, b in ((rep, s_keep, m_rep), (start, s_start, m_start), (end, s_end, m_end)):
        dst[~is_m] = a
        dst[is_m] = b
    kd = np.frombuffer(cols.key_data, dtype="V16") if n else np.zeros(0, "V16")
    out.rep = rep
    out.teks = kd[rep].tobytes()
    out.start = start.astype("=u4")
    out.period = (end - start).astype("=u4")
    out.keys_unique = unique
    out.keys_revoked = revoked
    return out


def dedupe_keys(keys: Iterable[DiagnosisKey], revised: Iterable[DiagnosisKey] = ()) -> tuple[list[DiagnosisKey], int]:
    """The usable keys after the rule above, as objects (one per validity range), and the
    number of distinct keys revoked."""
    r = resolve_keys(KeyOccurrences.from_keys(keys, revised))
    return [r.key(i) for i in range(len(r))], r.keys_revoked


# ----------------------------------------------------------------------------- candidates

# Worker state, inherited through fork (set before the pool starts).
_STATE: dict = {}


def _prefixes(buf: bytes) -> np.ndarray:
    return np.frombuffer(buf, dtype="<u8")[0::2]


def _derive_range(keys: "ResolvedKeys", lo: int, hi: int) -> bytes:
    """The RPIs of entries lo..hi-1, one 16-byte block each, in entry then interval order."""
    if _STATE.get("derive_native"):  # the kernel's derivation (libcrypto, without the GIL)
        return native.derive_columns(keys.teks[16 * lo : 16 * hi], keys.start[lo:hi], keys.period[lo:hi])
    parts = []
    for i in range(lo, hi):
        tek = keys.teks[16 * i : 16 * i + 16]
        start, period = int(keys.start[i]), int(keys.period[i])
        rk = en.rpik(tek)
        for off in range(0, period, 144):
            parts.append(en.aes_ecb(rk, en.padded_run(start + off, min(144, period - off))))
    return b"".join(parts)


def _hits(keys: "ResolvedKeys", lo: int, hi: int, buf: bytes, blocks: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(entry, interval) pairs and RPIs of the derived blocks `blocks` (ascending) of lo..hi-1."""
    if not len(blocks):
        return np.zeros((0, 2), np.int64), b""
    offsets = np.r_[0, np.cumsum(keys.period[lo:hi], dtype=np.int64)]
    ki = np.searchsorted(offsets, blocks, side="right") - 1
    pairs = np.stack([lo + ki, keys.start[lo:hi][ki].astype(np.int64) + blocks - offsets[ki]], axis=1)
    return pairs, np.frombuffer(buf, dtype="S16")[blocks].tobytes()


def _scan_range(lo: int, hi: int) -> tuple[np.ndarray, bytes]:
    """Hits of entries lo..hi-1: ((n, 2) array of (entry, interval), RPIs buffer)."""
    keys: ResolvedKeys = _STATE["keys"]
    index = _STATE.get("native")
    if index is not None:  # native kernel: same hits, same order
        return index.scan_columns(keys.teks, keys.start, keys.period, lo, hi)
    table: np.ndarray = _STATE["table"]
    heard: np.ndarray = _STATE["heard"]  # sorted: S16 (full RPIs) or u64 (8-byte prefixes)
    buf = _derive_range(keys, lo, hi)
    low = np.frombuffer(buf, dtype="<u4")[0::4]  # the low 32 bits of each RPI's first 8 bytes
    cand = np.flatnonzero(np.take(table, low & np.uint32(len(table) - 1)))
    if len(cand) and len(heard):
        probe = _prefixes(buf)[cand] if _STATE.get("prefix") else np.frombuffer(buf, dtype="S16")[cand]
        pos = np.minimum(np.searchsorted(heard, probe), len(heard) - 1)
        cand = cand[heard[pos] == probe]
    else:
        cand = cand[:0]
    return _hits(keys, lo, hi, buf, cand)


def _worker(args):
    return _scan_range(*args)


RPI_PREFIX = 8  # log format v2 keeps the first 8 bytes of a heard RPI (docs/log-format.md)
_PAD = bytes(16 - RPI_PREFIX)


def _prefix_only(table: SightingTable) -> np.ndarray:
    """Sightings that hold an 8-byte RPI prefix (stored zero-padded to 16 bytes)."""
    if not len(table):
        return np.zeros(0, bool)
    return np.frombuffer(table.rpi, dtype="<u8")[1::2] == 0


def _prefix_candidates(
    keys: ResolvedKeys,
    heard_prefixes: np.ndarray,
    *,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, bytes]:
    """Like `candidates_resolved`, for heard 8-byte RPI prefixes (first 8 bytes, as u64): the
    same chunks, derived as columns (by the kernel when it is available) and filtered in numpy."""
    heard = np.unique(np.asarray(heard_prefixes, dtype="<u8"))
    # a filter on the low bits, about 1 in 32 set (small enough to stay in cache)
    table = np.zeros(1 << min(_TABLE_BITS, max(16, len(heard).bit_length() + 5)), dtype=bool)
    table[heard & np.uint64(len(table) - 1)] = True
    return _run_chunks(keys, {"table": table, "heard": heard, "prefix": True,
                              "derive_native": native.available()}, jobs, progress, threads=native.available())


def candidates_resolved(
    keys: ResolvedKeys,
    heard_rpis: bytes,
    *,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, bytes]:
    """(entry, interval) pairs and RPIs of every derived RPI that is among `heard_rpis`."""
    index = native.HeardIndex(heard_rpis) if native.available() else None
    if index is not None:
        return _run_chunks(keys, {"native": index}, jobs, progress, threads=True)
    table = np.zeros(1 << _TABLE_BITS, dtype=bool)
    if heard_rpis:
        table[_prefixes(heard_rpis) & _TABLE_MASK] = True
    return _run_chunks(keys, {"table": table, "heard": np.unique(np.frombuffer(heard_rpis, dtype="S16"))},
                       jobs, progress, threads=False)


def _run_chunks(keys: ResolvedKeys, state: dict, jobs: int | None, progress, *, threads: bool
                ) -> tuple[np.ndarray, bytes]:
    """`_scan_range` over chunks of CHUNK_KEYS entries: on `jobs` threads when the kernel does
    the work (it releases the GIL), on forked worker processes otherwise; hits in entry order."""
    jobs = jobs or os.cpu_count() or 1
    _STATE.clear()
    _STATE.update(state, keys=keys)
    n = len(keys)
    tasks = [(i, min(n, i + CHUNK_KEYS)) for i in range(0, n, CHUNK_KEYS)]
    pair_parts: list[np.ndarray] = []
    rpi_parts: list[bytes] = []
    done = 0

    def take(t, res):
        nonlocal done
        pair_parts.append(np.asarray(res[0], dtype=np.int64).reshape(-1, 2))
        rpi_parts.append(res[1])
        done += t[1] - t[0]
        if progress:
            progress(done, n)

    try:
        if jobs <= 1 or len(tasks) <= 1:
            for t in tasks:
                take(t, _worker(t))
        elif threads:  # the native kernel releases the GIL: threads, no fork/pickling
            with ThreadPoolExecutor(jobs) as tpool:
                for t, res in zip(tasks, tpool.map(_worker, tasks)):
                    take(t, res)
        else:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(jobs) as pool:
                for t, res in zip(tasks, pool.imap(_worker, tasks)):
                    take(t, res)
    finally:
        _STATE.clear()
    pairs = np.concatenate(pair_parts) if pair_parts else np.zeros((0, 2), np.int64)
    return pairs, b"".join(rpi_parts)


def candidates(
    keys: Sequence[DiagnosisKey],
    heard: set[bytes],
    *,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[int, int, bytes]]:
    """(key index, interval, rpi) for every derived RPI of `keys` (taken as they are, no
    deduplication) that was heard."""
    cols = KeyColumns.from_keys(keys)
    r = ResolvedKeys()
    r.occ = KeyOccurrences(cols, np.zeros(len(cols)))
    r.rep = np.arange(len(cols))
    r.teks, r.start, r.period = cols.key_data, cols.start, cols.period
    r.keys_in = r.keys_unique = len(cols)
    r.keys_revoked = 0
    pairs, rpis = candidates_resolved(r, b"".join(heard), jobs=jobs, progress=progress)
    return [(int(k), int(i), rpis[16 * n : 16 * n + 16]) for n, (k, i) in enumerate(pairs.tolist())]


# ----------------------------------------------------------------------------- matching


def _occurrences(keys, revised_keys) -> KeyOccurrences:
    if isinstance(keys, KeyOccurrences):
        return keys
    if isinstance(keys, KeyColumns):
        keys = keys.to_keys()
    return KeyOccurrences.from_keys(keys, revised_keys)


def match(
    keys,
    sightings,
    *,
    revised_keys: Iterable[DiagnosisKey] = (),
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats: MatchStats | None = None,
) -> list[Match]:
    """Matches of `keys` (DiagnosisKeys, or `KeyOccurrences` from batches) in `sightings`
    (`Sighting`s or a `SightingTable`), ordered by time, key, interval and sighting."""
    stats = stats if stats is not None else MatchStats()
    occ = _occurrences(keys, revised_keys)
    res = resolve_keys(occ)
    stats.keys_in = res.keys_in
    stats.keys_revoked = res.keys_revoked
    stats.keys_unique = res.keys_unique
    table = _as_table(sightings)
    pref = _prefix_only(table)
    if pref.any():  # log format v2: 8-byte RPI prefixes, matched on those 8 bytes
        full = np.frombuffer(table.rpi, dtype="S16")[~pref].tobytes()
        n = len(res)
        step1 = (lambda d, _n: progress(d, 2 * n)) if progress and full else progress
        step2 = (lambda d, _n: progress(n + d, 2 * n)) if progress and full else progress
        pairs, rpis = candidates_resolved(res, full, jobs=jobs, progress=step1) if full else (
            np.zeros((0, 2), np.int64), b"")
        n_full = len(pairs)  # hits of full RPIs first, then hits of prefixes
        p2, r2 = _prefix_candidates(res, np.frombuffer(table.rpi, dtype="<u8")[0::2][pref], jobs=jobs,
                                    progress=step2)
        pairs, rpis = np.concatenate([pairs.reshape(-1, 2), p2]), rpis + r2
    else:
        pairs, rpis = candidates_resolved(res, table.rpi, jobs=jobs, progress=progress)
        n_full = len(pairs)
    stats.candidates = len(pairs)
    out: list[Match] = []
    if not len(pairs):
        stats.matches = 0
        return out
    # the sightings of each hit RPI (hits are few; one vectorised pass over the sightings)
    hit_rpis = {rpis[16 * i : 16 * i + 16] for i in range(len(pairs))}
    s_hi = np.frombuffer(table.rpi, dtype="<u8")[0::2]
    h_hi = np.array([int.from_bytes(r[:8], "little") for r in hit_rpis], dtype="<u8")
    by_rpi: dict[bytes, list[int]] = {}
    hit_pref = {r[:RPI_PREFIX] + _PAD for r in hit_rpis} if pref.any() else set()
    for si in np.flatnonzero(np.isin(s_hi, h_hi)).tolist():
        r = table.rpi[16 * si : 16 * si + 16]
        if (r in hit_pref) if pref[si] else (r in hit_rpis):
            by_rpi.setdefault(r, []).append(si)
    aemk_cache: dict[bytes, bytes] = {}
    key_cache: dict[int, DiagnosisKey] = {}
    for n, (ki, interval) in enumerate(pairs.tolist()):
        r = rpis[16 * n : 16 * n + 16]
        key = key_cache.get(ki)
        if key is None:
            key = key_cache[ki] = res.key(ki)
        for si in by_rpi.get(r if n < n_full else r[:RPI_PREFIX] + _PAD, ()):
            t = int(table.time[si])
            if abs(en.enin(t) - interval) > MATCH_WINDOW_INTERVALS:
                stats.rejected_time += 1
                continue
            k_aem = aemk_cache.get(key.key_data)
            if k_aem is None:
                k_aem = aemk_cache[key.key_data] = en.aemk(key.key_data)
            meta = en.decrypt_aem(k_aem, r, table.aem[4 * si : 4 * si + 4])
            tx = meta[1] - 256 if meta[1] > 127 else meta[1]
            if not TX_POWER_MIN <= tx <= TX_POWER_MAX:
                stats.rejected_tx_power += 1
                continue
            rssi = int(table.rssi[si])
            rssi_max = int(table.rssi_max[si]) if table.has_rssi_max[si] else rssi
            att = max(0, tx - rssi)
            min_att = max(0, tx - rssi_max)
            dur = int(table.duration_s[si]) if table.has_duration[si] else None
            out.append(Match(key, interval, t, r, tx, rssi, att, min_att, dur, si))
    out.sort(key=lambda m: (m.time, m.key.key_data, m.interval, m.sighting_index))
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
    names = list(logs)
    tables = [_as_table(logs[n]) for n in names]
    bounds = np.cumsum([len(t) for t in tables])
    stats = MatchStats()
    matches = match(keys, SightingTable.concat(tables), revised_keys=revised_keys, jobs=jobs, progress=progress,
                    stats=stats)
    per: dict[str, list[Match]] = {name: [] for name in logs}
    for m in matches:
        owner = int(np.searchsorted(bounds, m.sighting_index, side="right"))
        m.sighting_index -= int(bounds[owner - 1]) if owner else 0
        per[names[owner]].append(m)
    out = {}
    for name, ms in per.items():
        windows = exposure_windows(ms, cfg)
        st = MatchStats(**{**stats.__dict__, "matches": len(ms)})
        out[name] = MatchResult(ms, windows, health_code(windows, cfg, name in diagnosed),
                                daily_scores(windows), st, cfg)
    return out


# ----------------------------------------------------------------------------- CSV


def _csv_error(p: Path, line: int):
    return InputError(f"{p}:{line}: malformed sighting (need Unix time, 16-byte RPI hex, 4-byte AEM hex, integer RSSI)")


def _read_sightings_rows(p: Path, text: str) -> SightingTable:
    """The general CSV path (quoting, blank lines, any column order); names the bad line."""
    cols: dict[str, list] = {k: [] for k in ("time", "rpi", "aem", "rssi", "rssi_max", "has_max", "dur", "has_dur")}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    need = {"time", "rpi", "aem", "rssi"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise InputError(f"{p}: expected a CSV header with time,rpi,aem,rssi")
    try:
        for line, row in enumerate(reader, start=2):
            try:
                rpi = bytes.fromhex(row["rpi"])
                aem = bytes.fromhex(row["aem"])
                if len(rpi) != 16 or len(aem) != 4:
                    raise ValueError("length")
                cols["time"].append(int(row["time"]))
                cols["rssi"].append(int(row["rssi"]))
                mx, du = row.get("rssi_max"), row.get("duration_s")
                cols["rssi_max"].append(int(mx) if mx else 0)
                cols["has_max"].append(bool(mx))
                cols["dur"].append(int(du) if du else 0)
                cols["has_dur"].append(bool(du))
            except (TypeError, ValueError, OverflowError):
                raise _csv_error(p, line) from None
            cols["rpi"].append(rpi)
            cols["aem"].append(aem)
    except csv.Error:
        raise InputError(f"{p}:{reader.line_num}: not readable CSV") from None
    try:
        return SightingTable(cols["time"], b"".join(cols["rpi"]), b"".join(cols["aem"]), cols["rssi"],
                             cols["rssi_max"], cols["has_max"], cols["dur"], cols["has_dur"])
    except OverflowError:
        raise InputError(f"{p}: a number is out of range") from None


_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_CSV_ROWS = 1 << 16  # rows per vectorised step (bounds the temporaries)


class _Slow(Exception):
    """The fast CSV path declines; the row reader takes over (and names any bad line)."""


def _hex_field(b: np.ndarray, fs: np.ndarray, fe: np.ndarray, nbytes: int) -> bytes:
    if not np.all(fe - fs == 2 * nbytes):
        raise _Slow
    nib = _HEX[b[fs[:, None] + np.arange(2 * nbytes)]]
    if (nib == 255).any():
        raise _Slow
    return ((nib[:, 0::2] << 4) | nib[:, 1::2]).astype(np.uint8).tobytes()


def _int_field(b: np.ndarray, fs: np.ndarray, fe: np.ndarray, allow_empty: bool):
    """(values int64, present bool) of decimal fields b[fs:fe] (optional leading '-')."""
    n = len(fs)
    present = fe > fs
    if not allow_empty and not present.all():
        raise _Slow
    neg = present & (b[np.minimum(fs, len(b) - 1)] == 45)
    ds = fs + neg
    dl = fe - ds
    if (present & (dl <= 0)).any() or (dl > 18).any():
        raise _Slow
    val = np.zeros(n, np.int64)
    width = int(dl.max()) if n else 0
    if width:
        ch = b[np.minimum(ds[:, None] + np.arange(width), len(b) - 1)].astype(np.int64) - 48
        valid = np.arange(width) < dl[:, None]
        if ((ch < 0) | (ch > 9))[valid].any():
            raise _Slow
        # digit k of a field of dl digits weighs 10**(dl-1-k); past the field, 0
        place = np.clip(dl[:, None] - 1 - np.arange(width), 0, None)
        val = (np.where(valid, ch, 0) * _POW10[place]).sum(axis=1)
    return np.where(neg, -val, val), present


_POW10 = 10 ** np.arange(19, dtype=np.int64)


def _read_sightings_fast(body: bytes, header: list[str]) -> SightingTable:
    """Plain CSV (no quotes, no CR, one value per column) as columns, vectorised with numpy."""
    ncol = len(header)
    if not body.endswith(b"\n"):
        body += b"\n"
    b = np.frombuffer(body, np.uint8)
    nl = np.flatnonzero(b == 10)
    commas = np.flatnonzero(b == 44)
    nrow = len(nl)
    if len(commas) != nrow * (ncol - 1):
        raise _Slow
    row_start = np.r_[0, nl[:-1] + 1]
    c = commas.reshape(nrow, ncol - 1)
    if ncol > 1 and (np.any(c[:, 0] < row_start) or np.any(c[:, -1] > nl)):
        raise _Slow
    col = {h: i for i, h in enumerate(header)}
    parts: dict[str, list] = {k: [] for k in ("time", "rpi", "aem", "rssi", "mx", "has_mx", "du", "has_du")}
    for lo in range(0, nrow, _CSV_ROWS):
        hi = min(nrow, lo + _CSV_ROWS)
        cs = c[lo:hi]
        starts = [row_start[lo:hi]] + [cs[:, j] + 1 for j in range(ncol - 1)]
        ends = [cs[:, j] for j in range(ncol - 1)] + [nl[lo:hi]]

        def f(name):
            return starts[col[name]], ends[col[name]]

        parts["rpi"].append(_hex_field(b, *f("rpi"), 16))
        parts["aem"].append(_hex_field(b, *f("aem"), 4))
        parts["time"].append(_int_field(b, *f("time"), False)[0])
        rssi = _int_field(b, *f("rssi"), False)[0]
        parts["rssi"].append(rssi)
        for name, v, h in (("rssi_max", "mx", "has_mx"), ("duration_s", "du", "has_du")):
            if name in col:
                vals, has = _int_field(b, *f(name), True)
            else:
                vals, has = np.zeros(hi - lo, np.int64), np.zeros(hi - lo, bool)
            parts[v].append(vals)
            parts[h].append(has)
    cat = {k: (b"".join(v) if k in ("rpi", "aem") else np.concatenate(v)) for k, v in parts.items()}
    for k in ("rssi", "mx", "du"):
        if len(cat[k]) and (cat[k].min() < -(1 << 31) or cat[k].max() >= (1 << 31)):
            raise _Slow
    return SightingTable(cat["time"], cat["rpi"], cat["aem"], cat["rssi"], cat["mx"], cat["has_mx"], cat["du"],
                         cat["has_du"])


def read_sightings_table(path: str | Path) -> SightingTable:
    """`time,rpi,aem,rssi` (Unix seconds, hex, hex, dBm); optional `rssi_max,duration_s`.

    Plain files (no quoting) are parsed column by column with numpy, without a Python object
    per row; anything else, and any error, goes through the row-by-row reader, which names the
    line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    head, _, body = raw.partition(b"\n")
    try:
        header = [h.strip() for h in head.decode("utf-8").rstrip("\r").split(",")]
    except UnicodeDecodeError:
        header = []
    need = ("time", "rpi", "aem", "rssi")
    if (set(need) <= set(header) and len(set(header)) == len(header) and b'"' not in body
            and b"\r" not in body):
        if not body.strip(b"\n"):
            if b"\n\n" not in body:
                return SightingTable([], b"", b"", [])
        else:
            try:
                return _read_sightings_fast(body, header)
            except _Slow:
                pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file") from None
    return _read_sightings_rows(p, text)


def read_sightings_csv(path: str | Path) -> list[Sighting]:
    """The sightings of a CSV file as objects (`read_sightings_table` for the columns)."""
    return read_sightings_table(path).to_sightings()


def write_sightings_csv(path: str | Path, sightings: Iterable[Sighting]) -> None:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "rpi", "aem", "rssi"])
        for s in sightings:
            w.writerow([s.time, s.rpi.hex(), s.aem.hex(), s.rssi])
