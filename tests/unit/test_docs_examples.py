"""Docs vs reality: every `tracecode ...` command line in a fenced code block of README.md
and docs/*.md parses with the real argument parser (placeholders like `[...]`, `<...>` and
`...` are skipped; they are not commands)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tracecode.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def examples():
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fenced = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            cmd = line.split("#", 1)[0].strip()
            for prefix in (".venv/bin/tracecode ", "tracecode "):
                if fenced and cmd.startswith(prefix):
                    if re.search(r"[\[\]<>|]|\.\.\.|\$\(", cmd) or cmd.endswith("\\"):
                        break
                    out.append((f"{doc.name}:{n}", cmd[len(prefix):]))
                    break
    return out


EXAMPLES = examples()


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("where,cmd", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_parses(where, cmd):
    parser = build_parser()
    try:
        args = parser.parse_args(shlex.split(cmd))
    except SystemExit as exc:
        pytest.fail(f"{where}: `tracecode {cmd}` does not parse (exit {exc.code})")
    assert getattr(args, "func", None), f"{where}: `tracecode {cmd}` names no command"
