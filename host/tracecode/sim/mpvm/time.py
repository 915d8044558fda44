# Virtual badge `time` (runs inside the MicroPython VM): ESP32 semantics on the fleet's
# virtual clock. Epoch 2000-01-01.
# ticks: the VM's C asyncio (_asyncio) stamps tasks it reschedules itself (create_task,
# cancel) with the process's own clock, so virtual ticks run on the same scale, ahead of it by
# _LEAD ms: such a task is then simply due now. The unix port's ticks period is 2**62 (the
# ESP32's is 2**30, ~12.4 days); ticks_add/ticks_diff are the VM's own.
import sys
_p = sys.path
sys.path = []
try:
    from time import gmtime as _gmtime, mktime as _mktime, ticks_add, ticks_diff
    from time import ticks_ms as _proc_ms
finally:
    sys.path = _p
del _p
import _vmcore as _vm

_EPOCH = const(946684800)
_LEAD = const(10000000)
_BASE = _proc_ms() + _LEAD


def ticks_ms():
    return _BASE + _vm.now_ms()


def ticks_us():
    return (_BASE + _vm.now_ms()) * 1000


ticks_cpu = ticks_us


def _rtc_s():
    r = _vm.rtc_ms()
    if r is None:
        # never set: the ESP32 RTC counts from 2000-01-01 at power-on
        r = _vm.now_ms()
    return r


def time():
    return _rtc_s() // 1000


def time_ns():
    return _rtc_s() * 1000000


def gmtime(secs=None):
    if secs is None:
        secs = time()
    return _gmtime(int(secs) + _EPOCH)


localtime = gmtime


def mktime(t):
    return _mktime(t) - _EPOCH


def sleep_ms(ms):
    until = _vm.now_ms() + max(0, int(ms))
    while _vm.now_ms() < until:
        _vm.wait(until)


def sleep_us(us):
    sleep_ms((int(us) + 999) // 1000)


def sleep(s):
    sleep_ms(int(s * 1000))
