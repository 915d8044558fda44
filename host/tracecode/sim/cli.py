"""`tracecode sim badge` (one interactive virtual badge) and `tracecode sim run SCENARIO`."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from ..errors import InputError

REPO_ROOT = __import__("tracecode.resources").resources.data_root()


def register(subparsers) -> None:
    p = subparsers.add_parser("sim", help="virtual badges: one interactive badge, or a scenario fleet")
    sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    b = sub.add_parser("badge", help="run one virtual badge in real time with a serial console")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--port-socket", type=int, metavar="N", default=None,
                       help="serve the console on 127.0.0.1:N (default: a free port)")
    where.add_argument("--pty", action="store_true", help="serve the console on a pseudo-terminal")
    b.add_argument("--flash", metavar="DIR", help="flash folder (kept; default: a temporary one)")
    b.add_argument("--firmware", metavar="DIR", help="copy this firmware folder (boot.py, main.py, "
                   "packages) onto the flash first")
    b.add_argument("--board", default="esp32-devkitc", help="board profile from boards/ (default %(default)s)")
    b.add_argument("--id", default="badge", metavar="NAME",
                   help="the badge's name; its hardware id (machine.unique_id, and so the id it "
                        "reports before provisioning) derives from it (default %(default)s)")
    b.add_argument("--flash-size", type=int, default=2 * 1024 * 1024, metavar="BYTES")
    b.add_argument("--set-clock", action="store_true",
                   help="set the RTC to the host's time at power-on (default: never set, 2000-01-01)")
    b.add_argument("--baud", type=int, default=None, help="throttle the link to BAUD/10 bytes/s")
    b.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    b.set_defaults(func=cmd_badge)

    register_bench(sub)

    r = sub.add_parser(
        "run", help="play a scenario through the whole pipeline (or, with --radio-only, just the fleet)",
        description="Without --radio-only: virtual badges are flashed and provisioned by the station "
                    "code, live the scenario's days, are synced nightly; the diagnosed consent and "
                    "upload to a local key server; batches are published and matched; health codes "
                    "go back to the badges; precision/recall against the scenario's ground truth and "
                    "a PNG/HTML report come out (tracecode.e2e). With --radio-only: the fleet runs in "
                    "virtual time and a per-badge radio summary is printed.")
    r.add_argument("scenario", help="scenario file (YAML or JSON, see docs/sim.md and docs/e2e.md), "
                                    "or the name of a shipped one (office, bus, two-badges, ...)")
    r.add_argument("--radio-only", action="store_true",
                   help="only run the fleet in virtual time and summarise adverts, scans and records")
    try:
        from ..e2e import cli as e2e_cli
    except ImportError:
        e2e_cli = None
    if e2e_cli is not None:
        e2e_cli.add_pipeline_options(r, out="out/sim", mode="fleet")
    else:
        r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--workdir", metavar="DIR", help="--radio-only: keep the badges' flash folders here")
    r.add_argument("--firmware", metavar="DIR", help="--radio-only: firmware folder (default: the scenario's)")
    r.add_argument("--duration", metavar="T", help="--radio-only: override the scenario duration (e.g. 2h, 1d)")
    r.set_defaults(func=cmd_run)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_badge(args) -> int:
    from .fleet import Fleet

    check_badge_name(args.id, "--id")
    flash = Path(args.flash) if args.flash else None
    tmp = None
    if flash is None:
        tmp = tempfile.TemporaryDirectory(prefix="tcsim-badge-")
        flash = Path(tmp.name) / "flash"
    if args.firmware and not (Path(args.firmware) / "main.py").is_file():
        raise InputError("firmware folder %s has no main.py" % args.firmware)
    __import__("tracecode.resources").resources.board_file(args.board)   # unknown board: exit 2
    fleet = Fleet(flash.parent, realtime=True, start_unix=time.time())
    try:
        badge = fleet.add_badge(args.id, flash_dir=flash, firmware_dir=args.firmware,
                                board=args.board, flash_size=args.flash_size)
        if args.baud:
            badge.console.throttle(args.baud / 10)
        if args.pty:
            where = badge.console_pty()
        else:
            try:
                where = badge.console_url(args.port_socket or 0)
            except OSError as e:
                raise InputError("can't listen on 127.0.0.1:%s: %s" % (args.port_socket, e.strerror)) from None
        badge.power_on()
        if args.set_clock:
            badge.set_clock(time.time())
        print("virtual badge %s (id tc-%s) running (flash: %s)" % (args.id, badge.unique_id.hex(), flash))
        print("connect with:  mpremote connect %s" % where)
        if where.startswith("socket://"):
            print("          or:  python -m serial.tools.miniterm %s" % where)
        print("Ctrl-C here stops the badge.", flush=True)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopped")
    finally:
        fleet.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


def check_badge_name(name: str, what: str) -> None:
    import re
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", name or ""):
        raise InputError("%s %r: 1-32 of [A-Za-z0-9_.-]" % (what, name))


def cmd_run(args) -> int:
    if not args.radio_only:
        try:
            from ..e2e import cli as e2e_cli
        except ImportError:
            raise InputError("the end-to-end pipeline (tracecode.e2e) is not installed; "
                             "use --radio-only") from None
        args.scenarios = [args.scenario]
        return e2e_cli.run(args)
    return cmd_radio_only(args)


def cmd_radio_only(args) -> int:
    from ..cli import print_json
    from ..progress import virtual_time_bar
    from ..resources import scenario_file
    from .scenario import load_scenario, parse_duration

    sc = load_scenario(scenario_file(args.scenario))   # a path, or a shipped scenario by name
    if args.duration:
        sc.duration = parse_duration(args.duration, "--duration")
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tcsim-run-")
        workdir = tmp.name
    try:
        # a bar of simulated time on stderr when it is a terminal; nothing otherwise
        with virtual_time_bar("simulating %s" % sc.name, sc.duration,
                              enabled=None if not args.json else False) as update:
            res = sc.run(workdir, firmware_dir=args.firmware, step=min(900.0, sc.duration),
                         progress=lambda t, total: update(t))
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print_json(res)
        return 0
    _print_summary(res)
    return 0


def _print_summary(res: dict) -> None:
    print("scenario %s: %.1f simulated hours in %.1f s wall (%d events)" % (
        res["scenario"], res["simulated_seconds"] / 3600, res["wall_seconds"], res["events"]))
    cols = ("badge", "adverts", "scans", "scan_results", "records_logged", "boots", "flash_free")
    rows = [[str(b[c]) for c in cols] for b in res["badges"]]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        t = Table(*cols)
        for r in rows:
            t.add_row(*r)
        Console().print(t)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


# ---------------------------------------------------------------------------- sim bench
BENCH_HELP = """commands (type them here, send them to the control socket, or append them to --control-file):
  press ID [AFTER_S [HOLD_S]]   press badge ID's button AFTER_S s from now (default 0), hold HOLD_S s (default 1)
  move ID X Y                   move badge ID to (X, Y) metres, where it stays
  status                        one line per badge: id, port, position, scans, RPIs heard, health code
  quit                          stop the bench
ID is a bench name (badge1) or the id the badge reports (tc-...)."""


def register_bench(sub) -> None:
    n = sub.add_parser(
        "bench", help="N virtual badges on one shared radio, each with its own serial console, "
                      "a live status line and a command channel (press, move)",
        description="A virtual test bench in real time: N badges in one fleet (names badge1..N, "
                    "distinct hardware ids), one radio, each with its own serial console (a "
                    "socket:// URL or a pty) for `tracecode flash|sync|diagnose|status` and "
                    "mpremote. Badges start unprovisioned with the firmware copied on, 1 m apart "
                    "on a line.\n\n" + BENCH_HELP,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    n.add_argument("count", type=int, metavar="N", help="number of badges (1-50)")
    n.add_argument("--firmware", metavar="DIR", help="firmware folder copied onto each badge "
                   "(default: the shipped firmware)")
    n.add_argument("--board", default="esp32-devkitc", help="board profile (default %(default)s)")
    n.add_argument("--backend", choices=("vm", "imitation"), default=None,
                   help="vm: the real MicroPython VM; imitation: MicroPython semantics on CPython "
                        "(default: $TRACECODE_SIM_BACKEND, else imitation)")
    n.add_argument("--spacing", type=float, default=1.0, metavar="M",
                   help="distance between neighbouring badges in metres (default %(default)g)")
    where = n.add_mutually_exclusive_group()
    where.add_argument("--base-port", type=int, default=0, metavar="P",
                       help="serve badge i's console on 127.0.0.1:P+i-1 (default: free ports)")
    where.add_argument("--pty", action="store_true", help="serve the consoles on pseudo-terminals")
    n.add_argument("--control", type=int, default=0, metavar="PORT",
                   help="control socket on 127.0.0.1:PORT, one command per line (default: a free port)")
    n.add_argument("--control-file", metavar="FILE",
                   help="also read commands appended to FILE (emptied at start)")
    n.add_argument("--workdir", metavar="DIR", help="keep the badges' flash here (default: a temporary folder)")
    n.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    n.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: the bench first, then one answer per command")
    n.set_defaults(func=cmd_bench)


class Bench:
    """The badges of `tracecode sim bench` and the commands that act on them (any thread)."""

    def __init__(self, fleet, names: list[str], ports: dict[str, str]):
        self.fleet = fleet
        self.names = names
        self.ports = ports
        self.ids = {name: "tc-" + fleet.badges[name].unique_id.hex() for name in names}
        self.stop = __import__("threading").Event()

    def badge(self, ident: str):
        for name in self.names:
            if ident == name or ident == self.ids[name]:
                return name, self.fleet.badges[name]
        raise ValueError("no badge %r (badges: %s)" % (ident, ", ".join(self.names)))

    def press(self, b, after: float, hold: float) -> None:
        """Hold the button down from now+after for `hold` s. The level is asserted again every
        0.25 s while held: a badge that reboots meanwhile (a station's soft reset) still finds
        it down, as a real finger on a real button would leave it."""
        b.press_button(after=after, duration=hold)
        if not hasattr(b, "_drive"):
            return
        pin, active = b.button()
        t0 = self.fleet.clock() + after
        k = 1
        while k * 0.25 < hold - 0.05:
            self.fleet.schedule(t0 + k * 0.25, b._drive, pin, active)
            k += 1

    def health(self, b) -> str | None:
        try:
            if hasattr(b.flash, "root"):
                f = Path(b.flash.root) / "tc" / "health.txt"
                return f.read_text().strip() if f.is_file() else None
            return b.flash.read("/tc/health.txt").decode().strip() or None
        except Exception:   # noqa: BLE001 - no file yet, or a VM flash being written
            return None

    def status(self) -> list[dict]:
        out = []
        for name in self.names:
            b = self.fleet.badges[name]
            x, y = b.position()
            st = b.radio.stats
            out.append({"badge": name, "id": self.ids[name], "port": self.ports[name],
                        "position": [round(x, 2), round(y, 2)], "powered": bool(b.powered),
                        "scans": int(st.get("scans", 0)), "heard": int(st.get("scan_results", 0)),
                        "health": self.health(b)})
        return out

    def status_line(self) -> str:
        parts = []
        for name in self.names:
            b = self.fleet.badges[name]
            x, y = b.position()
            st = b.radio.stats
            parts.append("%s (%g,%g) %d scans %d heard" % (name, round(x, 1), round(y, 1),
                                                        st.get("scans", 0), st.get("scan_results", 0)))
        return "t=%ds  " % self.fleet.clock() + " | ".join(parts)

    def command(self, line: str) -> dict:
        """Run one command line; returns {"ok": bool, ...} (never raises)."""
        words = line.split()
        if not words:
            return {"ok": True, "command": ""}
        cmd, rest = words[0].lower(), words[1:]
        try:
            if cmd == "press" and 1 <= len(rest) <= 3:
                name, b = self.badge(rest[0])
                after = float(rest[1]) if len(rest) > 1 else 0.0
                hold = float(rest[2]) if len(rest) > 2 else 1.0
                if after < 0 or hold <= 0:
                    raise ValueError("press: AFTER_S must be >= 0 and HOLD_S > 0")
                self.press(b, after, hold)
                return {"ok": True, "command": "press", "badge": name, "after_s": after, "hold_s": hold}
            if cmd == "move" and len(rest) == 3:
                name, b = self.badge(rest[0])
                x, y = float(rest[1]), float(rest[2])
                self.fleet.call_soon(b.move, x, y)
                return {"ok": True, "command": "move", "badge": name, "position": [x, y]}
            if cmd == "status" and not rest:
                return {"ok": True, "command": "status", "badges": self.status()}
            if cmd in ("quit", "exit") and not rest:
                self.stop.set()
                return {"ok": True, "command": "quit"}
            raise ValueError("can't read %r" % line.strip())
        except ValueError as e:
            return {"ok": False, "command": cmd, "error": str(e)}


def _bench_text(res: dict) -> str:
    if not res["ok"]:
        return "error: " + res["error"]
    c = res["command"]
    if c == "press":
        return "ok: %s's button pressed in %g s for %g s" % (res["badge"], res["after_s"], res["hold_s"])
    if c == "move":
        return "ok: %s moved to (%g, %g)" % (res["badge"], *res["position"])
    if c == "status":
        return "\n".join("%-8s %-16s %-26s at (%g, %g)  %d scans, %d RPIs heard, health %s" % (
            b["badge"], b["id"], b["port"], b["position"][0], b["position"][1], b["scans"],
            b["heard"], b["health"] or "-") for b in res["badges"])
    return "ok" if c else ""


def cmd_bench(args) -> int:
    import json
    import socket
    import threading

    from .. import resources
    from .fleet import Fleet

    if not 1 <= args.count <= 50:
        raise InputError("sim bench N: N must be 1..50")
    if args.spacing < 0:
        raise InputError("--spacing: must be >= 0")
    fw = Path(args.firmware) if args.firmware else resources.firmware_dir()
    if not (fw / "main.py").is_file():
        raise InputError("firmware folder %s has no main.py" % fw)
    resources.board_file(args.board)                         # unknown board: exit 2
    if args.base_port and not 1024 <= args.base_port <= 65535 - args.count:
        raise InputError("--base-port %d: must be in 1024..%d" % (args.base_port, 65535 - args.count))
    ctl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        ctl.bind(("127.0.0.1", args.control))
    except OSError as e:
        ctl.close()
        raise InputError("--control: can't listen on 127.0.0.1:%d: %s" % (args.control, e.strerror)) from None
    ctl.listen(4)
    ctl_file = Path(args.control_file) if args.control_file else None
    if ctl_file is not None:
        try:
            ctl_file.write_text("")
        except OSError as e:
            ctl.close()
            raise InputError("--control-file %s: %s" % (ctl_file, e.strerror)) from None
    tmp = None
    workdir = Path(args.workdir) if args.workdir else None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tcsim-bench-")
        workdir = Path(tmp.name)
    try:
        fleet = Fleet(workdir, realtime=True, start_unix=time.time(), backend=args.backend)
    except ValueError as e:
        ctl.close()
        raise InputError(str(e)) from None
    out_lock = threading.Lock()
    live = sys.stderr.isatty() and not args.json

    def say(text: str) -> None:
        with out_lock:
            if live:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
            print(text, flush=True)

    try:
        names = ["badge%d" % i for i in range(1, args.count + 1)]
        ports: dict[str, str] = {}
        for i, name in enumerate(names):
            b = fleet.add_badge(name, flash_dir=workdir / name / "flash", firmware_dir=fw,
                                board=args.board, position=(i * args.spacing, 0.0))
            if args.pty:
                ports[name] = b.console_pty()
            else:
                port = args.base_port + i if args.base_port else 0
                try:
                    ports[name] = b.console_url(port)
                except OSError as e:
                    raise InputError("can't listen on 127.0.0.1:%d: %s" % (port, e.strerror)) from None
        fleet.power_on_all()
        bench = Bench(fleet, names, ports)
        ctl_addr = "127.0.0.1:%d" % ctl.getsockname()[1]
        if args.json:
            say(json.dumps({"bench": {"badges": [
                {"badge": n, "id": bench.ids[n], "port": ports[n], "position": [i * args.spacing, 0.0]}
                for i, n in enumerate(names)], "control": ctl_addr,
                "control_file": str(ctl_file) if ctl_file else None, "workdir": str(workdir),
                "backend": fleet.backend}}))
        else:
            lines = ["virtual bench: %d badge(s) on one radio, %g m apart, real time (backend %s, "
                     "flash in %s)" % (len(names), args.spacing, fleet.backend, workdir)]
            for i, n in enumerate(names):
                lines.append("  %-8s id %-16s %-26s at (%g, 0)" % (n, bench.ids[n], ports[n], i * args.spacing))
            lines.append("unprovisioned: `tracecode flash --skip-image -p PORT ...` each port first")
            lines.append("control socket: %s%s" % (ctl_addr, (", control file: %s" % ctl_file) if ctl_file else ""))
            lines.append(BENCH_HELP)
            say("\n".join(lines))

        def answer(line: str) -> str:
            res = bench.command(line)
            return json.dumps(res) if args.json else _bench_text(res)

        def stdin_loop() -> None:
            for line in sys.stdin:
                if line.strip():
                    say(answer(line))
                if bench.stop.is_set():
                    return

        def client(conn) -> None:
            with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as f:
                for line in f:
                    if line.strip():
                        try:
                            f.write(answer(line) + "\n")
                            f.flush()
                        except OSError:
                            return

        def accept_loop() -> None:
            while not bench.stop.is_set():
                try:
                    conn, _ = ctl.accept()
                except OSError:
                    return
                threading.Thread(target=client, args=(conn,), daemon=True).start()

        def file_loop() -> None:
            pos, buf = 0, ""
            while not bench.stop.wait(0.2):
                try:
                    with open(ctl_file, encoding="utf-8") as f:
                        f.seek(pos)
                        data = f.read()
                        pos = f.tell()
                except OSError:
                    continue
                buf += data
                while "\n" in buf:
                    line, buf = buf.split("\n", 1)
                    if line.strip():
                        say(answer(line))

        if sys.stdin is not None and not sys.stdin.closed:
            threading.Thread(target=stdin_loop, daemon=True, name="bench-stdin").start()
        threading.Thread(target=accept_loop, daemon=True, name="bench-control").start()
        if ctl_file is not None:
            threading.Thread(target=file_loop, daemon=True, name="bench-file").start()
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while not bench.stop.wait(1.0 if live else 0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if live:
                with out_lock:
                    sys.stderr.write("\r\x1b[K" + bench.status_line()[:max(20, _term_width() - 1)])
                    sys.stderr.flush()
        if live:
            sys.stderr.write("\r\x1b[K")
        if not args.json:
            say("bench stopped")
    except KeyboardInterrupt:
        if live:
            sys.stderr.write("\r\x1b[K")
        if not args.json:
            print("bench stopped", flush=True)
    finally:
        ctl.close()
        fleet.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


def _term_width() -> int:
    import shutil
    return shutil.get_terminal_size((100, 20)).columns
