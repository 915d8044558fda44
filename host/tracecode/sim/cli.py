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
    b.add_argument("--flash-size", type=int, default=2 * 1024 * 1024, metavar="BYTES")
    b.add_argument("--set-clock", action="store_true",
                   help="set the RTC to the host's time at power-on (default: never set, 2000-01-01)")
    b.add_argument("--baud", type=int, default=None, help="throttle the link to BAUD/10 bytes/s")
    b.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    b.set_defaults(func=cmd_badge)

    r = sub.add_parser(
        "run", help="play a scenario through the whole pipeline (or, with --radio-only, just the fleet)",
        description="Without --radio-only: virtual badges are flashed and provisioned by the station "
                    "code, live the scenario's days, are synced nightly; the diagnosed consent and "
                    "upload to a local key server; batches are published and matched; health codes "
                    "go back to the badges; precision/recall against the scenario's ground truth and "
                    "a PNG/HTML report come out (tracecode.e2e). With --radio-only: the fleet runs in "
                    "virtual time and a per-badge radio summary is printed.")
    r.add_argument("scenario", help="scenario file (YAML or JSON, see docs/sim.md and docs/e2e.md)")
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
        badge = fleet.add_badge("badge", flash_dir=flash, firmware_dir=args.firmware,
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
        print("virtual badge running (flash: %s)" % flash)
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
    from .scenario import load_scenario, parse_duration

    sc = load_scenario(args.scenario)
    if args.duration:
        sc.duration = parse_duration(args.duration, "--duration")
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tcsim-run-")
        workdir = tmp.name
    try:
        progress = None
        bar = None
        if sys.stdout.isatty() and not args.json:
            from rich.progress import Progress
            bar = Progress()
            bar.start()
            task = bar.add_task("simulating %s" % sc.name, total=sc.duration)

            def progress(t, total):
                bar.update(task, completed=t)
        try:
            res = sc.run(workdir, firmware_dir=args.firmware, step=min(3600.0, sc.duration),
                         progress=progress)
        finally:
            if bar is not None:
                bar.stop()
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
