# The badge program: one asyncio loop running supervised tasks (beacon, scan loop,
# housekeeping; more through add_task(), e.g. a host-protocol task) and the supervisor.
# main.py creates App() and calls run_app(app). A KeyboardInterrupt (the host entering the
# raw REPL) stops the radio and flushes the log, then returns to the REPL.
#
# Supervision (real asyncio.gather would end everything at the first exception): each task
# runs inside a guard; a task that raises (or returns) is recorded (count + last error in
# stats, /tc/tasks.txt) and restarted after a backoff (1 s doubling to 5 min, back to 1 s
# once it ran a minute), never touching the others. A task with a stall limit must call
# app.alive(name) at least that often; one that does not (a scan waiting forever for a
# scan-done event, say) is cancelled and restarted. The supervisor loop wakes every 5 s,
# persists the clock and feeds machine.WDT; it stops feeding when the same task hung three
# times in a row, and a blocked event loop cannot feed at all: then the watchdog resets the
# badge (acknowledged state is on flash; the log batch is flushed at every scan).
import asyncio
import sys
import time

from micropython import const

import tcbadge

from . import beacon, clock, config, crypto, enlog, fsutil, health, keystore, radio, scanner

_HOUSEKEEP_S = const(60)
_DAY_S = const(86400)
_TICK_MS = const(5000)
_WDT_MS = const(60000)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(300000)
_STABLE_MS = const(60000)
_MAX_HANGS = const(3)
_BEACON_STALL_S = const(1500)  # longest hold is 1200 s (beacon.py)
_HOUSEKEEP_STALL_S = const(300)


class Supervised:
    # One supervised task: how to start it, its health and its record.
    def __init__(self, name, fn, stall_s=0):
        self.name = name
        self.fn = fn  # coroutine function without arguments
        self.stall_ms = stall_s * 1000
        self.task = None
        self.running = False
        self.started = 0
        self.beat = 0
        self.next_start = 0
        self.starts = 0
        self.crashes = 0
        self.hangs = 0
        self.in_row = 0  # failures since it last ran _STABLE_MS
        self.hangs_in_row = 0
        self.last_error = ""

    def record(self):
        return {"starts": self.starts, "crashes": self.crashes, "hangs": self.hangs,
                "last_error": self.last_error, "running": self.running}


class App:
    def __init__(self, root="", ble=None, use_aioble=True, aes_factory=None, rtc=None, wdt=True):
        self.root = root
        # The scan table first: the largest fixed allocation, made before reading any file
        # leaves gaps in the heap.
        agg = scanner.Aggregator()
        config.ensure_dirs(root)
        self.prov = config.Provisioning(root)
        self.profile = self.prov.profile()
        self.config = self.prov.config()
        self.clock = clock.Clock(root, rtc)
        self.log = enlog.EncounterLog(root)
        self.health = health.Health(self.profile, root)
        self.radio = radio.Radio(ble, use_aioble)
        self.keys = None  # created after the radio is on (hardware RNG)
        self._aes = aes_factory or crypto.ecb_factory()
        self.beacon = None
        self.scanner = scanner.Scanner(self.radio, self.clock, self.log, self.config, agg=agg)
        self.state = "init"
        self._day = -1
        self._use_wdt = wdt
        self.wdt = None
        self.tasks = []  # [Supervised], in start order
        self._by_name = {}
        self.ticks = 0

    # -- tasks
    def add_task(self, name, fn, stall_s=0):
        # Supervise `fn` (a coroutine function without arguments) from run() on. With
        # stall_s > 0 the task must call self.alive(name) at least every stall_s seconds.
        sv = Supervised(name, fn, stall_s)
        self.tasks.append(sv)
        self._by_name[name] = sv
        return sv

    def alive(self, name):
        sv = self._by_name.get(name)
        if sv is not None:
            sv.beat = time.ticks_ms()

    def start(self):
        self.radio.start()
        self.keys = keystore.KeyStore(self.root)
        b = beacon.Beacon(self.radio, self.clock, self.keys, self.config, self.profile,
                          self._aes, on_rotate=self.scanner.own, on_beat=self._beacon_beat)
        self.beacon = b
        self.health.show()
        return b

    def _beacon_beat(self):
        self.alive("beacon")

    async def scan_loop(self):
        cfg = self.config
        while True:
            self.alive("scan")
            if self.clock.is_set():
                await self.scanner.scan_once()
                self.alive("scan")
                await asyncio.sleep_ms(cfg["scan_every_s"] * 1000 - cfg["scan_window_ms"])
            else:
                await asyncio.sleep_ms(5000)

    def housekeep(self):
        self.clock.persist()
        if not self.clock.is_set():
            return
        now = self.clock.now()
        day = now // _DAY_S
        if day != self._day:
            self.log.housekeep(day)
            self._day = day  # only once it worked: a failed day is retried next time
            if self.keys is not None:
                self.keys.prune(now // 600)

    async def housekeep_loop(self):
        while True:
            self.alive("housekeep")
            self.housekeep()
            await asyncio.sleep_ms(_HOUSEKEEP_S * 1000)

    def default_tasks(self):
        b = self.beacon
        if b is None:
            b = self.start()
        self.add_task("beacon", b.run, _BEACON_STALL_S)
        cfg = self.config
        self.add_task("scan", self.scan_loop,
                      cfg["scan_every_s"] + cfg["scan_window_ms"] // 1000 + 60)
        self.add_task("housekeep", self.housekeep_loop, _HOUSEKEEP_STALL_S)

    # -- supervision
    async def _guard(self, sv):
        try:
            await sv.fn()
            err = "returned"
        except Exception as e:  # noqa: BLE001 - recorded, the task is restarted
            err = "%s: %s" % (type(e).__name__, e)
        sv.running = False
        sv.task = None
        self._failed(sv, err, False)

    def _launch(self, sv, now):
        sv.started = now
        sv.beat = now
        sv.running = True
        sv.starts += 1
        sv.task = asyncio.create_task(self._guard(sv))

    def _failed(self, sv, err, hung):
        now = time.ticks_ms()
        if hung:
            sv.hangs += 1
            sv.hangs_in_row += 1
        else:
            sv.crashes += 1
            sv.hangs_in_row = 0
        if time.ticks_diff(now, sv.started) >= _STABLE_MS:
            sv.in_row = 0
        sv.in_row += 1
        back = _BACKOFF_MIN_MS
        for _ in range(sv.in_row - 1):
            back *= 2
            if back >= _BACKOFF_MAX_MS:
                back = _BACKOFF_MAX_MS
                break
        sv.next_start = time.ticks_add(now, back)
        sv.last_error = err
        msg = "task %s %s: %s" % (sv.name, "hung" if hung else "crashed", err)
        tcbadge.RUN["error"] = msg
        try:
            fsutil.write_atomic(self.root + "/tc/tasks.txt", msg)
        except OSError:
            pass

    def _check(self, sv, now):
        # One supervisor pass over a task; True while it counts as healthy for the WDT.
        if sv.running:
            if sv.stall_ms and time.ticks_diff(now, sv.beat) > sv.stall_ms:
                t = sv.task
                sv.running = False
                sv.task = None
                if t is not None:
                    t.cancel()
                self._failed(sv, "no progress for %d s" % (sv.stall_ms // 1000), True)
            elif sv.hangs_in_row and time.ticks_diff(now, sv.started) >= _STABLE_MS:
                sv.hangs_in_row = 0
        elif time.ticks_diff(now, sv.next_start) >= 0:
            self._launch(sv, now)
        return sv.hangs_in_row < _MAX_HANGS

    def _make_wdt(self):
        w = tcbadge.RUN.get("wdt")  # boot.py's, when it made one
        if w is not None or not self._use_wdt:
            return w
        try:
            import machine

            w = machine.WDT(timeout=_WDT_MS)
        except (ImportError, AttributeError, ValueError, OSError):
            return None
        tcbadge.RUN["wdt"] = w
        return w

    async def supervise(self):
        # The main loop: restarts, hang checks, clock, watchdog. Never returns.
        while True:
            now = time.ticks_ms()
            healthy = True
            for sv in self.tasks:
                if not self._check(sv, now):
                    healthy = False
            self.ticks += 1
            tcbadge.RUN["tick"] = now
            self.clock.persist()
            if healthy and self.wdt is not None:
                self.wdt.feed()
            await asyncio.sleep_ms(_TICK_MS)

    async def run(self):
        self.start()
        self.wdt = self._make_wdt()
        self.default_tasks_once()
        self.state = tcbadge.RUN["state"] = "running"
        tcbadge.RUN["radio"] = self.radio.kind()
        tcbadge.RUN["stats"] = self.stats
        tcbadge.RUN["tick"] = time.ticks_ms()
        await self.supervise()

    def default_tasks_once(self):
        # The default tasks go first; tasks added before run() (add_task) run after them.
        extra = self.tasks
        self.tasks = []
        self._by_name = {}
        self.default_tasks()
        for sv in extra:
            self.tasks.append(sv)
            self._by_name[sv.name] = sv

    def stats(self):
        s = self.scanner.stats()
        s["log_dropped"] = self.log.dropped
        s["rotations"] = self.beacon.rotations if self.beacon is not None else 0
        s["irq_errors"] = self.radio.irq_errors
        s["scan_timeouts"] = self.radio.scan_timeouts
        s["clock_resumes"] = self.clock.resumes
        tasks = {}  # type: dict
        crashes = 0
        for sv in self.tasks:
            tasks[sv.name] = sv.record()
            crashes += sv.crashes + sv.hangs
        s["tasks"] = tasks  # type: ignore
        s["task_failures"] = crashes
        return s

    def shutdown(self):
        self.radio.stop()
        try:
            self.log.flush(True)  # v2 keeps open records in RAM: write them all
            self.clock.persist(True)
        except OSError:
            pass


def run_app(app):
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:
        app.state = tcbadge.RUN["state"] = "interrupted"
    except Exception as e:  # keep the REPL usable; the host sees the crash in status()
        app.state = tcbadge.RUN["state"] = "crashed"
        msg = "%s: %s" % (type(e).__name__, e)
        tcbadge.RUN["error"] = msg
        try:
            fsutil.write_atomic(app.root + "/tc/crash.txt", msg)
        except OSError:
            pass
        pe = getattr(sys, "print_exception", None)
        if pe is not None:
            pe(e)
    finally:
        app.shutdown()
        try:
            asyncio.new_event_loop()
        except AttributeError:
            pass
