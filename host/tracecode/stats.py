"""Open statistics from a published diagnosis-key list (`tracecode stats`).

Everything here is computed from verified export batches only, i.e. from what any reader of
an EN key server can download: keys per publication day and per key day by report type, the
days-since-onset distribution, an estimate of the number of diagnosed people per publication
day, and what can be said about padding (fake keys). The estimator and its error are
described in docs/stats.md.

`compute(batches)` returns a JSON-ready dict that depends only on the batches' contents, so
a key server can publish it signed (`stats.json` + `stats.json.sig`) and every reader can
recompute and compare it (`check_server_stats`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import sys
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import export
from .errors import InputError, SignatureError, TraceCodeError

STATS_FORMAT = "tracecode-stats-1"
STATS_FILE = "stats.json"
STATS_SIG_FILE = "stats.json.sig"
MAX_STATS_BYTES = 16 * 1024 * 1024

TYPE_NAMES = {0: "unknown", 1: "confirmed", 2: "clinical", 3: "self_report", 4: "recursive", 5: "revoked"}
TYPE_ORDER = ("confirmed", "clinical", "self_report", "recursive", "revoked", "unknown")
INTERVALS_PER_DAY = 144
DAY_S = 86_400
# A multiplier is only claimed when at least this many distinct key-field groups agree on it.
_MIN_GROUPS_FOR_MULTIPLIER = 8
_MIN_PARTIAL_GROUPS = 3
_MIN_GROUPS_VARIED = 16      # ... or this many groups of at least 3 different sizes
# Fixed-size files: at least this many files (two thirds of all) whose key counts lie within
# 10 % above one floor of at least _MIN_FLOOR keys.
_MIN_FILES_FOR_FLOOR = 5
_MIN_FLOOR = 100


def _day(ts: int) -> str:
    return _dt.datetime.fromtimestamp(int(ts), tz=_dt.timezone.utc).date().isoformat()


def _key_day(rsin: int) -> str:
    return _day((int(rsin) // INTERVALS_PER_DAY) * INTERVALS_PER_DAY * 600)


@dataclass(frozen=True)
class _Key:
    key_data: bytes
    rsin: int
    period: int
    rtype: int
    trl: int
    dsos: int | None


def _keys_of(keys) -> list[_Key]:
    return [_Key(bytes(k.key_data), int(k.rolling_start_interval_number), int(k.rolling_period),
                 int(k.report_type), int(k.transmission_risk_level), k.days_since_onset_of_symptoms)
            for k in keys]


def _batch_keys(b: export.ExportBatch) -> list[_Key]:
    """A batch's keys and revised keys, read from its columns when it has them (no key objects)."""
    out: list[_Key] = []
    for name, fallback in (("key_columns", "keys"), ("revised_columns", "revised_keys")):
        cols = getattr(b, name, None)
        if cols is None:
            out += _keys_of(getattr(b, fallback))
            continue
        kd = cols.key_data
        out += [_Key(kd[16 * i:16 * i + 16], s, p, r, t, d if h else None)
                for i, (s, p, r, t, d, h) in enumerate(zip(
                    cols.start.tolist(), cols.period.tolist(), cols.report_type.tolist(),
                    cols.transmission_risk.tolist(), cols.days_since_onset.tolist(), cols.has_onset.tolist()))]
    return out


def _count(b, columns: str, objects: str) -> int:
    cols = getattr(b, columns, None)
    return len(cols) if cols is not None else len(getattr(b, objects))


def _gcd_all(values: Iterable[int]) -> int:
    g = 0
    for v in values:
        g = math.gcd(g, v)
    return g


def _detect_padding(batches: Sequence[export.ExportBatch], per_file: list[list[_Key]]) -> dict:
    """What can be said about fake keys. Returns {"multiplier", "future_keys", "floor", "share", ...}."""
    signals: list[str] = []
    # Judged on distinct keys only: a key published again (a mirror, a re-export) is not padding.
    seen: set[tuple[bytes, int]] = set()
    distinct: list[list[_Key]] = []
    for keys in per_file:
        mine = []
        for k in keys:
            if (k.key_data, k.rsin) not in seen:
                seen.add((k.key_data, k.rsin))
                mine.append(k)
        distinct.append(mine)
    per_file = distinct
    # 1. Keys that cannot come from a phone: an interval starting after the file's end.
    future = 0
    for b, keys in zip(batches, per_file):
        limit = b.end_timestamp // 600
        future += sum(1 for k in keys if k.rsin > limit)
    if future:
        signals.append(f"{future} keys start after the end of the file that carries them (impossible for a real upload)")
    # Keys no EN v1.2 phone makes (its keys start on a UTC-day boundary's grid and never cross
    # midnight): reported, not counted as padding (test files and some servers have them).
    irregular = sum(1 for keys in per_file for k in keys
                    if k.rsin // INTERVALS_PER_DAY != (k.rsin + k.period - 1) // INTERVALS_PER_DAY)
    # 2. A padding multiplier: every real key published with m-1 copies that differ only in key_data.
    # Many real uploaders share the fields of a full-day key, so equal group sizes alone prove
    # nothing. The evidence is either partial-day keys (rolling_period < 144: today's key, a
    # restart), whose exact fields two real uploaders rarely share, or many groups of different
    # sizes that are all multiples of one number.
    groups: Counter = Counter()
    for n, keys in enumerate(per_file):
        for k in keys:
            if k.rtype != export.REVOKED:
                groups[(n, k.rsin, k.period, k.rtype, k.trl, k.dsos)] += 1
    partial_groups = sum(1 for g in groups if g[2] < INTERVALS_PER_DAY)
    multiplier = 1
    varied = len(groups) >= _MIN_GROUPS_VARIED and len(set(groups.values())) >= 3
    if len(groups) >= _MIN_GROUPS_FOR_MULTIPLIER and (partial_groups >= _MIN_PARTIAL_GROUPS or varied):
        g = _gcd_all(groups.values())
        if g > 1:
            multiplier = g
            signals.append(f"every group of keys with identical fields has a multiple of {g} members: "
                           f"each real key appears to be published with {g - 1} fake copies")
    # 3. A floor on the file size (a server that pads small files up to a minimum count).
    floor = None
    sizes = {b.sha256: _count(b, "key_columns", "keys") + _count(b, "revised_columns", "revised_keys")
             for b in batches if b.batch_num == b.batch_size}
    counts = sorted(sizes.values())     # each distinct file once (the last file of a set may be short)
    if len(counts) >= _MIN_FILES_FOR_FLOOR and counts[0] >= _MIN_FLOOR:
        lo = counts[0]
        band = [c for c in counts if c <= lo * 1.1]
        if len(band) >= _MIN_FILES_FOR_FLOOR and len(band) * 3 >= 2 * len(counts):
            floor = lo
            signals.append(f"{len(band)} of {len(counts)} files hold between {lo} and {max(band)} keys: "
                           f"the server appears to pad small files to at least {lo} keys")
    total = sum(len(k) for k in per_file)
    share = None
    if total:
        fake = future
        if multiplier > 1:
            fake += (total - future) * (multiplier - 1) / multiplier
        share = round(fake / total, 4) if (future or multiplier > 1) else 0.0
    if floor is not None:
        share = None     # a floor hides how many of the keys in those files are real
        caveat = ("files look padded to a minimum size with keys indistinguishable from real ones: "
                  "the share of padding and the estimate of diagnoses on those days are unknown (upper bounds)")
    elif signals:
        caveat = "padding detected from the files' structure; fake keys that copy real keys exactly cannot be told apart"
    else:
        caveat = ("no padding detected; a server that adds fake keys indistinguishable from real ones "
                  "(random key data, realistic fields, no fixed size) cannot be detected from its files, "
                  "so counts and estimates are upper bounds for such a server")
    return {"detected": bool(signals), "share": share, "multiplier": multiplier, "future_keys": future,
            "irregular_keys": irregular,
            "min_file_keys": floor, "signals": signals, "caveat": caveat}


def compute(batches: Sequence[export.ExportBatch], *, sources: Sequence[str] | None = None) -> dict:
    """The aggregate of verified batches (oldest first). Deterministic: a function of the batches only."""
    per_file = [_batch_keys(b) for b in batches]
    padding = _detect_padding(batches, per_file)
    multiplier = padding["multiplier"]
    seen: dict[tuple[bytes, int], int] = {}          # (key, rsin) -> current report type
    first_day: dict[tuple[bytes, int], str] = {}
    pub: dict[str, Counter] = defaultdict(Counter)   # publication day -> type -> new keys
    duplicates = revocations = future_dropped = 0
    new_keys_by_day: dict[str, list[_Key]] = defaultdict(list)
    dsos: Counter = Counter()
    for b, keys in zip(batches, per_file):
        pday = _day(b.end_timestamp)
        limit = b.end_timestamp // 600
        for k in keys:
            ident = (k.key_data, k.rsin)
            if k.rsin > limit:
                future_dropped += 1
                continue
            prev = seen.get(ident)
            if prev is not None:
                if prev == k.rtype or prev == export.REVOKED:   # revoked stays revoked
                    duplicates += 1
                    continue
                if k.rtype == export.REVOKED:
                    revocations += 1
                seen[ident] = k.rtype
                pub[pday][TYPE_NAMES.get(k.rtype, "unknown")] += 1
                continue
            seen[ident] = k.rtype
            first_day[ident] = pday
            pub[pday][TYPE_NAMES.get(k.rtype, "unknown")] += 1
            if k.rtype != export.REVOKED:
                new_keys_by_day[pday].append(k)
                dsos["absent" if k.dsos is None else str(k.dsos)] += 1
    by_key_day: dict[str, Counter] = defaultdict(Counter)
    final_types: Counter = Counter()
    for ident, rtype in seen.items():
        name = TYPE_NAMES.get(rtype, "unknown")
        by_key_day[_key_day(ident[1])][name] += 1
        final_types[name] += 1

    estimate: dict[str, float] = {}
    by_type_estimate: dict[str, dict[str, float]] = {}
    all_days = sorted(set(pub) | set(new_keys_by_day))
    for day in all_days:
        keys = new_keys_by_day.get(day, [])
        estimate[day] = _estimate(keys, multiplier)
        per_type = defaultdict(list)
        for k in keys:
            per_type[TYPE_NAMES.get(k.rtype, "unknown")].append(k)
        by_type_estimate[day] = {t: _estimate(v, multiplier) for t, v in sorted(per_type.items())}

    def table(d: dict[str, Counter]) -> dict:
        out = {}
        for day in sorted(d):
            row = {t: d[day].get(t, 0) for t in TYPE_ORDER}
            row["total"] = sum(d[day].values())
            out[day] = row
        return out

    def dsos_key(s: str):
        return (1, 0) if s == "absent" else (0, int(s))

    sigs = Counter(b.signature for b in batches)
    total_entries = sum(len(k) for k in per_file)
    return {
        "format": STATS_FORMAT,
        "batches": [{"file": (sources[i] if sources else Path(b.source).name), "export_sha256": b.sha256,
                     "start_timestamp": b.start_timestamp, "end_timestamp": b.end_timestamp,
                     "keys": _count(b, "key_columns", "keys"),
                     "revised_keys": _count(b, "revised_columns", "revised_keys"), "signature": b.signature}
                    for i, b in enumerate(batches)],
        "signatures": dict(sorted(sigs.items())),
        "keys": {"published_entries": total_entries, "distinct": len(seen), "duplicates": duplicates,
                 "revocations": revocations, "future_keys_ignored": future_dropped,
                 "by_final_report_type": {t: final_types.get(t, 0) for t in TYPE_ORDER}},
        "by_publication_day": table(pub),
        "by_key_day": table(by_key_day),
        "days_since_onset": {k: dsos[k] for k in sorted(dsos, key=dsos_key)},
        "estimated_diagnoses": {
            "method": "max over key days of the day coverage (rolling_period/144) of new, non-revoked keys "
                      "published that day, divided by the padding multiplier; a lower bound "
                      "(docs/stats.md)",
            "by_publication_day": estimate,
            "by_publication_day_and_type": by_type_estimate,
            "total": round(sum(estimate.values()), 1),
            "seven_day_average": _seven_day_average(estimate),
        },
        "padding": padding,
    }


def _estimate(keys: Sequence[_Key], multiplier: int = 1) -> float:
    """People behind a set of keys published together: each uploader contributes at most one
    day's worth of key coverage per key day, so the most-covered key day bounds them from below."""
    cover: dict[int, float] = defaultdict(float)
    for k in keys:
        cover[k.rsin // INTERVALS_PER_DAY] += k.period / INTERVALS_PER_DAY
    if not cover:
        return 0.0
    # at least one person is behind any key (a lone partial-day key still had an uploader)
    return round(max(max(cover.values()), 1.0) / multiplier, 1)


def _seven_day_average(estimate: dict[str, float]) -> dict[str, float]:
    if not estimate:
        return {}
    days = sorted(estimate)
    first = _dt.date.fromisoformat(days[0])
    last = _dt.date.fromisoformat(days[-1])
    out = {}
    n = (last - first).days + 1
    series = [estimate.get((first + _dt.timedelta(days=i)).isoformat(), 0.0) for i in range(n)]
    for i in range(n):
        window = series[max(0, i - 6): i + 1]
        out[(first + _dt.timedelta(days=i)).isoformat()] = round(sum(window) / len(window), 2)
    return out


# ----------------------------------------------------------------------------- sources


def _chain_records(paths: Sequence[Path], rels: Sequence[str], pubkeys: Sequence) -> str:
    """Check our hash chain where the folder has one. Returns "verified" / "unchecked" / "absent"."""
    from .keyserver import chain as chainmod

    sidecars = [p.with_suffix(".chain") for p in paths]
    present = [s.is_file() for s in sidecars]
    if not any(present):
        return "absent"
    if not all(present):
        missing = rels[present.index(False)]
        raise SignatureError(f"{missing}: no chain record beside it while other batches have one "
                             "(a chain record was removed)")
    prev_batch, prev_hash = None, chainmod.GENESIS
    for n, (path, rel, side) in enumerate(zip(paths, rels, sidecars), start=1):
        rec = chainmod.ChainRecord.from_json(side.read_bytes(), name=str(side))
        if pubkeys:
            rec.verify(pubkeys, name=str(side))
        if rec.batch != rel:
            raise SignatureError(f"{side}: chain record names another batch ({rec.batch})")
        chainmod.check_link(rec, expected_seq=n, prev_batch=prev_batch, prev_export_sha256=prev_hash)
        prev_batch, prev_hash = rel, rec.export_sha256
    return "verified" if pubkeys else "unchecked"


@dataclass
class Loaded:
    batches: list[export.ExportBatch]
    names: list[str]           # index-relative names (as a server's stats.json lists them)
    chain: dict[str, str]      # source -> "verified" | "unchecked" | "absent" | "followed"
    stats_locations: list[tuple[str, str]]   # (source, where its stats.json would be: dir or URL)
    origins: list[str] = field(default_factory=list)   # the source each batch came from


def load_sources(sources: Sequence[str], *, pubkeys: Sequence = (), allow_unsigned: bool = False,
                 allow_unchecked: bool = False, cache_dir: str | Path | None = None,
                 chain: bool = True) -> Loaded:
    """Read and verify every batch of `sources` (files, folders with index.txt, key-server URLs)."""
    from . import exports_source

    keys = [export.load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    cache = Path(cache_dir) if cache_dir else None
    out = Loaded([], [], {}, [])
    for src in sources:
        rels: list[str]
        if src.startswith(("http://", "https://")):
            paths = exports_source.expand(src, cache, keys, chain)
            from .keyserver import client

            idx = client.index_url_of(src)
            rels = _rels_under_cache(paths)
            out.chain[src] = "followed" if chain else "absent"
            base = idx.rsplit("/", 1)[0] + "/"        # the folder of index.txt
            root = rels[0].split("/", 1)[0] if rels and "/" in rels[0] else ""
            if root and not base.endswith("/" + root + "/"):
                base = urllib.parse.urljoin(base, root + "/")   # stats.json sits beside the batches
            out.stats_locations.append((src, base))
        else:
            p = Path(src)
            if p.name == "index.txt" and p.is_file():      # an index file stands for its folder
                p = p.parent
            paths = exports_source.expand(str(p), cache, keys, chain)
            if p.is_dir() and (p / "index.txt").exists():
                rels = export.read_index((p / "index.txt").read_text(errors="replace"))
                out.chain[src] = _chain_records(paths, rels, keys)
                root = rels[0].split("/", 1)[0] if rels and "/" in rels[0] else ""
                cands = ([p / root] if root else []) + [p] + sorted(q for q in p.iterdir() if q.is_dir())
                loc = next((c for c in cands if (c / STATS_FILE).is_file()), cands[0])
                out.stats_locations.append((src, str(loc)))
            else:
                rels = [q.name for q in paths]
                out.chain[src] = "absent"
        for path, rel in zip(paths, rels):
            b = export.load_batch(path, pubkeys=keys, allow_unsigned=allow_unsigned)
            if b.signature == "unchecked" and not allow_unchecked:
                raise SignatureError(f"{path}: signed, but no --pubkey was given to verify it "
                                     "(pass the server's --pubkey PEM, or --allow-unchecked to count unverified keys)")
            out.batches.append(b)
            out.names.append(rel)
            out.origins.append(src)
    return out


def _rels_under_cache(paths: Sequence[Path]) -> list[str]:
    out = []
    for p in paths:
        parts = p.parts
        out.append("/".join(parts[-2:]) if len(parts) >= 2 else p.name)
    return out


# ----------------------------------------------------------------------------- signed stats.json


def stats_document(batches: Sequence[export.ExportBatch], names: Sequence[str]) -> bytes:
    """The canonical bytes of stats.json for these batches (what the server signs)."""
    doc = compute(batches, sources=names)
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def sign_stats(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Detached signature file: base64 of the DER ECDSA P-256 / SHA-256 signature over stats.json."""
    return base64.b64encode(private_key.sign(data, ec.ECDSA(hashes.SHA256()))) + b"\n"


def verify_stats_signature(data: bytes, sig_file: bytes, pubkeys: Sequence, *, name: str = STATS_FILE) -> None:
    try:
        sig = base64.b64decode(sig_file.strip(), validate=True)
    except ValueError:
        raise SignatureError(f"{name}.sig: not a base64 signature") from None
    for key in pubkeys:
        try:
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
            return
        except InvalidSignature:
            continue
    raise SignatureError(f"{name}: signature does not verify with the given public key(s)")


def _read_location(loc: str, name: str) -> bytes:
    if loc.startswith(("http://", "https://")):
        from .keyserver import client

        return client._get(urllib.parse.urljoin(loc, name), MAX_STATS_BYTES)
    p = Path(loc) / name
    try:
        if p.stat().st_size > MAX_STATS_BYTES:
            raise InputError(f"{p}: larger than {MAX_STATS_BYTES} bytes")
        return p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None


def check_server_stats(loaded: Loaded, pubkeys: Sequence) -> dict:
    """Verify each source's signed stats.json and compare it with the recomputed aggregate."""
    keys = [export.load_public_key(k) if isinstance(k, (str, Path)) else k for k in pubkeys]
    if not keys:
        raise SignatureError("--check-server-stats needs the server's --pubkey")
    if not loaded.stats_locations:
        raise InputError("--check-server-stats needs a key server folder or URL (with index.txt)")
    results = {}
    for src, loc in loaded.stats_locations:
        try:
            data = _read_location(loc, STATS_FILE)
            sig = _read_location(loc, STATS_SIG_FILE)
        except TraceCodeError as exc:
            raise SignatureError(f"{src}: no signed stats.json published ({exc})") from None
        verify_stats_signature(data, sig, keys, name=f"{src}: {STATS_FILE}")
        idx = [i for i, origin in enumerate(loaded.origins) if origin == src]
        # the batches of this source: those whose names the server's document lists
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InputError(f"{src}: stats.json is not JSON") from None
        listed = [b.get("file") for b in doc.get("batches", [])] if isinstance(doc, dict) else []
        mine = [i for i in idx if loaded.names[i] in listed]
        expected = stats_document([loaded.batches[i] for i in mine], [loaded.names[i] for i in mine])
        if len(mine) != len(listed) or json.loads(expected) != doc:
            raise SignatureError(f"{src}: the signed stats.json does not match the published batches "
                                 f"({len(listed)} listed, {len(mine)} found)")
        results[src] = {"stats_json": "verified", "batches": len(mine)}
    return results


# ----------------------------------------------------------------------------- plot


def plot(doc: dict, path: str | Path) -> Path:
    """PNG: daily bars of new keys by report type (publication day), 7-day average of estimated diagnoses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    pub = doc["by_publication_day"]
    days = sorted(set(pub) | set(doc["estimated_diagnoses"]["seven_day_average"]))
    x = [_dt.date.fromisoformat(d) for d in days]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    bottom = [0] * len(days)
    colors = {"confirmed": "#1f77b4", "clinical": "#2ca02c", "self_report": "#ff7f0e",
              "recursive": "#9467bd", "revoked": "#d62728", "unknown": "#7f7f7f"}
    for t in TYPE_ORDER:
        vals = [pub.get(d, {}).get(t, 0) for d in days]
        if any(vals):
            ax1.bar(x, vals, bottom=bottom, color=colors[t], label=t.replace("_", "-"), width=0.8)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_ylabel("keys published")
    ax1.set_title("Diagnosis keys by publication day and report type")
    if any(bottom):
        ax1.legend(loc="upper left", fontsize=8)
    est = doc["estimated_diagnoses"]
    ax2.bar(x, [est["by_publication_day"].get(d, 0) for d in days], color="#c7d7e8", width=0.8,
            label="estimate (daily)")
    ax2.plot(x, [est["seven_day_average"].get(d, 0) for d in days], color="#08306b", linewidth=2,
             label="7-day average")
    ax2.set_ylabel("diagnosed people (est.)")
    ax2.legend(loc="upper left", fontsize=8)
    pad = doc["padding"]
    note = pad["caveat"] if not pad["detected"] else (
        f"padding share {pad['share']:.0%}" if pad["share"] is not None else "padding: share unknown")
    import textwrap

    fig.text(0.01, 0.005, "\n".join(textwrap.wrap(note, 190)[:2]), fontsize=7, color="#555555")
    if x:
        ax2.set_xlim(x[0] - _dt.timedelta(days=1), x[-1] + _dt.timedelta(days=1))
        span = (x[-1] - x[0]).days + 3
        ax2.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, span // 12)))
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    out = Path(path)
    try:
        fig.savefig(out, dpi=100, format="png")
    except OSError as exc:
        raise InputError(f"{out}: cannot write the plot ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return out


# ----------------------------------------------------------------------------- CLI


def register(sub) -> None:
    p = sub.add_parser("stats", help="open statistics from published diagnosis keys (counts, estimated diagnoses, padding)",
                       description="Counts verified diagnosis-key batches by publication day, key day and report "
                                   "type, estimates diagnosed people per day and detects padding. See docs/stats.md.")
    p.add_argument("--exports", nargs="+", required=True, metavar="PATH_OR_URL",
                   help="batch files, folders with index.txt, or key-server URLs")
    p.add_argument("--pubkey", action="append", metavar="PEM", help="the server's public key (repeatable)")
    p.add_argument("--allow-unsigned", action="store_true", help="also count batches without export.sig")
    p.add_argument("--allow-unchecked", action="store_true",
                   help="count signed batches without verifying them (no --pubkey)")
    p.add_argument("--no-chain", action="store_true", help="follow a plain EN key server URL (no hash chain)")
    p.add_argument("--cache", metavar="DIR", help="download cache for key-server URLs")
    p.add_argument("--check-server-stats", action="store_true",
                   help="verify the server's signed stats.json against the batches")
    p.add_argument("--png", metavar="FILE", help="write a plot (bars by report type, 7-day average of estimates)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    loaded = load_sources(args.exports, pubkeys=args.pubkey or (), allow_unsigned=args.allow_unsigned,
                          allow_unchecked=args.allow_unchecked, cache_dir=args.cache, chain=not args.no_chain)
    for status, flag in (("unchecked", "--allow-unchecked"), ("unsigned", "no export.sig")):
        n = sum(1 for b in loaded.batches if b.signature == status)
        if n:
            print(f"tracecode: warning: {n} batches counted without verifying a signature ({flag})",
                  file=sys.stderr)
    doc = compute(loaded.batches, sources=loaded.names)
    doc["chain"] = loaded.chain
    if args.check_server_stats:
        doc["server_stats"] = check_server_stats(loaded, args.pubkey or ())
    if args.png:
        plot(doc, args.png)
        doc["png"] = str(args.png)
    if args.json:
        from .cli import print_json

        print_json(doc)
        return 0
    print(_text(doc))
    return 0


def _text(doc: dict) -> str:
    k = doc["keys"]
    lines = [f"{len(doc['batches'])} batches ({', '.join(f'{n} {s}' for s, n in doc['signatures'].items()) or 'none'}), "
             f"chain: {', '.join(sorted(set(doc.get('chain', {}).values()))) or '-'}",
             f"{k['published_entries']} published entries, {k['distinct']} distinct keys, "
             f"{k['duplicates']} duplicates, {k['revocations']} revocations"]
    head = f"{'day':10s} " + " ".join(f"{t[:9]:>9s}" for t in TYPE_ORDER) + f" {'total':>7s} {'est.dx':>7s} {'7d avg':>7s}"
    est = doc["estimated_diagnoses"]
    lines += ["", "by publication day (new keys; est.dx = estimated diagnosed people)", head]
    for day, row in doc["by_publication_day"].items():
        lines.append(f"{day:10s} " + " ".join(f"{row[t]:9d}" for t in TYPE_ORDER) + f" {row['total']:7d} "
                     f"{est['by_publication_day'].get(day, 0):7.1f} {est['seven_day_average'].get(day, 0):7.1f}")
    lines += ["", "by key day (distinct keys, final report type)", head.rsplit(" total", 1)[0] + "   total"]
    for day, row in doc["by_key_day"].items():
        lines.append(f"{day:10s} " + " ".join(f"{row[t]:9d}" for t in TYPE_ORDER) + f" {row['total']:7d}")
    d = doc["days_since_onset"]
    lines += ["", "days since onset of symptoms: " + (", ".join(f"{k}: {v}" for k, v in d.items()) or "-")]
    lines.append(f"estimated diagnosed people: {est['total']:.1f} in total (a lower bound, see docs/stats.md)")
    pad = doc["padding"]
    if pad["detected"]:
        share = "unknown" if pad["share"] is None else f"{pad['share']:.1%}"
        lines.append(f"padding: share {share}; " + "; ".join(pad["signals"]))
    if pad.get("irregular_keys"):
        lines.append(f"note: {pad['irregular_keys']} keys cross a UTC midnight (no EN v1.2 phone makes such keys: "
                     "test data, or not from phones)")
    lines.append(f"padding caveat: {pad['caveat']}")
    if "server_stats" in doc:
        lines.append("server stats.json: " + ", ".join(f"{s} {v['stats_json']}" for s, v in doc["server_stats"].items()))
    if "png" in doc:
        lines.append(f"plot: {doc['png']}")
    return "\n".join(lines)
