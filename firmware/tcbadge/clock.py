# Wall clock. The host sets Unix time; the badge persists the last known time so that a
# reboot without a host resumes from it instead of broadcasting for a made-up time.
# ESP32 MicroPython counts time.time() from 2000-01-01; the offset is detected at runtime.
#
# Never backwards across power cuts. Two resume points, each an upper bound of every time
# the badge has shown, because it is saved again before the clock reaches it:
# - NVS (esp32.NVS "tc"/"until", wear-levelled, meant for small frequent writes):
#   now + 10 s, saved every ~5 s (the app calls persist() every 5 s);
# - /tc/clock.bin: u32 time of the save, u8 source, u32 resume point = save + 60 s, saved
#   every ~55 s (also the app's heartbeat for the host interface, and the fallback where
#   NVS is missing).
# After a cut the clock resumes at the tighter valid one and saves both at once, so
# back-to-back cuts never freeze it. Bound (docs/firmware.md, "Clock"): the resumed clock
# is at most the outage behind the true time and at most 10 s - outage ahead (60 s - outage
# without NVS) per cut.
import struct
import time

from micropython import const

from . import fsutil

_EPOCH_2000 = const(946684800)
_MIN_VALID = const(1577836800)  # 2020-01-01: anything earlier is an unset RTC
_GAP_NVS_S = const(10)
_GAP_FILE_S = const(60)
_TICK_S = const(5)  # the app calls persist() at least this often (supervisor tick)
_SRC_HOST = const(1)
_SRC_RESUMED = const(2)

UNSET = "unset"
SET = "set"
RESUMED = "resumed"


def epoch_offset():
    return _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0


def _open_nvs():
    try:
        import esp32

        return esp32.NVS("tc")
    except (ImportError, AttributeError, OSError, ValueError):
        return None


class Clock:
    def __init__(self, root="", rtc=None, nvs=None):
        self._path = root + "/tc/clock.bin"
        self._off = epoch_offset()
        self._rtc = rtc
        self._nvs = nvs if nvs is not None else _open_nvs()
        self._saved = 0
        self._until = 0  # file resume point
        self._nvs_until = 0
        self.state = UNSET
        self.resumes = 0
        raw = fsutil.read(self._path)
        last = 0
        until = 0
        resumed = False
        if raw and len(raw) >= 4:
            last = struct.unpack("<I", raw[:4])[0]
            resumed = len(raw) >= 5 and raw[4] == _SRC_RESUMED
            until = struct.unpack("<I", raw[5:9])[0] if len(raw) >= 9 else last
            if until < last:
                until = last
        nv = self._nvs_get()
        if nv >= last and last >= _MIN_VALID and nv < until:
            until = nv  # the tighter bound; an older (stale) NVS value is ignored
        now = self.now()
        if now >= _MIN_VALID:
            # The RTC holds a real time: it kept counting through a soft reset or deep
            # sleep (still "resumed" if that is where it came from), or a host set it.
            self.state = RESUMED if resumed and now >= last else SET
            self._saved = last
            self._until = until
            self._nvs_until = nv
        elif last >= _MIN_VALID:
            # Power was lost (the RTC restarted at 2000): resume at the resume point (no
            # time shown before the cut is later) and save at once, so the next resume
            # starts from here, not from the old save.
            self._set_rtc(until)
            self.state = RESUMED
            self.resumes = 1
            self.persist(True)

    def now(self):
        return int(time.time()) + self._off

    def is_set(self):
        if self.state == UNSET and self.now() >= _MIN_VALID:
            self.state = SET  # something set the RTC since boot
        return self.state != UNSET

    def _set_rtc(self, unix):
        t = time.gmtime(unix - self._off)
        rtc = self._rtc
        if rtc is None:
            import machine

            rtc = machine.RTC()
            self._rtc = rtc
        # gmtime: (y, mo, d, h, mi, s, weekday, yearday); RTC: (y, mo, d, weekday, h, mi, s, sub)
        rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

    def set(self, unix):
        # Returns badge-minus-host drift in seconds (0 when the clock was unset).
        unix = int(unix)
        drift = self.now() - unix if self.state != UNSET else 0
        self._set_rtc(unix)
        self.state = SET
        self.persist(True)
        return drift

    def _nvs_get(self):
        n = self._nvs
        if n is None:
            return 0
        try:
            return n.get_i32("until")
        except (OSError, ValueError, TypeError):
            return 0

    def _nvs_save(self, now):
        n = self._nvs
        if n is None:
            return False
        until = now + _GAP_NVS_S
        try:
            n.set_i32("until", until)
            n.commit()
        except (OSError, ValueError, OverflowError):
            return False
        self._nvs_until = until
        return True

    def persist(self, force=False):
        # Called every _TICK_S by the app: saves each resume point when the clock gets
        # within one tick of it (or when forced). A failed write is retried next tick.
        if self.state == UNSET:
            return False
        now = self.now()
        if force or now >= self._nvs_until - _TICK_S or now < self._saved:
            self._nvs_save(now)
        if not force and now < self._until - _TICK_S and now >= self._saved:
            return False
        try:
            src = _SRC_RESUMED if self.state == RESUMED else _SRC_HOST
            fsutil.write_atomic(self._path, struct.pack("<IBI", now, src, now + _GAP_FILE_S))
            self._saved = now
            self._until = now + _GAP_FILE_S
            return True
        except OSError:
            return False
