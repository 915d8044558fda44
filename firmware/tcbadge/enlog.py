# Encounter log: one append-only segment file per UTC day under /log, 32-byte records with a
# CRC each (docs/log-format.md). Records are batched in RAM and written with one write per
# scan. On open, a torn tail (power cut mid-append) is cut back to the last good record.
import binascii
import json
import os
import struct

from micropython import const

from . import fsutil

HEADER_LEN = const(16)
REC_LEN = const(32)
_REC_ENCOUNTER = const(1)
_VERSION = const(1)
_DAY_S = const(86400)
_KEEP_DAYS = const(14)
_MAX_PENDING = const(256)
_RESERVE = const(8192)  # keep this much of the file system free for keys, config, littlefs
_COPY_CHUNK = const(1024)
MAGIC = b"TCLG"


def header(day):
    return MAGIC + bytes((_VERSION, 0, 0, 0)) + struct.pack("<II", day, 0)


def _i8(v):
    if v < -128:
        v = -128
    elif v > 127:
        v = 127
    return v & 0xFF


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
    crc = binascii.crc32(memoryview(buf)[off : off + 30]) & 0xFFFF
    buf[off + 30] = crc & 0xFF
    buf[off + 31] = crc >> 8


def encode(rpi, aem, first_s, dur_s, count, rmin, rmax, rmean):
    b = bytearray(REC_LEN)
    encode_into(b, 0, rpi, aem, first_s, dur_s, count, rmin, rmax, rmean)
    return b


def record_ok(rec):
    if len(rec) != REC_LEN or rec[0] != _REC_ENCOUNTER:
        return False
    crc = binascii.crc32(memoryview(rec)[0:30]) & 0xFFFF
    return rec[30] == (crc & 0xFF) and rec[31] == (crc >> 8)


def _s8(b):
    return b - 256 if b > 127 else b


def decode(rec, day=0):
    # (rpi, aem, first_unix, last_unix, count, rssi_min, rssi_max, rssi_mean) or None.
    if not record_ok(rec):
        return None
    first = day * _DAY_S + (rec[21] | (rec[22] << 8) | (rec[23] << 16))
    dur = rec[24] | (rec[25] << 8)
    return (bytes(rec[1:17]), bytes(rec[17:21]), first, first + dur, rec[26],
            _s8(rec[27]), _s8(rec[28]), _s8(rec[29]))


def recover(path, day):
    # Cut a torn tail: wrong length or a bad CRC in the last record(s). Returns the number of
    # bytes cut (-1 when the file was unusable and removed).
    n = fsutil.size(path)
    if n < 0:
        return 0
    if n < HEADER_LEN:
        fsutil.remove(path)
        return -1
    with open(path, "rb") as f:
        head = f.read(HEADER_LEN)
        if head[0:4] != MAGIC or head[4] != _VERSION:
            f.close()
            # Not ours or a different version: keep it aside, never append to it.
            os.rename(path, path + ".bad")
            return -1
        good = HEADER_LEN + ((n - HEADER_LEN) // REC_LEN) * REC_LEN
        rec = bytearray(REC_LEN)
        while good > HEADER_LEN:
            f.seek(good - REC_LEN)
            f.readinto(rec)
            if record_ok(rec):
                break
            good -= REC_LEN
    if good == n:
        return 0
    # MicroPython files have no truncate(): copy the good prefix, then rename over.
    tmp = path + ".tmp"
    buf = bytearray(_COPY_CHUNK)
    mv = memoryview(buf)
    left = good
    with open(path, "rb") as src:
        with open(tmp, "wb") as dst:
            while left > 0:
                k = src.readinto(buf)
                if not k:
                    break
                if k > left:
                    k = left
                dst.write(mv[0:k])
                left -= k
    os.rename(tmp, path)
    return n - good


class EncounterLog:
    def __init__(self, root="", keep_days=_KEEP_DAYS, reserve_bytes=_RESERVE):
        self._dir = root + "/log"
        self._ack_path = self._dir + "/ack.json"
        self.keep_days = keep_days
        self.reserve = reserve_bytes
        self.dropped = 0  # records lost because the flash was full
        self.cut_bytes = 0  # torn-tail bytes cut at open
        self.deleted = []  # days deleted since boot
        self._pending = {}  # day -> bytearray of encoded records
        self._npending = 0
        fsutil.mkdir(self._dir)
        self.acks = {}
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
        for day in self.days():
            c = recover(self.path(day), day)
            if c > 0:
                self.cut_bytes += c

    def path(self, day):
        return self._dir + "/" + str(day) + ".tcl"

    def days(self):
        out = []
        for name in os.listdir(self._dir):
            if name.endswith(".tcl"):
                try:
                    out.append(int(name[:-4]))
                except ValueError:
                    pass
        out.sort()
        return out

    def add(self, rpi, aem, first_unix, last_unix, count, rmin, rmax, rmean):
        day = first_unix // _DAY_S
        buf = self._pending.get(day)
        if buf is None:
            buf = bytearray()
            self._pending[day] = buf
        off = len(buf)
        buf.extend(bytes(REC_LEN))
        encode_into(buf, off, rpi, aem, first_unix - day * _DAY_S, last_unix - first_unix,
                    count, rmin, rmax, rmean)
        self._npending += 1
        return self._npending >= _MAX_PENDING

    def pending(self):
        return self._npending

    def flush(self):
        # One write per day with pending records, then close (littlefs commits on close).
        days = sorted(self._pending)
        for day in days:
            data = self._pending.pop(day)
            self._write(day, data)
        self._npending = 0

    def _write(self, day, data):
        p = self.path(day)
        new = fsutil.size(p) < 0
        need = len(data) + (HEADER_LEN if new else 0)
        for attempt in range(self.keep_days + 1):
            free, _ = fsutil.free_bytes(self._dir)
            if free >= 0 and free < need + self.reserve:
                if self._drop_oldest(day):
                    continue
            try:
                with open(p, "ab") as f:
                    if new:
                        f.write(header(day) + data)
                    else:
                        f.write(data)
                return True
            except OSError as e:
                if e.args and e.args[0] == 28:
                    # ENOSPC: cut any partial append, then free the oldest day and retry.
                    recover(p, day)
                    new = fsutil.size(p) < 0
                    if self._drop_oldest(day):
                        continue
                self.dropped += len(data) // REC_LEN
                return False
        self.dropped += len(data) // REC_LEN
        return False

    def _drop_oldest(self, keep_day):
        for d in self.days():
            if d != keep_day and d < keep_day:
                self._delete(d)
                return True
        return False

    def _delete(self, day):
        fsutil.remove(self.path(day))
        if day in self.acks:
            del self.acks[day]
            self._save_acks()
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
        if off < 0 or off > size or (off != 0 and off != HEADER_LEN and (off - HEADER_LEN) % REC_LEN):
            raise ValueError("bad offset")
        if off > self.acks.get(day, 0):
            self.acks[day] = off
            self._save_acks()
        return self.housekeep(today)

    def read(self, day, off, n, buf=None):
        with open(self.path(day), "rb") as f:
            f.seek(off)
            return f.read(n)

    def _edge(self, day, last):
        p = self.path(day)
        n = fsutil.size(p)
        if n < HEADER_LEN + REC_LEN:
            return None
        with open(p, "rb") as f:
            if last:
                f.seek(HEADER_LEN + ((n - HEADER_LEN) // REC_LEN - 1) * REC_LEN)
            else:
                f.seek(HEADER_LEN)
            r = decode(f.read(REC_LEN), day)
        if r is None:
            return None
        return r[3] if last else r[2]

    def summary(self):
        days = self.days()
        records = 0
        unacked = 0
        for d in days:
            n = fsutil.size(self.path(d))
            records += max(0, (n - HEADER_LEN) // REC_LEN)
            a = self.acks.get(d, 0)
            unacked += n - a if a else n
        first = last = None
        for d in days:
            first = self._edge(d, False)
            if first is not None:
                break
        for d in reversed(days):
            last = self._edge(d, True)
            if last is not None:
                break
        return {"days": len(days), "records": records, "first": first, "last": last,
                "unacked_bytes": unacked, "pending": self._npending, "dropped": self.dropped}
