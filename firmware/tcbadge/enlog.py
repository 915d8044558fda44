# Encounter log (docs/log-format.md): one append-only segment file per UTC day under /log.
# Format v2: one variable-length record per heard RPI over its lifetime (8-byte RPI prefix,
# AEM, first-seen time, then 3 bytes per scan: time offset, typical and strongest RSSI),
# CRC'd. RPIs are aggregated in a fixed RAM table across scans and written when they stop
# being heard (the scanner calls flush() after every scan; flush(True) writes everything).
# v1 files (32-byte record per RPI per scan) stay readable, and a day whose file is v1 keeps
# getting v1 records until the day ends, so an upgraded badge loses and re-sends nothing.
#
# Never brick: a torn tail (power cut mid-append, ENOSPC) is repaired in place by writing
# pad records over it (littlefs rewrites only the last block), never by copying the file;
# a repair that still fails leaves the day read-only and the badge keeps running.
import binascii
import json
import os
import struct

from micropython import const

from . import fsutil

HEADER_LEN = const(16)
REC_LEN = const(32)  # v1 record
RPI_LEN = const(8)  # v2: RPI prefix kept
ENC_HEAD = const(17)  # v2 encounter: type, length, t0 (u24), RPI prefix, AEM
ENTRY_LEN = const(3)  # v2 per scan: offset (2 s units from the previous scan), typical, max
PAD_MIN = const(4)
MAX_SCANS = const(24)  # scans per record (a longer-lived RPI continues in a new record)
_REC_ENCOUNTER = const(1)
_T_PAD = const(0)
_T_ENC2 = const(2)
_VERSION = const(2)
_DAY_S = const(86400)
_KEEP_DAYS = const(14)
_MAX_PENDING = const(256)
# Closed records wait in one fixed write buffer, allocated with the log (on a fresh heap):
# a buffer that grows with a crowd's records needs ever larger single blocks, which a heap
# fragmented by hours of tracing may not have (MemoryError with tens of KB free, found on
# the MicroPython VM badge). It is written out when full, at a day change and at flush.
_WBUF = const(1024)
_WBUF_SMALL = const(128)  # a log that holds at most one open record (the host interface's)
_OPEN_MAX = const(64)
_GAP_SCANS = const(2)  # a record closes when its RPI was not heard in this many scans
_ID_LEN = const(12)  # RPI prefix + AEM per open slot
_RESERVE = const(8192)  # keep this much of the file system free for keys, config, littlefs
_WIN = const(512)
MAGIC = b"TCLG"


def header(day, version=_VERSION, gen=0):
    if version == 1:
        return MAGIC + bytes((1, 0, 0, 0)) + struct.pack("<II", day, 0)
    return MAGIC + bytes((_VERSION, RPI_LEN, 0, 0)) + struct.pack("<II", day, gen)


_GEN_CTR = [0]
_LIVE = []  # the newest EncounterLog of this interpreter (0 or 1 item)


def new_generation():
    # A random nonzero u32 (a segment file's generation).
    g = 0
    while g == 0:
        try:
            r = os.urandom(4)
            g = r[0] | (r[1] << 8) | (r[2] << 16) | (r[3] << 24)
        except (OSError, AttributeError):  # no entropy source (some test VMs): time-based
            _GEN_CTR[0] += 1
            g = (id(_GEN_CTR) * 2654435761 + _GEN_CTR[0] * 40503) & 0xFFFFFFFF
    return g


def _i8(v):
    if v < -128:
        v = -128
    elif v > 127:
        v = 127
    return v & 0xFF


def _s8(b):
    return b - 256 if b > 127 else b


def _crc16(mv):
    return binascii.crc32(mv) & 0xFFFF


# ---------------------------------------------------------------- v1 records (32 bytes)

def encode_into(buf, off, rpi, aem, first_s, dur_s, count, rmin, rmax, rmean):
    # first_s: seconds since the day start (u24); dur_s: last - first (u16, saturating).
    buf[off] = _REC_ENCOUNTER
    buf[off + 1 : off + 17] = rpi
    buf[off + 17 : off + 21] = aem
    buf[off + 21] = first_s & 0xFF
    buf[off + 22] = (first_s >> 8) & 0xFF
    buf[off + 23] = (first_s >> 16) & 0xFF
    if dur_s > 0xFFFF:
        dur_s = 0xFFFF
    buf[off + 24] = dur_s & 0xFF
    buf[off + 25] = dur_s >> 8
    buf[off + 26] = count if count < 255 else 255
    buf[off + 27] = _i8(rmin)
    buf[off + 28] = _i8(rmax)
    buf[off + 29] = _i8(rmean)
    crc = _crc16(memoryview(buf)[off : off + 30])
    buf[off + 30] = crc & 0xFF
    buf[off + 31] = crc >> 8


def encode(rpi, aem, first_s, dur_s, count, rmin, rmax, rmean):
    b = bytearray(REC_LEN)
    encode_into(b, 0, rpi, aem, first_s, dur_s, count, rmin, rmax, rmean)
    return b


def pad1():
    # A v1 pad record (type 0, valid CRC): written over a torn v1 tail, skipped by readers.
    b = bytearray(REC_LEN)
    crc = _crc16(memoryview(b)[0:30])
    b[30] = crc & 0xFF
    b[31] = crc >> 8
    return b


def _crc1_ok(rec):
    crc = _crc16(memoryview(rec)[0:30])
    return rec[30] == (crc & 0xFF) and rec[31] == (crc >> 8)


def record_ok(rec):
    return len(rec) == REC_LEN and rec[0] == _REC_ENCOUNTER and _crc1_ok(rec)


def decode(rec, day=0):
    # (rpi, aem, first_unix, last_unix, count, rssi_min, rssi_max, rssi_mean) or None.
    if not record_ok(rec):
        return None
    first = day * _DAY_S + (rec[21] | (rec[22] << 8) | (rec[23] << 16))
    dur = rec[24] | (rec[25] << 8)
    return (bytes(rec[1:17]), bytes(rec[17:21]), first, first + dur, rec[26],
            _s8(rec[27]), _s8(rec[28]), _s8(rec[29]))


# ---------------------------------------------------------------- v2 records

def record2_len(buf, off, avail):
    # Length of the valid v2 record (encounter or pad) at buf[off:], 0 if there is none.
    if avail < PAD_MIN:
        return 0
    t = buf[off]
    n = buf[off + 1]
    if n < PAD_MIN or n > avail:
        return 0
    if t == _T_ENC2:
        if n < ENC_HEAD + ENTRY_LEN + 2 or (n - ENC_HEAD - 2) % ENTRY_LEN:
            return 0
    elif t != _T_PAD:
        return 0
    crc = _crc16(memoryview(buf)[off : off + n - 2])
    if buf[off + n - 2] != (crc & 0xFF) or buf[off + n - 1] != (crc >> 8):
        return 0
    return n


def encode2_into(buf, off, t0_s, ids, ioff, ent, eoff, n):
    # One v2 encounter record at buf[off]; ids[ioff:ioff+12] = RPI prefix + AEM, ent holds
    # n 3-byte scan entries. Returns its length.
    ln = ENC_HEAD + n * ENTRY_LEN + 2
    buf[off] = _T_ENC2
    buf[off + 1] = ln
    buf[off + 2] = t0_s & 0xFF
    buf[off + 3] = (t0_s >> 8) & 0xFF
    buf[off + 4] = (t0_s >> 16) & 0xFF
    for j in range(_ID_LEN):
        buf[off + 5 + j] = ids[ioff + j]
    p = off + ENC_HEAD
    for j in range(n * ENTRY_LEN):
        buf[p + j] = ent[eoff + j]
    crc = _crc16(memoryview(buf)[off : off + ln - 2])
    buf[off + ln - 2] = crc & 0xFF
    buf[off + ln - 1] = crc >> 8
    return ln


def encode2(rpi, aem, t0_s, scans):
    # scans: [(delta_2s, typical_rssi, max_rssi)], for tests and tools.
    ids = bytearray(_ID_LEN)
    ids[0:RPI_LEN] = rpi[0:RPI_LEN]
    ids[RPI_LEN:_ID_LEN] = aem
    ent = bytearray(len(scans) * ENTRY_LEN)
    for i in range(len(scans)):
        d, typ, mx = scans[i]
        ent[3 * i] = d
        ent[3 * i + 1] = _i8(typ)
        ent[3 * i + 2] = _i8(mx)
    b = bytearray(ENC_HEAD + len(ent) + 2)
    encode2_into(b, 0, t0_s, ids, 0, ent, 0, len(scans))
    return b


def decode2(rec, day=0):
    # (rpi_prefix, aem, [(unix, typical, max), ...]) or None.
    if record2_len(rec, 0, len(rec)) != len(rec) or rec[0] != _T_ENC2:
        return None
    t = day * _DAY_S + (rec[2] | (rec[3] << 8) | (rec[4] << 16))
    out = []
    acc = 0
    for p in range(ENC_HEAD, len(rec) - 2, ENTRY_LEN):
        acc += rec[p]
        out.append((t + 2 * acc, _s8(rec[p + 1]), _s8(rec[p + 2])))
    return bytes(rec[5:13]), bytes(rec[13:17]), out


def pad2(n):
    # Pad records covering exactly n >= PAD_MIN bytes (each at most 255 bytes).
    out = bytearray(n)
    off = 0
    while off < n:
        k = n - off
        if k > 255:
            k = 255 if k - 255 >= PAD_MIN else k - PAD_MIN
        out[off] = _T_PAD
        out[off + 1] = k
        crc = _crc16(memoryview(out)[off : off + k - 2])
        out[off + k - 2] = crc & 0xFF
        out[off + k - 1] = crc >> 8
        off += k
    return out


def _read_at(f, pos, buf):
    f.seek(pos)
    k = f.readinto(buf)
    return k if k else 0


def walk2(f, size, fn=None):
    # Walk the v2 records of an open segment. fn(pos, buf, i, n) is called per encounter
    # record (buf[i:i+n]). Returns (end of the last good record, encounters, corrupt spans).
    # A bad record followed by a good one is flash corruption: skipped (resynchronised on
    # the next valid record); a bad record with nothing good after it is a torn tail.
    buf = bytearray(_WIN)
    pos = HEADER_LEN
    count = 0
    bad = 0
    while pos < size:
        k = _read_at(f, pos, buf)
        n = record2_len(buf, 0, k)
        if n:
            if buf[0] == _T_ENC2:
                count += 1
                if fn is not None:
                    fn(pos, buf, 0, n)
            pos += n
            continue
        q = _resync(f, pos + 1, size, buf)
        if q < 0:
            break
        bad += 1
        pos = q
    if pos > size:
        pos = size
    return pos, count, bad


def _resync(f, start, size, buf):
    # The first offset >= start where a valid v2 record begins, -1 if none.
    pos = start
    while pos < size:
        k = _read_at(f, pos, buf)
        lim = k - 255 if k == _WIN else k
        if lim < 1:
            lim = 1
        for i in range(lim):
            if (buf[i] == _T_ENC2 or buf[i] == _T_PAD) and record2_len(buf, i, k - i):
                return pos + i
        pos += lim
    return -1


def _version(path):
    # (version, generation) of a segment file, (0, 0) when unreadable or not ours.
    try:
        with open(path, "rb") as f:
            h = f.read(HEADER_LEN)
    except OSError:
        return 0, 0
    if len(h) < HEADER_LEN or h[0:4] != MAGIC:
        return 0, 0
    if h[4] == 1:
        return 1, 0
    if h[4] == _VERSION and h[5] == RPI_LEN:
        return 2, h[12] | (h[13] << 8) | (h[14] << 16) | (h[15] << 24)
    return 0, 0


def _overwrite(path, at, data):
    # Write data at offset `at` (over a torn tail), in place: no copy of the file.
    with open(path, "r+b") as f:
        f.seek(at)
        mv = memoryview(data)
        i = 0
        while i < len(data):
            f.write(mv[i : i + 256])
            i += 256


def recover(path, day):
    # Repair a torn tail in place. Returns the torn bytes found (0 when clean, -1 when the
    # file was unusable: removed or set aside). Raises OSError when the repair write fails.
    n = fsutil.size(path)
    if n < 0:
        return 0
    if n < HEADER_LEN:
        fsutil.remove(path)
        return -1
    v, _ = _version(path)
    if v == 0:
        # Not ours or a different version: keep it aside, never append to it.
        fsutil.remove(path + ".bad")
        os.rename(path, path + ".bad")
        return -1
    if v == 1:
        with open(path, "rb") as f:
            good = HEADER_LEN + ((n - HEADER_LEN) // REC_LEN) * REC_LEN
            rec = bytearray(REC_LEN)
            while good > HEADER_LEN:
                f.seek(good - REC_LEN)
                f.readinto(rec)
                if _crc1_ok(rec) and rec[0] in (_REC_ENCOUNTER, 0):
                    break
                good -= REC_LEN
        if good == n:
            return 0
        k = (n - good + REC_LEN - 1) // REC_LEN
        p = pad1()
        fill = bytearray(k * REC_LEN)
        for i in range(k):
            fill[i * REC_LEN : (i + 1) * REC_LEN] = p
        _overwrite(path, good, fill)
        return n - good
    with open(path, "rb") as f:
        good, _, _ = walk2(f, n)
    if good >= n:
        return 0
    k = n - good
    _overwrite(path, good, pad2(k if k >= PAD_MIN else PAD_MIN))
    return k


class EncounterLog:
    def __init__(self, root="", keep_days=_KEEP_DAYS, reserve_bytes=_RESERVE, open_max=_OPEN_MAX):
        self._dir = root + "/log"
        self._ack_path = self._dir + "/ack.json"
        self.keep_days = keep_days
        self.reserve = reserve_bytes
        self.dropped = 0  # records lost because the flash was full
        self.cut_bytes = 0  # torn-tail bytes repaired at open
        self.repair_failed = 0  # days left read-only because their repair failed
        self.deleted = []  # days deleted since boot
        # closed records not yet written: all of one day, in a fixed buffer
        self._wbuf = bytearray(_WBUF if open_max > 1 else _WBUF_SMALL)
        self._wlen = 0
        self._wday = -1
        self._npending = 0
        self._info = {}  # day -> (version, generation)
        self._frozen = {}  # day -> True: torn and not repairable, never appended to
        # Open v2 records (RPIs still being heard): a fixed table, no growth.
        self._omax = open_max
        self._okey = {}  # RPI prefix -> slot
        self._ids = bytearray(open_max * _ID_LEN)
        self._ent = bytearray(open_max * MAX_SCANS * ENTRY_LEN)
        self._t0 = [0] * open_max
        self._n = [0] * open_max
        self._loff = [0] * open_max  # offset of the last entry, 2 s units since t0
        self._seen = [0] * open_max  # scan number it was last heard in
        self._free = list(range(open_max))
        self._seq = 0
        self.acks = {}
        # A second log object (the host interface after the app was interrupted) first
        # writes the records the app still holds in RAM, whoever stopped the app.
        prev = _LIVE.pop() if _LIVE else None
        if prev is not None and prev._okey:
            try:
                prev.flush(True)
            except OSError:
                pass
        _LIVE.append(self)
        try:
            self._open()
        except OSError:
            pass  # never stop the badge: an unreadable log still lets it trace and sync

    def _open(self):
        fsutil.mkdir(self._dir)
        raw = fsutil.read(self._ack_path)
        if raw:
            try:
                for k, v in json.loads(raw).items():
                    self.acks[int(k)] = int(v)
            except (ValueError, AttributeError):
                self.acks = {}
        for name in os.listdir(self._dir):
            if name.endswith(".tmp"):
                fsutil.remove(self._dir + "/" + name)
        days = self.days()
        # A torn append can only be in the files last appended to: the two newest days.
        for day in days[-2:]:
            self._repair(day)
        for day in self.days():
            self._info[day] = _version(self.path(day))

    def _repair(self, day):
        p = self.path(day)
        for attempt in range(3):
            try:
                c = recover(p, day)
                if c > 0:
                    self.cut_bytes += c
                return True
            except OSError:
                # No space for even one block: free the oldest other day, then retry.
                if not self._drop_oldest(day):
                    break
        self._frozen[day] = True
        self.repair_failed += 1
        return False

    def path(self, day):
        return self._dir + "/" + str(day) + ".tcl"

    def days(self):
        out = []
        try:
            names = os.listdir(self._dir)
        except OSError:
            return out
        for name in names:
            if name.endswith(".tcl"):
                try:
                    out.append(int(name[:-4]))
                except ValueError:
                    pass
        out.sort()
        return out

    def info(self, day):
        # (format version, generation) of a day's segment; (0, 0) when there is none.
        i = self._info.get(day)
        if i is None:
            i = _version(self.path(day))
            self._info[day] = i
        return i

    def generation(self):
        # The generation of the newest segment (0 when the log is empty).
        d = self.days()
        return self.info(d[-1])[1] if d else 0

    # -- appending
    def _room(self, day, n):
        # Make room for an n-byte record of `day` in the write buffer; returns its offset.
        if self._wlen and (self._wday != day or self._wlen + n > len(self._wbuf)):
            self._drain()
        self._wday = day
        return self._wlen

    def add(self, rpi, aem, first_unix, last_unix, count, rmin, rmax, rmean):
        # One RPI heard in one scan (the scanner's aggregate). Returns True when the caller
        # should flush soon (much is pending).
        day = first_unix // _DAY_S
        if self.info(day)[0] == 1:
            # Today's file predates the upgrade: v1 records until the day ends.
            off = self._room(day, REC_LEN)
            encode_into(self._wbuf, off, rpi, aem, first_unix - day * _DAY_S, last_unix - first_unix,
                        count, rmin, rmax, rmean)
            self._wlen = off + REC_LEN
            self._npending += 1
            return self._npending >= _MAX_PENDING
        k = bytes(rpi[0:RPI_LEN])
        s = self._okey.get(k)
        if s is not None:
            d = (first_unix - self._t0[s] + 1) // 2 - self._loff[s]
            if (first_unix // _DAY_S != self._t0[s] // _DAY_S or self._n[s] >= MAX_SCANS
                    or d < 0 or d > 255):
                self._close(s)
                s = None
        if s is None:
            if not self._free:
                old = 0
                for j in range(1, self._omax):
                    if self._seen[j] < self._seen[old]:
                        old = j
                self._close(old)
            s = self._free.pop()
            self._okey[k] = s
            b = s * _ID_LEN
            ids = self._ids
            for j in range(RPI_LEN):
                ids[b + j] = rpi[j]
            for j in range(4):
                ids[b + RPI_LEN + j] = aem[j]
            self._t0[s] = first_unix
            self._n[s] = 0
            self._loff[s] = 0
            d = 0
        e = (s * MAX_SCANS + self._n[s]) * ENTRY_LEN
        ent = self._ent
        ent[e] = d
        ent[e + 1] = _i8(rmean)
        ent[e + 2] = _i8(rmax)
        self._n[s] += 1
        self._loff[s] += d
        self._seen[s] = self._seq
        return self._npending >= _MAX_PENDING

    def _close(self, s):
        # Move an open record into the pending write buffer of its day.
        t0 = self._t0[s]
        day = t0 // _DAY_S
        n = self._n[s]
        b = s * _ID_LEN
        del self._okey[bytes(self._ids[b : b + RPI_LEN])]
        self._free.append(s)
        if n == 0:
            return
        off = self._room(day, ENC_HEAD + n * ENTRY_LEN + 2)
        self._wlen = off + encode2_into(self._wbuf, off, t0 - day * _DAY_S, self._ids, b, self._ent,
                                        s * MAX_SCANS * ENTRY_LEN, n)
        self._n[s] = 0
        self._npending += 1

    def pending(self):
        # Records waiting in RAM: written ones pending plus RPIs still being heard.
        return self._npending + len(self._okey)

    def flush(self, final=False):
        # End of a scan: close the records of RPIs not heard in the last scans and write
        # them (one write per day, then close: littlefs commits on close). final=True (the
        # app stopping, a sync starting) writes every open record too.
        self._seq += 1
        done = []
        for k in self._okey:
            s = self._okey[k]
            if final or self._seq - self._seen[s] > _GAP_SCANS:
                done.append(s)
        t0 = self._t0
        for i in range(1, len(done)):  # written in first-seen order (insertion sort, <= 64)
            s = done[i]
            j = i - 1
            while j >= 0 and t0[done[j]] > t0[s]:
                done[j + 1] = done[j]
                j -= 1
            done[j + 1] = s
        for i in range(len(done)):
            self._close(done[i])  # writes the buffer out whenever it is full
        self._drain()

    def _drain(self):
        n = self._wlen
        if n:
            self._wlen = 0
            if not self._write(self._wday, memoryview(self._wbuf)[0:n]):
                self.dropped += self._npending
        self._npending = 0

    def close(self):
        self.flush(True)

    def _write(self, day, data):
        if self._frozen.get(day):
            return False
        p = self.path(day)
        for attempt in range(self.keep_days + 1):
            new = fsutil.size(p) < 0
            need = len(data) + (HEADER_LEN if new else 0)
            free, _ = fsutil.free_bytes(self._dir)
            if free >= 0 and free < need + self.reserve:
                if self._drop_oldest(day):
                    continue
            try:
                if new:
                    gen = new_generation()
                    v = self._info.get(day, (_VERSION, 0))[0]
                    self._info[day] = (_VERSION, gen) if v != 1 else (1, 0)
                    with open(p, "ab") as f:
                        f.write(header(day, self._info[day][0], gen))
                        f.write(data)
                else:
                    with open(p, "ab") as f:
                        f.write(data)
                return True
            except OSError as e:
                if e.args and e.args[0] == 28:
                    # ENOSPC: repair any partial append in place, free the oldest day, retry.
                    if fsutil.size(p) >= 0 and not self._repair(day):
                        return False
                    if self._drop_oldest(day):
                        continue
                return False
        return False

    def _drop_oldest(self, keep_day):
        for d in self.days():
            if d < keep_day:
                self._delete(d)
                return True
        return False

    def _delete(self, day):
        fsutil.remove(self.path(day))
        if day in self._info:
            del self._info[day]
        if day in self.acks:
            del self.acks[day]
            try:
                self._save_acks()
            except OSError:
                pass
        self.deleted.append(day)
        if len(self.deleted) > 16:
            self.deleted.pop(0)

    def _save_acks(self):
        d = {}
        for k in self.acks:
            d[str(k)] = self.acks[k]
        fsutil.write_atomic(self._ack_path, json.dumps(d))

    def housekeep(self, today):
        # 14-day retention, and fully acknowledged past days are deleted.
        out = []
        for d in self.days():
            if d <= today - self.keep_days:
                self._delete(d)
                out.append(d)
            elif d < today and self.acks.get(d, 0) >= fsutil.size(self.path(d)) > 0:
                self._delete(d)
                out.append(d)
        return out

    def segments(self):
        out = []
        for d in self.days():
            out.append((d, fsutil.size(self.path(d)), self.acks.get(d, 0)))
        return out

    def ack(self, day, off, today):
        size = fsutil.size(self.path(day))
        if size < 0:
            raise ValueError("no such day")
        if off < 0 or off > size or 0 < off < HEADER_LEN:
            raise ValueError("bad offset")
        if self.info(day)[0] == 1 and off != 0 and off != HEADER_LEN and (off - HEADER_LEN) % REC_LEN:
            raise ValueError("bad offset")
        if off > self.acks.get(day, 0):
            self.acks[day] = off
            self._save_acks()
        return self.housekeep(today)

    def read(self, day, off, n, buf=None):
        with open(self.path(day), "rb") as f:
            f.seek(off)
            return f.read(n)

    # -- summary
    def _stats(self, day):
        # (records, first unix, last unix) of one segment, None times when empty.
        p = self.path(day)
        n = fsutil.size(p)
        v = self.info(day)[0]
        if n < HEADER_LEN or v == 0:
            return 0, None, None
        if v == 1:
            recs = 0
            first = last = None
            with open(p, "rb") as f:
                r = bytearray(REC_LEN)
                for i in range((n - HEADER_LEN) // REC_LEN):
                    f.seek(HEADER_LEN + i * REC_LEN)
                    f.readinto(r)
                    d = decode(r, day)
                    if d is not None:
                        recs += 1
                        if first is None or d[2] < first:
                            first = d[2]
                        if last is None or d[3] > last:
                            last = d[3]
            return recs, first, last
        edge = [None, None]

        def fn(pos, buf, i, ln):
            t = day * _DAY_S + (buf[i + 2] | (buf[i + 3] << 8) | (buf[i + 4] << 16))
            acc = 0
            for q in range(i + ENC_HEAD, i + ln - 2, ENTRY_LEN):
                acc += buf[q]
            if edge[0] is None or t < edge[0]:
                edge[0] = t
            if edge[1] is None or t + 2 * acc > edge[1]:
                edge[1] = t + 2 * acc

        with open(p, "rb") as f:
            _, count, _ = walk2(f, n, fn)
        return count, edge[0], edge[1]

    def summary(self):
        days = self.days()
        records = 0
        unacked = 0
        first = last = None
        for d in days:
            n = fsutil.size(self.path(d))
            try:
                c, a, b = self._stats(d)
            except OSError:
                c, a, b = 0, None, None
            records += c
            if a is not None and (first is None or a < first):
                first = a
            if b is not None and (last is None or b > last):
                last = b
            k = self.acks.get(d, 0)
            unacked += n - k if k else n
        return {"days": len(days), "records": records, "first": first, "last": last,
                "unacked_bytes": unacked, "pending": self.pending(), "dropped": self.dropped,
                "generation": self.generation()}
