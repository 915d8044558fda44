#!/usr/bin/env python3
"""Damaged station databases through `status`, `sync` and `db check` (issue 14, item 4).

A realistic station database (3 badges, 4 synced days each, sessions, health codes, a match,
diagnosed keys) is written through the station's own code. Each run copies it and damages the
copy one way: bit flips anywhere, truncation at any length (0 bytes included), a page
overwritten with noise or zeros, or a run of bytes overwritten mid-file. Then the real CLI
(`tracecode.cli.main`, in-process, output captured) runs on it:

    status --json, db check --json, sync --port socket://127.0.0.1:1 --json

and each outcome is judged against the undamaged database:
- traceback: an exception escaped the CLI (must be 0);
- silent: exit 0 but the output differs from the intact database's, or `db check` exits 0
  while the encounter records (raw bytes and derived columns) or the row counts differ
  (must be 0);
- not refused: `sync` went on to the badge (exit 4: no badge at that port) although its
  records differ from the intact database's (must be 0);
- a refusal must be one line `tracecode: error: ...` with exit 2.
Damage SQLite cannot see (a flipped bit inside a text that stays valid UTF-8, free pages) is
counted as "harmless" when every command answers as on the intact database.

    .venv/bin/python tools/campaign_db.py [--runs 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.cli import main  # noqa: E402
from tracecode.station import logfmt  # noqa: E402
from tracecode.station.db import Database  # noqa: E402

DAY0 = 20_400
KINDS = ("bitflip", "truncate", "page-noise", "page-zero", "overwrite")
COMMANDS = {
    "status": ["status", "--json"],
    "check": ["db", "check", "--json"],
    "sync": ["sync", "--port", "socket://127.0.0.1:1", "--json"],
}


def build_base(path: Path, seed: int = 7, per_day: int = 120) -> None:
    rng = random.Random(seed)
    with Database(path, create=True) as db:
        for b in range(3):
            bid = f"tc-{b:012x}"
            db.add_badge(bid, "esp32-devkitc", rng.randbytes(32), fw_version="0.1.0",
                         port=f"/dev/ttyUSB{b}")
            for d in range(4):
                day = DAY0 + d
                s = db.start_session(bid, f"/dev/ttyUSB{b}")
                recs = []
                for i in range(per_day):
                    raw = logfmt.encode_record(rng.randbytes(16), rng.randbytes(4),
                                               rng.randrange(86400), rng.randrange(1, 900),
                                               rng.randrange(1, 40), -90 + rng.randrange(10),
                                               -50 - rng.randrange(10), -70 + rng.randrange(10))
                    recs.append(logfmt.decode_record(raw, day, 16 + 32 * i))
                db.commit_pull(bid, s, {day: (16 + 32 * per_day, recs)})
                db.mark_acked(bid, day, 16 + 32 * (per_day - 10 * (d == 3)))
                db.finish_session(s, "ok", records_new=per_day, payload_bytes=32 * per_day)
            db.update_badge_status(bid, {"fw": "0.1.0", "battery_mv": 3900, "battery_pct": 70,
                                         "flash_free": 1 << 20, "flash_total": 2 << 20,
                                         "health": "green", "running": True},
                                   port=f"/dev/ttyUSB{b}", synced=True)
        db.set_health_code("tc-000000000001", "red", "match: 2 exposure window(s)")
        db.set_health_code("tc-000000000002", "yellow", "set by hand")
        db.conn.execute("INSERT INTO matches (badge_id, matched_at, health_code, exposures, "
                        "detail) VALUES (?, ?, 'red', 2, ?)",
                        ("tc-000000000001", 1_762_000_000, json.dumps([{"minutes": 31}])))
        db.conn.execute("INSERT INTO diagnosed_keys (badge_id, key_data, "
                        "rolling_start_interval_number, rolling_period, report_type, "
                        "exported_at, destination) VALUES (?, ?, ?, 144, 1, ?, 'out')",
                        ("tc-000000000000", rng.randbytes(16), DAY0 * 144, 1_762_000_000))
        db.conn.execute("UPDATE badges SET last_sync = 1762000000")


def damage(src: Path, dst: Path, kind: str, rng: random.Random) -> str:
    data = bytearray(src.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    if kind == "bitflip":
        n = rng.choice((1, 1, 2, 4, 16))
        for _ in range(n):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        what = f"{n} bit(s) flipped"
    elif kind == "truncate":
        cut = rng.choice((0, rng.randrange(1, 100), rng.randrange(len(data)),
                          (rng.randrange(len(data) // page) * page)))
        data = data[:cut]
        what = f"truncated to {cut} bytes"
    elif kind in ("page-noise", "page-zero"):
        p = rng.randrange(len(data) // page)
        data[p * page:(p + 1) * page] = (rng.randbytes(page) if kind == "page-noise"
                                         else bytes(page))
        what = f"page {p + 1} overwritten ({kind[5:]})"
    else:
        n = rng.randrange(16, 512)
        i = rng.randrange(len(data) - n)
        data[i:i + n] = rng.randbytes(n)
        what = f"{n} bytes overwritten at {i}"
    dst.write_bytes(bytes(data))
    return what


def run_cli(argv: list[str]) -> tuple[int | None, str, str, str | None]:
    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            rc, tb = None, traceback.format_exc()
    return rc, out.getvalue(), err.getvalue(), tb


def logical(path: Path) -> object:
    """What the database verifiably holds: row counts and every encounter record."""
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        c.text_factory = bytes
        counts = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("badges", "sync_sessions", "segments", "encounters",
                            "diagnosed_keys", "matches", "health_codes")}
        enc = c.execute("SELECT badge_id, day, offset, raw, rpi, aem, first_seen, duration_s, "
                        "sightings, rssi_min, rssi_max, rssi_mean FROM encounters "
                        "ORDER BY badge_id, day, offset").fetchall()
        seg = c.execute("SELECT * FROM segments ORDER BY badge_id, day").fetchall()
        c.close()
        return counts, enc, seg
    except (sqlite3.Error, ValueError, OverflowError):
        return "unreadable"


def normalise(text: str, path: Path) -> str:
    return text.replace(str(path), "DB").replace(path.name, "DB")


def campaign(runs: int, seed: int, workdir: Path, verbose: bool = False) -> dict:
    base = workdir / "base.sqlite"
    build_base(base)
    truth = logical(base)
    baseline = {}
    for name, argv in COMMANDS.items():
        ref = workdir / f"ref-{name}.sqlite"
        shutil.copyfile(base, ref)
        rc, out, err, tb = run_cli(argv + ["--db", str(ref)])
        assert tb is None, tb
        baseline[name] = (rc, normalise(out, ref))
    assert baseline["status"][0] == 0 and baseline["check"][0] == 0, baseline
    rng = random.Random(seed)
    tally = {"runs": 0, "command_runs": 0, "tracebacks": 0, "silent": 0, "not_refused": 0,
             "bad_refusals": 0, "refused": 0, "harmless": 0, "by_kind": {}}
    failures = []
    for i in range(runs):
        kind = KINDS[i % len(KINDS)]
        d = workdir / f"run{i}"
        d.mkdir()
        src = d / "damaged.sqlite"
        what = damage(base, src, kind, rng)
        damaged_view = logical(src)
        differs = damaged_view != truth
        # rows or synced offsets lost (not just a changed payload byte, which only the full
        # check can see): every command must refuse
        lost = damaged_view == "unreadable" or (damaged_view[0], damaged_view[2]) != (
            truth[0], truth[2]) or len(damaged_view[1]) != len(truth[1])
        tally["runs"] += 1
        k = tally["by_kind"].setdefault(kind, {"runs": 0, "refused": 0})
        k["runs"] += 1
        refused_any = False
        for name, argv in COMMANDS.items():
            db = d / f"{name}.sqlite"
            shutil.copyfile(src, db)
            rc, out, err, tb = run_cli(argv + ["--db", str(db)])
            tally["command_runs"] += 1
            verdict = None
            lines = [ln for ln in err.splitlines() if ln.strip()]
            if tb is not None:
                tally["tracebacks"] += 1
                verdict = "traceback:\n" + tb
            elif rc == 2 and lines and lines[-1].startswith("tracecode: error:"):
                refused_any = True
                if len(lines) != 1 or "Traceback" in err:
                    tally["bad_refusals"] += 1
                    verdict = "refusal is not one line: " + err
            elif rc == baseline[name][0] and normalise(out, db) == baseline[name][1] and (
                    name != "check" or not differs) and (name != "sync" or not lost):
                pass   # answered exactly as on the intact database, which it still is
            elif rc == 0:
                tally["silent"] += 1
                verdict = f"exit 0 on damage (records differ: {differs})"
            elif name == "sync" and rc == 4:
                tally["not_refused"] += 1
                verdict = "sync went on to the badge with a damaged database"
            else:
                tally["bad_refusals"] += 1
                verdict = f"exit {rc}, stderr {err!r}"
            if verdict:
                failures.append(f"run {i} ({what}) {name}: {verdict}")
                if verbose:
                    print(failures[-1], file=sys.stderr)
        if refused_any:
            tally["refused"] += 1
            k["refused"] += 1
        else:
            tally["harmless"] += 1
        shutil.rmtree(d, ignore_errors=True)
    tally["failures"] = failures
    return tally


def main_cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tc-campaign-db-") as wd:
        os.environ.pop("TRACECODE_DB", None)
        tally = campaign(args.runs, args.seed, Path(wd), args.verbose)
    dt = time.monotonic() - t0
    print(f"damaged databases: {tally['runs']} ({tally['command_runs']} command runs: status, "
          f"db check, sync) seed {args.seed} in {dt:.1f} s")
    print(f"  refused with one line, exit 2: {tally['refused']} databases; harmless damage "
          f"(every command answered as on the intact database): {tally['harmless']}")
    for kind, k in tally["by_kind"].items():
        print(f"  {kind:10s} {k['runs']:4d} runs, {k['refused']:4d} refused")
    print(f"  tracebacks: {tally['tracebacks']}, silent exit 0 on damage: {tally['silent']}, "
          f"sync not refused: {tally['not_refused']}, malformed refusals: {tally['bad_refusals']}")
    for f in tally["failures"][:20]:
        print("  FAIL " + f.splitlines()[0])
    return 1 if tally["failures"] else 0


if __name__ == "__main__":
    sys.exit(main_cli())
