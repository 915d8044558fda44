"""A host session with one badge: mpremote's serial transport + the badge's host interface.

The transport boundary is mpremote's `SerialTransport` (raw REPL, raw-paste). On top of it,
`BadgeLink` runs calls of the firmware's fixed `tcbadge.hostif.Host` object (docs/hostif.md),
each printing one JSON line, or base64 lines for log bytes. Output is read in bulk rather
than byte by byte, and every byte on the wire is counted so a sync can report its
payload/wire ratio. A session always ends with a soft reset from the friendly REPL, which
restarts the badge's firmware (main.py).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import time
from typing import Callable

from ..errors import DeviceError

PROTO_VERSION = 1
AUTH_CONTEXT = b"tc-auth-v1"
# Log bytes per host-interface read call; several calls run in one raw-REPL exec.
READ_CHUNK = 12288
EXEC_READ_LIMIT = 16 * READ_CHUNK


class CountingSerial:
    """Wraps a pyserial object: counts the bytes read and written, and lets bytes read
    ahead in bulk be pushed back for mpremote's own byte-wise reads."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_pending", bytearray())
        object.__setattr__(self, "rx", 0)
        object.__setattr__(self, "tx", 0)

    def read(self, n=1):
        if self._pending:
            data = bytes(self._pending[:n])
            del self._pending[:n]
            return data
        data = self._inner.read(n)
        object.__setattr__(self, "rx", self.rx + len(data))
        return data

    def unread(self, data: bytes) -> None:
        self._pending[:0] = data

    @property
    def in_waiting(self) -> int:
        return len(self._pending) or self._inner.in_waiting

    def inWaiting(self) -> int:  # noqa: N802 (pyserial 2 name, used by mpremote)
        return self.in_waiting

    def write(self, data):
        object.__setattr__(self, "tx", self.tx + len(data))
        return self._inner.write(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def _quiet_mpremote() -> None:
    """mpremote's serial transport print()s the raw bytes it saw when entering the raw REPL
    fails; we report one line instead. A module-level `print` in that module shadows the
    builtin there only (contextlib.redirect_stdout would swap sys.stdout for every thread,
    which races when several badges are served in parallel)."""
    import mpremote.transport_serial as ts

    if getattr(ts, "print", None) is not _no_print:
        ts.print = _no_print


def _no_print(*args, **kwargs) -> None:
    pass


def auth_mac(secret: bytes, nonce_hex: str, badge_id: str) -> str:
    """HMAC-SHA256(secret, b"tc-auth-v1" + nonce + id), hex (docs/hostif.md)."""
    try:
        nonce = bytes.fromhex(nonce_hex)
    except (TypeError, ValueError):
        raise DeviceError("badge sent a malformed challenge") from None
    return hmac.new(secret, AUTH_CONTEXT + nonce + badge_id.encode(), hashlib.sha256).hexdigest()


class BadgeLink:
    """One raw-REPL session with a badge. Use as a context manager."""

    def __init__(self, port: str, *, baudrate: int = 115200, timeout_s: float = 10.0,
                 soft_reset: bool = True, restart: bool = True):
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.soft_reset = soft_reset
        self.restart = restart
        self.transport = None
        self.serial: CountingSerial | None = None
        self.hello: dict = {}
        self.authenticated = False

    # -- session ---------------------------------------------------------------------------
    def open(self, probe: bool = True) -> dict:
        """Open the port and enter the raw REPL; with `probe`, also say hello."""
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        try:
            self.transport = SerialTransport(self.port, baudrate=self.baudrate, timeout=2)
        except TransportError:
            raise DeviceError(f"{self.port}: cannot open the port",
                              hint="is it plugged in, or busy in another program?") from None
        except Exception as exc:  # pyserial errors for bad URLs, refused sockets, ...
            raise DeviceError(f"{self.port}: cannot open the port ({exc})") from None
        self.serial = CountingSerial(self.transport.serial)
        self.transport.serial = self.serial
        _quiet_mpremote()
        try:
            self.transport.enter_raw_repl(soft_reset=self.soft_reset,
                                          timeout_overall=self.timeout_s)
        except Exception:
            self._close_port()
            raise DeviceError(f"{self.port}: no MicroPython raw REPL answers",
                              hint="is this a badge with MicroPython?") from None
        return self.probe() if probe else {}

    def probe(self) -> dict:
        """Create the badge's Host object and say hello (a fresh challenge nonce)."""
        try:
            out = self.run("from tcbadge.hostif import Host\nh = Host()\nh.hello()")
        except DeviceError:
            self.close()
            raise DeviceError(f"{self.port}: the badge is not running TraceCode firmware "
                              "(tcbadge.hostif missing)", hint="flash it with `tracecode flash`")
        self.hello = self._one_json(out, "hello")
        if "error" in self.hello:
            self.close()
            raise DeviceError(f"{self.port}: badge failed to answer hello: "
                              f"{self.hello.get('error')} ({self.hello.get('msg', '')[:120]})")
        if self.hello.get("proto") != PROTO_VERSION:
            self.close()
            raise DeviceError(f"{self.port}: badge speaks host interface version "
                              f"{self.hello.get('proto')}, expected {PROTO_VERSION}")
        return self.hello

    def close(self) -> None:
        """End the session: soft reset from the friendly REPL restarts the firmware."""
        if self.transport is None:
            return
        try:
            if self.restart:
                self.transport.exit_raw_repl()
                self.serial.write(b"\x04")
                self.transport.read_until(1, b"soft reboot\r\n", timeout=1, timeout_overall=3)
        except Exception:
            pass  # unplugged: the badge restarts on power-up anyway
        self._close_port()

    def _close_port(self) -> None:
        try:
            self.transport.close()
        except Exception:
            pass
        self.transport = None

    def __enter__(self) -> "BadgeLink":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def wire_bytes(self) -> int:
        return 0 if self.serial is None else self.serial.rx + self.serial.tx

    # -- raw execution --------------------------------------------------------------------
    def run(self, code: str, *, timeout_s: float | None = None,
            on_data: Callable[[int], None] | None = None) -> bytes:
        """Run `code` in the raw REPL; return its stdout. A device exception -> DeviceError."""
        from mpremote.transport import TransportError

        if self.transport is None:
            raise DeviceError(f"{self.port}: session is closed")
        try:
            self.transport.exec_raw_no_follow(code)
            out, err = self._follow(timeout_s or self.timeout_s, on_data)
        except TransportError:
            raise DeviceError(f"{self.port}: the badge stopped answering",
                              hint="unplugged? run the command again") from None
        except OSError as exc:
            raise DeviceError(f"{self.port}: link lost ({exc.strerror or exc})",
                              hint="unplugged? run the command again") from None
        if err:
            lines = err.decode(errors="replace").strip().splitlines()
            # Only the exception line: never echo code (it may carry secrets).
            raise DeviceError(f"{self.port}: badge raised {lines[-1][:200] if lines else '?'}")
        return out

    def _follow(self, timeout_s: float, on_data) -> tuple[bytes, bytes]:
        """Read stdout up to \\x04 and stderr up to the next \\x04, in bulk reads.

        (pyserial's socket `in_waiting` is only 0/1, so reads use a short timeout and a
        large size instead of `read(in_waiting)`.)"""
        s = self.serial
        saved = s.timeout
        s.timeout = 0.01
        try:
            buf = bytearray()
            last = time.monotonic()
            stage_out: bytes | None = None
            scan = 0
            while True:
                chunk = s.read(65536)
                now = time.monotonic()
                if not chunk:
                    if now - last > timeout_s:
                        raise DeviceError(f"{self.port}: the badge stopped answering "
                                          f"(no output for {timeout_s:.0f} s)",
                                          hint="unplugged? run the command again")
                    continue
                last = now
                buf += chunk
                if on_data is not None:
                    on_data(len(chunk))
                while True:
                    i = buf.find(b"\x04", scan)
                    if i < 0:
                        scan = len(buf)
                        break
                    scan = 0
                    if stage_out is None:
                        stage_out = bytes(buf[:i])
                        del buf[: i + 1]
                    else:
                        # The '>' prompt after it is mpremote's to read before the next exec.
                        s.unread(bytes(buf[i + 1:]))
                        return stage_out, bytes(buf[:i])
        finally:
            s.timeout = saved

    @staticmethod
    def _one_json(out: bytes, what: str) -> dict:
        text = out.decode(errors="replace").strip()
        line = text.splitlines()[-1] if text else ""
        try:
            obj = json.loads(line)
        except ValueError:
            raise DeviceError(f"badge answered {what} with something that is not JSON") from None
        if not isinstance(obj, dict):
            raise DeviceError(f"badge answered {what} with a non-object")
        return obj

    def call(self, method: str, *args, timeout_s: float | None = None) -> dict:
        """h.method(*args) -> its JSON object; {"error": ...} -> DeviceError."""
        code = "h.%s(%s)" % (method, ", ".join(_py_literal(a) for a in args))
        obj = self._one_json(self.run(code, timeout_s=timeout_s), method)
        if "error" in obj:
            raise BadgeRefused(self.port, method, obj.get("error"), obj.get("msg", ""))
        return obj

    # -- host interface --------------------------------------------------------------------
    @property
    def badge_id(self) -> str:
        return str(self.hello.get("id") or "")

    def auth(self, secret: bytes) -> None:
        """Prove we hold the pairing secret; a refusal raises BadgeRefused('auth')."""
        mac = auth_mac(secret, str(self.hello.get("nonce", "")), self.badge_id)
        self.call("auth", mac)
        self.authenticated = True

    def status(self) -> dict:
        return self.call("status")

    def set_time(self, unix: int | None = None) -> float:
        obj = self.call("set_time", int(time.time()) if unix is None else int(unix))
        return float(obj.get("drift_s", 0))

    def segments(self) -> list[dict]:
        return list(self.call("segments").get("segments", []))

    def read_range(self, day: int, start: int, end: int,
                   on_data: Callable[[int], None] | None = None) -> bytes:
        """Log bytes [start, end) of a day, in one exec per EXEC_READ_LIMIT bytes."""
        data = bytearray()
        pos = start
        while pos < end:
            stop = min(end, pos + EXEC_READ_LIMIT)
            code = "for o in range(%d,%d,%d):h.read(%d,o,min(%d,%d-o))" % (
                pos, stop, READ_CHUNK, day, READ_CHUNK, stop)
            out = self.run(code, on_data=on_data)
            got = bytearray()
            for line in out.split(b"\n"):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(b"{"):
                    obj = self._one_json(line, "read")
                    raise BadgeRefused(self.port, "read", obj.get("error"), obj.get("msg", ""))
                try:
                    got += binascii.a2b_base64(line)
                except binascii.Error:
                    raise DeviceError(f"{self.port}: garbled log data from the badge") from None
            data += got
            if len(got) < stop - pos:
                break  # the file ends before `end`
            pos = stop
        return bytes(data)

    def ack(self, day: int, offset: int) -> dict:
        return self.call("ack", int(day), int(offset))

    def export_keys(self, wait_ms: int) -> list[dict]:
        obj = self.call("export_keys", int(wait_ms), timeout_s=wait_ms / 1000 + self.timeout_s)
        return list(obj.get("keys", []))

    def set_health(self, code: str) -> None:
        self.call("set_health", code)

    def configure(self, config: dict) -> dict:
        return self.call("configure", json.dumps(config, separators=(",", ":")))

    def provision(self, doc: dict) -> None:
        self.call("provision", json.dumps(doc, separators=(",", ":")))


class BadgeRefused(DeviceError):
    """The host interface answered {"error": code}."""

    def __init__(self, port: str, method: str, code, msg: str = ""):
        self.code = code
        self.method = method
        text = f"{port}: badge refused {method}: {code}"
        if code == "auth":
            text = f"{port}: badge refused {method}: this host is not paired with the badge"
        elif msg:
            text += f" ({msg[:120]})"
        super().__init__(text)


def _py_literal(value) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a valid MicroPython string literal
    raise TypeError(f"cannot pass {type(value).__name__} to the badge")


# ---------------------------------------------------------------------------- link selection
PROBE_TIMEOUT_S = 1.5


def probe_locked(port: str, wait_s: float, *, baudrate: int = 115200, timeout_s: float = 10.0):
    """A HELLO frame on `port`: a `frames.LockedLink` (hello done, not authenticated) if a
    locked badge answers within `wait_s`, else None (port closed again)."""
    from .frames import LockedLink, open_serial

    link = LockedLink(port, baudrate=baudrate, timeout_s=timeout_s,
                      serial=open_serial(port, baudrate))
    try:
        hello = link.say_hello(wait_s, early_exit=True)
    except BaseException:
        link._close_port()
        raise
    if hello is not None and hello.get("locked"):
        return link
    link._close_port()
    return None


def open_link(port: str, *, baudrate: int = 115200, timeout_s: float = 10.0,
              probe_timeout_s: float = PROBE_TIMEOUT_S, **kw):
    """An open session with the badge on `port`, whichever mode it is in.

    A HELLO frame (protocol version 2, docs/hostif.md) is sent first with a short timeout: a
    locked badge answers it and gets a `frames.LockedLink` (hello done, not yet
    authenticated). Anything else -- no answer, a REPL prompt, a badge answering
    `"locked": false` -- gets today's raw-REPL `BadgeLink` (developer mode, version 1). The
    probe frame holds no control character a friendly REPL would act on (frames.py). If the
    raw REPL does not answer either, HELLO is tried once more with a longer timeout (a slow,
    busy locked badge)."""
    def probe(wait_s: float):
        return probe_locked(port, wait_s, baudrate=baudrate, timeout_s=timeout_s)

    locked = probe(probe_timeout_s)
    if locked is not None:
        return locked
    link = BadgeLink(port, baudrate=baudrate, timeout_s=timeout_s, **kw)
    try:
        link.open()
        return link
    except DeviceError as exc:
        first = exc
    if "no MicroPython raw REPL answers" not in str(first):
        raise first
    locked = probe(max(5.0, probe_timeout_s))
    if locked is not None:
        return locked
    raise DeviceError(f"{port}: no badge answers (neither locked mode nor a MicroPython raw "
                      "REPL)", hint="is it plugged in and powered, with TraceCode firmware?")
