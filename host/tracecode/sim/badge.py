"""A virtual badge: ESP32 hardware state, boot sequence and the MicroPython REPL on its console."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import random
import shutil
import threading
from pathlib import Path as FsPath
from typing import Any

from .ble import Radio
from .console import Console
from .core import CPU, HardReset, PowerCut, Shutdown, SoftReset
from .flash import FlashFS
from .radio import Path
from .runtime import EPOCH_2000, MP_BANNER_VERSION, MP_MACHINE, Runtime

BANNER = ("%s; %s\r\nType \"help()\" for more information.\r\n" % (MP_BANNER_VERSION, MP_MACHINE)).encode()
RAW_HEADER = b"raw REPL; CTRL-B to exit\r\n"
PASTE_WINDOW = 256

REPO_ROOT = __import__("tracecode.resources").resources.data_root()

_CTRL = {1: "A", 2: "B", 3: "C", 4: "D", 5: "E"}
_EXC_NAMES = {"ModuleNotFoundError": "ImportError"}


class _Stdout:
    def __init__(self, badge: "Badge"):
        self._b = badge
        self.buffer = _RawOut(badge)

    def write(self, s) -> int:
        if isinstance(s, (bytes, bytearray, memoryview)):
            self._b.console.write(bytes(s))
        else:
            self._b.stdout_write(str(s))
        return len(s)

    def flush(self) -> None:
        pass


class _RawOut:
    def __init__(self, badge: "Badge"):
        self._b = badge

    def write(self, data, n: int | None = None) -> int:
        d = bytes(data) if n is None else bytes(data)[:n]
        self._b.console.write(d)
        return len(d)


class _Stdin:
    def __init__(self, badge: "Badge"):
        self._b = badge
        self.buffer = _StdinBuffer(badge)

    def read(self, n: int = 1):
        return bytes(self._b.read_byte() for _ in range(n)).decode("latin-1")

    def readinto(self, buf, n: int | None = None) -> int:
        n = len(buf) if n is None else n
        for i in range(n):
            buf[i] = self._b.read_byte()
        return n

    def _tc_poll(self) -> bool:
        """select.poll / asyncio: is input waiting (the ESP32's stdin ring buffer)?"""
        return self._b.console.has_input()


class _StdinBuffer(_Stdin):
    """sys.stdin.buffer: bytes; like the ESP32's, `read(n)` blocks until n bytes came."""

    def __init__(self, badge: "Badge"):
        self._b = badge
        self.buffer = self

    def read(self, n: int = 1):
        return bytes(self._b.read_byte() for _ in range(n))


def load_profile(board: str | None) -> dict:
    if not board:
        return {}
    p = FsPath(board)
    if not p.suffix:
        p = REPO_ROOT / "boards" / (board + ".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


class Badge:
    def __init__(self, fleet, name: str, flash_dir: str | os.PathLike, *,
                 position: tuple[float, float] = (0.0, 0.0), path: Path | None = None,
                 board: str | None = None, profile: dict | None = None,
                 tx_power_dbm: float | None = None, body_loss_db: float = 0.0,
                 flash_size: int = 2 * 1024 * 1024, battery_v: float = 3.9, seed: int = 0):
        self.fleet = fleet
        self.name = name
        self.board = board
        self.profile = profile if profile is not None else load_profile(board)
        self.cpu = CPU(fleet, name)
        self.flash = FlashFS(flash_dir, flash_size)
        self.flash.on_cut = self._on_flash_cut
        self.unique_id = hashlib.sha256(("badge:" + name).encode()).digest()[:6]
        self.prng = random.Random("%s/%d" % (name, seed))
        self.path = path or Path.fixed(*position)
        if tx_power_dbm is None:
            tx_power_dbm = float(self.profile.get("tx_power_dbm", 0) or 0)
        self.tx_power_dbm = tx_power_dbm
        self.body_loss_db = body_loss_db
        self.battery_v = battery_v
        self.radio = Radio(self)
        self.console = Console(self)
        self.pins: dict[int, dict] = {}
        self.neopixels: dict[int, list] = {}
        self.nvs: dict[tuple[str, str], Any] = {}
        self.nvs_pending: dict[tuple[str, str], Any] = {}
        self.rtc_offset: float | None = None
        self.rtc_memory = b""
        self.boot_t = 0.0
        self.mode = "friendly"
        self.powered = False
        self.runtime: Runtime | None = None
        self.kbd_intr_char = 3
        self.reset_cause = 1
        self.rng_entropy_on = False
        self.boots = 0
        # Runtimes of earlier boots: kept referenced so that CPython never finalises their
        # abandoned coroutines (MicroPython just wipes the heap; no `finally` runs).
        self._graveyard: list = []
        self.stdout = _Stdout(self)
        self.stdin = _Stdin(self)
        self.cpu.input_ready = self.console.has_input
        self.cpu.on_irq_error = self._irq_error

    # -- position -----------------------------------------------------------------------------
    def position(self, t: float | None = None) -> tuple[float, float]:
        return self.path.at(self.fleet.clock() if t is None else t)

    def move(self, x: float, y: float, at: float | None = None) -> None:
        """The badge jumps to (x, y) at virtual time `at` (default now) and stays there."""
        t = self.fleet.clock() if at is None else at
        self.path = self.path.moved_to(t, x, y)

    # -- console endpoints ------------------------------------------------------------------
    def console_url(self, port: int = 0) -> str:
        """Serve the console on loopback TCP; returns `socket://127.0.0.1:PORT` for pyserial/mpremote."""
        return self.console.serve_socket(port)

    def console_pty(self) -> str:
        """Serve the console on a pseudo-terminal; returns its path (/dev/pts/N)."""
        return self.console.serve_pty()

    # -- flash content ------------------------------------------------------------------------
    def install(self, src: str | os.PathLike, dest: str = "/") -> None:
        """Copy a file or folder tree into the flash (like `mpremote cp -r`), skipping caches."""
        src = FsPath(src)
        target = FsPath(self.flash.host(dest))
        if src.is_dir():
            for p in sorted(src.rglob("*")):
                rel = p.relative_to(src)
                if "__pycache__" in rel.parts or p.suffix in (".pyc",):
                    continue
                t = target / rel
                if p.is_dir():
                    t.mkdir(parents=True, exist_ok=True)
                else:
                    t.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(p, t)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target if not target.is_dir() else target / src.name)
        self.flash.rescan()

    def install_firmware(self, firmware_dir: str | os.PathLike) -> None:
        fw = FsPath(firmware_dir)
        for item in sorted(fw.iterdir()):
            if item.name in ("manifest.py", "__pycache__") or item.name.startswith("."):
                continue
            if item.is_dir() or item.suffix == ".py":
                self.install(item, "/" + item.name)

    # -- clock ----------------------------------------------------------------------------------
    def uptime(self) -> float:
        return self.fleet.clock() - self.boot_t

    def rtc_seconds(self) -> float:
        if self.rtc_offset is None:
            self.rtc_offset = -self.boot_t
        return self.fleet.clock() + self.rtc_offset

    def rtc_set(self, secs_2000: float) -> None:
        self.rtc_offset = secs_2000 - self.fleet.clock()

    def set_clock(self, unix: float | None = None) -> None:
        """Set the badge's RTC to `unix` (default: the fleet's virtual Unix time), as a host would."""
        u = self.fleet.unix_time() if unix is None else unix
        self.rtc_set(u - EPOCH_2000)

    def sleep(self, seconds: float) -> None:
        self.cpu.wait(self.fleet.clock() + max(0.0, seconds))

    def hw_random(self, n: int) -> bytes:
        return self.prng.randbytes(n)

    # -- pins, LED, button, battery ------------------------------------------------------------------
    def pin_state(self, pin: int) -> dict:
        st = self.pins.get(pin)
        if st is None:
            st = {"mode": 1, "pull": None, "out": 0, "ext": None, "irq": None}
            self.pins[pin] = st
        return st

    def pin_level(self, pin: int) -> int:
        st = self.pin_state(pin)
        if st["mode"] in (3, 7):
            return st["out"]
        if st["ext"] is not None:
            return st["ext"]
        b = self.profile.get("button") or {}
        if b.get("pull") == "none" and int(b.get("pin", -1)) == pin:  # board's external pull
            return 1 - int(b.get("active", 0))
        return 1 if st["pull"] == 2 else 0

    def pin_changed(self, pin: int) -> None:
        pass

    def _drive(self, pin: int, level: int | None) -> None:
        st = self.pin_state(pin)
        before = self.pin_level(pin)
        st["ext"] = level
        after = self.pin_level(pin)
        irq = st["irq"]
        if irq and irq[0] is not None and before != after:
            trig = 1 if after else 2
            if irq[1] & trig:
                self.cpu.post_irq(irq[0], irq[2])

    def button(self) -> tuple[int, int]:
        b = self.profile.get("button") or {}
        return int(b.get("pin", 0)), int(b.get("active", 0))

    def press_button(self, after: float = 0.0, duration: float = 0.3, pin: int | None = None) -> None:
        """Press the badge's button `after` virtual seconds from now, for `duration` seconds."""
        bpin, active = self.button()
        pin = bpin if pin is None else pin
        t = self.fleet.clock() + after
        self.fleet.schedule(t, self._drive, pin, active)
        self.fleet.schedule(t + duration, self._drive, pin, None)

    def neopixel_write(self, pin: int, buf: list) -> None:
        self.neopixels[pin] = [tuple(px) for px in buf]

    def led(self) -> dict:
        return {"neopixel": dict(self.neopixels),
                "pins": {p: st["out"] for p, st in self.pins.items() if st["mode"] in (3, 7)}}

    def adc_uv(self, pin: int) -> int:
        bat = self.profile.get("battery") or {}
        divider = float(bat.get("divider", 2.0) or 2.0)
        return int(self.battery_v / divider * 1e6)

    # -- NVS ------------------------------------------------------------------------------------
    def nvs_get(self, ns: str, key: str):
        k = (ns, key)
        if k in self.nvs_pending:
            return self.nvs_pending[k]
        return self.nvs.get(k)

    def nvs_set(self, ns: str, key: str, value) -> None:
        self.nvs_pending[(ns, key)] = value

    def nvs_commit(self, ns: str) -> None:
        for k in [k for k in self.nvs_pending if k[0] == ns]:
            v = self.nvs_pending.pop(k)
            if v is None:
                self.nvs.pop(k, None)
            else:
                self.nvs[k] = v

    # -- console output ----------------------------------------------------------------------------
    def stdout_write(self, s: str) -> None:
        self.console.write(s.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace"))

    def print_exception(self, exc: BaseException, file=None) -> None:
        text = format_exception(exc)
        if file is None:
            self.stdout_write(text)
        else:
            file.write(text)

    def _irq_error(self, exc: BaseException) -> None:
        self.stdout_write("Unhandled exception in IRQ callback handler\n")
        self.print_exception(exc)

    def read_byte(self) -> int:
        while True:
            c = self.console.read_byte()
            if c is not None:
                return c
            self.cpu.wait(for_input=True)

    def console_readline(self) -> str:
        line = bytearray()
        while True:
            c = self.read_byte()
            if c == 13:
                self.console.write(b"\r\n")
                return line.decode("utf-8", "replace")
            if c in (8, 127):
                if line:
                    line.pop()
                    self.console.write(b"\x08 \x08")
            elif c >= 32:
                line.append(c)
                self.console.write(bytes([c]))

    # -- power -------------------------------------------------------------------------------------
    def _in_driver(self) -> bool:
        return self.fleet._driver_thread is threading.current_thread()

    def _do(self, fn, *args) -> None:
        """Run `fn` in the driver: now if we are the driver, else post it and wait."""
        if self._in_driver() or threading.current_thread() is self.cpu.thread:
            fn(*args)
            return
        done = threading.Event()

        def run():
            try:
                fn(*args)
            finally:
                done.set()
        self.fleet.call_soon(run)
        self.fleet.start_drivers()
        if not done.wait(60):
            raise RuntimeError("the simulation did not run %s (is a driver stuck?)" % fn.__name__)

    def power_on(self, at: float | None = None) -> None:
        """Power the badge on now (or at virtual time `at`): boot.py, then main.py."""
        if at is not None:
            self.fleet.schedule(at, self._power_on)
            return
        self._do(self._power_on)

    def _power_on(self) -> None:
        if self.powered:
            return
        self.flash.dead = False
        self.flash.cut_after = None
        self.flash.rescan()
        self.powered = True
        self.boot_t = self.fleet.clock()
        self.rtc_offset = None
        self.mode = "friendly"
        self.reset_cause = 1
        self.cpu.start(self._cpu_main)

    def power_cut(self, at: float | None = None) -> None:
        """Cut the power now (or at virtual time `at`): the badge stops dead wherever it is;
        its flash keeps what was written, its RTC and uncommitted NVS changes are lost."""
        if at is not None:
            self.fleet.schedule(at, self._power_cut)
            return
        self._do(self._power_cut)

    def _power_cut(self) -> None:
        if not self.powered:
            return
        self.flash.dead = True
        self.radio.power_off()
        self.powered = False
        self.nvs_pending.clear()
        self.cpu.stop(PowerCut)
        if self.runtime is not None:
            self._graveyard.append(self.runtime)
        self.runtime = None

    def power_cut_after_bytes(self, nbytes: int) -> None:
        """Cut the power inside the flash write that crosses `nbytes` more bytes (torn write)."""
        self.flash.cut_after = nbytes

    def _on_flash_cut(self) -> None:
        # badge thread, inside a write: the power is gone
        self.radio.power_off()
        self.powered = False
        self.nvs_pending.clear()
        self.cpu.kill = PowerCut

    def request_hard_reset(self) -> None:
        raise HardReset()

    def shutdown(self) -> None:
        if self.powered:
            self.radio.power_off()
            self.powered = False
            self.cpu.stop(Shutdown)
        self.console.close()

    # -- the MicroPython main loop (badge thread) ---------------------------------------------------
    def _cpu_main(self) -> None:
        while True:
            try:
                self._boot_cycle()
            except SoftReset:
                self.reset_cause = 5
                self.console.write(b"MPY: soft reboot\r\n")
            except HardReset:
                self.reset_cause = 2
                self.mode = "friendly"
                self.boot_t = self.fleet.clock()
                self.console.write(b"\r\nets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")

    def _boot_cycle(self) -> None:
        self.radio.power_off()
        for st in self.pins.values():
            st["irq"] = None
        self.kbd_intr_char = 3
        if self.runtime is not None:
            self._graveyard.append(self.runtime)
        self.runtime = Runtime(self)
        self.boots += 1
        self.flash.cwd = "/"
        self._run_script("boot.py", host=True)
        if self.mode == "friendly":
            self._run_script("main.py", host=False)
        while True:
            if self.mode == "raw":
                self._raw_repl()
            else:
                self._friendly_repl()

    def _run_script(self, path: str, host: bool) -> None:
        cpu = self.cpu
        cpu.in_host = host
        cpu.kbd_enabled = True
        self.kbd_intr_char = 3  # pyexec turns the keyboard interrupt on for every script
        try:
            self.runtime.run_file(path)
        except SystemExit:
            raise SoftReset() from None
        except (PowerCut, Shutdown, SoftReset, HardReset):
            raise
        except BaseException as e:  # noqa: BLE001 - printed like MicroPython does
            self.print_exception(e)
        finally:
            cpu.in_host = False
            cpu.kbd_enabled = False
            cpu.kbd_pending = False

    def _execute(self, source: bytes, single: bool) -> BaseException | None:
        cpu = self.cpu
        rt = self.runtime
        cpu.in_host = True
        cpu.kbd_enabled = self.kbd_intr_char == 3
        try:
            g = rt.main.__dict__
            if single:
                tree = ast.parse(source, "<stdin>", "exec")
                if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
                    val = eval(compile(ast.Expression(tree.body[0].value), "<stdin>", "eval"), g)
                    if val is not None:
                        self.stdout_write(repr(val) + "\n")
                    return None
                exec(compile(tree, "<stdin>", "exec"), g)
            else:
                exec(compile(source, "<stdin>", "exec", dont_inherit=True), g)
            return None
        except SystemExit:
            raise SoftReset() from None
        except (PowerCut, Shutdown, SoftReset, HardReset):
            raise
        except BaseException as e:  # noqa: BLE001
            return e
        finally:
            cpu.in_host = False
            cpu.kbd_enabled = False
            cpu.kbd_pending = False
            self.kbd_intr_char = 3

    def _raw_repl(self) -> None:
        con = self.console
        con.write(RAW_HEADER)
        while True:
            con.write(b">")
            line = bytearray()
            while True:
                c = self.read_byte()
                if c == 1:
                    if len(line) == 2 and line[0] == 5:
                        if line[1] == ord("A"):
                            self._raw_paste()
                            break
                        con.write(b"R\x00")
                        line.clear()
                        continue
                    con.write(b"\r\n")
                    con.write(RAW_HEADER)
                    con.write(b">")
                    line.clear()
                    continue
                if c == 2:
                    con.write(b"\r\n")
                    self.mode = "friendly"
                    return
                if c == 3:
                    line.clear()
                    continue
                if c == 4:
                    con.write(b"OK")
                    if not line:
                        con.write(b"\r\n")
                        raise SoftReset()
                    self._exec_eof(bytes(line))
                    break
                line.append(c)

    def _exec_eof(self, source: bytes) -> None:
        err = self._execute(source, single=False)
        self.console.write(b"\x04")
        if err is not None:
            self.print_exception(err)
        self.console.write(b"\x04")

    def _raw_paste(self) -> None:
        con = self.console
        con.write(b"R\x01")
        con.write(bytes([PASTE_WINDOW & 0xFF, PASTE_WINDOW >> 8, 0x01]))
        data = bytearray()
        remain = PASTE_WINDOW
        while True:
            c = self.read_byte()
            if c in (3, 4):
                con.write(b"\x04")
                if c == 3:
                    con.write(b"\x04")
                    self.print_exception(KeyboardInterrupt())
                    con.write(b"\x04")
                    return
                break
            data.append(c)
            remain -= 1
            if remain == 0:
                con.write(b"\x01")
                remain = PASTE_WINDOW
        self._exec_eof(bytes(data))

    def _friendly_repl(self) -> None:
        con = self.console
        con.write(BANNER)
        while True:
            r = self._readline(b">>> ")
            if r == "A":
                con.write(b"\r\n")
                self.mode = "raw"
                return
            if r == "B":
                con.write(b"\r\n")
                con.write(BANNER)
                continue
            if r == "C":
                con.write(b"\r\n")
                continue
            if r == "D":
                con.write(b"\r\n")
                raise SoftReset()
            if r == "E":
                src = self._paste_mode()
                if src is None:
                    continue
                err = self._execute(src.encode(), single=False)
                if err is not None:
                    self.print_exception(err)
                continue
            assert isinstance(r, bytes)
            if not r.strip():
                continue
            src = r.decode("utf-8", "replace")
            while _needs_more(src):
                more = self._readline(b"... ")
                if not isinstance(more, bytes):
                    if more == "C":
                        con.write(b"\r\n")
                        src = ""
                        break
                    continue
                if not more.strip():
                    break
                src += "\n" + more.decode("utf-8", "replace")
            if not src:
                continue
            err = self._execute((src + "\n").encode(), single=True)
            if err is not None:
                self.print_exception(err)

    def _paste_mode(self) -> str | None:
        con = self.console
        con.write(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        buf = bytearray()
        while True:
            c = self.read_byte()
            if c == 3:
                con.write(b"\r\n")
                return None
            if c == 4:
                con.write(b"\r\n")
                return buf.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
            buf.append(c)
            con.write(bytes([c]) if c != 13 else b"\r\n=== ")

    def _readline(self, prompt: bytes):
        con = self.console
        con.write(prompt)
        line = bytearray()
        while True:
            c = self.read_byte()
            if c == 13:
                con.write(b"\r\n")
                return bytes(line)
            if c == 10:
                continue
            if c in _CTRL:
                if c == 4 and line:
                    continue
                return _CTRL[c]
            if c in (8, 127):
                if line:
                    line.pop()
                    con.write(b"\x08 \x08")
                continue
            if c == 27:
                self.read_byte()
                self.read_byte()
                continue
            if c == 9:
                c = 32
            line.append(c)
            con.write(bytes([c]))

    # -- reporting -------------------------------------------------------------------------------
    def log_records(self) -> int:
        """RPIs heard per scan in /log/*.tcl (docs/log-format.md: v1 records, v2 scan entries)."""
        from ..station.logfmt import count_sightings

        d = FsPath(self.flash.host("/log"))
        n = 0
        if d.is_dir():
            for f in d.glob("*.tcl"):
                n += count_sightings(f.read_bytes())
        return n

    def summary(self) -> dict:
        st = dict(self.radio.stats)
        if self.radio.segments and self.radio.segments[-1].end is None:
            seg = self.radio.segments[-1]
            st["adverts_on_air"] += int(max(0.0, self.fleet.clock() - seg.start) / seg.interval_s)
        return {"badge": self.name, "powered": self.powered, "boots": self.boots,
                "adverts": st["adverts_on_air"], "adv_starts": st["adv_starts"],
                "scans": st["scans"], "scan_results": st["scan_results"],
                "records_logged": self.log_records(),
                "flash_free": self.flash.free_bytes()}


def _needs_more(src: str) -> bool:
    if src.rstrip().endswith(":") or src.rstrip().endswith("\\"):
        return True
    try:
        compile(src + "\n", "<stdin>", "exec")
    except SyntaxError as e:
        msg = str(e)
        return "was never closed" in msg or "unexpected EOF" in msg or "expected an indented" in msg
    if "\n" in src:
        return True   # inside a compound statement: a blank line ends it
    return False


def format_exception(exc: BaseException) -> str:
    """A traceback as MicroPython prints it (badge frames only)."""
    lines = ["Traceback (most recent call last):"]
    tb = exc.__traceback__
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if not os.path.isabs(fn):
            name = tb.tb_frame.f_code.co_name
            lines.append('  File "%s", line %d, in %s' % (fn, tb.tb_lineno, name))
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename and not os.path.isabs(exc.filename):
        lines.append('  File "%s", line %s' % (exc.filename, exc.lineno))
    if len(lines) == 1:
        lines.append('  File "<stdin>", line 1, in <module>')
    lines.append(exception_line(exc))
    return "\n".join(lines) + "\n"


def exception_line(exc: BaseException) -> str:
    cls = type(exc)
    if isinstance(exc, OSError):
        name = "OSError"
    elif isinstance(exc, SyntaxError):
        name = "SyntaxError"
        return "SyntaxError: " + (exc.msg or "invalid syntax")
    else:
        name = _EXC_NAMES.get(cls.__name__, cls.__name__)
    args = exc.args
    if isinstance(exc, OSError) and len(args) == 2 and isinstance(args[0], int) and args[0] > 0 \
            and errno.errorcode.get(args[0]) == args[1]:
        return "%s: [Errno %d] %s" % (name, args[0], args[1])
    if not args:
        return name + ": "
    if len(args) == 1:
        return "%s: %s" % (name, args[0])
    return "%s: %s" % (name, args)
