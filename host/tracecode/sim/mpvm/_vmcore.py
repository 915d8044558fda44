# Runs INSIDE the MicroPython VM of a virtual badge (MicroPython code, not CPython).
# The link to the host simulator: virtual time, interrupts and hardware state.
# Requests: one JSON list per line on a unix socket, except the wait, which is a fixed-size
# text line written from a preallocated buffer. Every answer is a fixed 32-byte binary header
# (_A_* offsets below: seq, virtual ms since boot, RTC ms since 2000 or "unset", timer
# expiries per timer id, payload length) and, only when there are events or a value, a JSON
# payload {"e": [events], "v": value}. So a wait with nothing to report (the idle REPL, an
# idle event loop, a timer tick) allocates nothing on the badge's heap: these modules are C
# on a chip, and the resume watch (tcbadge/watch.py) reads an unchanged gc.mem_alloc() as an
# idle REPL.
import socket
import struct
import json

_s = None
_seq = 0
_t = 0            # virtual ms since boot, as of the last answer
_r = None         # RTC in ms since 2000-01-01 as of the last answer (None: never set)
_rt = False       # realtime fleet: time also moves while code runs
_rt0 = 0
_in_irq = False
_pending = []
handlers = {}     # event kind -> function(event list)
timers = [None, None, None, None]   # machine.Timer id -> the Timer whose callback runs
cfg = {}

_HDR = const(32)
_A_Q = const(0)        # u32 sequence number of the request answered
_A_T = const(4)        # u48 virtual ms since boot
_A_R = const(10)       # u48 RTC ms since 2000
_A_RSET = const(16)    # u8 1: the RTC has been set (else _r is None)
_A_TMR = const(17)     # 4 x u8: expiries of machine.Timer 0-3 since the last answer
_A_LEN = const(24)     # u32 length of the JSON payload that follows
_NTMR = const(4)
_hdr = bytearray(_HDR)
_tmr = bytearray(_NTMR)    # expiries not yet run
# "W <seq> <until|-> <input>" padded to a fixed length: written without allocating
_W_LEN = const(40)
_wreq = bytearray(b"W" + b" " * (_W_LEN - 2) + b"\n")
_W_Q = const(14)       # field ends (right-aligned digits)
_W_U = const(35)
_W_I = const(37)


def connect(path):
    global _s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(struct.pack("<H", socket.AF_UNIX) + path.encode() + b"\x00")
    _s = s


def _wall_ms():
    import _realtime
    return _realtime.ms()


def send(msg):
    data = json.dumps(msg).encode() + b"\n"
    mv = memoryview(data)
    while mv:
        n = _s.write(mv)
        if n is None:
            n = 0
        mv = mv[n:]


def send_raw(b):
    # a preformatted message (a constant bytes object: no allocation)
    _s.write(b)


def _u(b, off, n):
    v = 0
    i = off + n
    while i > off:
        i -= 1
        v = (v << 8) | b[i]
    return v


def gone():
    """The host closed the link (it died without killing this VM): sleep for good. Reading
    the closed socket again would return at once, and an orphaned badge would spin a CPU."""
    import select
    while True:
        select._poll().poll(-1)  # nothing registered: only a signal ends this wait


def halt():
    """Wait for the host to kill this VM (reset, soft reset, power cut)."""
    b = bytearray(1)
    while _s.readinto(b):
        pass
    gone()


def _answer(q):
    """Read answers until the one to request `q`; returns its payload's 'v' (None if none)."""
    global _t, _r, _rt0
    h = _hdr
    while True:
        n = _s.readinto(h)
        if not n:
            gone()      # the host went away: this badge has no power any more
        ln = _u(h, _A_LEN, 4)
        a = None
        if ln:
            a = json.loads(_s.read(ln))
        if _u(h, _A_Q, 4) != q:
            continue        # the answer to a call that Ctrl-C interrupted
        _t = _u(h, _A_T, 6)
        _r = _u(h, _A_R, 6) if h[_A_RSET] else None
        if _rt:
            _rt0 = _wall_ms()
        tm = _tmr
        for i in range(_NTMR):
            k = h[_A_TMR + i]
            if k:
                k += tm[i]
                tm[i] = k if k < 8 else 8     # the chip's schedule queue is 8 deep
        if a is None:
            return None
        ev = a.get("e")
        if ev:
            _pending.extend(ev)
        return a.get("v")


def call(msg):
    """Send a request and wait for its answer; returns the answer's 'v' (may be None)."""
    global _seq
    _seq += 1
    q = _seq
    send([q] + msg)
    return _answer(q)


def now_ms():
    if _rt:
        return _t + _wall_ms() - _rt0
    return _t


def rtc_ms():
    if _r is None:
        return None
    if _rt:
        return _r + _wall_ms() - _rt0
    return _r


def dispatch():
    """Run pending interrupt callbacks (BLE, pins, timers), as the chip's scheduler would."""
    global _in_irq
    if _in_irq:
        return
    _in_irq = True
    try:
        while _pending:
            ev = _pending.pop(0)
            h = handlers.get(ev[0])
            if h is not None:
                h(ev)
        tm = _tmr
        for i in range(_NTMR):
            while tm[i]:
                tm[i] -= 1
                t = timers[i]
                if t is not None:
                    t._fire()
    finally:
        _in_irq = False


def _field(end, width, v):
    b = _wreq
    i = end
    if v is None:
        i -= 1
        b[i] = 45      # "-"
    elif v == 0:
        i -= 1
        b[i] = 48
    else:
        while v:
            i -= 1
            b[i] = 48 + v % 10
            v //= 10
    while i > end - width:
        i -= 1
        b[i] = 32


def wait(until_ms, want_input=False):
    """Let virtual time run until `until_ms` (ms since boot; None: no limit), an interrupt,
    or console input (want_input). Interrupt callbacks run before returning. Allocates
    nothing on the heap when nothing happened."""
    global _seq
    _seq += 1
    q = _seq
    if until_ms is not None and until_ms < 0:
        until_ms = 0
    _field(_W_Q, _W_Q - 2, q)
    _field(_W_U, _W_U - _W_Q - 1, until_ms)
    _wreq[_W_I] = 49 if want_input else 48
    _s.write(_wreq)
    if _probe:
        _sample()
    _answer(q)
    dispatch()


# RAM probe (tools/bench_vm_ram.py, VMBadge(ram_probe=True)): the live heap after a collection
# at every wait; each new high-water mark goes to the host. Off by default (it allocates).
_probe = False
_high = 0


def _sample():
    global _high
    import gc
    gc.collect()
    a = gc.mem_alloc()
    if a > _high:
        _high = a
        send(["memhw", a])
