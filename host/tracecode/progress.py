"""Progress reporting: a callback in the library, live lines in the CLI (only on a terminal).

On a terminal (stderr is a tty) `BadgeLines` draws one line per badge: a bar, bytes and rate
(sync, by chunk) or step i/n (flash), and the current stage; `progress_bar` draws one bar
(`match`); `virtual_time_bar` one bar of simulated time (`sim run`). When stderr is not a terminal they draw nothing, and commands print only their
summary lines: logs and CI output stay readable, and `--json` stdout holds only the JSON.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(description: str, *, enabled: bool | None = None) -> Iterator[Callable[[int, int], None]]:
    """Yields `update(done, total)`. Draws on stderr when it is a terminal, else does nothing."""
    if enabled is None:
        enabled = _tty()
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def _fmt_virtual(t: float, total: float) -> str:
    return f"{max(0.0, float(t)) / 3600:.1f}/{total / 3600:g} h simulated"


@contextmanager
def virtual_time_bar(description: str, total_s: float, *,
                     enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """Yields `update(t_s, note=None)`: simulated seconds done of `total_s`, and optionally
    the current stage. Draws on stderr when it is a terminal, else does nothing (the caller
    prints only its summary)."""
    if enabled is None:
        enabled = _tty()
    if not enabled:
        yield lambda t_s, note=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = max(float(total_s), 1e-9)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[vt]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total, vt=_fmt_virtual(0, total),
                             note="")
        state = {"note": ""}

        def update(t_s: float, note: str | None = None) -> None:
            if note is not None:
                state["note"] = note
            prog.update(task, completed=min(total, float(t_s)), note=state["note"],
                        vt=_fmt_virtual(t_s, total))

        yield update


class BadgeLines:
    """One live line per badge on stderr when it is a terminal; silent otherwise.

    `line(label, unit)` returns `update(stage, done, total)`; unit "bytes" shows
    done/total bytes and the rate, unit "steps" shows step done/total. A total of 0 shows
    "nothing to do" rather than an unknown size.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled) and _tty()
        self._p = None

    def __enter__(self) -> "BadgeLines":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                               TextColumn("{task.fields[amount]:>22}"),
                               TextColumn("{task.fields[stage]}"),
                               console=Console(stderr=True))
            self._p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
            self._p = None

    def line(self, label: str, unit: str = "bytes") -> Callable[[str, int, int], None]:
        if self._p is None:
            return lambda *a: None
        prog = self._p
        task = prog.add_task(label, total=None, stage="", amount="")

        def update(stage: str, done: int, total: int) -> None:
            if unit == "steps":
                amount = f"step {done}/{total}"
            elif not total:
                amount, done, total = "nothing new", 1, 1
            else:
                speed = prog.tasks[task].speed if task < len(prog.tasks) else None
                amount = f"{_kib(done)}/{_kib(total)}" + (
                    f" {_kib(speed)}/s" if speed else "")
            prog.update(task, completed=done, total=total or None, stage=stage, amount=amount)
        return update

    def note(self, text: str) -> None:
        """A log line above the live lines (terminal only)."""
        if self._p is not None:
            self._p.console.print(text, markup=False, highlight=False)


def _kib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
