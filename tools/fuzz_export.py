#!/usr/bin/env python3
"""Fuzz campaign for diagnosis-key export files (issue: one error contract for bad input).

Mutates real export batches (the signed example in tests/data/server-example, plus batches
made here with mixed periods, revised keys and a second signing key) by byte flips,
truncation, insertions, zip structure edits (compression method, encryption flag, version,
sizes, CRC, entry count) and protobuf field edits (values such as 2**64-1, wire types, lengths,
non-UTF-8 strings, key_data lengths, unknown and repeated fields), re-zipped with stored,
deflate, bzip2 or lzma and often re-signed, so the parser behind the signature is reached.

Every input goes through the library as `tracecode match` and `export inspect` use it
(verified, inspect without strictness, and unchecked without a key), `--json` output is
serialised, accepted batches are matched, and the native and Python protobuf walkers must
agree. Anything but `InputError` / `SignatureError` is an unexpected exception. With `--cli N`
it also runs N files through the real CLI and checks for one-line errors with exit code 2
(input) or 3 (signature) and no traceback.

Prints the count of unexpected exceptions, the slowest input and the rate; exits 1 if any.
Usage: tools/fuzz_export.py [--inputs 1000000] [--seed 1] [--jobs 2] [--cli 0]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode import export, native  # noqa: E402
from tracecode.errors import InputError, SignatureError  # noqa: E402
from tracecode.export import DiagnosisKey  # noqa: E402

EXAMPLE = ROOT / "tests" / "data" / "server-example"
BIG = [0, 1, 127, 128, 143, 144, 145, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
# deflate as the servers write it, the others often enough to exercise their decoders
METHOD_WEIGHTS = [3, 12, 1, 1]


# ------------------------------------------------------------------------------ protobuf


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode(buf: bytes) -> list:
    """[field, wire type, value] items; length-delimited values stay bytes."""
    items = []
    for f, wt, v, _s, _e in export._fields(buf, 0, len(buf)):
        items.append([f, wt, buf[v[0] : v[1]] if wt == 2 else v])
    return items


def encode(items: list) -> bytes:
    out = bytearray()
    for f, wt, v in items:
        out += _varint((f << 3) | wt)
        if wt == 0:
            out += _varint(v)
        elif wt == 1:
            out += (v & (2**64 - 1)).to_bytes(8, "little")
        elif wt == 5:
            out += (v & (2**32 - 1)).to_bytes(4, "little")
        elif wt == 2:
            out += _varint(len(v)) + v
        else:  # a group marker or an invalid type: just the tag
            pass
    return bytes(out)


def mutate_proto(rng: random.Random, body: bytes) -> bytes:
    try:
        items = decode(body)
    except Exception:
        return body
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not items:
            items.append([rng.randrange(1, 20), 0, rng.choice(BIG)])
            continue
        i = rng.randrange(len(items))
        f, wt, v = items[i]
        op = rng.randrange(12)
        if f in (7, 8, 6) and wt == 2 and op < 6:  # edit inside a key / signature info
            try:
                sub = decode(v)
            except Exception:
                sub = []
            if sub:
                j = rng.randrange(len(sub))
                sf, swt, sv = sub[j]
                sop = rng.randrange(7)
                if sop == 0 and swt == 0:
                    sub[j][2] = rng.choice(BIG + [-1 & (2**64 - 1), -2**31 & (2**64 - 1)])
                elif sop == 1 and swt == 2:
                    sub[j][2] = rng.choice([b"", sv[:-1], sv + b"\x00", b"\xff\xfe\xfd", rng.randbytes(16)])
                elif sop == 2:
                    sub[j][1] = rng.choice([0, 1, 2, 3, 5, 6, 7])
                    if sub[j][1] == 2 and not isinstance(sub[j][2], bytes):
                        sub[j][2] = rng.randbytes(rng.randrange(20))
                    elif sub[j][1] != 2 and isinstance(sub[j][2], bytes):
                        sub[j][2] = rng.choice(BIG)
                elif sop == 3:
                    del sub[j]
                elif sop == 4:
                    sub.append(list(sub[j]))
                elif sop == 5:
                    sub.append([rng.randrange(1, 40), 0, rng.choice(BIG)])
                else:
                    sub.insert(0, [rng.randrange(1, 7), 0, rng.choice(BIG)])
            items[i][2] = encode(sub)
        elif op == 6:
            items[i][2] = rng.choice(BIG) if wt != 2 else rng.choice([b"\xc3\x28", b"\xff" * 3, b"", rng.randbytes(5)])
        elif op == 7:
            items[i][1] = rng.choice([0, 1, 2, 5, 3, 4, 6, 7])
            if items[i][1] == 2 and not isinstance(v, bytes):
                items[i][2] = rng.randbytes(rng.randrange(30))
            elif items[i][1] != 2 and isinstance(v, bytes):
                items[i][2] = rng.choice(BIG)
        elif op == 8:
            items.insert(rng.randrange(len(items) + 1), list(items[i]))
        elif op == 9:
            del items[i]
        elif op == 10:  # header edits: huge timestamps, odd region, batch numbers
            items.append(rng.choice([[1, 1, 2**64 - 1], [2, 1, 2**64 - 1], [3, 2, b"\xff\xfeTC"],
                                     [4, 0, 2**64 - 1], [5, 0, 2**31], [3, 2, rng.randbytes(4)]]))
        else:
            items.append([rng.randrange(9, 2000), rng.choice([0, 2]), rng.randbytes(3) if rng.random() < 0.5 else 7])
            if items[-1][1] == 2 and not isinstance(items[-1][2], bytes):
                items[-1][2] = b"x"
            if items[-1][1] == 0 and isinstance(items[-1][2], bytes):
                items[-1][2] = 7
    return encode(items)


# ------------------------------------------------------------------------------ zip


def make_zip(entries: dict[str, bytes], method: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, data)
    return buf.getvalue()


def zip_edit(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    heads = []
    for magic in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"):
        i = b.find(magic)
        while i >= 0:
            heads.append(i)
            i = b.find(magic, i + 1)
    if not heads:
        return bytes(b)
    i = rng.choice(heads)
    sig = bytes(b[i : i + 4])
    if sig == b"PK\x03\x04":
        fields = {"version": 4, "flags": 6, "method": 8, "crc": 14, "csize": 18, "usize": 22, "namelen": 26}
    elif sig == b"PK\x01\x02":
        fields = {"version": 6, "flags": 8, "method": 10, "crc": 16, "csize": 20, "usize": 24, "namelen": 28,
                  "offset": 42}
    else:
        fields = {"entries": 8, "total": 10, "cdsize": 12, "cdoffset": 16}
    name = rng.choice(list(fields))
    off = i + fields[name]
    width = 4 if name in ("crc", "csize", "usize", "cdsize", "cdoffset", "offset") else 2
    if off + width > len(b):
        return bytes(b)
    if name == "method":
        val = rng.choice([0, 1, 6, 9, 12, 14, 19, 93, 95, 98, 99, 0xFFFF])
    elif name == "flags":
        val = rng.choice([1, 0x41, 0x2001, 8, 0x800, 0xFFFF])
    elif name == "version":
        val = rng.choice([20, 45, 46, 51, 63, 99, 0xFFFF])
    else:
        val = rng.choice([0, 1, 2**(8 * width) - 1, rng.randrange(2**(8 * width))])
    b[off : off + width] = val.to_bytes(width, "little")
    return bytes(b)


def byte_edit(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    op = rng.randrange(4)
    if not b:
        return bytes(rng.randbytes(rng.randrange(40)))
    if op == 0:
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b)) :]
    elif op == 2:
        p = rng.randrange(len(b) + 1)
        b[p:p] = rng.randbytes(rng.randrange(1, 16))
    else:
        p = rng.randrange(len(b))
        del b[p : p + rng.randrange(1, 32)]
    return bytes(b)


# ------------------------------------------------------------------------------ seeds


class Seeds:
    def __init__(self, rng: random.Random):
        self.real_zip = (EXAMPLE / "testExport-2-records-1-of-1.zip").read_bytes()
        with zipfile.ZipFile(io.BytesIO(self.real_zip)) as zf:
            self.real_bin = zf.read("export.bin")
            self.real_sig = zf.read("export.sig")
        self.real_pub = export.load_public_key(EXAMPLE / "public.pem")
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pubkeys = [self.key.public_key(), self.real_pub]
        keys, revised = [], []
        for i in range(12):
            keys.append(DiagnosisKey(rng.randbytes(16), 2_900_160 + 144 * (i % 3) + (i % 2) * 36,
                                     [144, 72, 1, 144][i % 4], [1, 2, 3, 5][i % 4], i % 8, [None, 0, -3, 5][i % 4]))
        revised.append(DiagnosisKey(keys[0].key_data, keys[0].rolling_start_interval_number, 144, 5))
        self.made_bin = export.build_export_bin(keys, start_timestamp=1_740_000_000, end_timestamp=1_740_086_400,
                                                revised_keys=revised)
        self.bins = [self.real_bin, self.made_bin]
        self.made_sig = self.sign(self.made_bin)
        # the valid signed batches in every compression method (zip edits start from these)
        self.base_zips = [make_zip({"export.bin": body, "export.sig": sig}, m)
                          for body, sig in ((self.real_bin, self.real_sig), (self.made_bin, self.made_sig))
                          for m in METHODS]

    def sign(self, body: bytes) -> bytes:
        return export.sign_export_bin(body, self.key)

    def generate(self, rng: random.Random) -> bytes:
        kind = rng.randrange(10)
        if kind < 2:  # the real batch, bytes edited
            return byte_edit(rng, self.real_zip)
        if kind < 4:  # zip structure edits of a valid signed batch
            raw = rng.choice(self.base_zips)
            for _ in range(rng.choice([1, 1, 2])):
                raw = zip_edit(rng, raw)
            return raw
        # protobuf edits, re-zipped, usually re-signed so the walk behind the signature runs
        body = rng.choice(self.bins)
        new = export.HEADER + mutate_proto(rng, body[len(export.HEADER) :])
        if rng.random() < 0.05:
            new = byte_edit(rng, new)
        entries = {"export.bin": new}
        r = rng.random()
        if r < 0.7:
            entries["export.sig"] = self.sign(new)
        elif r < 0.8:
            entries["export.sig"] = self.real_sig
        elif r < 0.85:
            entries["export.sig"] = byte_edit(rng, self.sign(new))
        if kind == 9 and rng.random() < 0.3:
            return new  # a bare export.bin
        raw = make_zip(entries, rng.choices(METHODS, METHOD_WEIGHTS)[0])
        if rng.random() < 0.1:
            raw = byte_edit(rng, raw)
        return raw


# ------------------------------------------------------------------------------ the target


def _check_walkers(raw: bytes) -> str | None:
    """Native and Python walkers agree on export.bin (same columns or the same message)."""
    if native.walker() is None:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            body = zf.read("export.bin")
    except Exception:
        body = raw
    if body[:16] != export.HEADER:
        return None  # refused before any walk
    res = []
    for use in (True, False):
        try:
            rest, k, r = export.walk_export(body, "x", len(export.HEADER), use_native=use)
            res.append(("ok", rest, k.key_data, k.start.tolist(), k.period.tolist(), k.report_type.tolist(),
                        k.transmission_risk.tolist(), k.days_since_onset.tolist(), k.has_onset.tolist(),
                        r.key_data, r.start.tolist(), r.report_type.tolist()))
        except InputError as exc:
            res.append(("error", str(exc)))
    if res[0] != res[1]:
        return f"walkers disagree: native {str(res[0])[:200]} / python {str(res[1])[:200]}"
    return None


def run_one(raw: bytes, seeds: Seeds, mode: int, check_walkers: bool, match_too: bool = True
            ) -> tuple[str, str | None]:
    """('ok' | 'input' | 'signature' | 'unexpected', detail)."""
    from tracecode.matcher import KeyOccurrences, Sighting, match

    try:
        if mode == 0:  # match with keys configured
            b = export.load_batch_bytes(raw, "fuzz.zip", pubkeys=seeds.pubkeys, allow_unsigned=False)
        elif mode == 1:  # export inspect --pubkey (not strict)
            b = export.load_batch_bytes(raw, "fuzz.zip", pubkeys=seeds.pubkeys, allow_unsigned=True, strict=False)
        else:  # unchecked / unsigned
            b = export.load_batch_bytes(raw, "fuzz.zip", allow_unsigned=True)
        if len(b.key_columns) + len(b.revised_columns) <= 2000:
            json.dumps(b.to_json())
        else:
            json.dumps({k: v for k, v in b.to_json().items() if k not in ("keys", "revised_keys")})
        if mode == 0 and match_too and len(b.key_columns) <= 5000:
            s = [Sighting(2_900_170 * 600, bytes(16), bytes(4), -60)]
            if len(b.key_columns):
                k = b.key_columns.key(0)
                from tracecode import en

                r = en.rpi(en.rpik(k.key_data), k.rolling_start_interval_number)
                s.append(Sighting(k.rolling_start_interval_number * 600, r, bytes(4), -60))
            match(KeyOccurrences.from_batches([b]), s, jobs=1)
        out: tuple[str, str | None] = ("ok", None)
    except InputError as exc:
        out = ("input", str(exc))
    except SignatureError as exc:
        out = ("signature", str(exc))
    except Exception as exc:  # the contract is broken
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return "unexpected", f"{exc.__class__.__name__}: {exc} at {Path(tb.filename).name}:{tb.lineno}"
    if check_walkers:
        d = _check_walkers(raw)
        if d:
            return "unexpected", d
    if out[1] is not None and ("\n" in out[1] or "Traceback" in out[1]):
        return "unexpected", f"multi-line error: {out[1][:200]!r}"
    return out


def campaign(n: int, seed: int, report_every: int = 0) -> dict:
    rng = random.Random(seed)
    seeds = Seeds(rng)
    counts: Counter = Counter()
    unexpected: Counter = Counter()
    samples: dict[str, bytes] = {}
    slowest = (0.0, "")
    t0 = time.perf_counter()
    for i in range(n):
        raw = seeds.generate(rng)
        t = time.perf_counter()
        kind, detail = run_one(raw, seeds, i % 3, i % 4 == 0, i % 2 == 0)
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, f"{kind}: {(detail or '')[:120]}")
        counts[kind] += 1
        if kind == "unexpected":
            unexpected[detail.split(" at ")[0][:160] if detail else "?"] += 1
            samples.setdefault(detail or "?", raw)
        if report_every and (i + 1) % report_every == 0:
            el = time.perf_counter() - t0
            print(f"  [seed {seed}] {i + 1:,} inputs, {counts['unexpected']} unexpected, {(i + 1) / el:,.0f}/s",
                  flush=True)
    return {"inputs": n, "counts": dict(counts), "unexpected": dict(unexpected), "seconds": time.perf_counter() - t0,
            "slowest_s": slowest[0], "slowest": slowest[1], "samples": {k: v.hex() for k, v in list(samples.items())[:5]}}


def _campaign_star(a):
    return campaign(*a)


# ------------------------------------------------------------------------------ CLI runs


def cli_runs(n: int, seed: int) -> dict:
    """n fuzzed files through the real `tracecode` CLI (export inspect [--json], match --json)."""
    rng = random.Random(seed + 99)
    seeds = Seeds(rng)
    bad = []
    codes: Counter = Counter()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pub = d / "pub.pem"
        from cryptography.hazmat.primitives import serialization

        pub.write_bytes(seeds.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
        csv = d / "s.csv"
        csv.write_text("time,rpi,aem,rssi\n1740000000," + "00" * 16 + ",00000000,-60\n")
        exe = [sys.executable, "-m", "tracecode"]
        jobs = []
        for i in range(n):
            f = d / f"f{i}.zip"
            f.write_bytes(seeds.generate(rng))
            variants = [
                ["export", "inspect", "--json", str(f)],
                ["export", "inspect", "--pubkey", str(pub), "--allow-unsigned", str(f)],
                ["match", "--exports", str(f), "--sightings", str(csv), "--pubkey", str(pub), "--json"],
            ]
            jobs.append(variants[i % 3])

        def one(args):
            p = subprocess.run(exe + args, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "host")})
            err_lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            problem = None
            if "Traceback" in p.stderr:
                problem = "traceback"
            elif p.returncode not in (0, 2, 3):
                problem = f"exit {p.returncode}"
            elif p.returncode in (2, 3):
                if len(err_lines) != 1 or not err_lines[0].startswith("tracecode: error: "):
                    problem = f"not a one-line error: {p.stderr[:200]!r}"
                elif p.returncode == 3 and "sig" not in p.stderr.lower():
                    problem = f"exit 3 without a signature error: {p.stderr[:200]!r}"
            elif "--json" in args:
                try:
                    json.loads(p.stdout)
                except ValueError:
                    problem = "stdout is not JSON"
            return p.returncode, (" ".join(args[:2]), problem) if problem else None

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            for code, problem in pool.map(one, jobs):
                codes[code] += 1
                if problem:
                    bad.append(problem)
    return {"runs": n, "exit_codes": dict(codes), "problems": bad}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cli", type=int, default=0, help="also run this many files through the CLI")
    args = ap.parse_args()
    jobs = max(1, args.jobs)
    per = [args.inputs // jobs + (1 if i < args.inputs % jobs else 0) for i in range(jobs)]
    print(f"export fuzz: {args.inputs:,} inputs, seed {args.seed}, {jobs} processes, "
          f"walker {'native+python' if native.walker() else 'python'}", flush=True)
    t0 = time.perf_counter()
    tasks = [(per[i], args.seed * 1000 + i, max(10_000, per[i] // 10)) for i in range(jobs)]
    if jobs == 1:
        results = [campaign(*tasks[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_campaign_star, tasks)
    dt = time.perf_counter() - t0
    counts: Counter = Counter()
    unexpected: Counter = Counter()
    for r in results:
        counts.update(r["counts"])
        unexpected.update(r["unexpected"])
    slow = max(results, key=lambda r: r["slowest_s"])
    n_unexp = counts.get("unexpected", 0)
    print(f"  outcomes: {counts.get('ok', 0):,} accepted, {counts.get('input', 0):,} input errors (exit 2), "
          f"{counts.get('signature', 0):,} signature errors (exit 3), {n_unexp:,} unexpected exceptions")
    print(f"  rate: {args.inputs / dt:,.0f} inputs/s over {dt:.1f} s; slowest input {slow['slowest_s'] * 1000:.0f} ms"
          f" ({slow['slowest']})")
    for what, c in unexpected.most_common(10):
        print(f"  UNEXPECTED x{c}: {what}")
    ok = n_unexp == 0
    if args.cli:
        c = cli_runs(args.cli, args.seed)
        print(f"  CLI: {c['runs']} runs, exit codes {dict(sorted(c['exit_codes'].items()))}, "
              f"{len(c['problems'])} problems (tracebacks, multi-line errors, other exit codes, bad JSON)")
        for p in c["problems"][:10]:
            print(f"  CLI PROBLEM: {p}")
        ok = ok and not c["problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
