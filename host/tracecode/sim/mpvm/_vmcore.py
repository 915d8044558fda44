# Runs INSIDE the MicroPython VM of a virtual badge (MicroPython code, not CPython).
# The link to the host simulator: virtual time, interrupts and hardware state.
# One JSON message per line on a unix socket; the host answers every call with
# {"q": seq, "t": ms_since_boot, "r": rtc_ms_since_2000 or null, "e": [events]}.
import sys
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
cfg = {}


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


def call(msg):
    """Send a request and wait for its answer; returns the answer's 'v' (may be None)."""
    global _seq, _t, _r, _rt0
    _seq += 1
    q = _seq
    send([q] + msg)
    while True:
        line = _s.readline()
        if not line:
            # the host went away: this badge has no power any more
            while True:
                _s.readline()
        a = json.loads(line)
        if a["q"] != q:
            continue        # the answer to a call that Ctrl-C interrupted
        _t = a["t"]
        _r = a["r"]
        if _rt:
            _rt0 = _wall_ms()
        ev = a["e"]
        if ev:
            _pending.extend(ev)
        return a.get("v")


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
    """Run pending interrupt callbacks (BLE, pins), as the chip's scheduler would."""
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
    finally:
        _in_irq = False


def wait(until_ms, want_input=False):
    """Let virtual time run until `until_ms` (ms since boot; None: no limit), an interrupt,
    or console input (want_input). Interrupt callbacks run before returning."""
    call(["w", until_ms, 1 if want_input else 0])
    dispatch()
