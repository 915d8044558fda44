"""README's command table is one table (no blank line splits it) and names every command."""
from __future__ import annotations

import re
from pathlib import Path

from tracecode.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def command_table() -> list[str]:
    text = (ROOT / "README.md").read_text().split("## Commands", 1)[1]
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| command |"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    rest = "\n".join(lines[start + len(rows):]).split("\n## ", 1)[0]
    assert not re.search(r"^\| `tracecode ", rest, re.M), "a blank line splits the command table"
    return rows[2:]


def test_every_command_is_in_the_table():
    named = " ".join(r.split("|")[1] for r in command_table())
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "sim" in a.choices)
    missing = [c for c in sub.choices if f"tracecode {c}" not in named]
    sim = next(a for a in sub.choices["sim"]._actions if getattr(a, "choices", None))
    missing += [f"sim {c}" for c in sim.choices if f"tracecode sim {c}" not in named]
    assert not missing, f"README's command table lacks: {missing}"


def test_benchmark_row_quotes_the_log_format_figure():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"\*\*([0-9.]+)\*\*", (ROOT / "docs" / "log-format.md").read_text().split(
        "flash bytes per neighbour-scan", 1)[1].splitlines()[0])
    assert m, "docs/log-format.md has no bytes-per-neighbour-scan figure"
    row = next(ln for ln in readme.splitlines() if ln.startswith("| flash per"))
    assert f"{m.group(1)} B" in row and "per encounter | 32 B" not in readme
