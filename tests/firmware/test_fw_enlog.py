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


def test_v1_record_layout_matches_doc(fw):
    rpi = bytes(range(16))
    r = fw.enlog.encode(rpi, b"\x01\x02\x03\x04", 0x123456, 300, 300, -90, -40, -65)
    assert len(r) == 32
    assert r[0] == 1 and r[1:17] == rpi and r[17:21] == b"\x01\x02\x03\x04"
    assert r[21:24] == bytes([0x56, 0x34, 0x12])
    assert struct.unpack("<H", r[24:26])[0] == 300
    assert r[26] == 255  # count saturates
    assert struct.unpack("<bbb", r[27:30]) == (-90, -40, -65)
    assert struct.unpack("<H", r[30:32])[0] == binascii.crc32(bytes(r[:30])) & 0xFFFF
    assert fw.enlog.header(DAY, 1) == b"TCLG\x01\x00\x00\x00" + struct.pack("<I", DAY) + bytes(4)
    d = fw.enlog.decode(r, 1)
    assert d == (rpi, b"\x01\x02\x03\x04", 86400 + 0x123456, 86400 + 0x123456 + 300, 255, -90, -40, -65)
    bad = bytearray(r)
    bad[5] ^= 1
    assert fw.enlog.decode(bad) is None


def test_v2_record_layout_matches_doc(fw):
    rpi = bytes(range(16))
    r = fw.enlog.encode2(rpi, b"\x01\x02\x03\x04", 0x012345, [(0, -70, -61), (61, -75, -66)])
    assert len(r) == 17 + 2 * 3 + 2
    assert r[0] == 2 and r[1] == len(r)
    assert r[2:5] == bytes([0x45, 0x23, 0x01])
    assert r[5:13] == rpi[:8] and r[13:17] == b"\x01\x02\x03\x04"
    assert struct.unpack("<Bbb", r[17:20]) == (0, -70, -61)
    assert struct.unpack("<Bbb", r[20:23]) == (61, -75, -66)
    assert struct.unpack("<H", r[23:25])[0] == binascii.crc32(bytes(r[:23])) & 0xFFFF
    assert fw.enlog.header(DAY, 2, 0xA1B2C3D4) == (b"TCLG\x02\x08\x00\x00" + struct.pack("<I", DAY)
                                                  + struct.pack("<I", 0xA1B2C3D4))
    assert fw.enlog.decode2(r, 1) == (rpi[:8], b"\x01\x02\x03\x04",
                                      [(86400 + 0x012345, -70, -61), (86400 + 0x012345 + 122, -75, -66)])
    bad = bytearray(r)
    bad[7] ^= 1
    assert fw.enlog.decode2(bad) is None
    for n in (4, 5, 255, 256, 258, 259, 600):
        pads = fw.enlog.pad2(n)
        assert len(pads) == n
        off = 0
        while off < n:
            k = fw.enlog.record2_len(pads, off, n - off)
            assert k >= 4 and pads[off] == 0
            off += k
        assert off == n


def scan_add(log, t, rpis, rssi=-70):
    for j, rpi in enumerate(rpis):
        log.add(rpi, b"\xa1\xa2\xa3\xa4", t + j % 3, t + j % 3 + 2, 9, rssi - 9, rssi + 5, rssi)
    log.flush()


def test_one_record_per_rpi_over_its_lifetime(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    rpis = [bytes([i]) * 16 for i in range(10)]
    for k in range(5):  # five scans, 120 s apart, every RPI heard in each
        scan_add(log, T0 + 100 + 120 * k, rpis, -70 - k)
    assert not os.path.exists(log.path(DAY))  # still being heard: kept in RAM
    assert log.pending() == 10
    scan_add(log, T0 + 700, [])
    scan_add(log, T0 + 820, [])
    scan_add(log, T0 + 940, [])  # not heard in two scans: written
    data = open(log.path(DAY), "rb").read()
    assert len(data) == 16 + 10 * (17 + 5 * 3 + 2)
    assert data[:6] == b"TCLG\x02\x08"
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.cut_bytes == 0
    s = log2.summary()
    assert s["records"] == 10 and s["days"] == 1
    assert s["first"] == T0 + 100 and s["last"] == T0 + 100 + 480 + 2
    assert s["generation"] == log2.info(DAY)[1] != 0
    off = 16
    got = {}
    while off < len(data):
        n = data[off + 1]
        rpi, aem, scans = fw.enlog.decode2(data[off:off + n], DAY)
        assert aem == b"\xa1\xa2\xa3\xa4"
        got[rpi] = scans
        off += n
    assert [s[0][0] for s in got.values()] == sorted(s[0][0] for s in got.values())  # by first seen
    for i in range(10):
        scans = got[rpis[i][:8]]
        assert [t for t, _, _ in scans] == [T0 + 100 + i % 3 + 120 * k for k in range(5)]
        assert [(a, b) for _, a, b in scans] == [(-70 - k, -65 - k) for k in range(5)]


def test_final_flush_writes_open_records_and_gaps_split(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    scan_add(log, T0 + 100, [b"\x01" * 16])
    scan_add(log, T0 + 100 + 600, [b"\x01" * 16])  # 600 s later: 300 units fit no byte
    log.flush(True)
    data = open(log.path(DAY), "rb").read()
    assert len(data) == 16 + 2 * (17 + 3 + 2)


def test_records_split_by_day(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    log.add(b"\x01" * 16, b"\x00" * 4, T0 - 5, T0 - 1, 1, -50, -50, -50)
    log.add(b"\x02" * 16, b"\x00" * 4, T0 + 5, T0 + 9, 1, -50, -50, -50)
    log.add(b"\x01" * 16, b"\x00" * 4, T0 + 115, T0 + 119, 1, -50, -50, -50)
    log.flush(True)
    assert log.days() == [DAY - 1, DAY]
    assert os.path.getsize(log.path(DAY)) == 16 + 2 * 22
    assert log.info(DAY)[1] != log.info(DAY - 1)[1]  # a new random generation per file


@pytest.mark.parametrize("seed", range(20))
def test_torn_tail_is_repaired_in_place_and_earlier_records_kept(fw, tmp_path, seed):
    rnd = random.Random(seed)
    log = fw.enlog.EncounterLog(str(tmp_path))
    n = rnd.randint(1, 30)
    scan_add(log, T0 + 100, [bytes([i]) * 16 for i in range(n)])
    log.flush(True)
    p = log.path(DAY)
    good = open(p, "rb").read()
    ino = os.stat(p).st_ino
    # A torn append: a prefix of the next batch, possibly ending in the middle of a record,
    # and possibly with garbage where the flash was being programmed.
    batch = b"".join(bytes(fw.enlog.encode2(bytes([200 + k]) * 16, b"\x00" * 4, 5000 + k,
                                            [(0, -60, -55), (60, -61, -50)])) for k in range(3))
    cut = rnd.randint(1, len(batch) - 1)
    torn = bytearray(batch[:cut])
    if rnd.random() < 0.5:
        torn[-1] ^= 0xFF
    with open(p, "ab") as f:
        f.write(torn)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    after = open(p, "rb").read()
    assert os.stat(p).st_ino == ino  # repaired in place, not copied
    assert after[: len(good)] == good
    whole = 0
    off = len(good)
    while fw.enlog.record2_len(after, off, len(after) - off) and after[off] == 2:
        whole += 1
        off += after[off + 1]
    flipped = torn[-1] != batch[cut - 1]
    assert whole == cut // 25 - (1 if flipped and cut % 25 == 0 else 0)
    # The rest is padding: the segment parses to the end with no error.
    assert log2.cut_bytes == len(good) + cut - off
    assert fw.enlog.EncounterLog(str(tmp_path)).cut_bytes == 0
    scan_add(log2, T0 + 9000, [b"\x77" * 16])
    log2.flush(True)
    from tracecode.station import logfmt
    parsed = logfmt.parse_segment(open(p, "rb").read(), 0, DAY)
    assert parsed.crc_errors == 0
    assert len(parsed.records) == n + 2 * whole + 1
    assert parsed.records[-1].rpi == b"\x77" * 8


def test_bad_last_record_crc_is_padded_over(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    scan_add(log, T0 + 100, [bytes([i]) * 16 for i in range(5)])
    log.flush(True)
    p = log.path(DAY)
    data = bytearray(open(p, "rb").read())
    data[-3] ^= 0x55  # corrupt the last record (full length, bad CRC)
    open(p, "wb").write(data)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.cut_bytes == 22
    after = open(p, "rb").read()
    assert len(after) == len(data) and after[: 16 + 4 * 22] == bytes(data[: 16 + 4 * 22])
    assert after[16 + 4 * 22] == 0  # a pad record
    assert log2.summary()["records"] == 4


def test_mid_file_corruption_is_skipped_not_cut(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    scan_add(log, T0 + 100, [bytes([i]) * 16 for i in range(5)])
    log.flush(True)
    p = log.path(DAY)
    data = bytearray(open(p, "rb").read())
    data[16 + 22 + 8] ^= 0x10  # flip a bit in the second record
    open(p, "wb").write(data)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.cut_bytes == 0 and open(p, "rb").read() == bytes(data)
    assert log2.summary()["records"] == 4


def test_v1_segment_stays_readable_and_gets_v1_records_until_the_day_ends(fw, tmp_path):
    # A badge upgraded mid-day: its v1 file for today keeps v1 records; tomorrow is v2.
    (tmp_path / "log").mkdir()
    old = [fw.enlog.encode(*rec_args(i)) for i in range(3)]
    p = tmp_path / "log" / f"{DAY}.tcl"
    p.write_bytes(fw.enlog.header(DAY, 1) + b"".join(bytes(r) for r in old) + b"\x01\x02\x03")
    log = fw.enlog.EncounterLog(str(tmp_path))
    assert log.cut_bytes == 3 and log.info(DAY) == (1, 0)
    data = p.read_bytes()
    assert len(data) == 16 + 4 * 32 and data[16 + 96] == 0  # torn tail: one v1 pad record
    log.add(*rec_args(7))
    log.add(b"\x09" * 16, b"\x00" * 4, T0 + 86400 + 5, T0 + 86400 + 6, 1, -50, -50, -50)
    log.flush(True)
    data = p.read_bytes()
    assert len(data) == 16 + 5 * 32
    assert fw.enlog.decode(data[-32:], DAY) == (rec_args(7)[0], b"\xa1\xa2\xa3\xa4", T0 + 107, T0 + 137,
                                                 7, -80, -60, -71)
    assert log.info(DAY + 1)[0] == 2
    s = log.summary()
    assert s["records"] == 5 and s["days"] == 2
    assert log.ack(DAY, 16 + 32, DAY + 1) == []
    with pytest.raises(ValueError):
        log.ack(DAY, 17 + 32, DAY + 1)


def test_short_header_file_removed(fw, tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / f"{DAY}.tcl").write_bytes(b"TCL")
    log = fw.enlog.EncounterLog(str(tmp_path))
    assert log.days() == []


def test_retention_and_ack(fw, tmp_path):
    log = fw.enlog.EncounterLog(str(tmp_path))
    for d in range(DAY - 15, DAY + 1):
        log.add(b"\x05" * 16, b"\x00" * 4, d * 86400 + 10, d * 86400 + 20, 2, -70, -60, -65)
    log.flush(True)
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
        log.ack(DAY - 1, 10**6, DAY)
    log2 = fw.enlog.EncounterLog(str(tmp_path))
    assert log2.acks[DAY - 2] == 16
    segs = {d: (s, a) for d, s, a in log2.segments()}
    assert segs[DAY - 2] == (16 + 22, 16)


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
        for i in range(400):
            log.add(*[(struct.pack("<H", i) * 8), b"\x00" * 4, d * 86400 + i, d * 86400 + i, 1, -60, -60, -60])
        log.flush(True)
    days = log.days()
    assert days[-1] == DAY
    assert days[0] > DAY - 5  # the oldest days went first
    assert days == list(range(days[0], DAY + 1))  # and only from the old end
    assert log.dropped == 0
    assert os.path.getsize(log.path(DAY)) == 16 + 400 * 22


# -- the firmware's log on real littlefs inside the real MicroPython unix port -------------
MP_LFS = __import__("pathlib").Path(__file__).resolve().parent / "mp" / "mp_lfs.py"


def _micropython(*args):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    fw_dir = Path(__file__).resolve().parents[2] / "firmware"
    proc = subprocess.run([exe, "-X", "heapsize=48M", str(MP_LFS), str(fw_dir), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_full_littlefs_and_torn_record_at_boot_in_micropython():
    # Every block of the partition used and the newest file ending in a torn record: the
    # log opens (the badge boots), repairs the tail in place after freeing the oldest day,
    # keeps every earlier byte, and keeps logging.
    r = _micropython("tornboot")
    assert r["torn_bytes"] == 11 and r["free_before_boot"] == 0
    assert r["cut_bytes"] == 11 and r["repair_failed"] == 0
    assert r["prefix_kept"] and r["size_repaired"] >= r["size_before"] + 11
    assert r["days"] == [20001, 20002]  # the oldest day made room
    assert r["dropped"] == 0 and r["records"] > 2000


def test_classroom_day_on_littlefs_in_micropython():
    # One school day of a 30-person classroom: one record per heard RPI, far below v1's
    # 32 bytes per neighbour-scan (the figure itself: tools/bench_firmware.py).
    r = _micropython("bench", "1")
    assert 6500 <= r["neighbour_scans_per_day"] <= 7100
    assert r["flash_bytes_per_neighbour_scan"] < 8
    assert 29 * 8 * 6 * 0.9 <= r["records_per_day"] <= 29 * 8 * 6 * 1.3


def test_a_second_log_object_writes_the_first_ones_open_records(fw, tmp_path):
    # The app interrupted by a host without flush(True): the host interface's own log
    # object writes what the app still held in RAM before it lists or reads segments.
    app_log = fw.enlog.EncounterLog(str(tmp_path))
    scan_add(app_log, T0 + 100, [b"\x01" * 16, b"\x02" * 16])
    assert not os.path.exists(app_log.path(DAY))
    host_log = fw.enlog.EncounterLog(str(tmp_path))
    assert host_log.summary()["records"] == 2 and app_log.pending() == 0
