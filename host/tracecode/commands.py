"""`tracecode keys`, `tracecode export` and `tracecode match`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import en, export
from .cli import print_json
from .errors import InputError, SignatureError
from .exports_source import collect_batches
from .matcher import KeyOccurrences, evaluate, evaluate_many, read_sightings_table
from .progress import progress_bar
from .scoring import ScoringConfig

_DEFAULT_THRESHOLDS = ",".join(str(t) for t in ScoringConfig().thresholds_db)


def _utc(ts: int) -> str:
    """A timestamp from a file, as a UTC date, or the bare number when no calendar holds it."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC"
    except (OverflowError, OSError, ValueError):
        return f"{ts} (not a date)"


def _hex(value: str, size: int | None, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InputError(f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise InputError(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
    return raw


# ------------------------------------------------------------------------------ keys


def cmd_keys_derive(args) -> int:
    tek = _hex(args.tek, 16, "--tek")
    meta = _hex(args.metadata, 4, "--metadata") if args.metadata else None
    if not 1 <= args.period <= 144:
        raise InputError("--period must be within 1..144")
    ids = en.derive(tek, args.rsin, args.period, meta)
    if args.json:
        out = {"rpik": en.rpik(tek).hex(), "aemk": en.aemk(tek).hex(), "intervals": []}
        for i in ids:
            row = {"enin": i.enin, "rpi": i.rpi.hex()}
            if i.aem is not None:
                row["aem"] = i.aem.hex()
            out["intervals"].append(row)
        print_json(out)
        return 0
    print(f"RPIK {en.rpik(tek).hex()}\nAEMK {en.aemk(tek).hex()}")
    for i in ids:
        start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(i.enin * 600))
        print(f"{i.enin}  {start}Z  {i.rpi.hex()}" + (f"  {i.aem.hex()}" if i.aem else ""))
    return 0


# ------------------------------------------------------------------------------ export


def cmd_export_inspect(args) -> int:
    results = []
    worst = 0
    for f in args.files:
        b = export.load_batch(f, pubkeys=args.pubkey or (), allow_unsigned=args.allow_unsigned, strict=False)
        results.append(b)
        if b.signature == "invalid":
            worst = 3
    if args.json:
        print_json([b.to_json() for b in results] if len(results) > 1 else results[0].to_json())
    else:
        for b in results:
            print(f"{b.source}: region {b.region!r}, batch {b.batch_num}/{b.batch_size}, "
                  f"{_utc(b.start_timestamp)} .. {_utc(b.end_timestamp)}, "
                  f"{len(b.key_columns)} keys, {len(b.revised_columns)} revised, signature {b.signature}")
            for label, cols in (("", b.key_columns), ("revised ", b.revised_columns)):
                for i in range(len(cols)):
                    k = cols.key(i)
                    print(f"  {label}rsin {k.rolling_start_interval_number} period {k.rolling_period:3d} "
                          f"type {export.REPORT_TYPES.get(k.report_type, k.report_type)} "
                          f"trl {k.transmission_risk_level} onset {k.days_since_onset_of_symptoms}")
    for b in results:
        if b.signature == "invalid":
            print(f"tracecode: error: {b.source}: signature does not verify with the configured public key(s)", file=sys.stderr)
    return worst


def cmd_export_keygen(args) -> int:
    priv, pub = export.generate_signing_key(args.out, args.name)
    if args.json:
        print_json({"private_key": str(priv), "public_key": str(pub)})
    else:
        print(f"signing key {priv} (keep it secret)\npublic key  {pub} (give it to verifiers)")
    return 0


def cmd_export_make(args) -> int:
    keys = export.load_keys_json(args.keys)
    signing = export.load_private_key(args.signing_key) if args.signing_key else None
    if signing is None and not args.unsigned:
        raise InputError("--signing-key is required (or --unsigned for a test file)")
    now = int(time.time())
    start = args.start if args.start is not None else now // 86400 * 86400 - 86400
    end = args.end if args.end is not None else start + 86400
    per = args.keys_per_batch
    chunks = [keys[i : i + per] for i in range(0, len(keys), per)] or [[]]
    out = Path(args.out)
    index_path = out / "index.txt"
    rel = export.read_index(index_path.read_text()) if index_path.exists() else []
    written = []
    for n, chunk in enumerate(chunks, start=1):
        name = export.batch_name(args.prefix, start, end, n)
        path = export.write_batch(
            out / name, chunk, signing_key=signing, start_timestamp=start, end_timestamp=end,
            region=args.region, batch_num=n, batch_size=len(chunks), key_id=args.key_id,
            key_version=args.key_version,
        )
        written.append(str(path))
        if name not in rel:
            rel.append(name)
    export.write_index(out, rel)
    if args.json:
        print_json({"batches": written, "index": str(index_path), "keys": len(keys)})
    else:
        for w in written:
            print(f"wrote {w}")
        print(f"wrote {index_path} ({len(rel)} batches)")
    return 0


# ------------------------------------------------------------------------------ match


def cmd_match(args) -> int:
    batches = collect_batches(
        args.exports, pubkeys=args.pubkey or (), allow_unsigned=args.allow_unsigned, cache_dir=args.cache,
        chain=not args.no_chain,
    )
    unchecked = [b.source for b in batches if b.signature == "unchecked"]
    if unchecked:
        if not args.allow_unchecked:
            raise SignatureError(
                f"{unchecked[0]}: signed, but no --pubkey to verify it with"
                f"{f' (and {len(unchecked) - 1} more batches)' if len(unchecked) > 1 else ''};"
                " pass the key server's --pubkey PEM, or --allow-unchecked to match anyway")
        print(f"tracecode: warning: {len(unchecked)} signed batches matched without verifying their signature"
              " (--allow-unchecked)", file=sys.stderr)
    keys = KeyOccurrences.from_batches(batches)
    revised = ()
    # the keys now live in `keys`; keep only what the output reports of each batch
    summary = [{"file": b.source, "signature": b.signature, "keys": len(b.key_columns)} for b in batches]
    batches.clear()
    cfg = ScoringConfig()
    if args.thresholds:
        try:
            t = tuple(int(x) for x in args.thresholds.split(","))
        except ValueError:
            raise InputError(f"--thresholds takes three integers, e.g. {_DEFAULT_THRESHOLDS}") from None
        if len(t) != 3 or not t[0] <= t[1] <= t[2]:
            raise InputError(f"--thresholds takes three ascending integers, e.g. {_DEFAULT_THRESHOLDS}")
        cfg.thresholds_db = t  # type: ignore[assignment]
    if args.db:
        return _match_db(args, summary, keys, revised, cfg)
    sightings = read_sightings_table(args.sightings)
    t0 = time.perf_counter()
    with progress_bar("matching keys", enabled=None if not args.json else False) as update:
        res = evaluate(keys, sightings, revised_keys=revised, config=cfg, jobs=args.jobs, progress=update)
    dt = time.perf_counter() - t0
    if args.json:
        out = res.to_json()
        out["batches"] = summary
        out["sightings"] = len(sightings)
        out["seconds"] = round(dt, 3)
        print_json(out)
        return 0
    print(f"{len(summary)} batches, {res.stats.keys_unique} distinct keys ({res.stats.keys_revoked} revoked), "
          f"{len(sightings)} sightings, {dt:.2f} s")
    if not res.windows:
        print("no exposures")
    for w in res.windows:
        j = w.to_json()
        a = j["attenuations"]
        print(f"  exposure {time.strftime('%Y-%m-%d %H:%M', time.gmtime(j['window_start']))}Z  "
              f"{j['duration_s'] // 60:3d} min  immediate {a['immediate']}s near {a['near']}s "
              f"medium {a['medium']}s other {a['other']}s  min att {j['min_attenuation_db']} dB  score {j['score']}")
    print(f"health code: {res.health_code}")
    return 0


def _match_db(args, batches, keys, revised, cfg) -> int:
    """Match every badge's synced log in the station database; queue their health codes."""
    from .station.db import Database

    with Database(args.db, create=False) as db:
        badges = [b["badge_id"] for b in db.badges()]
        logs = {b: db.sighting_table(b) for b in badges}
        diagnosed = [b["badge_id"] for b in db.badges() if b["diagnosed_at"] is not None]
        t0 = time.perf_counter()
        with progress_bar("matching keys", enabled=None if not args.json else False) as update:
            results = evaluate_many(keys, logs, revised_keys=revised, config=cfg, jobs=args.jobs,
                                    diagnosed=diagnosed, progress=update)
        dt = time.perf_counter() - t0
        for badge, res in results.items():
            reason = "diagnosed" if badge in diagnosed else None
            db.record_match(badge, res, reason)
    if args.json:
        print_json({
            "badges": {b: {"health_code": r.health_code, "exposures": [w.to_json() for w in r.windows],
                           "matched_sightings": len(r.matches), "sightings": len(logs[b])}
                       for b, r in results.items()},
            "batches": batches,
            "seconds": round(dt, 3),
            "scoring": cfg.to_json(),
        })
        return 0
    print(f"{len(batches)} batches, {len(keys)} keys, {len(badges)} badges, {dt:.2f} s")
    for b, r in results.items():
        mins = sum(w.to_json()["duration_s"] for w in r.windows) // 60
        print(f"  {b:20s} {len(logs[b]):6d} sightings  {len(r.windows):3d} windows {mins:4d} min  -> {r.health_code}")
    print("health codes are queued; the next `tracecode sync` writes them to the badges")
    return 0


# ------------------------------------------------------------------------------ parsers


def register(sub: argparse._SubParsersAction) -> None:
    p_keys = sub.add_parser("keys", help="EN key derivation (debug a badge against a phone)")
    ks = p_keys.add_subparsers(dest="keys_cmd", metavar="ACTION", required=True)
    d = ks.add_parser("derive", help="RPIK/AEMK and the RPIs (and AEMs) of a TEK")
    d.add_argument("--tek", required=True, help="temporary exposure key, 32 hex digits")
    d.add_argument("--rsin", type=int, required=True, help="rolling start interval number")
    d.add_argument("--period", type=int, default=144, help="rolling period in intervals (1..144)")
    d.add_argument("--metadata", help="4 bytes of metadata in hex, to also compute AEMs")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_keys_derive)

    p_exp = sub.add_parser("export", help="read, verify and write diagnosis-key export batches")
    es = p_exp.add_subparsers(dest="export_cmd", metavar="ACTION", required=True)
    i = es.add_parser("inspect", help="show the header, keys and signature status of batches")
    i.add_argument("files", nargs="+", metavar="FILE", help="batch zip or bare export.bin")
    i.add_argument("--pubkey", action="append", metavar="PEM", help="verify against this public key (repeatable)")
    i.add_argument("--allow-unsigned", action="store_true", help="accept files without export.sig")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_export_inspect)

    g = es.add_parser("keygen", help="create an ECDSA P-256 signing key pair")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--name", default="signing")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_export_keygen)

    m = es.add_parser("make", help="write signed batch zips and index.txt from a JSON list of keys")
    m.add_argument("--keys", required=True, metavar="JSON", help="list of keys (hex key_data) or EN upload JSON")
    m.add_argument("--signing-key", metavar="PEM")
    m.add_argument("--unsigned", action="store_true", help="write without export.sig (tests only)")
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--prefix", default="exports", help="folder of the batches inside DIR")
    m.add_argument("--region", default="TC")
    m.add_argument("--start", type=int, help="start timestamp (default: yesterday 00:00 UTC)")
    m.add_argument("--end", type=int, help="end timestamp (default: start + 1 day)")
    m.add_argument("--keys-per-batch", type=int, default=10_000)
    m.add_argument("--key-id", default="tc")
    m.add_argument("--key-version", default="v1")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_export_make)

    mt = sub.add_parser("match", help="match sightings against published diagnosis keys")
    mt.add_argument("--exports", nargs="+", required=True, metavar="PATH_OR_URL",
                    help="batch files, folders with index.txt, or key-server URLs")
    src = mt.add_mutually_exclusive_group(required=True)
    src.add_argument("--sightings", metavar="CSV", help="CSV with header time,rpi,aem,rssi")
    src.add_argument("--db", metavar="SQLITE", help="match every badge synced into this station database")
    mt.add_argument("--pubkey", action="append", metavar="PEM", help="public key to verify batches (repeatable)")
    mt.add_argument("--allow-unsigned", action="store_true", help="accept batches without export.sig")
    mt.add_argument("--allow-unchecked", action="store_true",
                    help="match signed batches without verifying them when no --pubkey is given (warns)")
    mt.add_argument("--jobs", type=int, default=None,
                    help="threads for the native kernel, processes for the Python path (default: all cores)")
    mt.add_argument("--thresholds", help=f"attenuation thresholds in dB, default {_DEFAULT_THRESHOLDS}")
    mt.add_argument("--cache", default=None, metavar="DIR", help="download cache for key-server URLs")
    mt.add_argument("--no-chain", action="store_true",
                    help="follow a plain EN key server that publishes no hash-chain records")
    mt.add_argument("--json", action="store_true")
    mt.set_defaults(func=cmd_match)
