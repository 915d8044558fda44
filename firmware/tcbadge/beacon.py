# Beacon: broadcasts the EN advert of the current interval. RPI and random address change
# together: at each ENIN boundary plus a random offset in [0, rotation_jitter_s], so a
# rotation period is 10 min +- jitter and an RPI is never on air for more than 20 min
# (jitter <= 540 s). Nothing is broadcast while the clock is unset.
import asyncio
import os

from micropython import const

from . import advert, crypto

_ENIN_S = const(600)
_MAX_RPI_S = const(1200)
_WAIT_CLOCK_MS = const(5000)


class Beacon:
    def __init__(self, radio, clock, keys, config, profile, aes_factory, urandom=None, on_rotate=None,
                 on_beat=None):
        self.radio = radio
        self.clock = clock
        self.keys = keys
        self.config = config
        self.profile = profile
        self._aes = aes_factory
        self._urandom = urandom or os.urandom
        self._tek_rsin = -1
        self._deriver = None
        self._adv = bytearray(advert.ADV_LEN)
        self.rpi = None
        self.enin = -1
        self.own = []  # current and previous RPI, for the scanner to ignore
        self.rotations = 0
        self.on_rotate = on_rotate  # called with the RPIs to ignore when scanning
        self.on_beat = on_beat  # called at every turn of run() (the supervisor's progress check)

    def metadata(self):
        return crypto.metadata(self.config["tx_power_dbm"], self.profile.get("calibration_confidence"))

    def ids(self, enin):
        rsin, tek = self.keys.tek_for(enin)
        d = self._deriver
        if d is None or rsin != self._tek_rsin:
            d = crypto.Deriver(tek, self._aes)
            self._deriver = d
            self._tek_rsin = rsin
        rpi = d.rpi(enin)
        return rpi, d.aem(rpi, self.metadata())

    def _jitter(self):
        j = self.config["rotation_jitter_s"]
        if j <= 0:
            return 0
        r = self._urandom(2)
        return (r[0] | (r[1] << 8)) % (j + 1)

    def hold_s(self, now):
        # Seconds to keep the current RPI: to the next boundary plus a random offset.
        s = (now // _ENIN_S + 1) * _ENIN_S - now + self._jitter()
        return s if s <= _MAX_RPI_S else _MAX_RPI_S

    async def rotate(self):
        async with self.radio.lock:
            now = self.clock.now()
            enin = now // _ENIN_S
            rpi, aem = self.ids(enin)
            self.radio.new_address()
        advert.build(rpi, aem, self._adv)
        self.own = [rpi] if self.rpi is None else [rpi, self.rpi]
        self.rpi = rpi
        self.enin = enin
        self.rotations += 1
        if self.on_rotate:
            self.on_rotate(self.own)
        return self.hold_s(now)

    async def run(self):
        interval_us = self.config["adv_interval_ms"] * 1000
        while True:
            if self.on_beat is not None:
                self.on_beat()
            if not self.clock.is_set():
                await asyncio.sleep_ms(_WAIT_CLOCK_MS)
                continue
            hold = await self.rotate()
            await self.radio.advertise(bytes(self._adv), interval_us, hold * 1000)
