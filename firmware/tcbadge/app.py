# The badge program: one asyncio loop running the beacon, the scanner and housekeeping.
# main.py creates App() and calls run_app(app). A KeyboardInterrupt (the host entering the
# raw REPL) stops the radio and flushes the log, then returns to the REPL.
import asyncio
import sys

from micropython import const

import tcbadge

from . import beacon, clock, config, crypto, enlog, fsutil, health, keystore, radio, scanner

_HOUSEKEEP_S = const(60)
_DAY_S = const(86400)


class App:
    def __init__(self, root="", ble=None, use_aioble=True, aes_factory=None, rtc=None):
        self.root = root
        config.ensure_dirs(root)
        self.prov = config.Provisioning(root)
        self.profile = self.prov.profile()
        self.config = self.prov.config()
        self.clock = clock.Clock(root, rtc)
        self.log = enlog.EncounterLog(root)
        self.health = health.Health(self.profile, root)
        self.radio = radio.Radio(ble, use_aioble)
        self.keys = None  # created after the radio is on (hardware RNG)
        self._aes = aes_factory or crypto.ecb_factory()
        self.beacon = None
        self.scanner = scanner.Scanner(self.radio, self.clock, self.log, self.config)
        self.state = "init"
        self._day = -1

    def start(self):
        self.radio.start()
        self.keys = keystore.KeyStore(self.root)
        b = beacon.Beacon(self.radio, self.clock, self.keys, self.config, self.profile,
                          self._aes, on_rotate=self.scanner.own)
        self.beacon = b
        self.health.show()
        return b

    async def scan_loop(self):
        cfg = self.config
        while True:
            if self.clock.is_set():
                await self.scanner.scan_once()
                await asyncio.sleep_ms(cfg["scan_every_s"] * 1000 - cfg["scan_window_ms"])
            else:
                await asyncio.sleep_ms(5000)

    def housekeep(self):
        self.clock.persist()
        if not self.clock.is_set():
            return
        now = self.clock.now()
        day = now // _DAY_S
        if day != self._day:
            self._day = day
            self.log.housekeep(day)
            if self.keys is not None:
                self.keys.prune(now // 600)

    async def housekeep_loop(self):
        while True:
            self.housekeep()
            await asyncio.sleep_ms(_HOUSEKEEP_S * 1000)

    async def run(self):
        b = self.start()
        self.state = tcbadge.RUN["state"] = "running"
        tcbadge.RUN["radio"] = self.radio.kind()
        tcbadge.RUN["stats"] = self.stats
        await asyncio.gather(b.run(), self.scan_loop(), self.housekeep_loop())

    def stats(self):
        s = self.scanner.stats()
        s["log_dropped"] = self.log.dropped
        s["rotations"] = self.beacon.rotations if self.beacon is not None else 0
        return s

    def shutdown(self):
        self.radio.stop()
        try:
            self.log.flush()
            self.clock.persist(True)
        except OSError:
            pass


def run_app(app):
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:
        app.state = tcbadge.RUN["state"] = "interrupted"
    except Exception as e:  # keep the REPL usable; the host sees the crash in status()
        app.state = tcbadge.RUN["state"] = "crashed"
        msg = "%s: %s" % (type(e).__name__, e)
        tcbadge.RUN["error"] = msg
        try:
            fsutil.write_atomic(app.root + "/tc/crash.txt", msg)
        except OSError:
            pass
        pe = getattr(sys, "print_exception", None)
        if pe is not None:
            pe(e)
    finally:
        app.shutdown()
        try:
            asyncio.new_event_loop()
        except AttributeError:
            pass
