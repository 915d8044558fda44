"""The serial console: the real mpremote CLI, raw-paste, soft reset, Ctrl-C, power cuts."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim_helpers import MINI_FW, raw_transport, write_flash

MPREMOTE = Path(sys.executable).with_name("mpremote")

MAIN_COUNTING = """
import time
try:
    with open("boots.txt") as f:
        n = int(f.read())
except OSError:
    n = 0
with open("boots.txt", "w") as f:
    f.write(str(n + 1))
print("main.py ran", n + 1)
"""


def mpremote(url, *args, timeout=60):
    r = subprocess.run([str(MPREMOTE), "connect", url, *args], capture_output=True,
                       timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.decode()


@pytest.mark.timeout(180)
def test_mpremote_cli_against_virtual_badge(fleet, tmp_path):
    b = fleet.add_badge("cli", firmware_dir=MINI_FW)
    b.power_on()
    fleet.run_until(30)                       # the firmware is running when the host connects
    url = b.console_url()
    out = mpremote(url, "fs", "ls")
    assert "main.py" in out
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 9 + b"tail")
    mpremote(url, "fs", "cp", str(src), ":up.bin")
    assert Path(b.flash.host("up.bin")).read_bytes() == src.read_bytes()
    back = tmp_path / "down.bin"
    mpremote(url, "fs", "cp", ":up.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    assert mpremote(url, "exec", "import os; print(len(os.listdir()))").strip().isdigit()
    assert mpremote(url, "eval", "1 + 2 * 20").strip() == "41"
    assert mpremote(url, "eval", "__import__('time').gmtime(0)[0]").strip() == "2000"
    mpremote(url, "soft-reset")
    # entering the raw REPL interrupted main.py: its KeyboardInterrupt handler ran
    assert Path(b.flash.host("stopped.txt")).read_text() == "interrupted"


def test_raw_paste_and_plain_raw_repl(fleet):
    b = fleet.add_badge("paste")
    b.power_on()
    t = raw_transport(b)
    try:
        big = "x = 0\n" + "x += 1\n" * 600 + "print(x)\n"    # several flow-control windows
        assert t.exec(big).strip() == b"600"
        assert b"R\x01" in bytes(b.console.transcript)
        t.use_raw_paste = False
        assert t.exec("print('plain')").strip() == b"plain"
    finally:
        t.close()


def test_soft_reset_reruns_boot_and_main(fleet):
    b = fleet.add_badge("soft")
    write_flash(b, "main.py", MAIN_COUNTING)
    write_flash(b, "boot.py", "print('boot.py ran')\n")
    b.power_on()
    fleet.run_until(1)
    assert Path(b.flash.host("boots.txt")).read_text() == "1"
    with socket.create_connection(("127.0.0.1", int(b.console_url().rsplit(":", 1)[1])), 5) as s:
        s.sendall(b"\r\x04")                   # Ctrl-D at the friendly prompt
        buf = b""
        deadline = time.time() + 10
        while b"main.py ran 2" not in buf or not buf.endswith(b">>> "):
            assert time.time() < deadline, buf
            s.settimeout(1)
            try:
                buf += s.recv(4096)
            except socket.timeout:
                pass
    assert b"MPY: soft reboot\r\nboot.py ran\r\nmain.py ran 2\r\nMicroPython v1.24.1" in buf
    # raw-REPL soft reset (what mpremote does) runs boot.py but not main.py, like a board
    t = raw_transport(b)
    t.close()
    assert Path(b.flash.host("boots.txt")).read_text() == "2"


def test_ctrl_c_interrupts_firmware(fleet):
    b = fleet.add_badge("intr", firmware_dir=MINI_FW)
    b.power_on()
    fleet.run_until(100)
    assert not os.path.exists(b.flash.host("stopped.txt"))
    t = raw_transport(b, soft_reset=False)
    try:
        assert Path(b.flash.host("stopped.txt")).read_text() == "interrupted"
        assert t.eval("__import__('bluetooth').BLE().active()") is False
        assert b"KeyboardInterrupt" not in bytes(b.console.transcript)   # main.py caught it
    finally:
        t.close()


def test_power_cut_leaves_torn_write(fleet):
    b = fleet.add_badge("cut")
    write_flash(b, "main.py", """
import time
with open("log.bin", "ab") as f:
    f.write(b"A" * 100)
time.sleep(1)
with open("log.bin", "ab") as f:
    f.write(b"B" * 100)
print("never")
""")
    b.power_on()
    fleet.run_until(0.5)
    b.power_cut_after_bytes(37)          # the second write is torn after 37 bytes
    fleet.run_until(5)
    assert not b.powered
    assert Path(b.flash.host("log.bin")).read_bytes() == b"A" * 100 + b"B" * 37
    assert b"never" not in bytes(b.console.transcript)
    # after power-on the RTC restarted at 2000 and the file is still there
    b.power_on()
    t = raw_transport(b)
    try:
        # main.py ran again at power-on and appended after the torn record
        assert t.eval("open('log.bin','rb').read(137)") == b"A" * 100 + b"B" * 37
        assert t.eval("__import__('time').time()") < 60
    finally:
        t.close()


def test_serial_disconnect_mid_session(fleet):
    from mpremote.transport import TransportError
    b = fleet.add_badge("unplug")
    write_flash(b, "data.bin", "z" * 20000)
    b.power_on()
    t = raw_transport(b)
    b.console.disconnect_after(3000)
    with pytest.raises((TransportError, OSError, Exception)):
        t.fs_readfile("data.bin", chunk_size=1024)
    t.close()
    # the badge is fine and a new session works
    t2 = raw_transport(b)
    try:
        assert t2.eval("1+1") == 2
    finally:
        t2.close()


def test_pty_console(fleet):
    b = fleet.add_badge("pty")
    b.power_on()
    path = b.console_pty()
    from mpremote.transport_serial import SerialTransport
    t = SerialTransport(path, baudrate=115200)
    try:
        t.enter_raw_repl()
        assert t.eval("6*7") == 42
        t.exit_raw_repl()
    finally:
        t.close()
