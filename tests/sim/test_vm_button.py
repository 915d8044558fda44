"""A button held through a reset or power cycle reads pressed in the next boot of a VM badge
(the pin is driven from outside; the chip sees its level, not an edge)."""
import time

import pytest

from tracecode.sim import Fleet
from tracecode.sim.vmbadge import vm_available

REASON = vm_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _pin_level(url: str, pin: int) -> int:
    import serial

    s = serial.serial_for_url(url, timeout=0.5)
    try:
        s.write(b"\r\x03\x03")
        time.sleep(0.3)
        s.read(10000)
        s.write(("import machine; print('LEVEL', machine.Pin(%d, machine.Pin.IN, machine.Pin.PULL_UP).value())\r\n"
                 % pin).encode())
        out = b""
        end = time.monotonic() + 10
        while time.monotonic() < end and not (b"LEVEL " in out and out.rstrip().endswith(b">>>")):
            out += s.read(1000)
        line = [x for x in out.decode(errors="replace").splitlines() if x.startswith("LEVEL ")]
        assert line, out
        return int(line[-1].split()[1])
    finally:
        s.close()


@pytest.mark.parametrize("reset", ["power_cycle", "none"])
def test_held_button_survives_a_reboot(tmp_path, reset):
    f = Fleet(tmp_path / "fleet", seed=1, backend="vm")
    try:
        b = f.add_badge("x", board="esp32-devkitc")
        b.power_on()
        f.run_until(2)
        pin, active = b.button()
        b.press_button(after=0.0, duration=100)
        f.run_until(3)
        if reset == "power_cycle":
            b.power_cut()
            b.power_on()
        f.run_until(5)
        assert _pin_level(b.console_url(), pin) == active
        f.run_until(110)                      # released
        assert _pin_level(b.console_url(), pin) != active
    finally:
        f.close()
