"""Hardware-in-the-loop test layer (a pytest plugin).

The same tests run against real badges or virtual ones; where the badges come from is
configuration, not test code:

    pytest tests/hil                                         # virtual badges (tracecode.sim)
    pytest tests/hil --badge-port /dev/ttyUSB0 --badge-port /dev/ttyUSB1 [--skip-flash]
          [--badge-board esp32-devkitc] [--badge-image ESP32_GENERIC.bin] [--hil-minutes 6]

A test takes the `bench` fixture: `bench.badges` (one `BenchBadge` per port, flashed unless
`--skip-flash` and provisioned by the station code), `bench.db` (the station database),
`bench.together(minutes)` (real time on hardware, virtual time on the simulator),
`bench.sync_all()`, and `badge.consent_and_export()` (a button press: scheduled on a virtual
badge, asked of the person at the bench on hardware). A failed expectation says what it waited
for and what it saw.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

CONSENT_WAIT_S = 60


def pytest_addoption(parser) -> None:
    g = parser.getgroup("tracecode-hil", "TraceCode hardware in the loop")
    g.addoption("--badge-port", action="append", default=[], metavar="PORT",
                help="a real badge's serial port or pyserial URL (repeatable); none: virtual badges")
    g.addoption("--skip-flash", action="store_true", help="do not write the MicroPython image (install + provision only)")
    g.addoption("--badge-board", default="esp32-devkitc", help="board profile in boards/ (default esp32-devkitc)")
    g.addoption("--badge-image", default=None, help="MicroPython image for the esptool step on real badges")
    g.addoption("--hil-minutes", type=float, default=None,
                help="how long the badges stay together (default: 6 real minutes on hardware, 40 virtual)")


@dataclass
class BenchBadge:
    port: str
    badge_id: str
    secret: bytes
    press: Callable[[], None]
    virtual: object | None = None  # tracecode.sim Badge when simulated

    @contextlib.contextmanager
    def link(self):
        """A session in whichever mode the badge is in (locked: protocol 2; developer mode:
        the raw REPL), closed on exit."""
        from .station.link import open_link

        link = open_link(self.port)
        try:
            yield link
        finally:
            link.close()

    def consent_and_export(self) -> list[dict]:
        """The badge's TEKs, released after its consent button is pressed."""
        self.press()
        with self.link() as link:
            link.auth(self.secret)
            return link.export_keys(CONSENT_WAIT_S * 1000)


@dataclass
class Bench:
    badges: list[BenchBadge]
    db: object
    now: Callable[[], float]
    wait: Callable[[float], None]
    kind: str
    minutes: float = 40.0

    def together(self, minutes: float) -> None:
        self.wait(minutes * 60)

    def sync_all(self) -> list:
        from .station.sync import sync_badge

        return [sync_badge(self.db, b.port, now=self.now) for b in self.badges]


def _ask(msg: str) -> None:
    sys.__stderr__.write("\n[hil] " + msg + "\n")
    sys.__stderr__.flush()


@pytest.fixture
def bench(request, tmp_path):
    from .station import flasher
    from .station.db import Database
    from .station.ports import BadgePort

    cfg = request.config
    ports = cfg.getoption("--badge-port")
    board = flasher.Board.load(cfg.getoption("--badge-board"))
    minutes = cfg.getoption("--hil-minutes")
    db = Database(tmp_path / "station.sqlite")
    fleet = None
    try:
        if ports:
            kind = "hardware"
            now, wait = time.time, time.sleep
            image = cfg.getoption("--badge-image")
            handles = [(p, None) for p in ports]
        else:
            sim = pytest.importorskip("tracecode.sim", reason="no --badge-port and no virtual badges")
            kind = "virtual"
            fleet = sim.Fleet(workdir=tmp_path / "fleet", seed=11, start_unix=int(time.time()) - 86400)
            now = fleet.unix_time

            def wait(seconds: float) -> None:
                fleet.run_for(seconds)

            image = None
            handles = []
            for i in range(2):
                vb = fleet.add_badge(f"hil{i}", position=(float(i), 0.0), board=board.name)
                vb.power_on()
                handles.append((vb.console_url(), vb))
        badges = []
        for port, vb in handles:
            opts = flasher.FlashOptions(board=board, image=Path(image) if image else None,
                                        skip_image=cfg.getoption("--skip-flash") or vb is not None or image is None,
                                        aioble_mip=False, now=now, reprovision=True)
            res = flasher.flash_badge(BadgePort(port), opts, db)
            bid = res["badge_id"]
            if vb is not None:
                press = (lambda v=vb: v.press_button(after=1.0, duration=0.5))
            else:
                press = (lambda b=bid: _ask(f"press the consent button on badge {b} within {CONSENT_WAIT_S} s"))
            badges.append(BenchBadge(port, bid, db.secret(bid), press, vb))
        yield Bench(badges, db, now, wait, kind,
                    minutes if minutes is not None else (6.0 if kind == "hardware" else 40.0))
    finally:
        db.close()
        if fleet is not None:
            fleet.close()
