# Minimal firmware-like program for simulator tests (not the project firmware):
# advertises a 31-byte EN-style payload that rotates with a fresh random address, scans
# on a duty cycle, and appends what it hears to /heard.csv.
import asyncio
import bluetooth
import json
import os
import struct
import time
from micropython import const

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)


def load_cfg():
    try:
        with open("cfg.json") as f:
            return json.load(f)
    except OSError:
        return {}


class Mini:
    def __init__(self, ble, cfg):
        self.ble = ble
        self.cfg = cfg
        self.queue = []
        self.flag = asyncio.ThreadSafeFlag()
        self.done = False
        self.n = 0
        ble.irq(self.irq)

    def irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            addr_type, addr, adv_type, rssi, adv_data = data
            if len(self.queue) < 256:
                self.queue.append((bytes(addr), adv_type, rssi, bytes(adv_data)))
            self.flag.set()
        elif event == _IRQ_SCAN_DONE:
            self.done = True
            self.flag.set()

    def payload(self):
        self.n += 1
        rpi = os.urandom(16)
        return b"\x02\x01\x1a\x03\x03\x6f\xfd\x17\x16\x6f\xfd" + rpi + b"\x00\x00\x00\x00"

    async def beacon(self):
        rot = self.cfg.get("rotate_s", 600)
        while True:
            self.ble.gap_advertise(None)
            self.ble.config(addr_mode=3)
            self.ble.gap_advertise(250000, self.payload(), connectable=False)
            await asyncio.sleep(rot)

    async def scanner(self):
        period = self.cfg.get("scan_period_s", 60)
        dur = self.cfg.get("scan_ms", 4000)
        while True:
            self.done = False
            self.ble.gap_scan(dur, 60000, 60000, False)
            seen = {}
            while not self.done:
                await self.flag.wait()
                while self.queue:
                    addr, adv_type, rssi, data = self.queue.pop(0)
                    if len(data) == 31 and data[5:7] == b"\x6f\xfd":
                        k = data[11:27]
                        e = seen.get(k)
                        seen[k] = (e[0] + 1, min(e[1], rssi), max(e[2], rssi)) if e else (1, rssi, rssi)
            if seen:
                with open("heard.csv", "a") as f:
                    for k, v in seen.items():
                        f.write("%d,%s,%d,%d,%d\n" % (time.time(), k.hex(), v[0], v[1], v[2]))
            await asyncio.sleep(period - dur / 1000)


async def run():
    ble = bluetooth.BLE()
    ble.active(True)
    m = Mini(ble, load_cfg())
    await asyncio.gather(m.beacon(), m.scanner())


try:
    asyncio.run(run())
except KeyboardInterrupt:
    with open("stopped.txt", "w") as f:
        f.write("interrupted")
    bluetooth.BLE().active(False)
