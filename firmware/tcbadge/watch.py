# Resume watch, armed by boot.py in every boot (boot.py runs after every reset, also the
# soft reset mpremote does inside the raw REPL, where the ESP32 does not run main.py).
# A soft machine.Timer ticks every second:
# - app running: nothing to do, its supervisor feeds the WDT. If the supervisor has not
#   ticked for _HUNG_MS (a blocked event loop), reset: the WDT does this on a chip, this is
#   the backstop where timer callbacks still run (e.g. a task stuck in a blocking call).
# - app not running (a host on the REPL, or the REPL left behind after a session): feed the
#   WDT while the REPL is in use; once it has been idle for _IDLE_MS (no heap allocation,
#   no host-interface call in progress or finished since), machine.reset(): a reset always
#   comes back in the friendly REPL, so boot.py and main.py run and tracing resumes.
#   "In use" is read from gc.mem_alloc() (compiling or running anything the host sends
#   allocates; the idle REPL and this callback do not) and tcbadge.RUN["host_busy"] /
#   ["host_t"] (set by the host interface around each call, so a call that waits without
#   allocating, e.g. for the consent button, is never cut).
# - tcbadge.RUN["hold"] = 1 (typed at the REPL) keeps the badge at the REPL until a reset.
# The callback's own allocation (reading RTC memory) happens between two readings of
# gc.mem_alloc() that are not compared, so it never looks like activity.
import gc
import time

from micropython import const

import tcbadge

from . import fsutil

_PERIOD_MS = const(1000)
_IDLE_MS = const(15000)
_HUNG_MS = const(70000)  # the WDT (60 s) fires first on a chip
_WDT_MS = const(60000)  # same timeout as the app's (app.py)
_MAGIC = b"TW"


class Watch:
    def __init__(self, machine, root=""):
        self.machine = machine
        self.root = root
        self.rtc = machine.RTC()
        self.gen = self._next_gen()
        self.wdt = None
        try:
            self.wdt = machine.WDT(timeout=_WDT_MS)
        except (AttributeError, ValueError, OSError):
            self.wdt = None
        tcbadge.RUN["wdt"] = self.wdt
        now = time.ticks_ms()
        self.quiet = now  # last time the REPL was seen in use
        self.alloc = gc.mem_alloc()
        self.host_t = None
        self.resets = 0
        self.timer = None
        self._cb = self.tick

    def _read_gen(self):
        try:
            m = self.rtc.memory()
        except (AttributeError, OSError):
            return -1
        if len(m) >= 4 and m[0:2] == _MAGIC:
            return m[2] | (m[3] << 8)
        return -1

    def _next_gen(self):
        # A boot counter in RTC memory (kept over soft resets): a timer left over from an
        # earlier boot (where a port keeps it) sees a newer generation and stops itself.
        g = (self._read_gen() + 1) & 0xFFFF
        try:
            self.rtc.memory(_MAGIC + bytes((g & 0xFF, g >> 8)))
        except (AttributeError, OSError):
            pass
        return g

    def start(self):
        t = self.machine.Timer(0)  # ESP32: hardware timer 0, callback scheduled (soft)
        t.init(mode=self.machine.Timer.PERIODIC, period=_PERIOD_MS, callback=self._cb)
        self.timer = t
        return self

    def _feed(self):
        w = self.wdt
        if w is not None:
            w.feed()

    def tick(self, _t):
        a = gc.mem_alloc()  # first: compared with the reading at the end of the last tick
        g = self._read_gen()
        if g >= 0 and g != self.gen:
            t = self.timer
            if t is not None:
                t.deinit()
            return
        run = tcbadge.RUN
        now = time.ticks_ms()
        if run.get("state") == "running":
            self.quiet = now
            last = run.get("tick")
            if last is not None and time.ticks_diff(now, last) > _HUNG_MS:
                self.reset("app loop blocked")
            return
        if run.get("hold"):
            self._feed()
            return
        h = run.get("host_t")
        if a != self.alloc or h != self.host_t or run.get("host_busy"):
            self.host_t = h
            self.quiet = now
        self.alloc = gc.mem_alloc()  # after this tick's own reads (RTC memory is a new bytes)
        if time.ticks_diff(now, self.quiet) < _IDLE_MS:
            self._feed()
            return
        self.reset("REPL idle")

    def reset(self, why):
        self.resets += 1
        try:
            fsutil.write_atomic(self.root + "/tc/reset.txt", why)
        except OSError:
            pass
        self.machine.reset()


def start(root=""):
    # Arm the watch; never stops the boot (a badge without a Timer simply has none).
    try:
        import machine

        w = Watch(machine, root).start()
    except (ImportError, AttributeError, ValueError, OSError):
        return None
    tcbadge.RUN["watch"] = w
    return w
