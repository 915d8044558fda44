"""Consent the host cannot fake: a USB-serial host can toggle DTR/RTS, which a DevKit's
auto-program circuit turns into EN (reset) and BOOT-pin (GPIO0/GPIO9) levels. The consent
button is wired to a pin that circuit does not touch, so no DTR/RTS pattern, held or toggled
during an export request, and none of esptool's reset sequences, gets keys out of a badge;
a press of the real button does. A profile that puts the button on the BOOT pin (the old
profiles) shows that the simulated circuit has teeth: there DTR alone produces "consent".

The export request is protocol v1 (`export_keys` over the raw REPL) on badges provisioned
unlocked (developer mode)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tracecode.errors import DeviceError
from tracecode.station import flasher
from tracecode.station.link import BadgeLink, BadgeRefused
from tracecode.station.ports import BadgePort

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not installed")
from tracecode.sim.console import boot_strap_pin  # noqa: E402

pytestmark = pytest.mark.timeout(180)

BOARDS = ["esp32-devkitc", "esp32-s3-devkitc", "esp32-c3-devkitm", "m5stack-atom-lite"]
F, T = False, True
# (dtr, rts) states that never pull EN low, visited so that every ordered pair of them is a
# transition: FF->TF->TT->FF->TT->TF->FF. TF (DTR asserted alone) pulls the BOOT pin low.
BOOT_ONLY = [(F, F), (T, F), (T, T), (F, F), (T, T), (T, F), (F, F)]
# every ordered pair of the four states (an Eulerian circuit of the complete digraph)
ALL_PAIRS = [(F, F), (F, T), (F, F), (T, F), (F, F), (T, T), (F, T), (T, F), (F, T), (T, T),
             (T, F), (T, T), (F, F)]
HOLD_S = 0.2          # virtual seconds per state: ten of the firmware's 20 ms button polls


@pytest.fixture
def fleet(tmp_path):
    f = sim.Fleet(workdir=tmp_path / "fleet", seed=7, start_unix=int(time.time()))
    yield f
    f.close()


def _provision(fleet, db, name, board):
    """A virtual badge with the firmware, provisioned unlocked by the station code."""
    b = flasher.Board.load(board)
    badge = fleet.add_badge(name, profile=b.profile)
    badge.power_on()
    url = badge.console_url()
    opts = flasher.FlashOptions(board=b, skip_image=True, aioble_mip=False, lock=False,
                                now=fleet.unix_time)
    bid = flasher.flash_badge(BadgePort(url), opts, db)["badge_id"]
    fleet.run_for(900)                          # the app runs: today's key exists
    return badge, url, db.secret(bid)


def _export(url, secret, wait_ms, during=None, timeout_s=3.0):
    """export_keys(wait_ms) on an authenticated v1 session; `during(link)` runs right before
    the request (to schedule line changes). -> ("keys", n) | ("refused", code) | ("lost", msg)"""
    try:
        with BadgeLink(url, timeout_s=timeout_s) as link:
            link.auth(secret)
            if during:
                during()
            keys = link.export_keys(wait_ms)
            return ("keys", len(keys))
    except BadgeRefused as exc:
        return ("refused", exc.code)
    except DeviceError as exc:           # the session died with the badge (an EN reset)
        return ("lost", str(exc))


def _schedule(fleet, console, states, start=0.3):
    """Set the lines to each (dtr, rts) state for HOLD_S virtual seconds, from `start` s on."""
    t = fleet.clock() + start
    for dtr, rts in states:
        fleet.schedule(t, console.set_lines, dtr, rts)
        t += HOLD_S
    return start + HOLD_S * len(states)


def _boots(badge):
    return badge.boots


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("board", BOARDS)
def test_dtr_rts_never_give_consent_the_button_does(fleet, db, board):
    badge, url, secret = _provision(fleet, db, "b-" + board, board)
    con = badge.console
    pin, _active = badge.button()
    assert pin != boot_strap_pin(badge.profile), "consent button on the BOOT strapping pin"

    # 1. BOOT-pin patterns (EN never low) during one export request: no consent, the badge
    #    answers no-consent at the end of the wait and keeps running
    span = None

    def boot_patterns():
        nonlocal span
        span = _schedule(fleet, con, BOOT_ONLY)
    res = _export(url, secret, 3000, during=boot_patterns)
    assert span is not None and span < 3.0
    assert res == ("refused", "no-consent"), res
    assert con.line_log[-len(BOOT_ONLY):] == BOOT_ONLY   # every state was applied

    # 2. every ordered pair of line states (EN resets among them) during an export request:
    #    the request dies with the badge's reset, nothing leaves it
    boots = _boots(badge)
    res = _export(url, secret, 2900, during=lambda: _schedule(fleet, con, ALL_PAIRS),
                  timeout_s=1.5)
    assert res[0] == "lost", res               # the first EN low ended the request
    fleet.run_for(HOLD_S * len(ALL_PAIRS) + 1)  # the rest of the pattern, in virtual time
    assert con.line_log[-len(ALL_PAIRS):] == ALL_PAIRS
    assert _wait(lambda: not con.held and badge.powered), "badge did not come out of reset"
    assert _boots(badge) > boots                 # EN low really reset it

    # 3. esptool's own sequences (esp_pylib.serial_reset): the sequential bootloader reset
    #    leaves the chip in the ROM's download mode (no firmware, no consent) ...
    from esp_pylib import serial_reset as sr
    lines = con.modem()
    sr.classic_bootloader_reset(lines)
    assert _wait(lambda: con.download_mode) and not badge.powered
    assert b"waiting for download" in bytes(con.transcript[-300:])
    # ... and the atomic (TIOCMSET) one too, as esptool runs it on Linux
    sr.hard_reset(lines)
    assert _wait(lambda: badge.powered and not con.held)
    for dtr, rts in [(F, F), (T, T), (F, T)]:          # unix_tight_bootloader_reset's steps
        lines.set_both(dtr, rts)
    time.sleep(0.1)
    lines.set_both(T, F)
    time.sleep(0.05)
    lines.set_both(F, F)
    lines.setDTR(False)
    assert _wait(lambda: con.download_mode)
    sr.usb_jtag_bootloader_reset(lines, settle_delay=0.02)   # ends with the lines released
    sr.hard_reset(lines, hold_delay=0.02)                     # esptool's --after hard-reset
    assert _wait(lambda: badge.powered and not con.held)
    fleet.run_for(5)

    # 4. after all that: still no keys without the wearer, keys with a press of the button
    assert _export(url, secret, 1000) == ("refused", "no-consent")
    badge.press_button(after=0.5)
    res = _export(url, secret, 3000)
    assert res[0] == "keys" and res[1] >= 1, res


def test_button_on_the_boot_pin_is_consent_the_host_can_fake(fleet, db, tmp_path):
    """The old profile (button on GPIO0, the BOOT strapping pin): DTR asserted alone pulls
    GPIO0 low through the auto-program circuit, and the badge takes it for the wearer."""
    profile = json.loads((flasher.DEFAULT_BOARDS_DIR / "esp32-devkitc.json").read_text())
    profile["name"] = "devkitc-boot-button"
    profile["button"] = {"pin": 0, "active": 0, "pull": "up"}
    path = tmp_path / "devkitc-boot-button.json"
    path.write_text(json.dumps(profile))
    badge, url, secret = _provision(fleet, db, "old", str(path))
    res = _export(url, secret, 3000, during=lambda: _schedule(fleet, badge.console, [(T, F), (F, F)]))
    assert res[0] == "keys" and res[1] >= 1, res


def test_lines_model_the_auto_program_circuit(fleet):
    """EN low = reset (the console goes quiet, input is dropped); BOOT low at EN's rising edge
    = ROM download mode; a reset with BOOT high boots the firmware again."""
    badge = fleet.add_badge("c", board="esp32-c3-devkitm")
    badge.power_on()
    con = badge.console
    boots = badge.boots
    con.set_lines(dtr=False, rts=True)          # EN low
    assert con.held and not badge.powered
    con.feed(b"\x03\x01")                        # nobody listens in reset
    assert not con.has_input()
    con.set_lines(dtr=True, rts=False)          # EN up with GPIO9 low
    assert _wait(lambda: con.download_mode)
    level = badge.pin_level(9) if hasattr(badge, "pin_level") else badge.ext_pins.get(9)
    assert level == 0 and not badge.powered
    con.set_lines(dtr=False)                    # BOOT released: still in the ROM loader
    assert con.download_mode and not badge.powered
    con.set_lines(rts=True)
    con.set_lines(rts=False)                    # a plain EN pulse: normal boot
    assert _wait(lambda: badge.powered and not con.held)
    assert badge.boots > boots and badge.reset_cause == 1
    assert b"SPI_FAST_FLASH_BOOT" in bytes(con.transcript[-300:])
    threading.Event().wait(0.01)
