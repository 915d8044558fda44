"""Helpers for the simulator tests (tests/sim)."""
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
MINI_FW = HERE / "fw_mini"
# micropython-lib's aioble/ package folder, when a checkout is at hand (CI has none).
AIOBLE_DIR = Path(os.environ.get("TRACECODE_AIOBLE_DIR") or "aioble-not-configured")


def raw_transport(badge, soft_reset=True):
    """mpremote's own serial transport, connected to the badge's loopback console."""
    from mpremote.transport_serial import SerialTransport
    t = SerialTransport(badge.console_url(), baudrate=115200)
    t.enter_raw_repl(soft_reset=soft_reset)
    return t


def write_flash(badge, path, text):
    p = Path(badge.flash.host(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    badge.flash.rescan()
