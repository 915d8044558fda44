"""One boot of a virtual badge: its own module table, builtins and `__main__`.

Badge code never touches CPython's `sys.modules`: every module a badge imports (simulated
MicroPython modules and the .py files on its flash) lives in this runtime's table, so two
badges in one process share no state. A soft reset throws the runtime away.
"""

from __future__ import annotations

import array
import binascii
import builtins
import collections
import errno
import hashlib as _hashlib
import heapq
import io
import json
import math
import os
import re
import struct
import sys as _sys
import threading
import time as _time
import types

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import ble as _ble
from . import mp_asyncio
from .flash import oserror

EPOCH_2000 = 946684800
TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD // 2

MP_VERSION = (1, 24, 1, "")
MP_BANNER_VERSION = "MicroPython v1.24.1 on 2024-11-29"
MP_MACHINE = "Generic ESP32 module with ESP32"

# CPython stdlib modules whose MicroPython namesakes behave the same for badge code.
_PASSTHROUGH = {
    "struct": struct, "ustruct": struct, "json": json, "ujson": json, "errno": errno,
    "uerrno": errno, "binascii": binascii, "ubinascii": binascii, "math": math,
    "array": array, "re": re, "heapq": heapq, "collections": collections, "io": io,
}

_code_cache: dict[tuple, types.CodeType] = {}
_code_lock = threading.Lock()


def compile_cached(src_path: str, display: str) -> types.CodeType:
    """Compile a flash file; identical sources (the same firmware on many badges) compile once."""
    with open(src_path, "rb") as f:
        source = f.read()
    key = (hashlib_sha1(source), display)
    with _code_lock:
        code = _code_cache.get(key)
    if code is None:
        code = compile(source, display, "exec", dont_inherit=True)
        with _code_lock:
            if len(_code_cache) > 2000:
                _code_cache.clear()
            _code_cache[key] = code
    return code


def hashlib_sha1(data: bytes) -> bytes:
    return _hashlib.sha1(data).digest()


class Runtime:
    def __init__(self, badge):
        self.badge = badge
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self.builtins["open"] = badge.flash.open
        self.builtins["print"] = self._print
        self.builtins["input"] = self._input
        self.builtins["exit"] = self.builtins["quit"] = _exit
        self.builtins["help"] = lambda *a: badge.stdout_write("Welcome to MicroPython!\n")
        for name in ("breakpoint", "copyright", "credits", "license"):
            self.builtins.pop(name, None)
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = self.builtins
        self.main = main
        self.modules["__main__"] = main
        self._builders = {
            "sys": self._mk_sys, "time": self._mk_time, "utime": self._mk_time,
            "os": self._mk_os, "uos": self._mk_os, "machine": self._mk_machine,
            "micropython": self._mk_micropython, "gc": self._mk_gc, "esp32": self._mk_esp32,
            "cryptolib": self._mk_cryptolib, "ucryptolib": self._mk_cryptolib,
            "hashlib": self._mk_hashlib, "uhashlib": self._mk_hashlib,
            "neopixel": self._mk_neopixel, "random": self._mk_random, "urandom": self._mk_random,
            "bluetooth": lambda: _ble.build(badge), "ubluetooth": lambda: _ble.build(badge),
            "asyncio": lambda: mp_asyncio.build(badge), "uasyncio": self._mk_uasyncio,
            "select": self._mk_select, "esp": self._mk_esp,
        }

    # -- import system -------------------------------------------------------------------------
    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            pkg = (globals or {}).get("__package__") or ""
            if not pkg:
                mod_name = (globals or {}).get("__name__", "")
                pkg = mod_name if "__path__" in (globals or {}) else mod_name.rpartition(".")[0]
            parts = pkg.split(".") if pkg else []
            if level - 1 > len(parts) or not pkg:
                raise ImportError("can't perform relative import")
            base = ".".join(parts[: len(parts) - (level - 1)])
            full = base + ("." + name if name else "")
        else:
            full = name
        mod = self.import_module(full)
        if fromlist:
            if hasattr(mod, "__path__"):
                for item in fromlist:
                    if item != "*" and not hasattr(mod, item):
                        try:
                            self.import_module(full + "." + item)
                        except ImportError:
                            pass
            return mod
        if level:
            return mod
        return self.modules[full.partition(".")[0]]

    def import_module(self, full: str) -> types.ModuleType:
        mod = self.modules.get(full)
        if mod is not None:
            return mod
        parent_name, _, short = full.rpartition(".")
        if parent_name:
            parent = self.import_module(parent_name)
            mod = self._load_from(parent.__path__, full, short)
            setattr(parent, short, mod)
            return mod
        if full in self._builders:
            mod = self._builders[full]()
            mod.__name__ = full
            self.modules[full] = mod
            return mod
        if full in _PASSTHROUGH:
            mod = _PASSTHROUGH[full]
            self.modules[full] = mod
            return mod
        for d in ("", "/lib"):
            try:
                return self._load_from([d], full, full)
            except ImportError:
                continue
        raise ImportError("no module named '%s'" % full)

    def _load_from(self, dirs, full: str, short: str) -> types.ModuleType:
        fs = self.badge.flash
        for d in dirs:
            base = fs.abspath(d + "/" + short if d else short)
            hp = fs.host(base)
            if os.path.isdir(hp):
                init = os.path.join(hp, "__init__.py")
                mod = types.ModuleType(full)
                mod.__path__ = [base]
                mod.__dict__["__builtins__"] = self.builtins
                mod.__package__ = full
                self.modules[full] = mod
                if os.path.isfile(init):
                    mod.__file__ = base.lstrip("/") + "/__init__.py"
                    self._exec_module(mod, init, mod.__file__)
                return mod
            if os.path.isfile(hp + ".py"):
                mod = types.ModuleType(full)
                mod.__file__ = (base + ".py").lstrip("/")
                mod.__dict__["__builtins__"] = self.builtins
                mod.__package__ = full.rpartition(".")[0]
                self.modules[full] = mod
                self._exec_module(mod, hp + ".py", mod.__file__)
                return mod
            if os.path.isfile(hp + ".mpy"):
                raise ImportError("%s.mpy: .mpy files can't run on the virtual badge" % base)
        raise ImportError("no module named '%s'" % full)

    def _exec_module(self, mod, host_path: str, display: str) -> None:
        self.badge.flash.check_alive()
        code = compile_cached(host_path, display)
        try:
            exec(code, mod.__dict__)
        except BaseException:
            self.modules.pop(mod.__name__, None)
            raise

    def run_file(self, path: str) -> bool:
        """Execute a flash file in __main__ (boot.py / main.py). False if it does not exist."""
        hp = self.badge.flash.host(path)
        if not os.path.isfile(hp):
            return False
        code = compile_cached(hp, path.lstrip("/"))
        exec(code, self.main.__dict__)
        return True

    # -- builtins --------------------------------------------------------------------------------
    def _print(self, *args, sep=" ", end="\n", file=None):
        s = (sep if sep is not None else " ").join(str(a) for a in args) + (end if end is not None else "\n")
        if file is None:
            self.badge.stdout_write(s)
        else:
            file.write(s)

    def _input(self, prompt=""):
        if prompt:
            self.badge.stdout_write(str(prompt))
        return self.badge.console_readline()

    # -- modules -----------------------------------------------------------------------------
    def _mk_sys(self):
        b = self.badge
        m = types.ModuleType("sys")
        m.implementation = types.SimpleNamespace(name="micropython", version=MP_VERSION,
                                                 _machine=MP_MACHINE, _mpy=0x0A06)
        m.platform = "esp32"
        m.version = "3.4.0; " + MP_BANNER_VERSION
        m.version_info = (3, 4, 0)
        m.byteorder = "little"
        m.maxsize = (1 << 31) - 1
        m.path = ["", ".frozen", "/lib"]
        m.argv = []
        m.modules = self.modules
        m.stdout = b.stdout
        m.stderr = b.stdout
        m.stdin = b.stdin
        m.exit = _exit
        m.print_exception = lambda e, file=None: b.print_exception(e, file)
        m.exc_info = _sys.exc_info
        return m

    def _mk_time(self):
        b = self.badge
        m = types.ModuleType("time")

        def _secs_2000() -> float:
            return b.rtc_seconds()

        def time_():
            return int(_secs_2000())

        def time_ns():
            return int(_secs_2000() * 1e9)

        def gmtime(secs=None):
            s = int(_secs_2000()) if secs is None else int(secs)
            t = _time.gmtime(s + EPOCH_2000)
            return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday,
                    t.tm_yday)

        def mktime(tup):
            y, mo, d, h, mi, s = (int(x) for x in tuple(tup)[:6])
            import calendar
            return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - EPOCH_2000

        def ticks_ms():
            return int(b.uptime() * 1000) & TICKS_MAX

        def ticks_us():
            return int(b.uptime() * 1000000) & TICKS_MAX

        def ticks_diff(a, c):
            return ((a - c + TICKS_HALF) & TICKS_MAX) - TICKS_HALF

        def ticks_add(a, delta):
            return (a + delta) & TICKS_MAX

        def sleep(s):
            b.sleep(float(s))

        def sleep_ms(ms):
            b.sleep(int(ms) / 1000.0)

        def sleep_us(us):
            b.sleep(int(us) / 1e6)

        m.time = time_
        m.time_ns = time_ns
        m.gmtime = gmtime
        m.localtime = gmtime
        m.mktime = mktime
        m.ticks_ms = ticks_ms
        m.ticks_us = ticks_us
        m.ticks_cpu = ticks_us
        m.ticks_diff = ticks_diff
        m.ticks_add = ticks_add
        m.sleep = sleep
        m.sleep_ms = sleep_ms
        m.sleep_us = sleep_us
        return m

    def _mk_os(self):
        b = self.badge
        fs = b.flash
        m = types.ModuleType("os")

        def _host_existing(path):
            fs.check_alive()
            hp = fs.host(path)
            if not os.path.lexists(hp):
                raise oserror(errno.ENOENT)
            return hp

        def ilistdir(path=""):
            hp = _host_existing(path) if path else fs.host(fs.cwd)
            if not os.path.isdir(hp):
                raise oserror(errno.ENOTDIR)
            out = []
            for name in sorted(os.listdir(hp)):
                p = os.path.join(hp, name)
                if os.path.isdir(p):
                    out.append((name, 0x4000, 0, 0))
                else:
                    out.append((name, 0x8000, 0, os.path.getsize(p)))
            return iter(out)

        def listdir(path=""):
            return [e[0] for e in ilistdir(path)]

        def stat(path):
            hp = _host_existing(path)
            st = os.stat(hp)
            mtime = int(st.st_mtime) - EPOCH_2000
            if os.path.isdir(hp):
                return (0x4000, 0, 0, 0, 0, 0, 0, mtime, mtime, mtime)
            return (0x8000, 0, 0, 0, 0, 0, st.st_size, mtime, mtime, mtime)

        def statvfs(path="/"):
            fs.check_alive()
            total = fs.total_blocks()
            free = max(0, total - fs.used_blocks())
            return (4096, 4096, total, free, free, 0, 0, 0, 0, 255)

        def remove(path):
            hp = _host_existing(path)
            if os.path.isdir(hp):
                raise oserror(errno.EISDIR)
            os.remove(hp)
            fs._sizes.pop(fs.abspath(path), None)

        def rename(old, new):
            ho = _host_existing(old)
            hn = fs.host(new)
            if not os.path.isdir(os.path.dirname(hn)):
                raise oserror(errno.ENOENT)
            if os.path.isdir(hn) and not os.path.isdir(ho):
                raise oserror(errno.EISDIR)
            os.replace(ho, hn)
            ao, an = fs.abspath(old), fs.abspath(new)
            if ao in fs._sizes:
                fs._sizes[an] = fs._sizes.pop(ao)
            else:
                fs.rescan()

        def mkdir(path):
            fs.check_alive()
            hp = fs.host(path)
            if os.path.lexists(hp):
                raise oserror(errno.EEXIST)
            if not os.path.isdir(os.path.dirname(hp)):
                raise oserror(errno.ENOENT)
            ap = fs.abspath(path)
            fs._dirs.add(ap)
            if fs.used_blocks() > fs.total_blocks():
                fs._dirs.discard(ap)
                raise oserror(errno.ENOSPC)
            os.mkdir(hp)

        def rmdir(path):
            hp = _host_existing(path)
            if not os.path.isdir(hp):
                raise oserror(errno.ENOTDIR)
            if os.listdir(hp):
                raise oserror(errno.ENOTEMPTY)
            os.rmdir(hp)
            fs._dirs.discard(fs.abspath(path))

        def chdir(path):
            hp = _host_existing(path)
            if not os.path.isdir(hp):
                raise oserror(errno.ENOTDIR)
            fs.cwd = fs.abspath(path)

        def getcwd():
            return fs.cwd

        def urandom(n):
            return b.hw_random(int(n))

        uname_t = collections.namedtuple("uname_result",
                                         ["sysname", "nodename", "release", "version", "machine"])

        def uname():
            return uname_t("esp32", "esp32", "1.24.1", "v1.24.1 on 2024-11-29", MP_MACHINE)

        def sync():
            fs.check_alive()

        m.ilistdir = ilistdir
        m.listdir = listdir
        m.stat = stat
        m.statvfs = statvfs
        m.remove = remove
        m.unlink = remove
        m.rename = rename
        m.mkdir = mkdir
        m.rmdir = rmdir
        m.chdir = chdir
        m.getcwd = getcwd
        m.urandom = urandom
        m.uname = uname
        m.sync = sync
        m.sep = "/"
        m.dupterm = lambda *a: None
        return m

    def _mk_machine(self):
        b = self.badge
        m = types.ModuleType("machine")

        class Pin:
            IN = 1
            OUT = 3
            OPEN_DRAIN = 7
            PULL_UP = 2
            PULL_DOWN = 1
            PULL_HOLD = 4
            IRQ_RISING = 1
            IRQ_FALLING = 2
            WAKE_LOW = 4
            WAKE_HIGH = 5
            DRIVE_0, DRIVE_1, DRIVE_2, DRIVE_3 = 0, 1, 2, 3

            def __init__(self, id, mode=-1, pull=-1, *, value=None, **kw):
                if not isinstance(id, int) or not 0 <= id <= 48:
                    raise ValueError("invalid pin")
                self.id = id
                self._st = b.pin_state(id)
                self.init(mode, pull, value=value)

            def init(self, mode=-1, pull=-1, *, value=None, **kw):
                if mode != -1 and mode is not None:
                    self._st["mode"] = mode
                if pull != -1:
                    self._st["pull"] = pull
                if value is not None:
                    self._st["out"] = 1 if value else 0

            def value(self, *args):
                if args:
                    self._st["out"] = 1 if args[0] else 0
                    b.pin_changed(self.id)
                    return None
                return b.pin_level(self.id)

            __call__ = value

            def on(self):
                self.value(1)

            def off(self):
                self.value(0)

            def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
                self._st["irq"] = (handler, trigger, self)
                return None

            def __repr__(self):
                return "Pin(%d)" % self.id

        class ADC:
            ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB = 0, 1, 2, 3
            WIDTH_9BIT, WIDTH_10BIT, WIDTH_11BIT, WIDTH_12BIT = 0, 1, 2, 3

            def __init__(self, pin, *, atten=None):
                self.pin = pin.id if isinstance(pin, Pin) else int(pin)
                self._atten = 0 if atten is None else atten

            def atten(self, a):
                self._atten = a

            def width(self, w):
                pass

            def init(self, *, atten=None):
                if atten is not None:
                    self._atten = atten

            def read_uv(self):
                uv = b.adc_uv(self.pin)
                full = (950000, 1250000, 1750000, 2450000)[self._atten]
                return min(uv, full)

            def read_u16(self):
                full = (950000, 1250000, 1750000, 2450000)[self._atten]
                return min(65535, int(self.read_uv() * 65535 / full))

            def read(self):
                return self.read_u16() >> 4

        class RTC:
            def __init__(self, *a):
                pass

            def datetime(self, *args):
                if args:
                    t = tuple(args[0])
                    y, mo, d = t[0], t[1], t[2]
                    h, mi, s = (t[4], t[5], t[6]) if len(t) > 6 else (0, 0, 0)
                    sub = t[7] if len(t) > 7 else 0
                    import calendar
                    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - EPOCH_2000
                    b.rtc_set(secs + sub / 1e6)
                    return None
                s = b.rtc_seconds()
                tt = _time.gmtime(int(s) + EPOCH_2000)
                return (tt.tm_year, tt.tm_mon, tt.tm_mday, tt.tm_wday, tt.tm_hour, tt.tm_min,
                        tt.tm_sec, int((s - int(s)) * 1e6))

            init = datetime

            def memory(self, *a):
                if a:
                    b.rtc_memory = bytes(a[0])
                    return None
                return b.rtc_memory

        class WDT:
            def __init__(self, id=0, timeout=5000):
                self.timeout = timeout

            def feed(self):
                pass

        class Timer:
            ONE_SHOT, PERIODIC = 0, 1

            def __init__(self, id=-1, **kw):
                self._ev = None
                if kw:
                    self.init(**kw)

            def init(self, *, mode=1, period=-1, freq=-1, callback=None):
                self.deinit()
                if freq and freq > 0:
                    period = 1000.0 / freq
                self._cb = callback
                self._period = period / 1000.0
                self._mode = mode
                self._arm()

            def _arm(self):
                self._ev = b.fleet.schedule(b.fleet.clock() + self._period, self._fire)

            def _fire(self):
                if self._cb is not None:
                    b.cpu.post_irq(self._cb, self)
                if self._mode == 1:
                    self._arm()

            def deinit(self):
                if self._ev is not None:
                    self._ev.cancel()
                    self._ev = None

        def reset():
            b.request_hard_reset()

        def soft_reset():
            from .core import SoftReset
            raise SoftReset()

        def unique_id():
            return b.unique_id

        _freq = [160000000]

        def freq(*a):
            if a:
                _freq[0] = int(a[0])
                return None
            return _freq[0]

        def idle():
            b.sleep(0.001)

        def lightsleep(ms=None):
            b.sleep((ms or 1000) / 1000.0)

        def deepsleep(ms=None):
            b.request_hard_reset()

        m.Pin = Pin
        m.ADC = ADC
        m.RTC = RTC
        m.WDT = WDT
        m.Timer = Timer
        m.reset = reset
        m.soft_reset = soft_reset
        m.unique_id = unique_id
        m.freq = freq
        m.idle = idle
        m.lightsleep = lightsleep
        m.deepsleep = deepsleep
        m.reset_cause = lambda: b.reset_cause
        m.disable_irq = lambda: 0
        m.enable_irq = lambda state=0: None
        m.PWRON_RESET, m.HARD_RESET, m.WDT_RESET, m.DEEPSLEEP_RESET, m.SOFT_RESET = 1, 2, 3, 4, 5
        return m

    def _mk_micropython(self):
        b = self.badge
        m = types.ModuleType("micropython")
        pending: list = []

        def const(x):
            return x

        def schedule(fn, arg):
            if len(pending) >= 8:
                raise RuntimeError("schedule queue full")
            pending.append(1)

            def run():
                pending.pop()
                fn(arg)
            b.cpu.post_irq(run)

        def mem_info(verbose=None):
            b.stdout_write("stack: 736 out of 15360\nGC: total: 111168, used: %d, free: %d\n"
                           " No. of 1-blocks: 300, 2-blocks: 80, max blk sz: 64, max free sz: 3000\n"
                           % (30000, 81168))

        def kbd_intr(c):
            b.kbd_intr_char = c

        m.const = const
        m.schedule = schedule
        m.mem_info = mem_info
        m.qstr_info = lambda *a: None
        m.stack_use = lambda: 736
        m.alloc_emergency_exception_buf = lambda n: None
        m.opt_level = lambda *a: 0 if not a else None
        m.heap_lock = lambda: 0
        m.heap_unlock = lambda: 0
        m.kbd_intr = kbd_intr
        m.native = m.viper = m.bytecode = (lambda f: f)
        return m

    def _mk_gc(self):
        m = types.ModuleType("gc")
        st = {"enabled": True, "threshold": -1}
        m.collect = lambda: None
        m.mem_free = lambda: 81168
        m.mem_alloc = lambda: 30000
        m.enable = lambda: st.__setitem__("enabled", True)
        m.disable = lambda: st.__setitem__("enabled", False)
        m.isenabled = lambda: st["enabled"]
        m.threshold = lambda *a: st["threshold"] if not a else st.__setitem__("threshold", a[0])
        return m

    def _mk_esp32(self):
        b = self.badge
        m = types.ModuleType("esp32")
        ERR_NOT_FOUND = -0x1102
        ERR_INVALID_LENGTH = -0x110C

        class NVS:
            def __init__(self, namespace):
                if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
                    raise ValueError("namespace")
                self.ns = namespace

            def _get(self, key):
                v = b.nvs_get(self.ns, key)
                if v is None:
                    raise OSError(ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
                return v

            def set_i32(self, key, value):
                b.nvs_set(self.ns, key, ("i32", int(value)))

            def get_i32(self, key):
                kind, v = self._get(key)
                if kind != "i32":
                    raise OSError(ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
                return v

            def set_blob(self, key, value):
                b.nvs_set(self.ns, key, ("blob", bytes(value)))

            def get_blob(self, key, buf):
                kind, v = self._get(key)
                if kind != "blob":
                    raise OSError(ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
                if len(buf) < len(v):
                    raise OSError(ERR_INVALID_LENGTH, "ESP_ERR_NVS_INVALID_LENGTH")
                buf[: len(v)] = v
                return len(v)

            def erase_key(self, key):
                self._get(key)
                b.nvs_set(self.ns, key, None)

            def commit(self):
                b.nvs_commit(self.ns)

        m.NVS = NVS
        m.raw_temperature = lambda: 120
        m.mcu_temperature = lambda: 48
        m.idf_heap_info = lambda cap: [(111168, 81168, 64000, 80000)]
        m.HEAP_DATA, m.HEAP_EXEC = 4, 1
        m.WAKEUP_ALL_LOW, m.WAKEUP_ANY_HIGH = False, True
        m.wake_on_ext0 = lambda *a, **k: None
        return m

    def _mk_esp(self):
        m = types.ModuleType("esp")
        m.osdebug = lambda *a, **k: None
        m.flash_size = lambda: 4 * 1024 * 1024
        return m

    def _mk_cryptolib(self):
        m = types.ModuleType("cryptolib")
        MODE_ECB, MODE_CBC = 1, 2

        class aes:
            def __init__(self, key, mode, IV=None):
                key = bytes(key)
                if len(key) not in (16, 32):
                    raise ValueError("key")
                if mode not in (MODE_ECB, MODE_CBC):
                    # CTR (6) is not enabled in ESP32 builds
                    raise ValueError("mode")
                if mode == MODE_CBC:
                    iv = bytes(IV) if IV is not None else bytes(16)
                    if len(iv) != 16:
                        raise ValueError("IV")
                    self._mode = modes.CBC(iv)
                else:
                    self._mode = modes.ECB()
                self._key = key
                self._enc = None
                self._dec = None
                self._dir = 0

            def _run(self, encrypt, data, out):
                data = bytes(data)
                if len(data) % 16:
                    raise ValueError("blksize")
                d = 1 if encrypt else 2
                if self._dir and self._dir != d:
                    raise OSError(errno.EPERM, "can't encrypt & decrypt")
                self._dir = d
                if encrypt:
                    if self._enc is None:
                        self._enc = Cipher(algorithms.AES(self._key), self._mode).encryptor()
                    r = self._enc.update(data)
                else:
                    if self._dec is None:
                        self._dec = Cipher(algorithms.AES(self._key), self._mode).decryptor()
                    r = self._dec.update(data)
                if out is not None:
                    if len(out) != len(r):
                        raise ValueError("output")
                    out[:] = r
                    return None
                return r

            def encrypt(self, in_buf, out_buf=None):
                return self._run(True, in_buf, out_buf)

            def decrypt(self, in_buf, out_buf=None):
                return self._run(False, in_buf, out_buf)

        m.aes = aes
        m.MODE_ECB = MODE_ECB
        m.MODE_CBC = MODE_CBC
        return m

    def _mk_hashlib(self):
        m = types.ModuleType("hashlib")

        def make(algo):
            class H:
                def __init__(self, data=None):
                    self._h = _hashlib.new(algo)
                    self._final = None
                    if data is not None:
                        self.update(data)

                def update(self, data):
                    if self._final is not None:
                        raise ValueError("hash is final")
                    if isinstance(data, str):
                        raise TypeError("object with buffer protocol required")
                    self._h.update(data)

                def digest(self):
                    if self._final is None:
                        self._final = self._h.digest()
                    return self._final
            H.__name__ = algo
            return H

        m.sha256 = make("sha256")
        m.sha1 = make("sha1")
        m.md5 = make("md5")
        return m

    def _mk_neopixel(self):
        b = self.badge
        m = types.ModuleType("neopixel")

        class NeoPixel:
            ORDER = (1, 0, 2, 3)

            def __init__(self, pin, n, bpp=3, timing=1):
                self.pin = pin.id if hasattr(pin, "id") else int(pin)
                self.n = n
                self.bpp = bpp
                self.buf = [(0,) * bpp for _ in range(n)]

            def __len__(self):
                return self.n

            def __setitem__(self, i, v):
                self.buf[i] = tuple(int(x) for x in v)

            def __getitem__(self, i):
                return self.buf[i]

            def fill(self, v):
                for i in range(self.n):
                    self[i] = v

            def write(self):
                b.neopixel_write(self.pin, list(self.buf))

        m.NeoPixel = NeoPixel
        return m

    def _mk_random(self):
        rng = self.badge.prng
        m = types.ModuleType("random")
        m.getrandbits = rng.getrandbits
        m.randint = rng.randint
        m.randrange = rng.randrange
        m.random = rng.random
        m.uniform = rng.uniform
        m.choice = rng.choice
        m.seed = lambda *a: None
        return m

    def _mk_uasyncio(self):
        return self.import_module("asyncio")

    def _mk_select(self):
        b = self.badge
        m = types.ModuleType("select")
        POLLIN, POLLOUT = 1, 4
        m.POLLIN, m.POLLOUT, m.POLLERR, m.POLLHUP = POLLIN, POLLOUT, 8, 16

        def readable(obj):
            fn = getattr(obj, "_tc_poll", None)
            return True if fn is None else bool(fn())

        class poll:
            """select.poll over the badge's streams: its stdin is readable while the console
            holds input; a wait with a timeout lets virtual time run."""

            def __init__(self):
                self._m = {}

            def register(self, obj, mask=POLLIN | POLLOUT):
                self._m[id(obj)] = (obj, mask)

            def modify(self, obj, mask):
                if id(obj) not in self._m:
                    raise oserror(errno.ENOENT)
                self._m[id(obj)] = (obj, mask)

            def unregister(self, obj):
                self._m.pop(id(obj), None)

            def _events(self):
                out = []
                for obj, mask in self._m.values():
                    ev = 0
                    if mask & POLLIN and readable(obj):
                        ev |= POLLIN
                    if mask & POLLOUT:
                        ev |= POLLOUT
                    if ev:
                        out.append((obj, ev))
                return out

            def poll(self, timeout=-1):
                r = self._events()
                if r or timeout == 0:
                    return r
                until = None if timeout is None or timeout < 0 else b.fleet.clock() + timeout / 1000.0
                while True:
                    b.cpu.wait(until, flag=lambda: bool(self._events()))
                    r = self._events()
                    if r or (until is not None and b.fleet.clock() >= until - 1e-9):
                        return r

            def ipoll(self, timeout=-1, flags=0):
                return iter(self.poll(timeout))

        m.poll = poll
        return m


def _exit(code=0):
    raise SystemExit(code)
