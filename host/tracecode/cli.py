"""`tracecode` command line: a small table of subcommands.

Each feature area provides a module with `register(subparsers)`; the parsers it adds set
`func` (called with the parsed namespace, returning an exit code or None). One error type,
`TraceCodeError`, reaches the user as one line on stderr with its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sqlite3
import sys

from . import __version__
from .errors import TraceCodeError

# Feature modules that contribute subcommands, in help order. A module that is not part of
# this installation (ModuleNotFoundError for that very module) is skipped.
COMMAND_MODULES = (
    "tracecode.commands",          # keys, export, match
    "tracecode.station.cli",       # flash, sync, diagnose, status, db
    "tracecode.keyserver.cli",     # keyserver
    "tracecode.stats",             # stats
    "tracecode.sim.cli",           # sim
    "tracecode.demo",              # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracecode",
        description="Privacy-preserving exposure tracing on ESP32 badges (Exposure Notification v1.2).",
    )
    parser.add_argument("--version", action="version", version=f"tracecode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "to_json"):
        return obj.to_json()
    return str(obj)


def print_json(obj) -> None:
    """The one way commands write `--json` output: one document on stdout. It never fails to
    serialise: bytes become hex, other foreign objects their str()."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, ensure_ascii=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except TraceCodeError as exc:
        msg = f"tracecode: error: {exc}"
        if exc.hint:
            msg += f" ({exc.hint})"
        print(msg, file=sys.stderr)
        return exc.exit_code
    except sqlite3.DatabaseError as exc:
        # The station layer turns damage it detects into DatabaseDamaged; this is the net
        # under it (e.g. a page that breaks mid-query): one line, exit 2, never a traceback.
        print(f"tracecode: error: database error: {exc} (run `tracecode db check`; "
              "docs/station.md, \"Recovering a damaged database\")", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tracecode: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
