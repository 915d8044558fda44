#!/usr/bin/env python3
"""Key server under load, on loopback: a connection burst, slow and hostile clients, then checks.

Starts `tracecode keyserver serve` (a subprocess, as a user runs it) on a fresh folder on
127.0.0.1 and, all at the same time:
- opens --connections connections at once: most GET index.txt or a batch, --uploads of them
  POST an upload with a valid one-time code;
- --slow slow clients: half send headers one byte a second and never finish (slowloris), half
  send a body one byte every 6 s;
- hostile requests: JSON nested 30,000 deep (within the 64 KiB body limit), a 100 MB Content-Length, clients that send a
  request and leave without reading the answer.
Then publishes, follows the server with the chain-checking client, and checks that every
accepted upload's keys are in the verified batches. Prints the figures (answered, refused with
503, dropped, p50/p99 latency, slow clients cut and when, tracebacks on the server's stderr)
and exits 1 if a client was dropped, a slow client was not cut, a traceback was printed, or a
key was lost. Bounded: every client has a timeout; the whole run has --max-seconds.

    python tools/soak_keyserver.py                    # make soak: 2,000 connections, 40 slow clients
    python tools/soak_keyserver.py --connections 500 --slow 10 --deadline 2   # CI slice
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.export import DiagnosisKey, load_batch  # noqa: E402
from tracecode.keyserver import KeyServer  # noqa: E402
from tracecode.keyserver.client import fetch_new_batches  # noqa: E402

HOST = "127.0.0.1"


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(hard, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _request(port: int, data: bytes, timeout: float, leave: bool = False) -> tuple[str, int, float]:
    """One client: connect, send, read to EOF. -> (outcome, status, seconds)."""
    t0 = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(data)
        await writer.drain()
        if leave:
            writer.transport.abort()
            return "left", 0, time.monotonic() - t0
        resp = await asyncio.wait_for(reader.read(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        return "timeout", 0, time.monotonic() - t0
    except OSError:
        return "reset", 0, time.monotonic() - t0
    finally:
        if writer is not None and not writer.transport.is_closing():
            writer.close()
    dt = time.monotonic() - t0
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    if not m:
        return "empty", 0, dt
    status = int(m.group(1))
    if status == 503:
        why = "connections" if b"too many connections" in resp else "queue"
        return "refused", status, dt, why
    return "answered", status, dt


async def _slow(port: int, kind: str, limit: float) -> tuple[str, float]:
    """A slow client; returns ("cut", seconds until the server closed it) or ("not cut", limit)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return "refused", 0.0
    if kind == "headers":
        head, step = b"GET /tc/index.txt HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096, 1.0
        chunks = [head[i:i + 1] for i in range(len(head))]
    else:
        writer.write(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n")
        chunks, step = [b"{"] + [b" "] * 99, 6.0
    try:
        for c in chunks:
            writer.write(c)
            await writer.drain()
            try:
                got = await asyncio.wait_for(reader.read(65536), step)
            except (asyncio.TimeoutError, TimeoutError):
                got = None
            if got == b"" or (got and b"HTTP/1.1" in got):
                return "cut", time.monotonic() - t0
            if time.monotonic() - t0 > limit:
                return "not cut", time.monotonic() - t0
    except OSError:
        return "cut", time.monotonic() - t0
    finally:
        writer.transport.abort()
    return "not cut", time.monotonic() - t0


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


def _post(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"POST /v1/upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\nConnection: close\r\n\r\n").encode() + body


async def _campaign(port: int, args, codes: list[str], batch_path: str, rng: random.Random) -> dict:
    uploads: list[list[dict]] = []
    reqs: list[tuple[str, bytes]] = []
    for i in range(args.connections):
        if i < len(codes):
            keys = [{"key_data": rng.randbytes(16).hex(), "rolling_start_interval_number": (20_000 - d) * 144,
                     "rolling_period": 144, "report_type": 1, "days_since_onset_of_symptoms": d - 3}
                    for d in range(1, 15)]
            uploads.append(keys)
            reqs.append(("upload", _post(json.dumps({"code": codes[i], "keys": keys}).encode())))
        else:
            reqs.append(("get", _get("/tc/index.txt" if i % 3 else "/" + batch_path)))
    rng.shuffle(reqs)
    hostile = [("deep_array", _post(b"[" * 30_000 + b"]" * 30_000)),
               ("deep_in_keys", _post(b'{"code":"x","keys":' + b"[" * 30_000 + b"]" * 30_000 + b"}")),
               ("deep_objects", _post(b'{"a":' * 10_000 + b"1" + b"}" * 10_000)),
               ("huge", _post(b"", length=100 * 1024 * 1024))]
    slow_kinds = ["headers" if i % 2 == 0 else "body" for i in range(args.slow)]
    slow_limit = args.deadline + 8
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(_request(port, data, args.client_timeout)) for _, data in reqs]
    slow_tasks = [asyncio.ensure_future(_slow(port, k, slow_limit)) for k in slow_kinds]
    hostile_tasks = [asyncio.ensure_future(_request(port, data, args.client_timeout)) for _, data in hostile]
    leave_tasks = [asyncio.ensure_future(_request(port, _get("/" + batch_path), args.client_timeout, leave=True))
                   for _ in range(args.leavers)]
    results = await asyncio.gather(*tasks)
    burst_s = time.monotonic() - t0
    slow = await asyncio.gather(*slow_tasks)
    hostile_res = await asyncio.gather(*hostile_tasks)
    await asyncio.gather(*leave_tasks)
    kinds = [k for k, _ in reqs]
    upload_status = [r[1] for k, r in zip(kinds, results) if k == "upload"]
    lat = sorted(r[2] for r in results if r[0] in ("answered", "refused"))

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

    out = {
        "connections": args.connections,
        "answered": sum(1 for r in results if r[0] == "answered"),
        "refused_503": sum(1 for r in results if r[0] == "refused"),
        "refused_why": {w: sum(1 for r in results if r[0] == "refused" and r[3] == w)
                        for w in sorted({r[3] for r in results if r[0] == "refused"})},
        "dropped": sum(1 for r in results if r[0] not in ("answered", "refused")),
        "dropped_kinds": sorted({r[0] for r in results if r[0] not in ("answered", "refused")}),
        "statuses": {str(s): sum(1 for r in results if r[1] == s) for s in sorted({r[1] for r in results})},
        "p50_ms": round(pct(0.50) * 1000, 1),
        "p99_ms": round(pct(0.99) * 1000, 1),
        "burst_seconds": round(burst_s, 2),
        "uploads_sent": len(uploads),
        "uploads_accepted": sum(1 for s in upload_status if s == 201),
        "slow_clients": len(slow),
        "slow_cut": sum(1 for s in slow if s[0] == "cut"),
        "slow_cut_max_s": round(max((s[1] for s in slow if s[0] == "cut"), default=0.0), 1),
        "hostile": {k: r[1] for (k, _), r in zip(hostile, hostile_res)},
        "leavers": args.leavers,
    }
    accepted_keys = {k["key_data"] for keys, s in zip([u for u in uploads], _upload_statuses(reqs, results, uploads))
                     if s == 201 for k in keys}
    out["_accepted_keys"] = accepted_keys
    return out


def _upload_statuses(reqs, results, uploads) -> list[int]:
    # uploads were shuffled with everything else: map them back through their bodies
    by_body = {}
    for (kind, data), r in zip(reqs, results):
        if kind == "upload":
            body = json.loads(data.split(b"\r\n\r\n", 1)[1])
            by_body[body["keys"][0]["key_data"]] = r[1]
    return [by_body[u[0]["key_data"]] for u in uploads]


def run(args) -> dict:
    _raise_fd_limit(args.connections * 2 + 1024)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="tc-soak-") as tmp:
        d = Path(tmp) / "ks"
        ks = KeyServer.init(d)
        codes = [ks.issue_code()[0] for _ in range(min(args.uploads, args.connections))]
        # one batch published before the burst, so GETs of a batch have something to fetch
        pre_code = ks.issue_code()[0]
        ks.accept_upload(pre_code, [DiagnosisKey(rng.randbytes(16), 20_000 * 144)])
        batch_path = ks.publish()[0]
        err_path = Path(tmp) / "server.stderr"
        cmd = [sys.executable, "-m", "tracecode", "keyserver", "serve", "--dir", str(d), "--host", HOST,
               "--port", "0", "--request-deadline", str(args.deadline)]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "host") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
            try:
                line = proc.stdout.readline().decode()
                m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                if not m:
                    raise SystemExit(f"soak: the key server did not start: {line!r}")
                port = int(m.group(1))
                out = asyncio.run(asyncio.wait_for(_campaign(port, args, codes, batch_path, rng), args.max_seconds))
                # after the storm: the server still answers, the chain verifies, no key is lost
                ks.publish()
                cache = Path(tmp) / "cache"
                got = fetch_new_batches(f"http://{HOST}:{port}/", cache, [ks.public_key_path()])
                published = {k.key_data.hex() for p in got for k in load_batch(p, pubkeys=[ks.public_key_path()]).keys}
                accepted = out.pop("_accepted_keys")
                out["chain_verified_batches"] = len(got)
                out["accepted_keys"] = len(accepted)
                out["accepted_keys_lost"] = len(accepted - published)
                db_uploads = ks.status()["uploads"] - 1
                out["uploads_in_database"] = db_uploads
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        text = err_path.read_text(errors="replace")
        out["server_stderr_tracebacks"] = text.count("Traceback")
        out["server_stderr_lines"] = len(text.splitlines())
    failures = []
    if out["dropped"]:
        failures.append(f"{out['dropped']} clients dropped ({', '.join(out['dropped_kinds'])})")
    if out["slow_cut"] != out["slow_clients"]:
        failures.append(f"{out['slow_clients'] - out['slow_cut']} slow clients not cut")
    if out["server_stderr_tracebacks"]:
        failures.append(f"{out['server_stderr_tracebacks']} tracebacks on the server's stderr")
    if out["accepted_keys_lost"] or out["uploads_in_database"] != out["uploads_accepted"]:
        failures.append("accepted keys lost or uploads miscounted")
    if any(v != 400 for k, v in out["hostile"].items() if k.startswith("deep")) or out["hostile"].get("huge") != 413:
        failures.append(f"hostile bodies not refused as expected: {out['hostile']}")
    out["failures"] = failures
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--uploads", type=int, default=200, help="of the connections, uploads with valid codes")
    ap.add_argument("--slow", type=int, default=40, help="slow clients (half slow headers, half slow bodies)")
    ap.add_argument("--leavers", type=int, default=100, help="clients that leave without reading the answer")
    ap.add_argument("--deadline", type=float, default=10.0, help="the server's --request-deadline")
    ap.add_argument("--client-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (1 <= args.connections <= 20_000 and 0 <= args.slow <= 1000 and args.max_seconds <= 1800):
        ap.error("bounded campaign: --connections 1..20000, --slow 0..1000, --max-seconds <= 1800")
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"key server burst on loopback: {out['connections']} connections at once "
              f"(+{out['slow_clients']} slow, {len(out['hostile'])} hostile, {out['leavers']} leaving early)")
        why = ", ".join(f"{n} for {w}" for w, n in out["refused_why"].items())
        print(f"  answered {out['answered']}, refused with 503 {out['refused_503']}"
              f"{f' ({why})' if why else ''}, dropped {out['dropped']}; "
              f"latency p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms; burst took {out['burst_seconds']} s")
        print(f"  uploads: {out['uploads_accepted']} of {out['uploads_sent']} accepted, "
              f"{out['uploads_in_database']} in the database, {out['accepted_keys']} keys, "
              f"{out['accepted_keys_lost']} lost after publish; chain verified over {out['chain_verified_batches']} batches")
        print(f"  slow clients cut: {out['slow_cut']}/{out['slow_clients']} (latest after {out['slow_cut_max_s']} s, "
              f"deadline {args.deadline} s); hostile: {out['hostile']}")
        print(f"  server stderr: {out['server_stderr_tracebacks']} tracebacks, {out['server_stderr_lines']} lines")
        for f in out["failures"]:
            print(f"FAIL: {f}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
