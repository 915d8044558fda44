# Scanner aggregation: one record per RPI per scan, RSSI statistics, own adverts ignored,
# bounded RAM with more advertisers than slots.
import pytest


def adv(fw, i, aem=b"\x11\x22\x33\x44"):
    rpi = i.to_bytes(2, "little") * 8
    return bytes(fw.advert.build(rpi, aem)), rpi


def test_filter_accepts_only_20_byte_fd6f(fw):
    a, rpi = adv(fw, 1)
    assert fw.advert.find_en(a) == 11
    # Wrong UUID, wrong length, truncated, other AD types only.
    b = bytearray(a)
    b[10] = 0xFE
    assert fw.advert.find_en(b) == -1
    assert fw.advert.find_en(a[:30]) == -1
    assert fw.advert.find_en(b"\x02\x01\x06\x05\x09abcd") == -1
    short = b"\x02\x01\x1a\x03\x03\x6f\xfd\x13\x16\x6f\xfd" + bytes(16)
    assert fw.advert.find_en(short) == -1
    # Service data first, flags after: still found.
    moved = a[7:] + a[:7]
    assert fw.advert.find_en(moved) == 4


def test_aggregates_per_rpi(fw):
    agg = fw.scanner.Aggregator(16)
    a1, r1 = adv(fw, 1)
    a2, r2 = adv(fw, 2)
    agg.reset()
    for t, (a, rssi) in enumerate([(a1, -60), (a2, -80), (a1, -70), (a1, -41), (a2, -82)]):
        fw.ticks[0] = t * 1000
        agg.feed(memoryview(a), rssi)
    agg.feed(b"\x02\x01\x06", -50)  # not an EN advert: ignored
    recs = {r[0]: r for r in agg.records(1_700_000_000)}
    assert recs[r1] == (r1, b"\x11\x22\x33\x44", 1_700_000_000, 1_700_000_003, 3, -70, -41, -57)
    assert recs[r2] == (r2, b"\x11\x22\x33\x44", 1_700_000_001, 1_700_000_004, 2, -82, -80, -81)
    assert agg.seen == 5
    agg.reset()
    assert list(agg.records(0)) == []


def test_key_collisions_are_kept_apart(fw):
    # Same 30-bit key (first 4 bytes), different RPIs: two slots, not one.
    agg = fw.scanner.Aggregator(8)
    x = bytes(fw.advert.build(b"\xaa" * 4 + b"\x01" * 12, b"\x00" * 4))
    y = bytes(fw.advert.build(b"\xaa" * 4 + b"\x02" * 12, b"\x00" * 4))
    for a in (x, y, x, y, y):
        agg.feed(a, -60)
    assert sorted(r[4] for r in agg.records(0)) == [2, 3]


def test_own_adverts_ignored(fw):
    agg = fw.scanner.Aggregator(8)
    a1, r1 = adv(fw, 1)
    a2, r2 = adv(fw, 2)
    agg.own = [r1]
    agg.feed(a1, -30)
    agg.feed(a2, -60)
    agg.feed(a1, -30)
    assert [r[0] for r in agg.records(0)] == [r2]
    assert agg.ignored == 2


def test_crowd_of_200_is_bounded(fw):
    # 200 advertisers, each heard 16 times in one burst, a table of 150 slots.
    agg = fw.scanner.Aggregator(150)
    advs = [adv(fw, i)[0] for i in range(1, 201)]
    for rep in range(16):
        for a in advs:
            agg.feed(a, -70)
    recs = list(agg.records(0))
    assert len(recs) == 150  # the first 150 distinct RPIs keep their slots
    assert all(r[4] == 16 for r in recs)
    assert agg.drops == 50 * 16
    # The default table takes all 200.
    big = fw.scanner.Aggregator()
    for rep in range(3):
        for a in advs:
            big.feed(a, -70)
    assert len(list(big.records(0))) == 200 and big.drops == 0


def test_keystore_aligned_persisted_pruned(fw, tmp_path):
    import os as _os
    seq = iter(range(1, 100))
    ks = fw.keystore.KeyStore(str(tmp_path), urandom=lambda n: bytes([next(seq)]) * n)
    (tmp_path / "tc").mkdir()
    enin = 2642976 + 100
    rsin, tek = ks.tek_for(enin)
    assert rsin == 2642976 and tek == b"\x01" * 16
    assert ks.tek_for(enin + 43) == (rsin, tek)  # same day, same key
    for d in range(1, 16):
        ks.tek_for(enin + 144 * d)
    assert ks.count() == 14
    ks2 = fw.keystore.KeyStore(str(tmp_path))
    assert ks2.count() == 14
    assert (tmp_path / "tc" / "keys.bin").stat().st_size == 14 * 20
    now = enin + 144 * 15
    exp = ks2.export(now)
    assert len(exp) == 14
    assert all(r % 144 == 0 for r, _, _ in exp)
    assert exp[-1][2] == now - exp[-1][0] + 1  # today's key truncated to intervals so far
    assert all(p == 144 for _, _, p in exp[:-1])
    assert not any(n.endswith(".tmp") for n in _os.listdir(tmp_path / "tc"))
