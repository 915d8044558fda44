# Scanner: passive, duty-cycled scans; keeps only 20-byte 0xFD6F service data; aggregates
# repeated sightings of one RPI per scan (first/last seen, count, RSSI min/max/mean).
# RAM is bounded: a fixed ring of raw sightings filled by the radio IRQ and a fixed table
# of distinct RPIs per scan. Overload policy (what goes first):
#  1. ring full (the task lags behind the IRQ): the newest sighting is dropped; an advertiser
#     repeats every ~250 ms, so this costs sighting counts / RSSI precision, not encounters;
#  2. table full (more distinct RPIs in one scan than slots): RPIs first heard after the table
#     filled are dropped for this scan (they are heard again in the next scan).
# Both are counted (ring_drops, table_drops). Records already aggregated are always logged.
import time

from micropython import const

from . import advert

_SLOT = const(20)
_KEYMASK = const(0x3FFFFFFF)


def _key(buf, off):
    # A 30-bit small int from the RPI's first bytes: dict lookups without allocating.
    return (buf[off] | (buf[off + 1] << 8) | (buf[off + 2] << 16) | (buf[off + 3] << 24)) & _KEYMASK


class SightingRing:
    # Filled from the BLE IRQ: copies the 20 EN bytes and the RSSI, never allocates.
    def __init__(self, size=64):
        self.size = size
        self.data = bytearray(size * _SLOT)
        self.rssi = [0] * size
        self.ticks = [time.ticks_ms()] * size
        self.head = 0
        self.count = 0
        self.drops = 0
        self.seen = 0

    def push(self, adv, rssi):
        off = advert.find_en(adv)
        if off < 0:
            return False
        self.seen += 1
        if self.count >= self.size:
            self.drops += 1
            return False
        i = (self.head + self.count) % self.size
        b = i * _SLOT
        d = self.data
        for j in range(_SLOT):
            d[b + j] = adv[off + j]
        self.rssi[i] = rssi
        self.ticks[i] = time.ticks_ms()
        self.count += 1
        return True

    def clear(self):
        self.head = 0
        self.count = 0


class Aggregator:
    # Distinct RPIs of one scan in preallocated tables. Times are ms since the scan began.
    def __init__(self, capacity=256):
        self.capacity = capacity
        self.ids = bytearray(capacity * _SLOT)
        self.first = [0] * capacity
        self.last = [0] * capacity
        self.cnt = [0] * capacity
        self.rmin = [0] * capacity
        self.rmax = [0] * capacity
        self.rsum = [0] * capacity
        self.index = {}
        self.n = 0
        self.drops = 0
        self.ignored = 0
        self.own = []  # RPIs this badge broadcasts (bytes), ignored

    def reset(self):
        self.index = {}
        self.n = 0

    def _is_own(self, buf, off):
        for rpi in self.own:
            same = True
            for j in range(16):
                if rpi[j] != buf[off + j]:
                    same = False
                    break
            if same:
                return True
        return False

    def add(self, buf, off, rssi, t_ms):
        k = _key(buf, off)
        s = self.index.get(k)
        if s is None:
            if self._is_own(buf, off):
                self.index[k] = -1
                self.ignored += 1
                return
            if self.n >= self.capacity:
                self.drops += 1
                return
            s = self.n
            self.n += 1
            self.index[k] = s
            b = s * _SLOT
            ids = self.ids
            for j in range(_SLOT):
                ids[b + j] = buf[off + j]
            self.first[s] = t_ms
            self.last[s] = t_ms
            self.cnt[s] = 1
            self.rmin[s] = rssi
            self.rmax[s] = rssi
            self.rsum[s] = rssi
            return
        if s < 0:
            self.ignored += 1
            return
        b = s * _SLOT
        ids = self.ids
        for j in range(16):
            if ids[b + j] != buf[off + j]:
                # 30-bit key collision with a different RPI: too rare to be worth a slot.
                self.drops += 1
                return
        if t_ms < self.first[s]:
            self.first[s] = t_ms
        if t_ms > self.last[s]:
            self.last[s] = t_ms
        self.cnt[s] += 1
        if rssi < self.rmin[s]:
            self.rmin[s] = rssi
        if rssi > self.rmax[s]:
            self.rmax[s] = rssi
        self.rsum[s] += rssi

    def drain(self, ring, t0_ticks):
        # Move raw sightings from the ring into the table (runs in a task, not the IRQ).
        while ring.count:
            i = ring.head
            self.add(ring.data, i * _SLOT, ring.rssi[i], time.ticks_diff(ring.ticks[i], t0_ticks))
            ring.head = (i + 1) % ring.size
            ring.count -= 1

    def records(self, start_unix):
        # Yields (rpi, aem, first_unix, last_unix, count, rssi_min, rssi_max, rssi_mean).
        ids = self.ids
        for s in range(self.n):
            b = s * _SLOT
            c = self.cnt[s]
            mean = self.rsum[s] / c
            mean = int(mean - 0.5) if mean < 0 else int(mean + 0.5)
            yield (bytes(ids[b : b + 16]), bytes(ids[b + 16 : b + 20]),
                   start_unix + self.first[s] // 1000, start_unix + self.last[s] // 1000,
                   c, self.rmin[s], self.rmax[s], mean)


class Scanner:
    # Duty cycle: a window of scan_window_ms every scan_every_s (defaults: 4 s every 120 s,
    # so every advertiser in range is scanned at least twice in any 5 minutes).
    def __init__(self, radio, clock, log, config, ring_size=64, capacity=256):
        self.radio = radio
        self.clock = clock
        self.log = log
        self.config = config
        self.ring = SightingRing(ring_size)
        self.agg = Aggregator(capacity)
        self.scans = 0
        self.logged = 0

    def own(self, rpis):
        self.agg.own = rpis

    async def scan_once(self):
        cfg = self.config
        agg = self.agg
        ring = self.ring
        agg.reset()
        ring.clear()
        start = self.clock.now()
        t0 = time.ticks_ms()
        await self.radio.scan(cfg["scan_window_ms"], ring, agg, t0)
        agg.drain(ring, t0)
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
        return {"scans": self.scans, "logged": self.logged, "seen": self.ring.seen,
                "ring_drops": self.ring.drops, "table_drops": self.agg.drops,
                "ignored_own": self.agg.ignored}
