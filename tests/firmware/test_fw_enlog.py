# Encounter log: record format per docs/log-format.md, batching, recovery after a torn
# append, retention, acknowledgements and a full file system.
import binascii
import os
import random
import struct

import pytest

DAY = 20000  # a day number (unix // 86400)
T0 = DAY * 86400


def rec_args(i):
    rpi = bytes([i & 0xFF]) * 15 + bytes([i >> 8])
    return (rpi, b"\xa1\xa2\xa3\xa4", T0 + 100 + i, T0 + 130 + i, 7, -80, -60, -71)


def test_record_layout_matches_doc(fw):
    rpi = bytes(range(16))
    r = fw.enlog.encode(rpi, b"\x01\x02\x03\x04", 0x123456, 300, 300, -90, -40, -65)
    assert len(r) == 32
    assert r[0] == 1 and r[1:17] == rpi and r[17:21] == b"\x01\x02\x03\x04"
    assert r[21:24] == bytes([0x56, 0x34, 0x12])
    assert struct.unpack("<H", r[24:26])[0] == 300
    assert r[26] == 255  # count saturates
    assert struct.unpack("<bbb", r[27:30]) == (-90, -40, -65)
    assert struct.unpack("<H", r[30:32])[0] == binascii.crc32(bytes(r[:30])) & 0xFFFF
    assert fw.enlog.header(DAY) == b"TCLG\x01\x00\x00\x00" + struct.pack("<I", DAY) + bytes(4)
    d = fw.enlog.decode(r, 1)
    assert d == (rpi, b"\x01\x02\x03\x04", 86400 + 0x123456, 86400 + 0x123456 + 300, 255, -90, -40, -65)
    bad = bytearray(r)
    bad[5] ^= 1
    assert fw.enlog.decode(bad) is None


def test_append_flush_and_reopen(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    for i in range(10):
        log.add(*rec_args(i))
    assert not os.path.exists(log.path(DAY))  # batched in RAM until flush
    log.flush()
    assert os.path.getsize(log.path(DAY)) == 16 + 320
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.cut_bytes == 0
    s = log2.summary()
    assert s["records"] == 10 and s["days"] == 1
    assert s["first"] == T0 + 100 and s["last"] == T0 + 139
    data = open(log2.path(DAY), "rb").read()
    for i in range(10):
        r = fw.enlog.decode(data[16 + 32 * i: 48 + 32 * i], DAY)
        assert r == (rec_args(i)[0], b"\xa1\xa2\xa3\xa4", T0 + 100 + i, T0 + 130 + i, 7, -80, -60, -71)


def test_records_split_by_day(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    log.add(b"\x01" * 16, b"\x00" * 4, T0 - 5, T0 - 1, 1, -50, -50, -50)
    log.add(b"\x02" * 16, b"\x00" * 4, T0 + 5, T0 + 9, 1, -50, -50, -50)
    log.flush()
    assert log.days() == [DAY - 1, DAY]


@pytest.mark.parametrize("seed", range(20))
def test_torn_tail_is_cut_and_earlier_records_kept(fw, tmp_path, seed):
    rnd = random.Random(seed)
    log = fw.enlog.EncounterLog(str(tmp_path))
    n = rnd.randint(1, 30)
    for i in range(n):
        log.add(*rec_args(i))
    log.flush()
    p = log.path(DAY)
    good = open(p, "rb").read()
    # A torn append: a prefix of the next batch, possibly ending in the middle of a record,
    # and possibly with garbage where the flash was being programmed.
    batch = b"".join(bytes(fw.enlog.encode(*[a if j else a for j, a in enumerate(rec_args(100 + k))][:8])) for k in range(3))
    cut = rnd.randint(1, len(batch) - 1)
    torn = bytearray(batch[:cut])
    if rnd.random() < 0.5 and cut % 32:
        torn[-1] ^= 0xFF
    with open(p, "ab") as f:
        f.write(torn)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    after = open(p, "rb").read()
    whole = cut // 32
    assert after[: len(good)] == good
    assert len(after) == len(good) + whole * 32
    assert log2.cut_bytes == cut - whole * 32


def test_bad_last_record_crc_is_dropped(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    for i in range(5):
        log.add(*rec_args(i))
    log.flush()
    p = log.path(DAY)
    data = bytearray(open(p, "rb").read())
    data[-3] ^= 0x55  # corrupt the last record (full length, bad CRC)
    open(p, "wb").write(data)
    fw.enlog.EncounterLog(str(tmp_path))
    assert os.path.getsize(p) == 16 + 4 * 32
    assert open(p, "rb").read() == bytes(data[: 16 + 128])


def test_short_header_file_removed(fw, tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / f"{DAY}.tcl").write_bytes(b"TCL")
    log = fw.enlog.EncounterLog(str(tmp_path))
    assert log.days() == []


def test_retention_and_ack(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    for d in range(DAY - 15, DAY + 1):
        log.add(b"\x05" * 16, b"\x00" * 4, d * 86400 + 10, d * 86400 + 20, 2, -70, -60, -65)
    log.flush()
    assert len(log.days()) == 16
    deleted = log.housekeep(DAY)
    assert deleted == [DAY - 15, DAY - 14]
    assert log.days()[0] == DAY - 13
    # Acknowledging a whole past day deletes it; a partial ack or today's file is kept.
    size = os.path.getsize(log.path(DAY - 3))
    assert log.ack(DAY - 3, size, DAY) == [DAY - 3]
    assert log.ack(DAY - 2, 16, DAY) == []
    assert DAY - 2 in log.days()
    assert log.ack(DAY, os.path.getsize(log.path(DAY)), DAY) == []
    assert DAY in log.days()
    with pytest.raises(ValueError):
        log.ack(DAY - 1, 17, DAY)
    with pytest.raises(ValueError):
        log.ack(DAY - 1, 10**6, DAY)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.acks[DAY - 2] == 16
    segs = {d: (s, a) for d, s, a in log2.segments()}
    assert segs[DAY - 2] == (48, 16)


def test_full_flash_drops_oldest_day(fw, tmp_path, monkeypatch):
    # A file system of 40 KB: writing past it deletes the oldest whole day first.
    cap = 40 * 1024

    def used():
        return sum(f.stat().st_size for f in (tmp_path / "log").iterdir())

    def statvfs(path):
        free = max(0, cap - used())
        return (4096, 4096, cap // 4096, free // 4096, free // 4096, 0, 0, 0, 0, 255)

    monkeypatch.setattr(fw.fsutil.os, "statvfs", statvfs, raising=False)
    log = fw.enlog.EncounterLog(str(tmp_path), reserve_bytes=4096)
    for d in range(DAY - 5, DAY + 1):
        for i in range(200):
            log.add(*[(bytes([i]) * 16), b"\x00" * 4, d * 86400 + i, d * 86400 + i, 1, -60, -60, -60])
        log.flush()
    days = log.days()
    assert days[-1] == DAY
    assert days[0] > DAY - 5  # the oldest days went first
    assert days == list(range(days[0], DAY + 1))  # and only from the old end
    assert log.dropped == 0
    assert os.path.getsize(log.path(DAY)) == 16 + 200 * 32
