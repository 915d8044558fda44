"""Station subcommands: flash, sync, diagnose, status, unlock, update, db."""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import DeviceError, InputError, TraceCodeError
from . import ports as portmod
from .db import Database, default_path


# ---------------------------------------------------------------------------- helpers
def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None,
                   help="station database (default: $TRACECODE_DB or ./tracecode.sqlite)")


def _add_ports(p: argparse.ArgumentParser, parallel: bool = True) -> None:
    p.add_argument("-p", "--port", action="append", default=None, metavar="PORT",
                   help="device path or pyserial URL (socket://HOST:PORT); repeatable; "
                        "default: every badge found by USB VID/PID")
    if parallel:
        p.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="serve N badges at a time (default 1: one after another)")


def _db_path(args) -> Path:
    return Path(args.db) if args.db else default_path()


def Progress(enabled: bool):
    """One live line per badge on a terminal (stderr); summaries only otherwise."""
    from ..progress import BadgeLines
    return BadgeLines(enabled)


def _serve(ports, parallel: int, job):
    """Run job(port) for every port, N at a time; returns [(port, result | exception)]."""
    def one(p):
        try:
            return p, job(p)
        except TraceCodeError as exc:
            return p, exc
    if parallel <= 1 or len(ports) <= 1:
        return [one(p) for p in ports]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, ports))


def _fmt_time(t) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(t))) + "Z"


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------------------- flash
def _parse_config(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if item.startswith("{"):
            try:
                out.update(json.loads(item))
            except ValueError:
                raise InputError(f"--config {item!r} is not a JSON object") from None
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--config {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _firmware_limits(firmware_dir: Path) -> tuple[dict, dict] | None:
    """DEFAULTS and LIMITS of the firmware about to be installed (its tcbadge/config.py, read
    as data), so a bad --config is refused before any badge is touched; None if unknown."""
    import ast
    try:
        tree = ast.parse((firmware_dir / "tcbadge" / "config.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and node.targets[0].id in ("DEFAULTS", "LIMITS"):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                return None
    if set(found) != {"DEFAULTS", "LIMITS"}:
        return None
    return found["DEFAULTS"], found["LIMITS"]


def _check_config(config: dict, firmware_dir: Path) -> None:
    known = _firmware_limits(firmware_dir)
    if known is None or not config:
        return
    defaults, limits = known
    merged = dict(defaults)
    for key, value in config.items():
        if key not in limits:
            raise InputError(f"--config {key}: unknown setting (known: {', '.join(sorted(limits))})")
        lo, hi = limits[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InputError(f"--config {key}={value!r}: must be an integer in {lo}..{hi}")
        merged[key] = value
    if {"scan_window_ms", "scan_every_s"} <= set(merged) and (
            merged["scan_window_ms"] >= merged["scan_every_s"] * 1000):
        raise InputError(f"--config: scan_window_ms ({merged['scan_window_ms']}) must be shorter "
                         f"than scan_every_s ({merged['scan_every_s']} s)")


ESP_IMAGE_MAGIC = 0xE9


def _check_image(image: Path) -> None:
    """A MicroPython release .bin starts with an ESP image header (magic 0xE9, segment count,
    SPI mode/size); anything else (a README, a zip, an ELF) is refused before esptool runs."""
    if not image.is_file():
        raise InputError(f"image file missing: {image}")
    with open(image, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[0] != ESP_IMAGE_MAGIC or not 1 <= head[1] <= 16:
        raise InputError(f"{image} is not an ESP32 firmware image (no ESP image header; expected "
                         "a MicroPython .bin from micropython.org/download)")


def cmd_flash(args) -> int:
    from . import flasher

    if args.image:
        _check_image(Path(args.image))
    if args.board is None:
        args.board = _board_from_db(args)
    board = flasher.Board.load(args.board, Path(args.boards_dir))
    opts = flasher.FlashOptions(
        board=board, image=Path(args.image) if args.image else None, erase=not args.no_erase,
        skip_image=args.skip_image, firmware_dir=Path(args.firmware_dir),
        aioble_dir=Path(args.aioble_dir) if args.aioble_dir else None,
        aioble_mip=not args.no_aioble, badge_id=args.badge_id,
        config=_parse_config(args.config), reprovision=args.reprovision, baud=args.baud,
        lock=not args.unlocked, require_secure=args.require_secure)
    _check_config(opts.config, opts.firmware_dir)
    ports = portmod.resolve(args.port)
    if args.badge_id and len(ports) > 1:
        raise InputError("--badge-id names one badge; give a single --port")
    if args.dry_run:
        plans = []
        with _DryDb(_db_path(args)) as db:
            for p in ports:
                plans.append({"port": p.device, "virtual": p.is_virtual, "steps": [
                    {"kind": step.kind, "text": step.text}
                    for step in flasher.plan(p, opts, db, {})]})
        if args.json:
            from ..cli import print_json
            print_json({"dry_run": True, "board": board.name, "database": str(_db_path(args)),
                        "badges": plans})
            return 0
        for plan in plans:
            print(f"# {plan['port']}" + (" (virtual badge)" if plan["virtual"] else ""))
            for i, step in enumerate(plan["steps"], 1):
                print(f"{i:2d}. [{step['kind']}] {step['text']}")
        return 0
    results = []
    Database(_db_path(args), create=True).close()   # create / migrate once, before workers
    with Progress(not args.json) as prog:
        def job(p):
            line = prog.line(p.device, unit="steps")
            with Database(_db_path(args), check="none") as db:
                def on_step(i, n, step):
                    line(f"[{step.kind}] {step.text}"[:60], i + 1, n)
                return flasher.flash_badge(p, opts, db, on_step=on_step)
        results = _serve(ports, args.parallel, job)
    return _report(results, args, lambda r: f"{r['port']}: flashed badge {r['badge_id']} "
                                            f"({r['board']})" + "".join(
                                                f"\n  warning: {w}" for w in r["warnings"]))


def _board_from_db(args) -> str:
    path = _db_path(args)
    boards = set()
    if path.is_file() and args.port:
        with Database(path, create=False) as db:
            for b in db.badges():
                if b["last_port"] in args.port:
                    boards.add(b["board"])
    if len(boards) == 1:
        return boards.pop()
    from ..resources import board_names
    raise InputError("which board? pass --board NAME (known: " + ", ".join(board_names()) + ")",
                     hint="it is read from the station database only for a badge it has seen "
                          "on that --port")


def cmd_devs(args) -> int:
    """Badges attached over USB (by VID/PID), like `mpremote devs`; known ones with their id."""
    found = portmod.detect()
    known: dict[str, dict] = {}
    path = _db_path(args)
    if path.is_file():
        with Database(path, create=False) as db:
            for b in db.badges():
                if b["last_port"]:
                    known[b["last_port"]] = {"badge_id": b["badge_id"], "board": b["board"]}
    rows = [{"port": p.device, "kind": p.description, "serial_number": p.serial_number,
             **known.get(p.device, {"badge_id": None, "board": None})} for p in found]
    if args.json:
        from ..cli import print_json
        print_json({"devices": rows})
        return 0
    for r in rows:
        print(f"{r['port']}  {r['kind']}  {r['serial_number'] or '-'}  "
              + (f"badge {r['badge_id']} ({r['board']})" if r["badge_id"] else "not in the database"))
    if not rows:
        print("no badge found on USB (CP210x, CH34x, FTDI or Espressif USB serial)", file=sys.stderr)
    return 0


class _DryDb:
    """What --dry-run shows of the database: its path only; nothing is opened or written."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _report(results, args, fmt) -> int:
    failed = [(p, r) for p, r in results if isinstance(r, Exception)]
    if args.json:
        from ..cli import print_json
        print_json([r.as_dict() if hasattr(r, "as_dict") else r
                    if not isinstance(r, Exception) else
                    {"port": p.device, "ok": False, "error": str(r)} for p, r in results])
    else:
        for p, r in results:
            if not isinstance(r, Exception):
                print(fmt(r))
    if len(results) == 1 and failed:
        raise failed[0][1]
    for p, r in failed:
        print(f"tracecode: error: {r}", file=sys.stderr)
    return 4 if failed else 0


# ---------------------------------------------------------------------------- sync
def _sync_line(r) -> str:
    drift = "-" if r.drift_s is None else f"{r.drift_s:+.0f} s"
    cov = r.coverage or {}
    gaps = len(cov.get("gaps") or [])
    text = (f"{r.port}: badge {r.badge_id}: {r.records_new} new, {r.records_dup} already synced, "
            f"{r.crc_errors} bad CRC; clock drift {drift}; battery "
            f"{'-' if r.battery_pct is None else str(r.battery_pct) + '%'}; flash free "
            f"{_fmt_bytes(r.flash_free)} of {_fmt_bytes(r.flash_total)}; log "
            f"{_fmt_time(cov.get('first'))} .. {_fmt_time(cov.get('last'))}, {gaps} gap(s); "
            f"{r.payload_bytes} B at {r.throughput / 1024:.1f} KiB/s, payload/wire "
            f"{r.ratio:.2f}")
    if r.health_set:
        text += f"; health code -> {r.health_set}"
    for w in r.warnings:
        text += f"\n  warning: {w}"
    if r.running is False:
        text += "\n  warning: the badge reports its firmware was not running"
    return text


def cmd_sync(args) -> int:
    from .sync import sync_badge

    path = _db_path(args)
    Database(path, create=False).close()   # checked and migrated once, before the workers
    ports = portmod.resolve(args.port)
    with Progress(not args.json) as prog:
        def job(p):
            with Database(path, create=False, check="none") as db:
                return sync_badge(db, p.device, progress=prog.line(p.device),
                                  baudrate=args.baud)
        results = _serve(ports, args.parallel, job)
    return _report(results, args, _sync_line)


# ---------------------------------------------------------------------------- diagnose
def _find_badge_port(db: Database, badge_id: str, given: list[str] | None) -> str:
    if given:
        if len(given) > 1:
            raise InputError("diagnose serves one badge: give a single --port")
        return given[0]
    row = db.badge(badge_id)
    last = row["last_port"] if row is not None else None
    if last and (last.startswith(portmod.URL_SCHEMES) or Path(last).exists()):
        return last   # where the station last saw this badge (a wrong one is refused by id)
    found = portmod.detect()
    if len(found) == 1:
        return found[0].device
    if not found:
        raise DeviceError("no badge found on USB", hint="pass --port")
    raise InputError("several badges attached: pass --port for badge " + badge_id)


def _check_diagnose_inputs(args) -> None:
    """Everything that can be checked before a badge or the wearer is involved."""
    if args.keyserver:
        if not args.keyserver.startswith(("http://", "https://")):
            raise InputError(f"--keyserver {args.keyserver!r}: not an http(s) URL")
        if args.code:
            try:
                from ..keyserver.store import _CODE_ALPHABET, _CODE_LEN, normalize_code
            except ImportError:
                pass
            else:
                norm = normalize_code(args.code)
                if len(norm) != _CODE_LEN or any(ch not in _CODE_ALPHABET for ch in norm):
                    raise InputError(f"--code: not a verification code (expected {_CODE_LEN} "
                                     "characters like XXXX-XXXX-XXXX from `tracecode keyserver "
                                     "issue-code`)")
        import urllib.error
        import urllib.request
        try:   # any HTTP answer will do: the server is there
            urllib.request.urlopen(args.keyserver.rstrip("/") + "/index.txt", timeout=5).close()
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError, ValueError) as exc:
            from ..errors import NetworkError
            raise NetworkError(f"key server unreachable: {args.keyserver} "
                               f"({getattr(exc, 'reason', exc)})",
                               hint="checked before asking the wearer; nothing left the badge") from None
    if args.onset_days is not None and not -14 <= args.onset_days <= 14:
        raise InputError(f"--onset-days {args.onset_days}: must be in -14..14")
    if args.signing_key and not Path(args.signing_key).is_file():
        raise InputError(f"--signing-key {args.signing_key}: no such file")


def cmd_diagnose(args) -> int:
    from .diagnose import REPORT_TYPES, diagnose

    _check_diagnose_inputs(args)
    with Database(_db_path(args), create=False) as db:
        port = _find_badge_port(db, args.badge, args.port)
        result = diagnose(
            db, port, args.badge, report_type=REPORT_TYPES[args.report_type],
            onset_days=args.onset_days, out_dir=Path(args.out) if args.out else None,
            signing_key=Path(args.signing_key) if args.signing_key else None,
            keyserver=args.keyserver, code=args.code, wait_s=args.wait,
            prompt=lambda text: print(text, file=sys.stderr if args.json else sys.stdout,
                                      flush=True))
    if args.json:
        from ..cli import print_json
        print_json(result)
    else:
        print(f"badge {result['badge_id']}: {result['keys']} key(s) exported to "
              f"{result['destination']}; health code red")
    return 0


# ---------------------------------------------------------------------------- status
def _live_status(path: Path, device: str) -> dict:
    """hello + status of the badge on `device`. A locked badge answers status only after
    authentication: with the secret this station holds for it; a locked badge unknown here
    gives its hello (id, firmware) only."""
    from .link import BadgeRefused, open_link

    link = open_link(device)
    try:
        mode = "locked" if link.hello.get("locked") else "developer"
        if mode == "locked":
            with Database(path, create=False, check="none") as db:
                secret = db.secret(link.badge_id)
            if secret is None:
                return {"id": link.badge_id, "fw": link.hello.get("fw"), "mode": mode,
                        "_hello": link.hello}
            try:
                link.auth(secret)
            except BadgeRefused as exc:
                if exc.code != "auth":
                    raise
                raise DeviceError(f"{device}: badge {link.badge_id!r} refused this station: the "
                                  "pairing secret does not match") from None
        st = link.status()
        st["_hello"] = link.hello
        st["mode"] = mode
    finally:
        link.close()
    with Database(path, create=False, check="none") as db:
        if db.badge(link.badge_id) is not None:
            db.update_badge_status(link.badge_id, st, port=device)
    return st


def cmd_status(args) -> int:
    path = _db_path(args)
    live: dict[str, dict] = {}
    errors: list[str] = []
    Database(path, create=False).close()   # refuses a missing or damaged database first
    if args.port or args.live:
        for p, r in _serve(portmod.resolve(args.port), args.parallel, lambda p: _live_status(path, p.device)):
            if isinstance(r, Exception):
                errors.append(str(r))
            else:
                live[str(r.get("id") or r["_hello"].get("id"))] = dict(r, port=p.device)
    rows = []
    with Database(path, create=False, check="none") as db:
        for b in db.badges():
            bid = b["badge_id"]
            health = db.current_health(bid)
            st = live.get(bid)
            running = bool(st["running"]) if st and "running" in st else (
                None if b["running"] is None else bool(b["running"]))
            row = {
                "badge_id": bid, "board": b["board"],
                "health": health["code"] if health else None,
                "health_pending": bool(health and health["delivered_at"] is None),
                "health_shown": (st or {}).get("health", b["health_shown"]),
                "last_sync": b["last_sync"], "battery_pct": (st or {}).get("battery_pct", b["battery_pct"]),
                "battery_mv": (st or {}).get("battery_mv", b["battery_mv"]),
                "flash_free": (st or {}).get("flash_free", b["flash_free"]),
                "flash_total": (st or {}).get("flash_total", b["flash_total"]),
                "fw": (st or {}).get("fw", b["fw_version"]), "running": running,
                "encounters": db.encounter_count(bid), "diagnosed": b["diagnosed_at"] is not None,
                "attached": (st or {}).get("port"),
                "mode": (st or {}).get("mode"),
            }
            row["error"] = ("firmware not running" if (st is not None and running is False)
                            else None)
            rows.append(row)
        for bid, st in live.items():
            if db.badge(bid) is None:
                rows.append({"badge_id": bid, "attached": st["port"], "fw": st.get("fw"),
                             "running": st.get("running"), "mode": st.get("mode"),
                             "error": "unknown badge (not provisioned by this station)"})
    for r in rows:
        if r.get("error"):
            errors.append(f"badge {r['badge_id']}: {r['error']}")
    if args.json:
        from ..cli import print_json
        print_json({"badges": rows, "errors": errors})
    else:
        _status_table(rows)
        for e in errors:
            print(f"tracecode: error: {e}", file=sys.stderr)
    return 4 if errors else 0


def _status_table(rows: list[dict]) -> None:
    headers = ["badge", "health", "last sync", "battery", "flash free", "fw", "encounters",
               "state"]
    table = []
    for r in rows:
        health = r.get("health") or "-"
        if r.get("health_pending"):
            health += " (pending)"
        state = r.get("error") or ("running" if r.get("running") else
                                   "-" if r.get("running") is None else "stopped")
        if r.get("mode") == "locked":
            state += " (locked)"
        if r.get("attached"):
            state += f" @ {r['attached']}"
        table.append([r["badge_id"], health, _fmt_time(r.get("last_sync")),
                      "-" if r.get("battery_pct") is None else f"{r['battery_pct']}%",
                      _fmt_bytes(r.get("flash_free")), r.get("fw") or "-",
                      str(r.get("encounters", "-")), state])
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        t = Table(*headers)
        for row in table:
            t.add_row(*row)
        Console().print(t)
        return
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


# ---------------------------------------------------------------------------- locked badges
def _one_port(args) -> str:
    given = [args.port_pos] if args.port_pos else []
    given += args.port or []
    ports = portmod.resolve(given or None)
    if len(ports) != 1:
        raise InputError(f"{len(ports)} badges attached: name one PORT")
    return ports[0].device


def _locked_session(db: Database, port: str, what: str):
    """An authenticated LockedLink to the badge on `port`; a developer-mode badge -> None."""
    from .frames import LockedLink
    from .link import open_link
    from .sync import authenticate

    link = open_link(port)
    if not isinstance(link, LockedLink):
        link.close()
        return None
    try:
        authenticate(db, link)
    except BaseException:
        link.close()
        raise
    return link


def _wait_for_badge(port: str, want_locked: bool | None, timeout_s: float = 30.0) -> dict | None:
    """After a reset: the badge's hello once it answers again (mode and firmware), or None."""
    from .frames import LockedLink
    from .link import open_link

    deadline = time.monotonic() + timeout_s
    time.sleep(0.5)
    while time.monotonic() < deadline:
        try:
            link = open_link(port, probe_timeout_s=2.0)
        except DeviceError:
            time.sleep(0.5)
            continue
        try:
            locked = isinstance(link, LockedLink)
            hello = dict(link.hello, mode="locked" if locked else "developer")
        finally:
            link.close()
        if want_locked is None or locked == want_locked:
            return hello
        time.sleep(0.5)
    return None


def cmd_unlock(args) -> int:
    port = _one_port(args)
    with Database(_db_path(args), create=False) as db:
        link = _locked_session(db, port, "unlock")
        if link is None:
            doc = {"port": port, "unlocked": False, "mode": "developer",
                   "message": "already in developer mode (not locked): nothing to do"}
        else:
            bid = link.badge_id
            try:
                link.unlock()
            finally:
                link.close()
            after = _wait_for_badge(port, want_locked=False) if not args.no_verify else None
            doc = {"port": port, "badge_id": bid, "unlocked": True,
                   "mode": (after or {}).get("mode", "unverified" if args.no_verify else "unknown"),
                   "message": f"badge {bid} unlocked: it reset into developer mode (raw REPL "
                              "and host interface version 1; docs/hostif.md); "
                              "`tracecode flash --skip-image` locks it again, keeping its "
                              "pairing, keys and log"}
            if not args.no_verify and after is None:
                raise DeviceError(f"{port}: badge {bid} accepted the unlock but did not come "
                                  "back in developer mode within 30 s",
                                  hint="power-cycle it and run `tracecode status --port PORT`")
    if args.json:
        from ..cli import print_json
        print_json(doc)
    else:
        print(f"{port}: {doc['message']}")
    return 0


# Files a locked badge accepts in a firmware update (docs/hostif.md, PUT).
def _update_files(firmware_dir: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    from .flasher import firmware_files

    files, skipped = [], []
    for local, dest in firmware_files(firmware_dir):
        rel = dest.lstrip("/")
        top = rel.count("/") == 1 and rel.startswith("tcbadge/")
        ok = (rel in ("boot.py", "main.py") or rel.startswith("lib/") or
              (top and (rel.endswith(".py") or rel.endswith(".mpy"))))
        if ok:
            files.append((rel, local.read_bytes()))
        else:
            skipped.append(rel)
    return files, skipped


def _firmware_version(firmware_dir: Path) -> str | None:
    import re
    try:
        text = (firmware_dir / "tcbadge" / "__init__.py").read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    return m.group(1) if m else None


def cmd_update(args) -> int:
    firmware_dir = Path(args.firmware)
    if not firmware_dir.is_dir():
        raise InputError(f"--firmware {firmware_dir}: no such folder")
    files, skipped = _update_files(firmware_dir)
    if not any(p == "main.py" for p, _ in files):
        raise InputError(f"no firmware in {firmware_dir} (main.py missing)")
    want = _firmware_version(firmware_dir)
    port = _one_port(args)
    t0 = time.monotonic()
    total = sum(len(d) for _, d in files)
    with Database(_db_path(args), create=False) as db:
        link = _locked_session(db, port, "update")
        if link is None:
            raise DeviceError(f"{port}: the badge is in developer mode (not locked): install "
                              "firmware with `tracecode flash --skip-image`")
        bid, before = link.badge_id, link.hello.get("fw")
        with Progress(not args.json) as prog:
            line = prog.line(port)
            done = 0

            def on_data(n):
                nonlocal done
                done += n
                line("staging", done, total)
            try:
                link.put_files(files, on_data=on_data)
            finally:
                link.close()
            line("restarting", total, total)
            after = _wait_for_badge(port, want_locked=True)
        if after is None:
            raise DeviceError(f"{port}: badge {bid} took the firmware and reset, but did not "
                              "answer in locked mode within 30 s",
                              hint="power-cycle it; `tracecode status --port PORT` shows its state")
        if want and after.get("fw") != want:
            raise DeviceError(f"{port}: badge {bid} runs firmware {after.get('fw')} after the "
                              f"update, expected {want}")
        db.update_badge_status(bid, {"fw": after.get("fw")}, port=port)
    doc = {"port": port, "badge_id": bid, "files": len(files), "bytes": total,
           "skipped": skipped, "fw_before": before, "fw_after": after.get("fw"),
           "seconds": round(time.monotonic() - t0, 1)}
    if args.json:
        from ..cli import print_json
        print_json(doc)
    else:
        print(f"{port}: badge {bid}: firmware {before} -> {after.get('fw')} ({len(files)} files, "
              f"{_fmt_bytes(total)}, checked by SHA-256 on the badge) in {doc['seconds']} s; "
              "it is tracing again, still locked")
        for p in skipped:
            print(f"  skipped {p} (not a firmware path a badge accepts)")
    return 0


# ---------------------------------------------------------------------------- db
def _print_check(rep: dict) -> None:
    integ = rep["integrity"]
    print(f"{rep['path']}: schema version {rep['schema_version']} (expected "
          f"{rep['expected_schema_version']}), sqlite integrity "
          f"{'ok' if integ == ['ok'] else '; '.join(integ[:5]) or 'unreadable'}, "
          f"{rep['foreign_key_violations']} foreign-key violation(s), "
          f"{rep['records']} record(s), {len(rep['bad_crc'])} bad CRC, "
          f"{len(rep['bad_derived'])} with derived columns that disagree with the record, "
          f"{len(rep['missing_rows'])} day(s) with missing rows")
    for line in rep["missing_rows"][:5] + rep["errors"][:5]:
        print(f"  {line}")


def cmd_db(args) -> int:
    from .db import RECOVERY_HINT, recover
    from ..cli import print_json

    path = _db_path(args)
    if args.db_command == "init":
        if path.exists():
            raise InputError(f"{path} exists; `db init` makes a new database only",
                             hint="`tracecode db check` inspects it")
        with Database(path, create=True) as db:
            doc = {"database": str(db.path), "schema_version": db.schema_version}
        print_json(doc) if args.json else print(f"{path}: new station database "
                                                f"(schema version {doc['schema_version']})")
        return 0
    if args.db_command == "recover":
        doc = recover(path, Path(args.out))
        if args.json:
            print_json(doc)
        else:
            print(f"{args.out}: salvaged from {path}: " + ", ".join(
                f"{n} {t}" for t, n in doc["tables"].items()) + f"; {doc['bad_records']} "
                f"record(s) failed their CRC; {doc['acknowledged_records_lost']} record(s) "
                "acknowledged by badges are lost; sync every badge now to pull the rest again")
        return 0
    if args.db_command == "check":
        # No quick check on open: the full check below reports everything it finds.
        with Database(path, create=False, check="none", readonly=True) as db:
            rep = db.check()
        if args.json:
            print_json(rep)
        else:
            _print_check(rep)
        if not rep["ok"]:
            why = (rep["errors"][:1] or [f"SQLite integrity_check: {'; '.join(rep['integrity'][:2])}"]
                   if rep["integrity"] != ["ok"] or rep["errors"] else
                   [f"{len(rep['bad_crc'])} record(s) fail their CRC"] if rep["bad_crc"] else
                   [f"{len(rep['bad_derived'])} record(s) whose columns disagree with the raw "
                    "record"] if rep["bad_derived"] else rep["missing_rows"][:1] or
                   [f"{rep['foreign_key_violations']} foreign-key violation(s)"]
                   if rep["foreign_key_violations"] else
                   [f"schema version {rep['schema_version']}, expected "
                    f"{rep['expected_schema_version']}"])[0]
            raise InputError(f"station database {path} is damaged: {' '.join(str(why).split())}"
                             " (full check failed)", hint=RECOVERY_HINT.format(path=path))
        return 0
    with Database(path, create=False) as db:
        if args.db_command == "backup":
            out = Path(args.out) if args.out else path.with_name(
                f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
            db.backup(out)
            doc = {"database": str(path), "backup": str(out), "bytes": out.stat().st_size}
            print_json(doc) if args.json else print(f"{path}: backed up to {out} "
                                                    f"({_fmt_bytes(doc['bytes'])})")
            return 0
        if args.db_command == "set-health":
            hid = db.set_health_code(args.badge, args.code, args.reason or "set by hand")
            if args.json:
                print_json({"badge_id": args.badge, "code": args.code, "health_id": hid,
                            "delivered": False})
            else:
                print(f"badge {args.badge}: health code {args.code} queued for the next sync")
            return 0
    return 2


# ---------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from . import report

    with Database(_db_path(args), create=False) as db:
        doc = report.build(db, overdue_hours=args.overdue_hours,
                           low_battery_pct=args.low_battery)
        if args.json:
            from ..cli import print_json
            print_json(doc)
            return 0
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.render_html(db, doc))
    s = doc["summary"]
    print(f"{out}: {s['badges']} badge(s), {s['red']} red, {s['yellow']} yellow, "
          f"{s['undelivered']} code(s) not yet delivered, {s['needs_attention']} needing attention")
    return 0


# ---------------------------------------------------------------------------- register
def register(sub) -> None:
    p = sub.add_parser("flash", help="write MicroPython, install the firmware, provision badges")
    _add_ports(p)
    _add_db(p)
    p.add_argument("--board", default=None,
                   help="board profile name (boards/<name>.json); default: the board the "
                        "station database has for the badge last seen on that port")
    p.add_argument("--image", help="MicroPython firmware image (.bin) for the board's chip")
    p.add_argument("--no-erase", action="store_true", help="do not erase the flash first")
    p.add_argument("--skip-image", action="store_true",
                   help="only install the firmware files and provision")
    p.add_argument("--firmware-dir", default=str(__import__(
        "tracecode.station.flasher", fromlist=["x"]).DEFAULT_FIRMWARE_DIR))
    p.add_argument("--boards-dir", default=str(__import__(
        "tracecode.station.flasher", fromlist=["x"]).DEFAULT_BOARDS_DIR))
    p.add_argument("--aioble-dir", help="install aioble from this local folder")
    p.add_argument("--no-aioble", action="store_true", help="do not try `mip install aioble`")
    p.add_argument("--badge-id", help="badge id to provision (default: the badge's own)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE|JSON",
                   help="badge configuration (tx_power_dbm, scan_every_s, ...); repeatable")
    p.add_argument("--reprovision", action="store_true",
                   help="wipe a badge paired with another station (its keys and log too)")
    p.add_argument("--unlocked", action="store_true",
                   help="provision in developer mode: raw REPL and mpremote stay open (default: "
                        "locked, only the paired station gets in, over protocol 2)")
    p.add_argument("--require-secure", action="store_true",
                   help="read the chip's security state with esptool and refuse a chip without "
                        "flash encryption before anything is written")
    p.add_argument("--baud", type=int, default=460800, help="esptool baud rate")
    p.add_argument("--dry-run", action="store_true", help="print every step, touch nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("sync", help="pull new log data from badges, set clocks and health codes")
    _add_ports(p)
    _add_db(p)
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate (USB-UART)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("diagnose", help="export a diagnosed wearer's keys after button consent")
    _add_ports(p, parallel=False)
    _add_db(p)
    p.add_argument("--badge", required=True, metavar="ID")
    from .diagnose import REPORT_TYPES
    p.add_argument("--report-type", choices=sorted(REPORT_TYPES), default="confirmed-test")
    p.add_argument("--onset-days", type=int, default=None,
                   help="days from symptom onset to today (omit if unknown)")
    p.add_argument("--out", metavar="DIR", help="write a signed export batch here")
    p.add_argument("--signing-key", metavar="PEM", help="private key signing the batch")
    p.add_argument("--keyserver", metavar="URL", help="upload to this key server instead")
    p.add_argument("--code", help="the wearer's one-time verification code (with --keyserver)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds the badge waits for its button (default 60)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("status", help="badges: health code, last sync, battery, storage, firmware")
    _add_ports(p)
    _add_db(p)
    p.add_argument("--live", action="store_true",
                   help="also query every attached badge (implied by --port)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "unlock", help="maintenance unlock of a locked badge by its paired station",
        description="Unlock a locked badge (protocol version 2) for maintenance: the station "
                    "authenticates with the pairing secret in its database, sends UNLOCK, and "
                    "the badge resets into developer mode (raw REPL, host interface version 1) "
                    "-- keeping its pairing, keys and log. `tracecode flash --skip-image` "
                    "locks it again. A badge already in developer mode is left alone.")
    p.add_argument("port_pos", nargs="?", metavar="PORT",
                   help="device path or socket://HOST:PORT (default: the one attached badge)")
    p.add_argument("-p", "--port", action="append", default=None, help=argparse.SUPPRESS)
    _add_db(p)
    p.add_argument("--no-verify", action="store_true",
                   help="do not wait for the badge to come back in developer mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser(
        "update", help="firmware update of a locked badge over the locked protocol",
        description="Install firmware files on a locked badge without unlocking it: each file "
                    "is staged on the badge (PUT), then COMMIT checks every size and SHA-256 on "
                    "the badge, moves the files into place and resets; a failed check changes "
                    "nothing. Logs, keys and pairing are kept; the badge stays locked. The "
                    "command waits for the badge to answer again and checks its version.")
    p.add_argument("port_pos", nargs="?", metavar="PORT",
                   help="device path or socket://HOST:PORT (default: the one attached badge)")
    p.add_argument("-p", "--port", action="append", default=None, help=argparse.SUPPRESS)
    _add_db(p)
    p.add_argument("--firmware", required=True, metavar="DIR",
                   help="firmware folder (boot.py, main.py, tcbadge/, optional lib/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("report", help="operator report from the station database: who to "
                                      "notify, delivery, overdue or low badges (HTML or --json)")
    _add_db(p)
    p.add_argument("--out", default="station-report.html", metavar="FILE",
                   help="HTML file to write (default %(default)s)")
    p.add_argument("--overdue-hours", type=float, default=36.0, metavar="H",
                   help="a badge not synced for this long is overdue (default %(default)g)")
    p.add_argument("--low-battery", type=int, default=20, metavar="PCT",
                   help="battery below this is low (default %(default)s%%)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("devs", help="list badges attached over USB (like `mpremote devs`)")
    _add_db(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devs)

    p = sub.add_parser("db", help="station database maintenance")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="full check: SQLite integrity, record CRCs, derived columns, missing rows, schema version")
    _add_db(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_db)
    c = dsub.add_parser("set-health", help="queue a health code for a badge's next sync")
    _add_db(c)
    c.add_argument("badge")
    c.add_argument("code", choices=("green", "yellow", "red"))
    c.add_argument("--reason", default="")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_db)
    c = dsub.add_parser("init", help="create a new, empty station database")
    _add_db(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_db)
    c = dsub.add_parser("backup", help="copy the database with SQLite's online backup API")
    _add_db(c)
    c.add_argument("--out", metavar="FILE", help="backup file (default: DB.<time>.bak next to it)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_db)
    c = dsub.add_parser("recover", help="salvage a damaged database into a new file "
                                        "(then sync every badge)")
    _add_db(c)
    c.add_argument("--out", metavar="FILE", required=True, help="the new database")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_db)
