"""micropython-lib's aioble, unchanged, on virtual badges.

aioble is not vendored in this project and not in any registry CI reaches: this test runs only
where a copy exists (the folder named by TRACECODE_AIOBLE_DIR, e.g. fetched from
github.com/micropython/micropython-lib) and is skipped otherwise. It is copied into each badge's
flash `lib/aioble/`, as `mpremote mip install aioble` would.
"""
from pathlib import Path

import pytest

from sim_helpers import AIOBLE_DIR, write_flash

pytestmark = pytest.mark.skipif(not (AIOBLE_DIR / "__init__.py").is_file(),
                                reason="aioble not present (set TRACECODE_AIOBLE_DIR to micropython-lib's aioble/)")

ADV = """
import asyncio, aioble
PAYLOAD = b"\\x02\\x01\\x1a\\x03\\x03\\x6f\\xfd\\x17\\x16\\x6f\\xfd"
async def main():
    n = 0
    while True:
        aioble.config(addr_mode=3)
        data = PAYLOAD + bytes([n]) * 20
        try:
            await aioble.advertise(250000, adv_data=data, connectable=False, timeout_ms=60000)
        except asyncio.TimeoutError:
            n += 1
            with open("ticks.txt", "a") as f:
                f.write("%d\\n" % n)
asyncio.run(main())
"""

SCAN = """
import asyncio, aioble, time
async def main():
    while True:
        async with aioble.scan(4000, interval_us=30000, window_us=30000, active=False) as scanner:
            async for r in scanner:
                data = bytes(r.adv_data or b"")
                if len(data) == 31:
                    with open("seen.txt", "a") as f:
                        f.write("%d,%s,%d,%d,%d\\n" % (time.time(), r.device.addr_hex(), data[-1], r.rssi, r.connectable))
        await asyncio.sleep(26)
asyncio.run(main())
"""


def test_aioble_advertise_and_scan(fleet):
    a = fleet.add_badge("adv", position=(0, 0), aioble_dir=AIOBLE_DIR)
    b = fleet.add_badge("scan", position=(1.0, 0), aioble_dir=AIOBLE_DIR)
    write_flash(a, "main.py", ADV)
    write_flash(b, "main.py", SCAN)
    a.power_on()
    b.power_on()
    fleet.run_until(200)
    for x in (a, b):
        assert b"Traceback" not in bytes(x.console.transcript), bytes(x.console.transcript)
    # advertise(timeout_ms=...) raised TimeoutError every 60 s: the rotation tick
    ticks = Path(a.flash.host("ticks.txt")).read_text().split()
    assert ticks[:3] == ["1", "2", "3"]
    rows = [l.split(",") for l in Path(b.flash.host("seen.txt")).read_text().split()]
    payloads = {int(r[2]) for r in rows}
    assert {0, 1, 2} <= payloads
    assert all(int(r[4]) == 0 for r in rows)            # non-connectable
    assert all(-75 <= int(r[3]) <= -45 for r in rows)    # 1 m
    # each payload came with its own random address
    addrs = {}
    for r in rows:
        addrs.setdefault(int(r[2]), set()).add(r[1])
    assert all(len(v) == 1 for v in addrs.values())
    assert len(set().union(*addrs.values())) == len(addrs)
