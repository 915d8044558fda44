"""`tracecode` command line: a small table of subcommands.

Each feature area provides a module with `register(subparsers)`; the parsers it adds set
`func` (called with the parsed namespace, returning an exit code or None). One error type,
`TraceCodeError`, reaches the user as one line on stderr with its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
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


def print_json(obj) -> None:
    """The one way commands write `--json` output: one document on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


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
    except KeyboardInterrupt:
        print("tracecode: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
