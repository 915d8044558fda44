"""Discrete-event core of the simulator: the fleet clock, its event queue and the badge CPUs.

Every badge runs its MicroPython code on its own host thread (its "CPU"), but only one thread
of the whole simulation runs at a time: the *driver* pops events in time order and hands the
baton to a badge CPU, which runs until it waits (sleep, asyncio idle, console input) and hands
the baton back. Virtual time never moves while badge code runs; it jumps to the next event.

Drivers: `Fleet.run_until(t)` (virtual time, caller's thread), a background realtime driver
(`realtime=True`), and an on-demand driver that serves host console sessions while the fleet
is otherwise paused. It advances time only while host-issued REPL code waits on a timer
(protocol 1: as fast as it can), and at wall-clock speed while a host is in a protocol v2
session with a badge (console.Console.session_active; docs/sim.md "Time during host sessions").
"""

from __future__ import annotations

import gc
import heapq
import itertools
import os
import threading
import time as _time
from collections import deque
from typing import Any, Callable


class PowerCut(BaseException):
    """Raised inside a badge CPU when its power is cut: unwinds everything, nothing may persist."""


class Shutdown(BaseException):
    """Raised inside a badge CPU when the fleet is closed."""


class SoftReset(BaseException):
    """Raised inside a badge CPU to perform a soft reset (Ctrl-D, machine.soft_reset())."""


class HardReset(BaseException):
    """Raised inside a badge CPU for machine.reset()."""


class _Event:
    __slots__ = ("t", "seq", "fn", "args", "cancelled")

    def __init__(self, t: float, seq: int, fn: Callable, args: tuple):
        self.t = t
        self.seq = seq
        self.fn = fn
        self.args = args
        self.cancelled = False

    def __lt__(self, other: "_Event") -> bool:
        return (self.t, self.seq) < (other.t, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Event queue + virtual clock + driver role. Base class of Fleet."""

    def __init__(self, realtime: bool = False, pin_cpu: bool | None = None):
        self.realtime = realtime
        # Only one simulation thread runs at a time; keeping them all on one core makes each
        # hand-over several times cheaper (no cross-core wake-ups). Linux only; best effort.
        self._pin: set[int] | None = None
        if (not realtime if pin_cpu is None else pin_cpu) and hasattr(os, "sched_setaffinity"):
            try:
                cores = sorted(os.sched_getaffinity(0))
                self._pin = {cores[os.getpid() % len(cores)]}
            except OSError:
                self._pin = None
        self.now = 0.0
        self._heap: list[tuple[float, int, _Event]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._driving = False
        self._driver_thread: threading.Thread | None = None
        self._driver_part: _Part | None = None
        self._limit_fn: Callable[[], float] = lambda: self.now
        self._closed = False
        self._cpus: list[CPU] = []
        self._wall0 = _time.monotonic()
        self._aux: threading.Thread | None = None
        self._rt: threading.Thread | None = None
        # protocol v2 sessions: consoles register here; while one is active the aux driver
        # lets virtual time follow the wall clock from an anchor (virtual, wall)
        self._session_consoles: list = []
        self._sess_anchor: tuple[float, float] | None = None
        self._aux_cap = 0.0
        self.session_time = 0.0        # virtual seconds run by host sessions (diagnostics)
        self.events_processed = 0
        _install_unraisable_filter()

    # -- clock -------------------------------------------------------------------------------
    def clock(self) -> float:
        if self.realtime:
            return max(self.now, _time.monotonic() - self._wall0)
        return self.now

    # -- events ------------------------------------------------------------------------------
    def schedule(self, t: float, fn: Callable, *args: Any) -> _Event:
        """Run `fn(*args)` in the driver at simulated time `t` (not earlier than now)."""
        with self._lock:
            if t < self.now:
                t = self.now
            ev = _Event(t, next(self._seq), fn, args)
            heapq.heappush(self._heap, (t, ev.seq, ev))
            if not self._driving or self.realtime:
                self._cond.notify_all()
        return ev

    def call_soon(self, fn: Callable, *args: Any) -> _Event:
        return self.schedule(self.clock(), fn, *args)

    def _pop_due(self, limit: float) -> _Event | None:
        with self._lock:
            heap = self._heap
            while heap:
                t, _, ev = heap[0]
                if ev.cancelled:
                    heapq.heappop(heap)
                    continue
                if t > limit:
                    return None
                heapq.heappop(heap)
                return ev
            return None

    def _next_time(self) -> float | None:
        with self._cond:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def _process(self, ev: _Event) -> None:
        if ev.t > self.now:
            self.now = ev.t
        self.events_processed += 1
        ev.fn(*ev.args)

    # -- baton passing -------------------------------------------------------------------------
    # Exactly one participant (a driver thread or a badge CPU thread) holds the baton and runs.
    # Whoever holds it pops due events and runs them; an event that wakes a CPU passes the baton
    # straight to that CPU's thread. A CPU that waits keeps popping events itself (its own timer
    # costs no thread switch); with nothing due it hands the baton back to the driver.
    def _switch_to(self, part: "_Part") -> None:
        me = _tls.part
        part.go.release()
        me.go.acquire()

    def _limit(self) -> float:
        return self._limit_fn()

    def _drive(self) -> None:
        while True:
            ev = self._pop_due(self._limit_fn())
            if ev is None:
                return
            self._process(ev)

    def _acquire_driver(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else _time.monotonic() + timeout
        with self._cond:
            while self._driving:
                remaining = None if deadline is None else deadline - _time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
            self._take_driver_locked()
            return True

    def _take_driver_locked(self) -> None:
        self._driving = True
        self._driver_thread = threading.current_thread()
        part = _Part()
        _tls.part = part
        self._driver_part = part

    def _pin_thread(self) -> set[int] | None:
        """Pin the calling thread to the simulation core; returns its previous affinity."""
        if self._pin is None:
            return None
        try:
            old = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self._pin)
            return old
        except OSError:
            return None

    def _unpin_thread(self, old: set[int] | None) -> None:
        if old is not None:
            try:
                os.sched_setaffinity(0, old)
            except OSError:
                pass

    def _release_driver(self) -> None:
        with self._cond:
            self._driving = False
            self._driver_thread = None
            self._driver_part = None
            _tls.part = None
            self._cond.notify_all()

    def run_until(self, t: float) -> None:
        """Advance virtual time to `t` seconds (since the simulation start), running every event."""
        if self.realtime:
            raise RuntimeError("run_until is for virtual time; a realtime fleet runs by itself")
        self._acquire_driver()
        old = self._pin_thread()
        # badge code allocates many short-lived cyclic objects (tasks, coroutines); collecting
        # the youngest generation less often saves ~10% of a long run
        gc_old = gc.get_threshold()
        gc.set_threshold(max(gc_old[0], 50000), gc_old[1], gc_old[2])
        try:
            self._limit_fn = lambda: t
            self._drive()
            if t > self.now:
                self.now = t
        finally:
            gc.set_threshold(*gc_old)
            self._unpin_thread(old)
            self._release_driver()

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # -- on-demand driver for host sessions (virtual time) -------------------------------------
    def _host_needs_time(self) -> bool:
        for c in self._cpus:
            if c.host_timed_wait:
                return True
        return False

    def _session_active(self) -> bool:
        now = _time.monotonic()
        for c in self._session_consoles:
            if c.session_active(now):
                return True
        return False

    def _session_started(self) -> None:
        """A console saw a frame from its host: wake the aux driver (any thread)."""
        with self._cond:
            self._cond.notify_all()

    def _session_cap(self) -> float | None:
        """How far virtual time may run for host sessions now: the anchor's virtual time plus
        the wall time since; None when no session is active. Time run by others (run_until,
        the protocol 1 rule) moves the anchor, never backwards."""
        if not self._session_consoles or not self._session_active():
            self._sess_anchor = None
            return None
        wall = _time.monotonic()
        a = self._sess_anchor
        if a is None or a[0] + (wall - a[1]) < self.now:
            a = self._sess_anchor = (self.now, wall)
        return a[0] + (wall - a[1])

    def _aux_limit(self) -> float:
        return float("inf") if self._host_needs_time() else max(self.now, self._aux_cap)

    def _aux_loop(self) -> None:
        self._pin_thread()
        while True:
            with self._cond:
                wait = 0.5
                cap = None
                while not self._closed:
                    if not self._driving:
                        nt = self._next_time_locked()
                        cap = self._session_cap()
                        if nt is not None and (nt <= self.now or self._host_needs_time()):
                            self._take_driver_locked()
                            break
                        if cap is not None:
                            # a host session: follow the wall clock (events up to cap, and the
                            # clock itself in steps of at most 50 ms)
                            if (nt is not None and nt <= cap) or cap >= self.now + 0.05:
                                self._take_driver_locked()
                                break
                            wait = 0.05 if nt is None else min(0.05, max(0.001, nt - cap))
                        else:
                            wait = 0.5
                    self._cond.wait(wait)
                if self._closed:
                    return
            try:
                self._aux_cap = cap if cap is not None else self.now
                self._limit_fn = self._aux_limit
                start = self.now
                self._drive()
                if cap is not None and not self._closed:
                    if cap > self.now:
                        self.now = cap
                    self.session_time += self.now - start
            finally:
                self._aux_cap = 0.0
                self._release_driver()

    def _next_time_locked(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _rt_loop(self) -> None:
        while not self._closed:
            self._acquire_driver()
            try:
                self._limit_fn = self.clock
                self.now = max(self.now, self.clock())
                self._drive()
                self.now = max(self.now, self.clock())
            finally:
                self._release_driver()
            with self._cond:
                nt = self._next_time_locked()
                wait = 0.2 if nt is None else min(0.2, max(0.0, nt - self.clock()))
                if wait > 0:
                    self._cond.wait(wait)

    def start_drivers(self) -> None:
        if self.realtime:
            if self._rt is None:
                self._rt = threading.Thread(target=self._rt_loop, name="sim-realtime", daemon=True)
                self._rt.start()
        elif self._aux is None:
            self._aux = threading.Thread(target=self._aux_loop, name="sim-host-driver", daemon=True)
            self._aux.start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no immediate events are pending and nobody drives (for tests)."""
        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            with self._cond:
                nt = self._next_time_locked()
                if not self._driving and (nt is None or nt > self.now) and not self._host_needs_time():
                    return True
                self._cond.wait(0.02)
        return False


def _install_unraisable_filter() -> None:
    """Badge coroutines abandoned by a power cut or a closed fleet may be finalised by CPython's
    GC long after their badge died (MicroPython never runs them again). Errors raised while they
    unwind are not the host's: drop them instead of printing 'Exception ignored in ...'."""
    import sys
    import types

    prev = sys.unraisablehook
    if getattr(prev, "_tracecode_sim", False):
        return

    def hook(u) -> None:
        obj = u.object
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
        if isinstance(code, types.CodeType) and not os.path.isabs(code.co_filename):
            return
        prev(u)

    hook._tracecode_sim = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class _Part:
    """A baton participant: released `go` lock = may run."""
    __slots__ = ("go", "resumed")

    def __init__(self) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.resumed = False


_tls = threading.local()


class CPU:
    """One badge's processor: a host thread that runs only while it holds the baton."""

    def __init__(self, sched: Scheduler, name: str):
        self.sched = sched
        self.name = name
        self.part = _Part()
        self.thread: threading.Thread | None = None
        self.alive = False
        self.waiting = False
        self.kill: type[BaseException] | None = None
        self.irqs: deque = deque()
        self.in_irq = False
        self.kbd_pending = False
        self.kbd_enabled = False
        self.in_host = False           # running code that a host session sent
        self.host_timed_wait = False   # ... and that code waits on a timer
        self._timer: _Event | None = None
        self._timer_t: float | None = None
        self.input_ready: Callable[[], bool] = lambda: False
        self.on_irq_error: Callable[[BaseException], None] = lambda e: None
        sched._cpus.append(self)

    # -- driver side -----------------------------------------------------------------------
    def start(self, target: Callable[[], None]) -> None:
        """Start the CPU thread running `target` (driver side; returns when it first waits)."""
        assert not self.alive
        self.kill = None
        self.alive = True

        part = self.part

        def body() -> None:
            self.sched._pin_thread()
            _tls.part = part
            part.go.acquire()
            try:
                target()
            except (PowerCut, Shutdown):
                pass
            finally:
                self.alive = False
                self.waiting = False
                self.host_timed_wait = False
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                _tls.part = None
                # the baton goes back to the driver, which carries on popping events
                self.sched._driver_part.go.release()

        self.thread = threading.Thread(target=body, name="badge-" + self.name, daemon=True)
        self.thread.start()
        self.sched._switch_to(part)

    def wake(self) -> None:
        """Baton holder: resume the CPU if it is waiting (it re-checks why it waits)."""
        if self.alive and self.waiting:
            self.part.resumed = True
            if getattr(_tls, "part", None) is not self.part:
                self.sched._switch_to(self.part)

    def post_wake(self) -> None:
        """Any thread: ask the driver to resume this CPU soon."""
        self.sched.call_soon(self.wake)

    def post_irq(self, fn: Callable, *args: Any) -> None:
        """Queue an interrupt callback to run on this CPU (soon)."""
        if not self.alive:
            return
        self.irqs.append((fn, args))
        if threading.current_thread() is not self.thread:
            self.sched.call_soon(self.wake)
        elif self.waiting:
            # posted by an event this CPU ran while waiting: leave the wait to run it
            self.part.resumed = True

    def stop(self, exc: type[BaseException]) -> None:
        """Driver side (or own thread): make the CPU unwind with `exc` and end its thread."""
        if not self.alive:
            return
        self.kill = exc
        if threading.current_thread() is self.thread:
            raise exc()
        if self.waiting:
            self.part.resumed = True
            self.sched._switch_to(self.part)

    # -- CPU side ----------------------------------------------------------------------------
    def _park(self) -> None:
        sched = self.sched
        me = self.part
        me.resumed = False
        self.waiting = True
        try:
            while True:
                ev = sched._pop_due(sched._limit_fn())
                if ev is None:
                    sched._switch_to(sched._driver_part)
                else:
                    sched._process(ev)
                if me.resumed:
                    break
        finally:
            self.waiting = False
        if self.kill is not None:
            raise self.kill()

    def run_irqs(self) -> None:
        if self.in_irq:
            return
        while self.irqs:
            fn, args = self.irqs.popleft()
            self.in_irq = True
            try:
                fn(*args)
            except (PowerCut, Shutdown, SoftReset, HardReset):
                raise
            except BaseException as e:  # noqa: BLE001 - reported like MicroPython does
                self.on_irq_error(e)
            finally:
                self.in_irq = False

    def wait(self, until: float | None = None, *, for_input: bool = False,
             flag: Callable[[], bool] | None = None) -> None:
        """Block this CPU until `until` (sim seconds), console input, or `flag()` becomes true.
        Interrupt callbacks run meanwhile; a pending Ctrl-C raises KeyboardInterrupt."""
        if self.kill is not None:
            raise self.kill()
        sched = self.sched
        while True:
            if self.irqs and not self.in_irq:
                self.run_irqs()
            if self.kbd_pending and self.kbd_enabled:
                self.kbd_pending = False
                raise KeyboardInterrupt
            if flag is not None and flag():
                return
            if for_input and self.input_ready():
                return
            if until is not None and (sched.now if not sched.realtime else sched.clock()) >= until - 1e-9:
                return
            if until is not None:
                self._arm(until)
                self.host_timed_wait = self.in_host
            try:
                self._park()
            finally:
                self.host_timed_wait = False

    def _arm(self, until: float) -> None:
        if self._timer is not None and not self._timer.cancelled and self._timer_t == until:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_t = until
        self._timer = self.sched.schedule(until, self._timer_fire)

    def _timer_fire(self) -> None:
        self._timer = None
        self.wake()
