# Wall clock. The host sets Unix time; the badge persists the last known time so that a
# reboot without a host resumes from it instead of broadcasting for a made-up time.
# ESP32 MicroPython counts time.time() from 2000-01-01; the offset is detected at runtime.
import struct
import time

from micropython import const

from . import fsutil

_EPOCH_2000 = const(946684800)
_MIN_VALID = const(1577836800)  # 2020-01-01: anything earlier is an unset RTC
_PERSIST_EVERY_S = const(300)
_SRC_HOST = const(1)
_SRC_RESUMED = const(2)

UNSET = "unset"
SET = "set"
RESUMED = "resumed"


def epoch_offset():
    return _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    def __init__(self, root="", rtc=None):
        self._path = root + "/tc/clock.bin"
        self._off = epoch_offset()
        self._rtc = rtc
        self._saved = 0
        self.state = UNSET
        raw = fsutil.read(self._path)
        last = 0
        resumed = False
        if raw and len(raw) >= 4:
            last = struct.unpack("<I", raw[:4])[0]
            resumed = len(raw) >= 5 and raw[4] == _SRC_RESUMED
        now = self.now()
        if now >= _MIN_VALID:
            # The RTC holds a real time: it kept counting through a soft reset or deep
            # sleep (still "resumed" if that is where it came from), or a host set it.
            self.state = RESUMED if resumed and now >= last else SET
            self._saved = last
        elif last >= _MIN_VALID:
            # Power was lost (the RTC restarted at 2000): resume from the last persisted
            # time, a lower bound, until the host sets the clock again.
            self._set_rtc(last)
            self.state = RESUMED
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

    def persist(self, force=False):
        if self.state == UNSET:
            return False
        now = self.now()
        if not force and now - self._saved < _PERSIST_EVERY_S:
            return False
        try:
            src = _SRC_RESUMED if self.state == RESUMED else _SRC_HOST
            fsutil.write_atomic(self._path, struct.pack("<IB", now, src))
            self._saved = now
            return True
        except OSError:
            return False
