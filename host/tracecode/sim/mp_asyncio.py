"""MicroPython's `asyncio` subset, on the badge's virtual time.

One event loop per badge boot. Tasks are CPython coroutines driven by `send`/`throw`; the loop
waits on the badge CPU (so interrupts and Ctrl-C behave as on the board). Semantics follow
MicroPython (extmod/asyncio): CancelledError is a BaseException, TimeoutError is the module's
own Exception subclass, ThreadSafeFlag can be set from an IRQ, `run` replaces the main task.
"""

from __future__ import annotations

import heapq
import itertools
import types
from collections import deque


def build(badge) -> types.ModuleType:  # noqa: C901 - one closure per badge boot
    cpu = badge.cpu
    m = types.ModuleType("asyncio")

    class CancelledError(BaseException):
        pass

    class TimeoutError(Exception):  # noqa: A001 - MicroPython's own class
        pass

    class InvalidStateError(Exception):
        pass

    class _Yield:
        """What a task yields to the loop: a request to park."""
        __slots__ = ("kind", "arg")

        def __init__(self, kind, arg=None):
            self.kind = kind
            self.arg = arg

        def __await__(self):
            return (yield self)

    class Task:
        __slots__ = ("coro", "loop", "done_flag", "result", "exc", "waiters", "pending_exc",
                     "state_token", "waiting_on", "send_value", "queued", "data")

        def __init__(self, coro, loop):
            self.coro = coro
            self.loop = loop
            self.done_flag = False
            self.result = None
            self.exc = None
            self.waiters = []       # tasks waiting for us
            self.pending_exc = None  # exception to throw at next resume
            self.state_token = 0     # invalidates stale sleep-heap entries
            self.waiting_on = None   # list we are parked in (to remove on cancel)
            self.send_value = None
            self.queued = False

        def done(self):
            return self.done_flag

        def cancel(self):
            if self.done_flag:
                return False
            if self is self.loop.current:
                # cancelling oneself: raise at the next await (MicroPython does the same)
                self.pending_exc = CancelledError()
                return True
            self.pending_exc = CancelledError()
            if not self.queued:
                self.loop._make_ready(self)
            return True

        def __await__(self):
            if not self.done_flag:
                yield _Yield("task", self)
            if self.exc is not None:
                raise self.exc
            return self.result

        def __repr__(self):
            return "<Task>"

    class Loop:
        def __init__(self):
            self.ready = deque()
            self.sleeping = []   # (t, seq, token, task)
            self.seq = itertools.count()
            self.current = None
            self.poll = False    # set by ThreadSafeFlag from an IRQ
            self.exc_handler = None
            self.stopped = False
            self.io_waiting = []  # tasks parked until their stream (task.data) is readable

        # scheduling helpers
        def _make_ready(self, task):
            if task.waiting_on is not None:
                try:
                    task.waiting_on.remove(task)
                except ValueError:
                    pass
                task.waiting_on = None
            task.state_token += 1
            self._enqueue(task)

        def _enqueue(self, task):
            if not task.queued:
                task.queued = True
                self.ready.append(task)

        def _sleep(self, task, ms):
            task.state_token += 1
            t = cpu.sched.clock() + max(0, ms) / 1000.0
            heapq.heappush(self.sleeping, (t, next(self.seq), task.state_token, task))

        def create_task(self, coro):
            if not hasattr(coro, "send"):
                raise TypeError("coroutine expected")
            t = Task(coro, self)
            self._enqueue(t)
            return t

        def _step(self, task):
            task.queued = False
            if task.done_flag:
                return
            self.current = task
            exc = task.pending_exc
            task.pending_exc = None
            try:
                if exc is not None:
                    req = task.coro.throw(exc)
                else:
                    val = task.send_value
                    task.send_value = None
                    req = task.coro.send(val)
            except StopIteration as e:
                self._finish(task, e.value, None)
                return
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, (KeyboardInterrupt, SystemExit)) or not isinstance(
                        e, (Exception, CancelledError)):
                    self._finish(task, None, e)
                    raise
                self._finish(task, None, e)
                return
            finally:
                self.current = None
            self._park(task, req)

        def _park(self, task, req):
            if req is None:
                self._enqueue(task)
                return
            if not isinstance(req, _Yield):
                task.pending_exc = RuntimeError("bad yield")
                self._enqueue(task)
                return
            if req.kind == "sleep":
                self._sleep(task, req.arg)
            elif req.kind == "wait":       # park in a list until someone readies us
                req.arg.append(task)
                task.waiting_on = req.arg
                task.state_token += 1
            elif req.kind == "io":        # park until the stream has input (select.poll)
                task.data = req.arg
                self.io_waiting.append(task)
                task.waiting_on = self.io_waiting
                task.state_token += 1
            elif req.kind == "task":
                other = req.arg
                if other.done_flag:
                    self._enqueue(task)
                else:
                    other.waiters.append(task)
                    task.waiting_on = other.waiters
                    task.state_token += 1
            else:
                self._enqueue(task)

        def _finish(self, task, result, exc):
            task.done_flag = True
            task.result = result
            task.exc = exc
            waiters = task.waiters
            task.waiters = []
            for w in waiters:
                w.waiting_on = None
                w.state_token += 1
                self._enqueue(w)
            if exc is not None and not waiters and not isinstance(exc, CancelledError) \
                    and task is not self.main_task and isinstance(exc, Exception):
                self.call_exception_handler({"message": "Task exception wasn't retrieved",
                                             "exception": exc, "future": task})

        main_task = None

        def _run_until(self, main):
            self.main_task = main
            try:
                while not main.done_flag and not self.stopped:
                    now = cpu.sched.clock()
                    sleeping = self.sleeping
                    while sleeping and sleeping[0][0] <= now + 1e-9:
                        t, _, token, task = heapq.heappop(sleeping)
                        if token == task.state_token and not task.done_flag:
                            if token < 0:
                                task.fn()          # a wait_for timeout
                            else:
                                task.state_token += 1
                                self._enqueue(task)
                    if self.io_waiting:
                        self._check_io()
                    if self.ready:
                        n = len(self.ready)
                        for _ in range(n):
                            task = self.ready.popleft()
                            self._step(task)
                            if main.done_flag:
                                break
                        continue
                    while self.sleeping and (self.sleeping[0][2] != self.sleeping[0][3].state_token
                                             or self.sleeping[0][3].done_flag):
                        heapq.heappop(self.sleeping)
                    until = self.sleeping[0][0] if self.sleeping else None
                    self.poll = False
                    cpu.wait(until, flag=self._polled)
            finally:
                self.main_task = None

        def call_at(self, t, fn):
            tm = _Timer(fn)
            heapq.heappush(self.sleeping, (t, next(self.seq), -1, tm))
            return tm

        def _polled(self):
            return self.poll or bool(self.ready) or self._io_ready()

        def _io_ready(self):
            for t in self.io_waiting:
                if _readable(t.data):
                    return True
            return False

        def _check_io(self):
            for t in list(self.io_waiting):
                if _readable(t.data):
                    self._make_ready(t)

        # public loop API
        def run_forever(self):
            self.stopped = False
            forever = self.create_task(_forever())
            self._run_until(forever)

        def run_until_complete(self, aw):
            task = aw if isinstance(aw, Task) else self.create_task(aw)
            self._run_until(task)
            if task.exc is not None:
                raise task.exc
            return task.result

        def stop(self):
            self.stopped = True

        def close(self):
            pass

        def set_exception_handler(self, handler):
            self.exc_handler = handler

        def get_exception_handler(self):
            return self.exc_handler

        def default_exception_handler(self, loop, context):
            exc = context.get("exception")
            badge.stdout_write("Task exception wasn't retrieved\n")
            if exc is not None:
                badge.print_exception(exc)

        def call_exception_handler(self, context):
            (self.exc_handler or self.default_exception_handler)(self, context)

    class _Timer:
        __slots__ = ("fn", "state_token", "done_flag")

        def __init__(self, fn):
            self.fn = fn
            self.state_token = -1
            self.done_flag = False

        def cancel(self):
            self.done_flag = True

    async def _forever():
        while True:
            await _Yield("sleep", 1 << 30)

    def _readable(stream):
        # A stream of the badge (its stdin) says whether input is waiting; others always are.
        fn = getattr(stream, "_tc_poll", None)
        return True if fn is None else bool(fn())

    class Stream:
        """MicroPython's asyncio.Stream (StreamReader/StreamWriter) over a badge stream: a
        read waits in the event loop (virtual time runs) until the stream has input, then reads
        from it as MicroPython does (`read(n)` on the ESP32's stdin blocks for all n bytes)."""

        def __init__(self, s, e=None):
            self.s = s
            self.e = e or {}
            self.out_buf = b""

        def get_extra_info(self, v):
            return self.e[v]

        async def __aenter__(self):
            return self

        async def __aexit__(self, exc_type, exc, tb):
            await self.close()

        def close(self):
            pass

        async def wait_closed(self):
            close = getattr(self.s, "close", None)
            if close is not None:
                close()

        async def read(self, n=-1):
            r = b""
            while True:
                await _Yield("io", self.s)
                r2 = self.s.read(n)
                if r2 is not None:
                    if n >= 0:
                        return r2
                    if not len(r2):
                        return r
                    r += r2

        async def readinto(self, buf):
            await _Yield("io", self.s)
            return self.s.readinto(buf)

        async def readexactly(self, n):
            r = b""
            while n:
                await _Yield("io", self.s)
                r2 = self.s.read(n)
                if r2 is not None:
                    if not len(r2):
                        raise EOFError
                    r += r2
                    n -= len(r2)
            return r

        async def readline(self):
            line = b""
            while True:
                await _Yield("io", self.s)
                line2 = self.s.readline()
                line += line2
                if not line2 or line[-1] == 10:
                    return line

        def write(self, buf):
            self.out_buf += bytes(buf)

        async def drain(self):
            if self.out_buf:
                self.s.write(self.out_buf)
                self.out_buf = b""

    state = {"loop": Loop()}

    def get_event_loop(*_a):
        return state["loop"]

    def new_event_loop():
        state["loop"] = Loop()
        return state["loop"]

    def current_task():
        t = state["loop"].current
        if t is None:
            raise RuntimeError("no running event loop")
        return t

    def create_task(coro):
        return state["loop"].create_task(coro)

    def run(coro):
        return state["loop"].run_until_complete(coro)

    def sleep_ms(ms):
        return _Yield("sleep", int(ms))

    def sleep(s):
        return _Yield("sleep", s * 1000)

    async def wait_for(aw, timeout):
        if timeout is None:
            return await aw
        loop = state["loop"]
        task = aw if isinstance(aw, Task) else loop.create_task(aw)
        timed_out = []

        def _expire():
            if not task.done_flag:
                timed_out.append(1)
                task.cancel()

        timer = loop.call_at(cpu.sched.clock() + max(0, timeout), _expire)
        try:
            if not task.done_flag:
                await _Yield("task", task)
        except CancelledError:
            task.cancel()
            timer.cancel()
            raise
        timer.cancel()
        if task.exc is not None:
            if timed_out and isinstance(task.exc, CancelledError):
                raise TimeoutError
            raise task.exc
        return task.result

    def wait_for_ms(aw, timeout):
        return wait_for(aw, None if timeout is None else timeout / 1000)

    async def gather(*aws, return_exceptions=False):
        loop = state["loop"]
        tasks = [a if isinstance(a, Task) else loop.create_task(a) for a in aws]
        results = []
        try:
            for t in tasks:
                if not t.done_flag:
                    await _Yield("task", t)
        except CancelledError:
            for t in tasks:
                t.cancel()
            raise
        for t in tasks:
            if t.exc is not None:
                if return_exceptions:
                    results.append(t.exc)
                else:
                    raise t.exc
            else:
                results.append(t.result)
        return results

    class Event:
        def __init__(self):
            self.state = False
            self.waiting = []

        def is_set(self):
            return self.state

        def set(self):
            self.state = True
            loop = state["loop"]
            for t in list(self.waiting):
                loop._make_ready(t)
            self.waiting = []

        def clear(self):
            self.state = False

        async def wait(self):
            if not self.state:
                await _Yield("wait", self.waiting)
            return True

    class ThreadSafeFlag:
        def __init__(self):
            self.state = 0
            self.waiting = []

        def set(self):
            # may be called from an IRQ callback
            self.state = 1
            if self.waiting:
                loop = state["loop"]
                for t in list(self.waiting):
                    loop._make_ready(t)
                self.waiting = []
                loop.poll = True

        def clear(self):
            self.state = 0

        async def wait(self):
            while not self.state:
                await _Yield("wait", self.waiting)
            self.state = 0

    class Lock:
        def __init__(self):
            self.state = 0
            self.waiting = []

        def locked(self):
            return self.state == 1

        async def acquire(self):
            while self.state:
                await _Yield("wait", self.waiting)
            self.state = 1
            return True

        def release(self):
            if self.state != 1:
                raise RuntimeError("Lock not acquired")
            self.state = 0
            if self.waiting:
                t = self.waiting[0]
                state["loop"]._make_ready(t)

        async def __aenter__(self):
            return await self.acquire()

        async def __aexit__(self, *a):
            self.release()

    m.CancelledError = CancelledError
    m.TimeoutError = TimeoutError
    m.InvalidStateError = InvalidStateError
    m.Task = Task
    m.Event = Event
    m.ThreadSafeFlag = ThreadSafeFlag
    m.Lock = Lock
    m.Stream = Stream
    m.StreamReader = Stream
    m.StreamWriter = Stream
    m.get_event_loop = get_event_loop
    m.new_event_loop = new_event_loop
    m.current_task = current_task
    m.create_task = create_task
    m.run = run
    m.sleep = sleep
    m.sleep_ms = sleep_ms
    m.wait_for = wait_for
    m.wait_for_ms = wait_for_ms
    m.gather = gather
    m.__version__ = (3, 0, 0)
    return m
