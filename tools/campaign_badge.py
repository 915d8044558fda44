#!/usr/bin/env python3
"""Unplugs, strangers and power cuts against virtual badges (issue 14, items 3 and 5).

Unplugs (virtual badges, the unmodified firmware behind a serial console that the real
mpremote transport talks to): a badge that traces next to a peer is synced again and again,
and each sync loses its cable after a random number of bytes, or between the database commit
and the badge's acknowledgement. After each unplug no host comes back: the badge must trace
again by itself (new records within 2 h of virtual time). A final sync must hold every record
the badge ever wrote (read from its flash before each sync) exactly once.

Strangers (every 5th unplug): the cable is pulled right after the owner authenticated, and a
stranger connects 11 s later without a soft reset (as `mpremote resume exec` does) and
  - calls the left-over `h` (segments, set_health, ack),
  - opens a new session and authenticates with a random MAC, and with a MAC replayed from
    the owner's session,
  - runs `tracecode flash --firmware-dir OTHER` with its own database;
an access is any answer that is not the auth error, or any byte of the badge's firmware
files changed.

Power cuts (the real MicroPython VM with littlefs, `--cuts` in runs of 100 on fresh badges):
each run seeds today's log with 1,200 records (a big file), then cuts the power inside a
random flash program/erase, in bursts a few seconds apart (a quarter of the boots), and for
its last 40 % with the flash nearly full (less free space than today's log file). Counted:
completed records lost (a record read back at one check missing at a later one), damaged
records accepted (a record that parses but whose RPI is neither the peer's nor seeded, plus
records the station would skip), boot failures (powered but the firmware never started
advertising, or littlefs does not mount).

    .venv/bin/python tools/campaign_badge.py [--unplugs 100] [--cuts 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.cli import main as cli_main  # noqa: E402
from tracecode.errors import DeviceError  # noqa: E402
from tracecode.station import flasher, logfmt  # noqa: E402
from tracecode.station.db import Database  # noqa: E402
from tracecode.station.link import BadgeLink  # noqa: E402
from tracecode.station.ports import BadgePort  # noqa: E402
from tracecode.station.sync import sync_badge  # noqa: E402

FIRMWARE = ROOT / "firmware"
BOARD = "m5stack-atom-lite"


# ---------------------------------------------------------------------------- unplugs
def _on_flash(badge) -> set:
    out = set()
    d = Path(badge.flash.root) / "log"
    for p in d.glob("*.tcl") if d.exists() else ():
        try:
            parsed = logfmt.parse_segment(p.read_bytes(), 0, int(p.stem))
        except ValueError:
            continue
        out |= {(e.day, bytes(e.raw)) for e in parsed.records}
    return out


def _flash_tree(badge) -> dict:
    root = Path(badge.flash.root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (p.name in ("main.py", "boot.py") and p.parent == root
                                or p.relative_to(root).parts[0] == "tcbadge")}


def _evil_firmware(d: Path) -> Path:
    (d / "tcbadge").mkdir(parents=True, exist_ok=True)
    (d / "main.py").write_text("print('not TraceCode')\n")
    (d / "boot.py").write_text("")
    (d / "tcbadge" / "__init__.py").write_text("VERSION = 'other'\n")
    (d / "tcbadge" / "hostif.py").write_text("class Host:\n    pass\n")
    return d


def _stranger(fleet, badge, url, bid, owner_mac, work: Path, tally: dict) -> None:
    """The owner's session was just cut after auth; a stranger tries everything it can."""
    fleet.run_for(11)
    day = int(fleet.unix_time()) // 86400
    link = BadgeLink(url, soft_reset=False, restart=False)
    try:
        link.open(probe=False)
    except DeviceError:
        tally["stranger_no_repl"] += 1
        return
    try:
        tries = ["h.segments()", "h.set_health('red')", "h.ack(%d, 1000000)" % day,
                 "from tcbadge.hostif import Host\nh2 = Host()\nh2.hello()\nh2.auth(%s)"
                 % json.dumps(os.urandom(32).hex())]
        if owner_mac:
            tries.append("h3 = Host()\nh3.hello()\nh3.auth(%s)" % json.dumps(owner_mac))
        tries.append("h.segments()")
        for code in tries:
            tally["stranger_attempts"] += 1
            try:
                lines = link.run(code).decode(errors="replace").strip().splitlines()
            except DeviceError:
                continue
            last = json.loads(lines[-1]) if lines else {}
            if last.get("error") != "auth":
                tally["stranger_access"] += 1
    finally:
        link.close()
    before = _flash_tree(badge)
    other = work / "stranger.sqlite"
    evil = _evil_firmware(work / "evil")
    tally["stranger_attempts"] += 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = cli_main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
                       "--db", str(other), "--firmware-dir", str(evil)])
    if rc != 4 or _flash_tree(badge) != before:
        tally["stranger_access"] += 1


def unplug_campaign(n: int, seed: int, work: Path, tally: dict) -> None:
    from tracecode import sim

    fleet = sim.Fleet(workdir=work / "fleet", seed=seed, start_unix=int(time.time()))
    db = Database(work / "station.sqlite")
    try:
        badge = fleet.add_badge("uma", position=(0.0, 0.0), board=BOARD)
        badge.power_on()
        url = badge.console_url()
        # developer mode: the unplug points below are the raw-REPL session's (protocol 1);
        # tests/station/test_virtual.py unplugs locked badges' syncs (protocol 2)
        opts = flasher.FlashOptions(board=flasher.Board.load(BOARD), skip_image=True,
                                    aioble_mip=False, now=fleet.unix_time, lock=False)
        bid = flasher.flash_badge(BadgePort(url), opts, db)["badge_id"]
        peer = fleet.add_badge("peer", position=(1.0, 0.0), board=BOARD, firmware_dir=FIRMWARE)
        peer.power_on()
        peer.set_clock(fleet.unix_time())
        rnd = random.Random(seed)
        fleet.run_for(1800)
        seen = _on_flash(badge)
        full = 30_000
        macs: list[str] = []

        class UnplugBeforeAck(BadgeLink):
            def ack(self, day, offset):
                badge.console.disconnect()
                return super().ack(day, offset)

        class UnplugAfterAuth(BadgeLink):
            def auth(self, secret):
                from tracecode.station.link import auth_mac
                macs.append(auth_mac(secret, str(self.hello.get("nonce", "")), self.badge_id))
                super().auth(secret)
                badge.console.disconnect()

        for i in range(n):
            seen |= _on_flash(badge)
            kind = ("auth" if i % 5 == 4 else "ack" if i % 4 == 3 else "bytes")
            factory = {"auth": UnplugAfterAuth, "ack": UnplugBeforeAck, "bytes": BadgeLink}[kind]
            if kind == "bytes":
                badge.console.disconnect_after(rnd.randrange(0, full))
            tx = badge.console.tx_bytes
            try:
                sync_badge(db, url, now=fleet.unix_time, link_factory=factory)
                full = max(200, badge.console.tx_bytes - tx)
            except DeviceError:
                tally["unplugs_cut"] += 1
            badge.console.disconnect_after(None)
            tally["unplugs"] += 1
            tally["unplug_" + kind] += 1
            if kind == "auth":
                _stranger(fleet, badge, url, bid, macs[-1] if macs else None, work, tally)
            had = seen | _on_flash(badge) | {(r["day"], bytes(r["raw"])) for r in db.encounters(bid)}
            t0 = fleet.unix_time()
            resumed = False
            for _ in range(24):
                fleet.run_for(300)
                now = _on_flash(badge)
                if now - had:
                    resumed = True
                    break
            tally["resume_s"].append(fleet.unix_time() - t0)
            if not resumed:
                tally["not_resumed"] += 1
            seen |= now
        rep = sync_badge(db, url, now=fleet.unix_time)
        seen |= _on_flash(badge)
        got = [(r["day"], bytes(r["raw"])) for r in db.encounters(bid)]
        tally["records"] = len(seen)
        tally["records_lost"] += len(seen - set(got))
        tally["records_dup"] += len(got) - len(set(got)) + rep.records_dup
        if not db.check()["ok"]:
            tally["db_not_ok"] += 1
    finally:
        db.close()
        fleet.close()


# ---------------------------------------------------------------------------- power cuts
def records(badge) -> tuple[set, int]:
    """(day, raw row) of every whole record in the badge's log files (power off), and the
    count of damaged records the station would skip."""
    out, bad = set(), 0
    for day, data in badge.flash.segments().items():
        parsed = logfmt.parse_segment(data, 0, day)
        out |= {(e.day, e.raw) for e in parsed.records}
        bad += parsed.crc_errors
    return out, bad


def seed_today(badge, day: int, n: int, rng) -> set:
    """Today's log file as a long-running badge has it: n valid v2 records (made-up RPIs);
    their 8-byte RPI prefixes."""
    recs = [logfmt.encode_v2(rng.randbytes(8), rng.randbytes(4), 600 + 7 * i,
                             [(0, -70, -60), (15, -72, -61)]) for i in range(n)]
    badge.flash.write("/log/%d.tcl" % day, logfmt.encode_header(day, 2, rng.getrandbits(32))
                      + b"".join(recs))
    return {r[5:13] for r in recs}


def provision_fast_scan(badge, bid: str) -> None:
    """Provisioned (developer mode) to scan every 10 s: a record completes (24 scans) every
    4 minutes, so power cuts land among many flash writes."""
    badge.flash.write("/tc/prov.json", json.dumps({
        "id": bid, "board": "esp32-devkitc", "secret": "00" * 32,
        "config": {"scan_every_s": 10, "scan_window_ms": 1000}}).encode())


def cut_run(n: int, seed: int, work: Path, tally: dict) -> None:
    from tracecode.en import rpis
    from tracecode.sim import Fleet

    fleet = Fleet(work / ("cuts%d" % seed), seed=seed, backend="vm")
    try:
        b = fleet.add_badge("pc", firmware_dir=FIRMWARE, board="esp32-devkitc", position=(0, 0))
        peer = fleet.add_badge("peer", firmware_dir=FIRMWARE, board="esp32-devkitc",
                               position=(1, 0))
        peer.power_on()
        peer.set_clock()
        rng = random.Random(seed)
        day = int(fleet.unix_time()) // 86400
        seeded = seed_today(b, day, 1200, rng)
        provision_fast_scan(b, "pc")
        b.power_on()
        b.set_clock()
        fleet.run_for(1200)
        b.power_cut()
        known, bad = records(b)
        tally["corrupt_accepted"] += bad
        full_from = n * 3 // 5
        cuts = 0
        filled = False
        while cuts < n:
            if cuts >= full_from and not filled:
                free = b.flash.free_bytes()
                b.flash.write("/filler.bin", bytes(max(0, free - 16 * 1024)))
                filled = True
            burst = rng.randint(3, 5) if rng.random() < 0.25 else 1
            tally["bursts"] += burst > 1
            for k in range(burst):
                if cuts >= n:
                    break
                b.power_cut_after_writes(rng.randrange(0, 40))
                adv = b.radio.stats["adv_starts"]
                b.power_on()
                if k == 0:
                    b.set_clock()
                fleet.run_for(rng.uniform(2.0, 8.0) if burst > 1 else rng.choice((30, 120, 400)))
                if not b.powered:
                    tally["torn"] += 1
                elif b.radio.stats["adv_starts"] <= adv:
                    tally["boot_failures"] += 1
                b.power_cut()
                cuts += 1
                tally["cuts"] += 1
                tally["full_cuts"] += filled
            if cuts % 20 < burst or cuts >= n:
                try:
                    files = b.flash.files()
                except Exception:  # littlefs does not mount: the badge would not boot
                    tally["boot_failures"] += 1
                    continue
                if "/main.py" not in files or "/tcbadge/app.py" not in files:
                    tally["boot_failures"] += 1
                now, bad = records(b)
                tally["records_lost_cuts"] += len(known - now)
                tally["corrupt_accepted"] += bad
                known |= now
        peer.power_cut()
        raw = peer.flash.read("/tc/keys.bin")
        heard = {r[:8] for i in range(0, len(raw), 20)
                 for r in rpis(raw[i + 4:i + 20], int.from_bytes(raw[i:i + 4], "little"))}
        final, _ = records(b)
        tally["corrupt_accepted"] += len({r[1:9] for _d, r in final} - heard - seeded)
        tally["records_cuts"] += len(final)
    finally:
        fleet.close()


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unplugs", type=int, default=100)
    ap.add_argument("--cuts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tally: dict = {k: 0 for k in (
        "unplugs", "unplugs_cut", "unplug_bytes", "unplug_ack", "unplug_auth", "not_resumed",
        "records", "records_lost", "records_dup", "db_not_ok", "stranger_attempts",
        "stranger_access", "stranger_no_repl", "cuts", "torn", "bursts", "full_cuts",
        "boot_failures", "records_lost_cuts", "corrupt_accepted", "records_cuts")}
    tally["resume_s"] = []
    t0 = time.monotonic()
    print(f"badge campaign, seed {args.seed}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f", {platform.node() or 'host'} ({os.cpu_count()} cores, Python "
          f"{platform.python_version()})", flush=True)
    with tempfile.TemporaryDirectory(prefix="tccamp") as d:
        work = Path(d)
        if args.unplugs:
            unplug_campaign(args.unplugs, args.seed, work, tally)
            r = sorted(tally["resume_s"]) or [0]
            print(f"unplugs: {tally['unplugs']} ({tally['unplug_bytes']} at random byte counts, "
                  f"{tally['unplug_ack']} between commit and ack, {tally['unplug_auth']} right "
                  f"after auth), {tally['unplugs_cut']} cut a sync; {tally['records']} records", flush=True)
            print(f"  records lost: {tally['records_lost']}, duplicated: {tally['records_dup']}, "
                  f"tracing not resumed: {tally['not_resumed']} (new records within "
                  f"{r[len(r) // 2]:.0f} s median, {r[-1]:.0f} s max of virtual time)", flush=True)
            print(f"strangers: {tally['stranger_attempts']} attempts (left-over session, "
                  f"wrong and replayed MACs, flash with other firmware): "
                  f"{tally['stranger_access']} accesses", flush=True)
        if args.cuts:
            from tracecode.sim.vmbadge import vm_available

            why = vm_available()
            if why is not None:
                print(f"power cuts: skipped ({why})")
            else:
                left, k = args.cuts, 0
                while left > 0:
                    cut_run(min(100, left), args.seed * 1000 + k, work, tally)
                    left -= 100
                    k += 1
                print(f"power cuts: {tally['cuts']} on the MicroPython VM with littlefs in {k} "
                      f"runs ({tally['torn']} inside a flash write, {tally['bursts']} bursts "
                      f"of cuts seconds apart, {tally['full_cuts']} on a nearly full flash); "
                      f"{tally['records_cuts']} records", flush=True)
                print(f"  completed records lost: {tally['records_lost_cuts']}, corrupt "
                      f"accepted: {tally['corrupt_accepted']}, boot failures: "
                      f"{tally['boot_failures']}", flush=True)
    wall = time.monotonic() - t0
    print(f"wall time: {wall:.0f} s")
    bad = (tally["records_lost"] + tally["records_dup"] + tally["not_resumed"]
           + tally["db_not_ok"] + tally["stranger_access"] + tally["records_lost_cuts"]
           + tally["corrupt_accepted"] + tally["boot_failures"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
