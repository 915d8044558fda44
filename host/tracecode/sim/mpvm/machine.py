# Virtual badge `machine` (runs inside the MicroPython VM): ESP32 semantics; pin levels,
# RTC, reset and the watchdog are kept by the host simulator.
import _vmcore as _vm
from micropython import const

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)

_levels = {}      # pin -> level driven from outside (button)


def unique_id():
    return bytes.fromhex(_vm.cfg["uid"])


def reset_cause():
    return _vm.cfg["cause"]


def reset():
    _vm.call(["reset"])
    while True:
        _vm.wait(None)


def soft_reset():
    raise SystemExit


def freq(*a):
    if a:
        return None
    return 160000000


def idle():
    _vm.wait(_vm.now_ms() + 1)


def lightsleep(ms=None):
    _vm.wait(None if ms is None else _vm.now_ms() + ms)


def deepsleep(ms=None):
    _vm.call(["deepsleep", ms])
    while True:
        _vm.wait(None)


def disable_irq():
    return 1


def enable_irq(state=1):
    pass


class Pin:
    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_UP = const(2)
    PULL_DOWN = const(1)
    IRQ_RISING = const(1)
    IRQ_FALLING = const(2)
    WAKE_LOW = const(4)
    WAKE_HIGH = const(5)
    _irqs = {}

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if not isinstance(id, int) or id < 0 or id > 48:
            raise ValueError("invalid pin")
        self._id = id
        self._mode = 1
        self._pull = None
        self._out = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if mode != -1 and mode is not None:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self._out = 1 if value else 0
        if self._mode in (3, 7):
            _vm.send(["pin", self._id, self._out])

    def value(self, *v):
        if v:
            self._out = 1 if v[0] else 0
            if self._mode in (3, 7):
                _vm.send(["pin", self._id, self._out])
            return None
        if self._mode in (3, 7) and self._mode == 3:
            return self._out
        lvl = _levels.get(self._id)
        if lvl is not None:
            return lvl
        return 1 if self._pull == 2 else 0

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        if handler is None:
            Pin._irqs.pop(self._id, None)
        else:
            Pin._irqs[self._id] = (handler, trigger, self)
        return None

    def __repr__(self):
        return "Pin(%d)" % self._id


def _pin_event(ev):
    pin, lvl = ev[1], ev[2]
    before = _levels.get(pin)
    _levels[pin] = lvl
    h = Pin._irqs.get(pin)
    if h is not None and before != lvl:
        trig = 1 if lvl else 2
        if h[1] & trig:
            try:
                h[0](h[2])
            except Exception as e:
                import sys
                sys.print_exception(e)


_vm.handlers["pin"] = _pin_event


class ADC:
    ATTN_0DB = const(0)
    ATTN_2_5DB = const(1)
    ATTN_6DB = const(2)
    ATTN_11DB = const(3)
    WIDTH_12BIT = const(3)

    def __init__(self, pin, *, atten=None):
        self._pin = pin

    def atten(self, a):
        pass

    def width(self, w):
        pass

    def read_uv(self):
        return _vm.cfg["adc_uv"]

    def read_u16(self):
        return min(65535, _vm.cfg["adc_uv"] * 65535 // 3100000)

    def read(self):
        return self.read_u16() >> 4


class RTC:
    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        import time
        if dt is None:
            t = time.gmtime(time.time())
            ms = _vm.rtc_ms()
            sub = 0 if ms is None else (ms % 1000) * 1000
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], sub)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        us = dt[7] if len(dt) > 7 else 0
        _vm.call(["rtc", secs * 1000 + us // 1000])
        return None

    def init(self, dt):
        self.datetime(dt)

    def memory(self, *a):
        if a:
            _vm.call(["rtcmem", bytes(a[0]).hex()])
            return None
        return bytes.fromhex(_vm.call(["rtcmem", None]))


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        _vm.call(["wdt", int(timeout)])

    def feed(self):
        _vm.send_raw(_WDTF)   # no allocation: a feed is not activity (watch.py)


_WDTF = b'["wdtf"]\n'


class Timer:
    # The ESP32's hardware timers 0-3. Expiries come from the host on the fleet's clock; the
    # callback is soft (scheduled, as the ESP32 port does): it runs when the VM next waits,
    # with the Timer as its argument. A new boot starts with every timer stopped.
    ONE_SHOT = const(0)
    PERIODIC = const(1)

    def __init__(self, id, *a, **kw):
        if not isinstance(id, int) or not 0 <= id < 4:
            raise ValueError("invalid Timer number")
        self._id = id
        self._cb = None
        self._mode = 1
        if a or kw:
            self.init(*a, **kw)

    def init(self, *, mode=1, callback=None, period=-1, tick_hz=1000, freq=None):
        if freq is not None:
            f = float(freq)
            if f <= 0:
                raise ValueError("invalid freq")
            ms = int(1000 / f + 0.5)
        elif period is None or period < 0:
            ms = 0xFFFFFFFF   # the chip's default: practically never
        else:
            ms = int(period) * 1000 // int(tick_hz)
        if ms < 1:
            ms = 1
        self._cb = callback
        self._mode = 1 if mode else 0
        _vm.timers[self._id] = self
        _vm.call(["timer", self._id, self._mode, ms])

    def deinit(self):
        if _vm.timers[self._id] is self:
            _vm.timers[self._id] = None
            _vm.call(["timer", self._id, None])
        self._cb = None

    def _fire(self):
        if self._mode == 0 and _vm.timers[self._id] is self:
            _vm.timers[self._id] = None
        cb = self._cb
        if cb is None:
            return
        try:
            cb(self)
        except Exception as e:
            import sys
            sys.print_exception(e)

    def value(self):
        return 0

    def __repr__(self):
        return "Timer(%d; alarm_en=%d, auto_reload=%d)" % (self._id, 1 if self._cb else 0, self._mode)
