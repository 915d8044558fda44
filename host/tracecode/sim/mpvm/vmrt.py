# The boot of a virtual badge, run by the real MicroPython VM (unix port) as its main script.
# It plays the part of the ESP32 port's main.c: mount the littlefs flash from its block
# device, run boot.py, then main.py when the REPL is the friendly one, then the REPL (friendly
# with auto-indent and completion, raw, raw-paste) on stdin/stdout, the badge's serial port.
# A soft reset ends this process; the host starts the next boot on the same flash.
import sys
import _realtime
import _vmcore as _vm

_vm.connect(sys.argv[1])
cfg = _vm.call(["hello"])
_vm.cfg = cfg
_vm._rt = bool(cfg["realtime"])
_vm._rt0 = _realtime.ms()
_vm._probe = bool(cfg.get("probe"))

import time
import select
import machine
import bluetooth
import esp32
import neopixel
import micropython
import gc
import os
import vfs
from _flashdev import FlashDev

_real_poll = select._poll
_stdin = sys.stdin.buffer
_stdout = sys.stdout.buffer
_BS = const(4096)


def _on_cut():
    _vm.send(["cut"])
    _vm.halt()


def _mount():
    dev = FlashDev(cfg["image"], cfg["blocks"], cfg["cut_after"], _on_cut)
    fs = vfs.VfsLfs2(dev)
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    return dev


try:
    _dev = _mount()
except OSError as e:
    print("vm: cannot mount the flash:", e)
    raise

sys.path.clear()
sys.path.append("")
sys.path.append(".frozen")
sys.path.append("/lib")

_g = {"__name__": "__main__"}
_mode = cfg["mode"]
_CHAR_A = const(1)
_CHAR_B = const(2)
_CHAR_C = const(3)
_CHAR_D = const(4)
_CHAR_E = const(5)


def _w(b):
    _stdout.write(b)


def _ws(s):
    _stdout.write(s.encode())


def _kbd(on):
    # Ctrl-C interrupts running code (the host raises SIGINT only while this is on);
    # while the REPL reads its input, Ctrl-C is just a character
    while True:
        try:
            micropython.kbd_intr(3 if on else -1)
            return
        except KeyboardInterrupt:
            pass


_inpoll = _real_poll()
_inpoll.register(_stdin, select.POLLIN)


def _ready():
    # console input waiting? (ipoll iterates in place: no list on the heap)
    for _ in _inpoll.ipoll(0):
        return True
    return False


def _getc():
    # Idle at the REPL: nothing is allocated until input arrives (the resume watch reads an
    # unchanged gc.mem_alloc() as an idle REPL), timer callbacks run meanwhile.
    while True:
        if _ready():
            return _stdin.read(1)[0]
        _vm.wait(None, True)


class _Soft(Exception):
    pass


def _run(code, glb, host=True):
    """Run compiled code like pyexec: Ctrl-C on; returns the exception it raised (None if
    none); SystemExit = soft reset. `host`: code a host session sent (its waits may move the
    fleet's virtual time while the fleet is otherwise paused)."""
    _vm.send(["h", 1 if host else 0])
    try:
        _kbd(True)
        exec(code, glb)
        _kbd(False)
        return None
    except SystemExit:
        _kbd(False)
        raise _Soft()
    except BaseException as e:
        _kbd(False)
        return e
    finally:
        _kbd(False)
        _vm.send(["h", 0])


def _show(e):
    if e is not None:
        try:
            sys.print_exception(e)
        except KeyboardInterrupt:
            pass


def _run_file(name, host):
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return
    try:
        code = compile(src, name, "exec")
    except BaseException as e:
        sys.print_exception(e)
        return
    src = None
    gc.collect()
    _show(_run(code, _g, host))


def _soft_reset():
    _ws("MPY: soft reboot\r\n")
    _vm.send(["soft", _mode])
    _vm.halt()


_BANNER = "MicroPython v%d.%d.%d on 2026-07-05; %s\r\nType \"help()\" for more information.\r\n" % (
    sys.implementation.version[0], sys.implementation.version[1], sys.implementation.version[2],
    cfg["machine"])


def _raw_repl():
    global _mode
    _w(b"raw REPL; CTRL-B to exit\r\n")
    while True:
        _w(b">")
        line = bytearray()
        while True:
            c = _getc()
            if c == _CHAR_A:
                if len(line) == 2 and line[0] == _CHAR_E:
                    if line[1] == 65:
                        _raw_paste()
                        break
                    _w(b"R\x00")
                    line = bytearray()
                    continue
                _w(b"\r\nraw REPL; CTRL-B to exit\r\n>")
                line = bytearray()
                continue
            if c == _CHAR_B:
                _w(b"\r\n")
                _mode = "friendly"
                return
            if c == _CHAR_C:
                line = bytearray()
                continue
            if c == _CHAR_D:
                _w(b"OK")
                if not line:
                    _w(b"\r\n")
                    _soft_reset()
                _exec_raw(bytes(line))
                break
            line.append(c)


def _exec_raw(src):
    try:
        code = compile(src, "<stdin>", "exec")
    except BaseException as e:
        _w(b"\x04")
        sys.print_exception(e)
        _w(b"\x04")
        return
    src = None
    gc.collect()
    err = _run(code, _g)
    _w(b"\x04")
    _show(err)
    _w(b"\x04")


def _raw_paste():
    _w(b"R\x01\x00\x01\x01")
    data = bytearray()
    remain = 256
    while True:
        c = _getc()
        if c == _CHAR_C or c == _CHAR_D:
            _w(b"\x04")
            if c == _CHAR_C:
                _w(b"\x04")
                _ws("KeyboardInterrupt: \n")
                _w(b"\x04")
                return
            break
        data.append(c)
        remain -= 1
        if remain == 0:
            _w(b"\x01")
            remain = 256
    _exec_raw(bytes(data))


_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "@", "async")


def _needs_more(src):
    # like py/repl.c: unclosed brackets/strings, a trailing backslash, or a compound statement
    # not yet ended by an empty line
    depth = 0
    q = None
    i = 0
    n = len(src)
    while i < n:
        ch = src[i]
        if q:
            if ch == "\\":
                i += 2
                continue
            if src.startswith(q, i):
                i += len(q)
                q = None
                continue
        elif ch == "#":
            while i < n and src[i] != "\n":
                i += 1
            continue
        elif ch in "'\"":
            q = src[i:i + 3] if src[i:i + 3] in ("'''", '"""') else ch
            i += len(q)
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1
    if q or depth > 0:
        return True
    if src.endswith("\\"):
        return True
    first = src.lstrip().split(" ")[0].split(":")[0].split("(")[0]
    if first in _COMPOUND or src.lstrip().startswith("@"):
        return not src.endswith("\n")
    return False


def _complete(line):
    # the trailing dotted name of the line, completed against the REPL's globals/builtins
    i = len(line)
    while i > 0 and (line[i - 1].isalpha() or line[i - 1].isdigit() or line[i - 1] in "_."):
        i -= 1
    word = line[i:]
    parts = word.split(".")
    obj = None
    try:
        for k, p in enumerate(parts[:-1]):
            if k == 0:
                obj = _g[p] if p in _g else getattr(__import__("builtins"), p)
            else:
                obj = getattr(obj, p)
    except (KeyError, AttributeError):
        return "", []
    pre = parts[-1]
    if obj is None:
        names = list(_g.keys()) + dir(__import__("builtins"))
    else:
        names = dir(obj)
    cands = sorted(set(nm for nm in names if nm.startswith(pre) and (pre or nm[0] != "_")))
    if not cands:
        return "", []
    common = cands[0]
    for c in cands[1:]:
        j = 0
        while j < len(common) and j < len(c) and common[j] == c[j]:
            j += 1
        common = common[:j]
    return common[len(pre):], cands


def _readline(prompt, indent):
    _ws(prompt)
    line = indent
    _ws(line)
    while True:
        c = _getc()
        if c == 13:
            _w(b"\r\n")
            return line
        if c == 10:
            continue
        if c in (_CHAR_A, _CHAR_B, _CHAR_C, _CHAR_D, _CHAR_E):
            if c == _CHAR_D and line:
                continue
            if c == _CHAR_A and line:
                continue
            return c
        if c in (8, 127):
            if line:
                line = line[:-1]
                _w(b"\x08 \x08")
            continue
        if c == 27:
            c2 = _getc()
            if c2 == 91:
                c3 = _getc()
                while 48 <= c3 <= 57:
                    c3 = _getc()
            continue
        if c == 9:
            if not line.strip():
                line += "    "
                _ws("    ")
                continue
            add, cands = _complete(line)
            if add:
                line += add
                _ws(add)
            elif len(cands) > 1:
                _w(b"\r\n")
                col = 0
                for nm in cands:
                    cell = nm + " " * (16 - len(nm) % 16)
                    if col + len(cell) > 80:
                        _w(b"\r\n")
                        col = 0
                    _ws(cell)
                    col += len(cell)
                _w(b"\r\n")
                _ws(prompt)
                _ws(line)
            continue
        if c >= 32:
            line += chr(c)
            _w(bytes((c,)))


def _paste_mode():
    _ws("\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
    buf = bytearray()
    while True:
        c = _getc()
        if c == _CHAR_C:
            _w(b"\r\n")
            return None
        if c == _CHAR_D:
            _w(b"\r\n")
            return bytes(buf).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf.append(c)
        if c == 13:
            _w(b"\r\n=== ")
        else:
            _w(bytes((c,)))


def _indent_after(line):
    n = len(line) - len(line.lstrip())
    if line.rstrip().endswith(":"):
        n += 4
    return n


def _friendly_repl():
    global _mode
    _ws(_BANNER)
    while True:
        r = _readline(">>> ", "")
        if r == _CHAR_A:
            _w(b"\r\n")
            _mode = "raw"
            return
        if r == _CHAR_B:
            _w(b"\r\n")
            _ws(_BANNER)
            continue
        if r == _CHAR_C:
            _w(b"\r\n")
            continue
        if r == _CHAR_D:
            _w(b"\r\n")
            _soft_reset()
        if r == _CHAR_E:
            src = _paste_mode()
            if src is not None:
                try:
                    code = compile(src, "<stdin>", "exec")
                except BaseException as e:
                    sys.print_exception(e)
                    continue
                _show(_run(code, _g))
            continue
        if not r.strip():
            continue
        src = r
        ind = _indent_after(r)
        while _needs_more(src):
            more = _readline("... ", " " * ind)
            if not isinstance(more, str):
                if more == _CHAR_C:
                    _w(b"\r\n")
                    src = ""
                    break
                continue
            if not more:
                src += "\n"
                break
            if not more.strip():
                # only the auto-indent: step back one level (an empty line ends the input)
                ind = max(0, len(more) - 4)
                continue
            src += "\n" + more
            ind = _indent_after(more)
        if not src.strip():
            continue
        try:
            code = compile(src + "\n", "<stdin>", "single")
        except BaseException as e:
            sys.print_exception(e)
            continue
        _show(_run(code, _g))


_kbd(False)
gc.collect()
_vm.send(["mem", gc.mem_alloc(), gc.mem_free()])
try:
    _run_file("boot.py", True)
    if _mode == "friendly":
        _run_file("main.py", False)
    while True:
        if _mode == "raw":
            _raw_repl()
        else:
            _friendly_repl()
except _Soft:
    _soft_reset()
