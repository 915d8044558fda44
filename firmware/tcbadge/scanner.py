# Scanner: passive, duty-cycled scans; keeps only 20-byte 0xFD6F service data; aggregates
# repeated sightings of one RPI per scan (first/last seen, count, RSSI min/max/mean).
#
# RAM is bounded and the IRQ path never allocates: the BLE IRQ handler filters the advert
# and folds the sighting straight into a preallocated table (open addressing on a 30-bit
# small-int key, so no dict growth and no bytes objects). MicroPython on the 32-bit ESP32
# keeps ints below 2**30 as small ints and allocates a long int above; every value the IRQ
# path computes stays below 2**30 (the key is built from 16-bit halves, never `b << 24`).
# The stack may deliver a whole window's results in one burst; aggregating at once means a
# burst cannot overflow a queue. The task reads the table only after the scan is done (single writer at a time)
# and writes the records to flash.
#
# Overload policy (what goes first): when more distinct RPIs than `capacity` (256) are
# heard in one window, RPIs first heard after the table filled are dropped for that window
# (counted in `drops`; they are heard again next window). Repeated sightings of RPIs already
# in the table are always counted. Aggregated records are never dropped for lack of RAM.
import time
from array import array

from micropython import const

from . import advert

_ID = const(20)


def _table(code, n, fill):
    # An array of n items set to fill, allocated once at its final size.
    t = array(code, range(n))
    for i in range(n):
        t[i] = fill
    return t


class Aggregator:
    # Distinct RPIs of one scan. Times are ms since the scan began (small ints).
    def __init__(self, capacity=256):
        self.capacity = capacity
        hsize = 1
        while hsize < capacity * 2:
            hsize <<= 1
        self._hmask = hsize - 1
        # Fixed-width arrays, not lists: 2-4 bytes a slot instead of a pointer each, and
        # storing a small int in them never allocates (the IRQ path writes them).
        self._hash = _table("h", hsize, -1)  # hash position -> slot
        self.keys = _table("i", capacity, 0)  # 30-bit key (a small int)
        self.ids = bytearray(capacity * _ID)  # RPI + AEM per slot
        self.first = _table("i", capacity, 0)  # ms since the scan began
        self.last = _table("i", capacity, 0)
        self.cnt = _table("i", capacity, 0)
        self.rmin = _table("h", capacity, 0)  # dBm
        self.rmax = _table("h", capacity, 0)
        self.rsum = _table("i", capacity, 0)
        self.mine = bytearray(capacity)  # 1: the badge's own advert, not logged
        self.n = 0
        self.t0 = time.ticks_ms()
        self.seen = 0
        self.drops = 0
        self.ignored = 0
        self.own = []  # RPIs this badge broadcasts (bytes)

    def reset(self):
        h = self._hash
        for i in range(len(h)):
            h[i] = -1
        self.n = 0
        self.t0 = time.ticks_ms()

    def _is_own(self, buf, off):
        own = self.own
        for i in range(len(own)):
            rpi = own[i]
            same = True
            for j in range(16):
                if rpi[j] != buf[off + j]:
                    same = False
                    break
            if same:
                return True
        return False

    def feed(self, adv, rssi):
        # Called from the BLE IRQ (or the aioble task) with the raw advert; allocation-free.
        off = advert.find_en(adv)
        if off < 0:
            return
        self.seen += 1
        self.add(adv, off, rssi, time.ticks_diff(time.ticks_ms(), self.t0))

    def add(self, buf, off, rssi, t_ms):
        # 30-bit key: low half from bytes 0-1, high half from byte 2 and 6 bits of byte 3;
        # the largest intermediate value is 0x3FFF << 16 < 2**30 (a small int on 32 bits).
        k = ((buf[off + 2] | ((buf[off + 3] & 0x3F) << 8)) << 16) | buf[off] | (buf[off + 1] << 8)
        hm = self._hmask
        h = k & hm
        ht = self._hash
        ids = self.ids
        while True:
            s = ht[h]
            if s < 0:
                break
            if self.keys[s] == k:
                b = s * _ID
                j = 4
                while j < 16 and ids[b + j] == buf[off + j]:
                    j += 1
                if j == 16:
                    if self.mine[s]:
                        self.ignored += 1
                        return
                    if t_ms > self.last[s]:
                        self.last[s] = t_ms
                    self.cnt[s] += 1
                    if rssi < self.rmin[s]:
                        self.rmin[s] = rssi
                    if rssi > self.rmax[s]:
                        self.rmax[s] = rssi
                    self.rsum[s] += rssi
                    return
            h = (h + 1) & hm
        if self.n >= self.capacity:
            self.drops += 1
            return
        s = self.n
        b = s * _ID
        for j in range(_ID):
            ids[b + j] = buf[off + j]
        self.keys[s] = k
        self.first[s] = t_ms
        self.last[s] = t_ms
        self.cnt[s] = 1
        self.rmin[s] = rssi
        self.rmax[s] = rssi
        self.rsum[s] = rssi
        own = self._is_own(buf, off)
        self.mine[s] = 1 if own else 0
        if own:
            self.ignored += 1
        self.n = s + 1
        ht[h] = s

    def records(self, start_unix):
        # Yields (rpi, aem, first_unix, last_unix, count, rssi_min, rssi_max, rssi_mean).
        ids = self.ids
        for s in range(self.n):
            if self.mine[s]:
                continue
            b = s * _ID
            c = self.cnt[s]
            mean = self.rsum[s] / c
            mean = int(mean - 0.5) if mean < 0 else int(mean + 0.5)
            yield (bytes(ids[b : b + 16]), bytes(ids[b + 16 : b + 20]),
                   start_unix + self.first[s] // 1000, start_unix + self.last[s] // 1000,
                   c, self.rmin[s], self.rmax[s], mean)


class Scanner:
    # Duty cycle: a window of scan_window_ms every scan_every_s (defaults: 4 s every 120 s,
    # so every advertiser in range is scanned at least twice in any 5 minutes).
    def __init__(self, radio, clock, log, config, capacity=256, agg=None):
        self.radio = radio
        self.clock = clock
        self.log = log
        self.config = config
        self.agg = agg if agg is not None else Aggregator(capacity)
        self.scans = 0
        self.logged = 0

    def own(self, rpis):
        self.agg.own = rpis

    async def scan_once(self):
        agg = self.agg
        agg.reset()
        start = self.clock.now()
        await self.radio.scan(self.config["scan_window_ms"], agg)
        self.scans += 1
        if not self.clock.is_set():
            return 0
        n = 0
        for r in agg.records(start):
            self.log.add(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
            n += 1
        self.log.flush()
        self.logged += n
        return n

    def stats(self):
        return {"scans": self.scans, "logged": self.logged, "seen": self.agg.seen,
                "table_drops": self.agg.drops, "ignored_own": self.agg.ignored}
