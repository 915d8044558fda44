#!/usr/bin/env python3
"""End-to-end matcher benchmark: `tracecode match` timed as users run it.

Writes a realistic workload once (cached under out/bench-match/): signed export batches of
100,000 keys (the last one smaller) with mixed rolling periods (mostly 144, also 72, 1..143)
and starts (mostly day-aligned, some mid-day), keys published twice (in another batch, with
another period, or revised), revoked keys (in `keys` of a later batch and in `revised_keys`),
and sightings CSVs of 10,000 and 1,000,000 lines: decoy RPIs plus planted true matches
(real RPIs and AEMs) and planted sightings of revoked keys that must not match.

Then runs the real CLI in a fresh process (interpreter start, imports, signature checks,
parsing, matching, JSON on stdout; the bytecode cached as in an installed copy) for 200,000
and 1,000,000 keys, on one core (`taskset -c 0 ... --jobs 1`) and on two (`--jobs 2`), and prints wall time, keys/s and the
child's peak RSS. keys/s is distinct keys (what a user means by "1M keys") per second of wall
time; the published occurrences (distinct keys plus duplicates and revocations, ~3.5% more)
are printed beside it. A third case matches the first sightings file as log format v2 keeps
it (8-byte RPI prefixes, the path `match --db` takes for v2 badges). The machine's load
average is printed before and after, and beside each wall-time rate the keys per CPU-second
the process used (less sensitive to other load on a shared machine; the targets are on wall
time). Exits 1 if a planted match is missed, a revoked key
matches, or a target is missed (>= 300,000 distinct keys/s on one core for 1M keys with full
RPIs, under 400 MB peak RSS in every 1M-key case).
Usage: tools/bench_match.py [--keys 200000 1000000] [--sightings 10000 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode import en, export, native  # noqa: E402

BATCH_KEYS = 100_000
DAY0 = 2_900_160  # a day-aligned EN interval (2025)
DAYS = 14
PLANTED = 40
PLANTED_REVOKED = 10


def _v(x: int) -> bytes:
    out = bytearray()
    while True:
        b, x = x & 0x7F, x >> 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _key_msg(tek: bytes, start: int, period: int, rtype: int, trl: int, dso: int | None) -> bytes:
    m = b"\x0a\x10" + tek + b"\x10" + _v(trl) + b"\x18" + _v(start) + b"\x20" + _v(period) + b"\x28" + _v(rtype)
    if dso is not None:
        m += b"\x30" + _v(((dso << 1) ^ (dso >> 31)) & 0xFFFFFFFF)
    return m


def _export_bin(start_ts: int, num: int, size: int, keys: list, revised: list) -> bytes:
    head = (b"\x09" + struct.pack("<Q", start_ts) + b"\x11" + struct.pack("<Q", start_ts + 86400)
            + b"\x1a\x02TC" + b"\x20" + _v(num) + b"\x28" + _v(size))
    si = b"\x1a\x02v1\x22\x02tc\x2a" + bytes([len(export.SIGNATURE_ALGORITHM)]) + export.SIGNATURE_ALGORITHM.encode()
    head += b"\x32" + _v(len(si)) + si
    parts = [export.HEADER, head]
    for tag, ks in ((b"\x3a", keys), (b"\x42", revised)):
        for k in ks:
            m = _key_msg(*k)
            parts.append(tag + _v(len(m)) + m)
    return b"".join(parts)


def build(root: Path, n_keys: int, sightings: list[int], seed: int) -> dict:
    """The workload for n_keys keys (cached): batches, index.txt, public key, sightings CSVs."""
    d = root / f"keys-{n_keys}-seed-{seed}"
    meta_path = d / "workload.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.update(dir=str(d), pubkey=str(d / "keys" / Path(meta["pubkey"]).name))  # wherever it was built from
        if all((d / f"sightings-{s}.csv").exists() for s in sightings):
            return meta
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rng = random.Random(seed)
    priv, pub = export.generate_signing_key(d / "keys")
    signing = export.load_private_key(priv)
    records = []  # (tek, start, period, rtype, trl, dso)
    for _ in range(n_keys):
        r = rng.random()
        period = 144 if r < 0.85 else (72 if r < 0.92 else rng.randint(1, 143))
        start = DAY0 + 144 * rng.randrange(DAYS) + (0 if rng.random() < 0.9 else rng.randrange(144 - period + 1))
        records.append((rng.randbytes(16), start, period, rng.choice((1, 1, 1, 2, 3)), rng.randrange(8),
                        rng.choice((None, 0, 2, 5, -1))))
    # duplicates (~3%): the same key again in a later batch, half of them with another period
    dups = []
    for i in rng.sample(range(n_keys), n_keys * 3 // 100):
        tek, start, period, rt, trl, dso = records[i]
        dups.append((tek, start, 144 if period != 144 else 72, rt, trl, dso) if rng.random() < 0.5 else records[i])
    # revoked (~1%): REVOKED in `keys` of a later batch or in `revised_keys`
    revoked_keys, revoked_revised = [], []
    revoked_idx = rng.sample(range(n_keys), n_keys // 100)
    for j, i in enumerate(revoked_idx):
        tek, start, period, _rt, trl, dso = records[i]
        (revoked_keys if j % 2 else revoked_revised).append((tek, start, period, 5, trl, dso))
    extra = dups + revoked_keys
    rng.shuffle(extra)
    # batches: the originals, with the duplicates and keys-field revocations spread over later ones
    total = len(records) + len(extra)
    n_batches = max(1, -(-total // BATCH_KEYS))
    all_recs = records + extra  # later records are in later batches
    paths = []
    start_ts = DAY0 * 600 + DAYS * 86400
    for b in range(n_batches):
        chunk = all_recs[b * BATCH_KEYS : (b + 1) * BATCH_KEYS]
        revised = revoked_revised if b == n_batches - 1 else []
        body = _export_bin(start_ts + b * 3600, 1, 1, chunk, revised)
        sig = export.sign_export_bin(body, signing)
        rel = f"exports/{start_ts + b * 3600}-{start_ts + b * 3600 + 86400}-00001.zip"
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(export._zip_bytes({"export.bin": body, "export.sig": sig}))
        paths.append(rel)
    export.write_index(d, paths)
    # planted sightings
    revoked_set = {records[i][0] for i in revoked_idx}
    usable = [i for i in range(n_keys) if records[i][0] not in revoked_set]
    planted = []
    for i in rng.sample(usable, PLANTED):
        tek, start, period, *_ = records[i]
        interval = start + rng.randrange(period)
        planted.append((tek, interval, True))
    for i in rng.sample(revoked_idx, PLANTED_REVOKED):
        tek, start, period, *_ = records[i]
        planted.append((tek, start + rng.randrange(period), False))
    meta_tx = en.encode_metadata(-8)
    lines_planted = []
    for tek, interval, _good in planted:
        r = en.rpi(en.rpik(tek), interval)
        a = en.aem(en.aemk(tek), r, meta_tx)
        lines_planted.append(f"{interval * 600 + rng.randrange(600)},{r.hex()},{a.hex()},-55\n")
    for s in sightings:
        with open(d / f"sightings-{s}.csv", "w") as fh:
            fh.write("time,rpi,aem,rssi\n")
            rows = lines_planted + [
                f"{(DAY0 + rng.randrange(144 * DAYS)) * 600 + rng.randrange(600)},{rng.randbytes(16).hex()},"
                f"{rng.randbytes(4).hex()},{-rng.randrange(40, 95)}\n" for _ in range(s - len(lines_planted))]
            rng.shuffle(rows)
            fh.writelines(rows)
    meta = {"keys_total": total, "keys_distinct": n_keys, "batches": n_batches, "duplicates": len(dups),
            "revoked": len(revoked_idx), "planted": sum(1 for p in planted if p[2]),
            "planted_revoked": PLANTED_REVOKED, "pubkey": str(pub), "dir": str(d)}
    meta_path.write_text(json.dumps(meta))
    return meta


def prefix_csv(meta: dict, sightings: int) -> str:
    """sightings-<n>.csv as log format v2 keeps it: each RPI cut to its first 8 bytes (stored
    zero-padded, as the station database hands them to the matcher). Cached."""
    d = Path(meta["dir"])
    name = f"sightings-prefix-{sightings}.csv"
    if not (d / name).exists():
        with open(d / f"sightings-{sightings}.csv") as src, open(d / (name + ".tmp"), "w") as dst:
            dst.write(next(src))
            for line in src:
                t, rpi, rest = line.split(",", 2)
                dst.write(f"{t},{rpi[:16]}{'0' * 16},{rest}")
        (d / (name + ".tmp")).rename(d / name)
    return name


def run_cli(meta: dict, sightings: int | str, jobs: int, one_core: bool) -> tuple[float, int, dict]:
    """Wall seconds, peak RSS (bytes) and the JSON output of one `tracecode match`
    (`sightings`: a line count, or a file name in the workload folder)."""
    d = Path(meta["dir"])
    csv_name = sightings if isinstance(sightings, str) else f"sightings-{sightings}.csv"
    cmd = [str(Path(sys.executable).with_name("tracecode")), "match", "--exports", str(d), "--sightings",
           str(d / csv_name), "--pubkey", meta["pubkey"], "--json", "--jobs", str(jobs)]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "tracecode"] + cmd[1:]
    if one_core and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env())
    out, err = proc.communicate()
    dt = time.perf_counter() - t0
    rss = _peak_rss_of_children()
    if proc.returncode != 0:
        raise SystemExit(f"tracecode match failed ({proc.returncode}): {err.decode()[-500:]}")
    return dt, rss, json.loads(out)


def _child_env() -> dict:
    """The CLI's environment: as an installed tracecode runs, with its bytecode cached (kept
    under out/, not in the source tree) even where the caller sets PYTHONDONTWRITEBYTECODE;
    `main` fills the cache first (`tracecode match --help` imports what a match does)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / "out" / "bench-match" / "pycache"))
    return env


def _peak_rss_of_children() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def run_cli_rss(meta, sightings, jobs, one_core):
    """run_cli with the child's own peak RSS and CPU seconds (each run in a fresh helper
    process, so the RUSAGE_CHILDREN figures are that run's)."""
    code = (
        "import json,sys,resource;sys.path.insert(0,%r);import bench_match as b;"
        "s=sys.argv[2];s=int(s) if s.isdigit() else s;"
        "dt,_,out=b.run_cli(json.loads(sys.argv[1]),s,int(sys.argv[3]),sys.argv[4]=='1');"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps([dt,r.ru_maxrss*1024,r.ru_utime+r.ru_stime,out]))"
        % str(Path(__file__).parent)
    )
    p = subprocess.run([sys.executable, "-c", code, json.dumps(meta), str(sightings), str(jobs),
                        "1" if one_core else "0"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-800:])
    dt, rss, cpu, out = json.loads(p.stdout)
    return dt, rss, cpu, out


def check(meta: dict, out: dict) -> list[str]:
    problems = []
    if out["matched_sightings"] != meta["planted"]:
        problems.append(f"{out['matched_sightings']} matched sightings, {meta['planted']} planted"
                        f" (+{meta['planted_revoked']} of revoked keys that must not match)")
    if out["stats"]["keys_revoked"] != meta["revoked"]:
        problems.append(f"{out['stats']['keys_revoked']} keys revoked, {meta['revoked']} published")
    if out["stats"]["keys_unique"] != meta["keys_distinct"]:
        problems.append(f"{out['stats']['keys_unique']} distinct keys, {meta['keys_distinct']} published")
    return problems


def kernel_alone(n: int = 200_000) -> float | None:
    """keys/s of the native kernel by itself (derivation + lookup, one thread)."""
    if not native.available():
        return None
    import numpy as np

    rng = random.Random(1)
    teks = rng.randbytes(16 * n)
    starts = np.full(n, DAY0, "=u4")
    periods = np.full(n, 144, "=u4")
    ix = native.HeardIndex(rng.randbytes(16 * 10_000))
    best = 1e9
    for _ in range(5):
        t = time.process_time()
        ix.scan_columns(teks, starts, periods, 0, n)
        best = min(best, time.process_time() - t)
    return n / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--sightings", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting; the best is reported")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-match"))
    args = ap.parse_args()
    root = Path(args.out)
    print(f"tracecode match end to end (fresh process, signed batches, --json); kernel: {native.kernel_name()}; "
          f"{os.cpu_count()} CPUs; load average {_load()} at the start")
    subprocess.run([sys.executable, "-m", "tracecode", "match", "--help"], env=_child_env(), capture_output=True,
                   cwd=ROOT)
    k = kernel_alone()
    if k:
        print(f"  native kernel alone (derive + lookup, 144-interval keys, one thread): {k:,.0f} keys/s")
    ok = True
    results = {}
    for n in args.keys:
        t = time.perf_counter()
        meta = build(root, n, args.sightings, args.seed)
        print(f"  workload {n:,} distinct keys: {meta['keys_total']:,} published in {meta['batches']} signed batches "
              f"({meta['duplicates']:,} duplicates, {meta['revoked']:,} revoked, {meta['planted']} planted + "
              f"{meta['planted_revoked']} revoked planted) ({time.perf_counter() - t:.1f} s to prepare)")
        cases = [(s, f"{s:>9,} sightings", s) for s in args.sightings]
        if args.sightings:
            s0 = args.sightings[0]
            cases.append((f"v2-{s0}", f"{s0:>9,} v2 8-byte prefixes", prefix_csv(meta, s0)))
        for case, label, csv_arg in cases:
            for cores in (1, 2):
                best = None
                for _ in range(args.repeat):
                    dt, rss, cpu, out = run_cli_rss(meta, csv_arg, cores, cores == 1)
                    problems = check(meta, out)
                    if problems:
                        ok = False
                        print(f"  FAIL {n:,} keys x {label.strip()}: {'; '.join(problems)}", file=sys.stderr)
                    if best is None or dt < best[0]:
                        best = (dt, rss, cpu)
                dt, rss, cpu = best
                results[(n, case, cores)] = (dt, rss)
                rate = meta["keys_distinct"] / dt
                print(f"  {n:>9,} keys x {label}, {cores} core{'s' if cores > 1 else ' '}: {dt:6.2f} s  "
                      f"{rate:>9,.0f} keys/s ({rate / cores:>9,.0f} per core; {meta['keys_total'] / dt / cores:>9,.0f} "
                      f"published/s per core)  {meta['keys_distinct'] / cpu:>9,.0f} keys per CPU-second  "
                      f"peak RSS {rss / 2**20:5.0f} MB", flush=True)
    big = {key: v for key, v in results.items() if key[0] == 1_000_000}
    full_one_core = [dt for (n, case, c), (dt, _) in big.items() if c == 1 and not str(case).startswith("v2")]
    if full_one_core:
        worst_rate = 1_000_000 / max(full_one_core)
        worst_rss = max(rss for _dt, rss in big.values())
        print(f"  targets (1M keys): one core >= 300,000 keys/s: {worst_rate:,.0f} "
              f"{'ok' if worst_rate >= 300_000 else 'MISSED'}; peak RSS < 400 MB: {worst_rss / 2**20:.0f} MB "
              f"{'ok' if worst_rss < 400 * 2**20 else 'MISSED'}")
        ok = ok and worst_rate >= 300_000 and worst_rss < 400 * 2**20
    print(f"  load average {_load()} at the end")
    return 0 if ok else 1


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
