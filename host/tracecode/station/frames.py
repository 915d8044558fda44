"""Host interface protocol version 2 (locked badges): frames, handshake, and `LockedLink`.

A locked badge (provisioned with `"lock": true`) has no REPL on its serial port: the only
door is the framed protocol of docs/hostif.md, "Protocol version 2: locked mode":

    frame = A7 7C | LEN (u16 LE, length of BODY, <= 4200) | BODY | CRC-32 (zlib) over LEN+BODY
    BODY  = VER (0x02) | TYPE | SEQ (u32 LE) | PAYLOAD | TAG (16 bytes, after AUTH only)
    TAG   = HMAC-SHA256(Ks, DIR + VER + TYPE + SEQ + PAYLOAD)[:16], DIR b"H" / b"B"

`LockedLink` offers the methods of `link.BadgeLink` (so sync, diagnose and status use either)
plus unlock, firmware update (PUT + COMMIT), reset and bye. It checks the badge's own proof
of the pairing secret (`Mb`), so an impostor that merely accepts our AUTH is refused; it
hunts for the next MAGIC in garbage; a reply lost to a bad CRC, a timeout or a dropped
session is asked for again (idempotent requests only), in a new session when needed.
READ requests are pipelined (several outstanding; the badge answers in SEQ order).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import DeviceError
from .link import BadgeRefused, CountingSerial

MAGIC = b"\xa7\x7c"
VERSION = 2
MAX_BODY = 4200
HEADER = 6          # VER, TYPE, SEQ
TAG_LEN = 16
OVERHEAD = 2 + 2 + HEADER + 4                    # frame bytes around PAYLOAD (+ TAG)
MAX_PAYLOAD = MAX_BODY - HEADER - TAG_LEN        # 4178 in a session
READ_MAX = 4096
# Host-to-badge frames stay within the ESP32 port's 260-byte serial input ring buffer: bytes
# that arrive while it is full are dropped, and the firmware reads it from Python. A PUT frame
# (header, JSON, chunk, TAG, CRC) of at most ~220 bytes (path JSON ~60) fits whole while the badge is busy.
PUT_CHUNK = 128

DIR_HOST = b"H"
DIR_BADGE = b"B"

HELLO, AUTH = 0x01, 0x02
STATUS, SET_TIME, SEGMENTS, READ, ACK, EXPORT = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
SET_HEALTH, CONFIGURE, PROVISION, UNLOCK, PUT, COMMIT, RESET = (
    0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C)
BYE = 0x1F
REPLY = 0x80
ERROR = 0xFF

NAMES = {HELLO: "hello", AUTH: "auth", STATUS: "status", SET_TIME: "set_time",
         SEGMENTS: "segments", READ: "read", ACK: "ack", EXPORT: "export_keys",
         SET_HEALTH: "set_health", CONFIGURE: "configure", PROVISION: "provision",
         UNLOCK: "unlock", PUT: "put", COMMIT: "commit", RESET: "reset", BYE: "bye"}
# Asking again is harmless: reads, state that is set to a value, acks (they only grow).
# (PUT is not: the badge appends at the staged size; a lost PUT restarts its file.)
IDEMPOTENT = {STATUS, SET_TIME, SEGMENTS, READ, ACK, SET_HEALTH, CONFIGURE}
# Error codes that mean "this session is over" (the request may be asked again in a new one).
SESSION_ERRORS = {"auth", "seq"}

CTX_HOST = b"tc-auth-v2/host"
CTX_BADGE = b"tc-auth-v2/badge"
CTX_SESSION = b"tc-session-v2"


# ---------------------------------------------------------------------------- codec
def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def frame_tag(key: bytes, direction: bytes, ftype: int, seq: int, payload: bytes) -> bytes:
    msg = direction + bytes([VERSION, ftype]) + struct.pack("<I", seq) + payload
    return hmac.new(key, msg, hashlib.sha256).digest()[:TAG_LEN]


def encode(ftype: int, seq: int, payload: bytes = b"", key: bytes | None = None,
           direction: bytes = DIR_HOST, version: int = VERSION) -> bytes:
    """One frame; with `key`, the payload is followed by its TAG."""
    body = bytes([version, ftype]) + struct.pack("<I", seq) + bytes(payload)
    if key is not None:
        body += frame_tag(key, direction, ftype, seq, bytes(payload))
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_BODY}")
    head = struct.pack("<H", len(body))
    return MAGIC + head + body + struct.pack("<I", crc32(head + body))


@dataclass
class Frame:
    version: int
    type: int
    seq: int
    body: bytes          # PAYLOAD (+ TAG in a session): split by `open_tagged`
    wire: int            # bytes of the whole frame

    def open_tagged(self, key: bytes, direction: bytes = DIR_BADGE) -> bytes | None:
        """The payload if the frame's TAG is right, else None."""
        if len(self.body) < TAG_LEN:
            return None
        payload, tag = self.body[:-TAG_LEN], self.body[-TAG_LEN:]
        if not hmac.compare_digest(tag, frame_tag(key, direction, self.type, self.seq, payload)):
            return None
        return payload


class Decoder:
    """Byte stream -> frames. Bytes outside frames, bad CRCs / lengths and other versions are
    dropped (counted); the decoder hunts for the next MAGIC."""

    def __init__(self):
        self.buf = bytearray()
        self.dropped = 0        # bytes outside valid frames
        self.bad_crc = 0        # candidate frames (plausible length) whose CRC failed
        self.other_versions = 0
        self.garbage_tail = b""   # the last bytes dropped (a REPL prompt tells a dev badge)

    def feed(self, data: bytes) -> None:
        self.buf += data

    def _skip(self, n: int) -> None:
        if n:
            self.garbage_tail = (self.garbage_tail + bytes(self.buf[:n]))[-64:]
        del self.buf[:n]
        self.dropped += n

    def need(self) -> int:
        """Bytes still missing for the frame candidate at the head of the buffer (>= 1)."""
        if len(self.buf) < 4 or self.buf[:2] != MAGIC:
            return max(1, 4 - len(self.buf))
        ln = struct.unpack_from("<H", self.buf, 2)[0]
        return max(1, 4 + ln + 4 - len(self.buf))

    def next(self, stalled: bool = False) -> Frame | None:
        """The next complete frame, or None when more bytes are needed. With `stalled` (no
        byte arrived for a while), an incomplete candidate (garbage with a MAGIC and a long
        LEN) is given up if a complete, valid frame starts later in the buffer."""
        while True:
            i = self.buf.find(MAGIC)
            if i < 0:
                keep = 1 if self.buf[-1:] == MAGIC[:1] else 0
                self._skip(len(self.buf) - keep)
                return None
            if i:
                self._skip(i)
            if len(self.buf) < 4:
                return None
            ln = struct.unpack_from("<H", self.buf, 2)[0]
            if ln < HEADER or ln > MAX_BODY:
                self._skip(1)
                continue
            total = 4 + ln + 4
            if len(self.buf) < total:
                if stalled and self._later_frame():
                    self._skip(1)
                    continue
                return None
            got = struct.unpack_from("<I", self.buf, 4 + ln)[0]
            if got != crc32(bytes(self.buf[2:4 + ln])):
                self.bad_crc += 1
                self._skip(1)
                continue
            body = bytes(self.buf[4:4 + ln])
            del self.buf[:total]
            if body[0] != VERSION:
                self.other_versions += 1
                self.dropped += total
                continue
            seq = struct.unpack_from("<I", body, 2)[0]
            return Frame(body[0], body[1], seq, body[HEADER:], total)

    def _later_frame(self) -> bool:
        j = self.buf.find(MAGIC, 1)
        while j >= 0:
            if len(self.buf) >= j + 4:
                ln = struct.unpack_from("<H", self.buf, j + 2)[0]
                end = j + 8 + ln
                if HEADER <= ln <= MAX_BODY and end <= len(self.buf) and struct.unpack_from(
                        "<I", self.buf, j + 4 + ln)[0] == crc32(bytes(self.buf[j + 2:j + 4 + ln])):
                    return True
            j = self.buf.find(MAGIC, j + 1)
        return False


def decode_all(data: bytes) -> list[Frame]:
    d = Decoder()
    d.feed(data)
    out = []
    while (f := d.next()) is not None:
        out.append(f)
    return out


# ---------------------------------------------------------------------------- handshake
def host_proof(secret: bytes, nb: bytes, nh: bytes, badge_id: str) -> bytes:
    """Mh = HMAC-SHA256(secret, b"tc-auth-v2/host" + Nb + Nh + id)."""
    return hmac.new(secret, CTX_HOST + nb + nh + badge_id.encode(), hashlib.sha256).digest()


def badge_proof(secret: bytes, nh: bytes, nb: bytes, badge_id: str) -> bytes:
    """Mb = HMAC-SHA256(secret, b"tc-auth-v2/badge" + Nh + Nb + id)."""
    return hmac.new(secret, CTX_BADGE + nh + nb + badge_id.encode(), hashlib.sha256).digest()


def session_key(secret: bytes, nb: bytes, nh: bytes) -> bytes:
    """Ks = HMAC-SHA256(secret, b"tc-session-v2" + Nb + Nh)."""
    return hmac.new(secret, CTX_SESSION + nb + nh, hashlib.sha256).digest()


_REPL_SAFE = set(range(0x20, 0x7F)) | set(range(0x80, 0x100))


def host_nonce_frame() -> tuple[bytes, bytes]:
    """(Nh, HELLO frame). Nh is 16 random bytes drawn so that neither it nor the CRC holds a
    control character: a developer-mode badge's friendly REPL then sees the probe as one line
    of junk after two printable bytes (no Ctrl-A/C/D/E acting on an empty line), which
    mpremote's raw-REPL entry clears. (~124.8 bits of freshness remain.)"""
    while True:
        nh = bytes(b for b in os.urandom(32) if b in _REPL_SAFE)[:16]
        if len(nh) < 16:
            continue
        frame = encode(HELLO, 0, nh)
        if all(b in _REPL_SAFE for b in frame[-4:]):
            return nh, frame


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- errors
class _SessionLost(Exception):
    """The badge ended the session (error seq/auth, its idle limit) or a reply never came."""


class _Timeout(_SessionLost):
    pass


def _short_json(data: bytes) -> dict:
    try:
        obj = json.loads(bytes(data).decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


# ---------------------------------------------------------------------------- link
class LockedLink:
    """One framed session with a locked badge. Use as a context manager (opens and says
    hello), then `auth(secret)`; the other methods match `link.BadgeLink`."""

    progress_scale = 1.0       # wire bytes -> payload bytes for progress lines (~1)
    # READ requests in flight (requests are numbered and answered in order, so the badge can
    # prepare the next reply while one streams). 2 on a serial device: it hides the badge's
    # per-request latency (flash read + HMAC), which would cost a 921600-baud link a good
    # share of its 45 ms per 4 KiB reply. 1 on virtual ports (socket://, /dev/pts/): the
    # simulator serves requests at a paused virtual clock, where a request arriving while the
    # badge is mid-frame waits for virtual time that does not pass (a realtime fleet is fine);
    # and with no latency to hide, one at a time fills the link there (wire use 0.98).
    # read_range handles any window (tests/station/test_locked.py uses 4 on a fake badge).
    window: int | None = None
    retries = 3                # per idempotent request

    def __init__(self, port: str, *, baudrate: int = 115200, timeout_s: float = 10.0,
                 hello_timeout_s: float = 5.0, serial=None):
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.hello_timeout_s = hello_timeout_s
        self.serial: CountingSerial | None = serial
        self.hello: dict = {}
        self.authenticated = False
        self.decoder = Decoder()
        self.rerequests = 0         # replies asked for again (bad CRC, lost, new session)
        self.sessions = 0           # handshakes done
        self.bad_tags = 0
        self._secret: bytes | None = None
        self._key: bytes | None = None
        self._seq = 1
        self._nb = self._nh = b""
        if self.window is None:
            from .ports import BadgePort
            self.window = 1 if BadgePort(port, "given").is_virtual else 2

    def __repr__(self) -> str:   # never the secret or the session key
        return f"LockedLink({self.port!r}, id={self.badge_id!r})"

    # -- port --------------------------------------------------------------------------------
    def _open_port(self) -> None:
        if self.serial is not None:
            return
        self.serial = open_serial(self.port, self.baudrate)

    def _close_port(self) -> None:
        if self.serial is not None:
            try:
                self.serial.close()
            except Exception:
                pass
        self.serial = None

    @property
    def wire_bytes(self) -> int:
        return 0 if self.serial is None else self.serial.rx + self.serial.tx

    def _write(self, data: bytes) -> None:
        try:
            self.serial.write(data)
        except (OSError, Exception) as exc:   # pyserial SerialException, socket errors
            raise DeviceError(f"{self.port}: link lost while writing ({_why(exc)})",
                              hint="unplugged? run the command again") from None

    def _read_frame(self, deadline: float) -> Frame:
        """The next complete frame; _Timeout when no frame arrives before `deadline` (which
        moves on while bytes keep arriving: a long reply at a slow baud rate is not cut)."""
        s = self.serial
        if s is None:
            raise DeviceError(f"{self.port}: session is closed")
        stalled_since = None
        while True:
            f = self.decoder.next(stalled=stalled_since is not None
                                  and time.monotonic() - stalled_since > 0.1)
            if f is not None:
                return f
            now = time.monotonic()
            if now >= deadline:
                raise _Timeout()
            s.timeout = min(0.2, max(0.01, deadline - now))
            try:
                chunk = s.read(self.decoder.need())
            except Exception as exc:
                raise DeviceError(f"{self.port}: link lost ({_why(exc)})",
                                  hint="unplugged? run the command again") from None
            if chunk:
                self.decoder.feed(chunk)
                stalled_since = None
                deadline = max(deadline, time.monotonic() + min(self.timeout_s, 2.0))
            elif stalled_since is None:
                stalled_since = time.monotonic()

    # -- handshake ---------------------------------------------------------------------------
    def open(self, probe: bool = True) -> dict:
        self._open_port()
        if probe:
            self.say_hello(self.hello_timeout_s)
        return self.hello

    def say_hello(self, timeout_s: float, early_exit: bool = False) -> dict | None:
        """HELLO -> the badge's nonce and identity (no secret needed). None with `early_exit`
        when nothing framed answers (a developer-mode badge)."""
        self._key = None
        self.authenticated = False
        nh, frame = host_nonce_frame()
        self.decoder = Decoder()
        self._write(frame)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # in short steps: a REPL prompt in the garbage ends the probe early
                f = self._read_frame(min(deadline, time.monotonic() + 0.25))
            except _Timeout:
                if time.monotonic() < deadline and not (early_exit and _repl_seen(self.decoder)):
                    continue
                if early_exit:
                    return None
                raise DeviceError(f"{self.port}: no locked-mode (protocol 2) answer to hello "
                                  f"within {timeout_s:.0f} s",
                                  hint="is it a TraceCode badge, powered and plugged in?") from None
            if f.seq != 0:
                continue
            if f.type == ERROR:
                err = _short_json(f.body)
                raise DeviceError(f"{self.port}: badge refused hello: "
                                  f"{err.get('error', '?')} ({str(err.get('msg', ''))[:120]})")
            if f.type != HELLO | REPLY or len(f.body) < 16:
                continue
            nb, info = f.body[:16], _short_json(f.body[16:])
            if not info:
                raise DeviceError(f"{self.port}: badge answered hello with something that is "
                                  "not its identity")
            if info.get("proto") != VERSION:
                raise DeviceError(f"{self.port}: badge speaks host protocol "
                                  f"{info.get('proto')}, expected {VERSION}")
            if self.hello and info.get("id") != self.hello.get("id"):
                raise DeviceError(f"{self.port}: another badge ({info.get('id')!r}) answered "
                                  f"instead of {self.hello.get('id')!r}")
            self._nb, self._nh = bytes(nb), nh
            info.setdefault("provisioned", bool(info.get("locked")))
            info["mode"] = "locked" if info.get("locked") else "developer"
            self.hello = info
            return info

    @property
    def badge_id(self) -> str:
        return str(self.hello.get("id") or "")

    def auth(self, secret: bytes) -> None:
        """Mutual authentication: prove the secret, and check the badge's proof of it. A
        refusal raises BadgeRefused('auth'); a badge without the secret, DeviceError."""
        if not self._nb:
            self.say_hello(self.hello_timeout_s)
        bid = self.badge_id
        nb, nh = self._nb, self._nh
        self._nb = b""                       # one AUTH per badge nonce
        self._write(encode(AUTH, 0, host_proof(secret, nb, nh, bid)))
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                f = self._read_frame(deadline)
            except _Timeout:
                raise DeviceError(f"{self.port}: badge {bid!r} did not answer authentication",
                                  hint="unplugged? run the command again") from None
            if f.seq != 0:
                continue
            if f.type == ERROR:
                err = _short_json(f.body)
                raise BadgeRefused(self.port, "auth", err.get("error", "?"), err.get("msg", ""))
            if f.type != AUTH | REPLY:
                continue
            if not hmac.compare_digest(bytes(f.body), badge_proof(secret, nh, nb, bid)):
                raise DeviceError(
                    f"{self.port}: badge {bid!r} failed to prove it holds the pairing secret: "
                    "refusing it (an impostor, or a badge re-provisioned elsewhere)",
                    hint="nothing was read from or written to it")
            self._key = session_key(secret, nb, nh)
            self._secret = secret
            self._seq = 1
            self.authenticated = True
            self.sessions += 1
            return

    def _new_session(self) -> None:
        """Hello + auth again (after a lost session), with the secret of the first auth."""
        if self._secret is None:
            raise DeviceError(f"{self.port}: not authenticated")
        self.decoder = Decoder()
        self.say_hello(self.hello_timeout_s)
        self.auth(self._secret)

    # -- requests ----------------------------------------------------------------------------
    def _send(self, ftype: int, payload: bytes) -> int:
        if self._key is None:
            raise DeviceError(f"{self.port}: not authenticated")
        seq = self._seq
        self._seq += 1
        self._write(encode(ftype, seq, payload, self._key))
        return seq

    def _reply(self, seq: int, ftype: int, deadline: float) -> tuple[int, bytes | dict]:
        """Wait for the reply to `seq` -> (seq, payload) or (seq, error dict). Replies to
        earlier SEQs are skipped. Raises _SessionLost."""
        while True:
            f = self._read_frame(deadline)
            if f.seq == 0 and f.type == ERROR:
                raise _SessionLost()          # e.g. the badge's answer to a stale session
            payload = f.open_tagged(self._key)
            if payload is None:
                if f.type == ERROR and (err := _short_json(f.body)).get("error"):
                    # an untagged error: the badge has no session for us any more
                    raise _SessionLost(err.get("error"))
                self.bad_tags += 1
                continue
            if f.type == ERROR:
                err = _short_json(payload)
                if err.get("error") in SESSION_ERRORS:
                    raise _SessionLost(err.get("error"))
                return f.seq, err or {"error": "internal", "msg": "malformed error reply"}
            if f.type != ftype | REPLY and f.seq == seq:
                raise DeviceError(f"{self.port}: badge answered {NAMES.get(ftype, ftype)} "
                                  f"with frame type 0x{f.type:02x}")
            return f.seq, payload

    def request(self, ftype: int, payload: bytes = b"", *, timeout_s: float | None = None,
                retry: bool | None = None) -> bytes:
        """One request -> the reply payload; an error reply raises BadgeRefused."""
        retry = ftype in IDEMPOTENT if retry is None else retry
        attempts = 0
        while True:
            try:
                seq = self._send(ftype, payload)
                deadline = time.monotonic() + (timeout_s or self.timeout_s)
                while True:
                    got, answer = self._reply(seq, ftype, deadline)
                    if got == seq:
                        break
                    if got > seq:          # cannot happen with an in-order badge
                        raise _SessionLost()
            except _SessionLost:
                attempts += 1
                if not retry or attempts > self.retries:
                    raise DeviceError(f"{self.port}: badge {self.badge_id!r} stopped answering "
                                      f"({NAMES.get(ftype, hex(ftype))})",
                                      hint="unplugged? run the command again") from None
                self.rerequests += 1
                self._new_session()
                continue
            if isinstance(answer, dict):
                raise BadgeRefused(self.port, NAMES.get(ftype, hex(ftype)), answer.get("error"),
                                   str(answer.get("msg", "")))
            return answer

    def call(self, ftype: int, obj=None, **kw) -> dict:
        out = self.request(ftype, b"" if obj is None else json_bytes(obj), **kw)
        doc = _short_json(out)
        if not doc and out.strip() not in (b"{}",):
            raise DeviceError(f"{self.port}: badge answered {NAMES.get(ftype)} with something "
                              "that is not JSON")
        return doc

    # -- the BadgeLink methods ---------------------------------------------------------------
    def status(self) -> dict:
        return self.call(STATUS)

    def set_time(self, unix: int | None = None) -> float:
        obj = self.call(SET_TIME, {"unix": int(time.time()) if unix is None else int(unix)})
        return float(obj.get("drift_s", 0))

    def segments(self) -> list[dict]:
        return list(self.call(SEGMENTS).get("segments", []))

    def read_range(self, day: int, start: int, end: int,
                   on_data: Callable[[int], None] | None = None) -> bytes:
        """Log bytes [start, end) of a day: READs of up to 4096 bytes, `window` in flight.
        A lost or corrupted reply is asked for again; a short reply means the file ends."""
        chunks = deque((off, min(READ_MAX, end - off)) for off in range(start, end, READ_MAX))
        got: dict[int, bytes] = {}
        inflight: deque = deque()            # (seq, off, n), in SEQ order
        eof_at: int | None = None
        failures = 0
        while chunks or inflight:
            try:
                while chunks and len(inflight) < self.window:
                    off, n = chunks[0]
                    if eof_at is not None and off >= eof_at:
                        chunks.clear()
                        break
                    seq = self._send(READ, struct.pack("<IIH", day, off, n))
                    chunks.popleft()
                    inflight.append((seq, off, n))
                if not inflight:
                    break
                rseq, answer = self._reply(inflight[0][0], READ,
                                           time.monotonic() + self.timeout_s)
            except _SessionLost:
                failures += 1
                if failures > self.retries * 4:
                    raise DeviceError(f"{self.port}: badge {self.badge_id!r} stopped answering "
                                      "log reads", hint="unplugged? run the command again") from None
                self.rerequests += len(inflight)
                chunks.extendleft(reversed([(o, n) for _, o, n in inflight]))
                inflight.clear()
                self._new_session()
                continue
            while inflight and inflight[0][0] < rseq:   # replies lost (bad CRC): ask again
                _, o, n = inflight.popleft()
                self.rerequests += 1
                chunks.appendleft((o, n))
            if not inflight or inflight[0][0] != rseq:
                continue
            _, off, n = inflight.popleft()
            if isinstance(answer, dict):
                raise BadgeRefused(self.port, "read", answer.get("error"),
                                   str(answer.get("msg", "")))
            if len(answer) > n:
                raise DeviceError(f"{self.port}: badge sent {len(answer)} log bytes for a "
                                  f"{n}-byte read")
            got[off] = bytes(answer)
            if on_data is not None and answer:
                on_data(len(answer))
            if len(answer) < n:
                eof_at = off + len(answer) if eof_at is None else min(eof_at, off + len(answer))
            if chunks:
                chunks = deque(sorted(chunks))
        data = bytearray()
        pos = start
        while pos in got:
            part = got[pos]
            data += part
            if len(part) < min(READ_MAX, end - pos) or not part:
                break
            pos += len(part)
        return bytes(data)

    def ack(self, day: int, offset: int) -> dict:
        return self.call(ACK, {"day": int(day), "off": int(offset)})

    def export_keys(self, wait_ms: int) -> list[dict]:
        obj = self.call(EXPORT, {"wait_ms": int(wait_ms)}, retry=False,
                        timeout_s=wait_ms / 1000 + self.timeout_s)
        return list(obj.get("keys", []))

    def set_health(self, code: str) -> None:
        self.call(SET_HEALTH, {"code": code})

    def configure(self, config: dict) -> dict:
        return self.call(CONFIGURE, config)

    def provision(self, doc: dict) -> None:
        self.call(PROVISION, doc, retry=False)

    # -- locked-mode only --------------------------------------------------------------------
    def unlock(self) -> dict:
        """Maintenance unlock: the badge answers, then resets into developer mode."""
        doc = self.call(UNLOCK, retry=False)
        self._ended()
        return doc

    def reset(self) -> dict:
        doc = self.call(RESET, retry=False)
        self._ended()
        return doc

    def bye(self) -> None:
        if self._key is None or self.serial is None:
            return
        try:
            self.request(BYE, retry=False, timeout_s=min(self.timeout_s, 2.0))
        except DeviceError:
            pass
        self._ended()

    def _ended(self) -> None:
        self._key = None
        self.authenticated = False

    def put_file(self, path: str, data: bytes,
                 on_data: Callable[[int], None] | None = None) -> None:
        """Stage one file under the badge's /fw.new/ in PUT chunks (`size` is the whole
        file's; the badge appends at the staged size). A chunk whose reply is lost restarts
        the file from offset 0 in a new session."""
        for attempt in range(self.retries + 1):
            off = 0
            try:
                while True:
                    head = json_bytes({"path": path, "off": off, "size": len(data)})
                    room = min(PUT_CHUNK, MAX_PAYLOAD - 2 - len(head))
                    chunk = data[off:off + room]
                    out = self.request(PUT, struct.pack("<H", len(head)) + head + chunk,
                                       retry=False)
                    if not _short_json(out).get("ok"):
                        raise DeviceError(f"{self.port}: badge did not stage {path}")
                    off += len(chunk)
                    if on_data is not None:
                        on_data(len(chunk))
                    if off >= len(data):
                        return
            except BadgeRefused:
                raise
            except DeviceError:
                if attempt >= self.retries or self._secret is None:
                    raise
                self.rerequests += 1
                self._new_session()

    def put_files(self, files: Iterable[tuple[str, bytes]],
                  on_data: Callable[[int], None] | None = None) -> dict:
        """Firmware update: PUT every (badge path, bytes), then COMMIT with the sizes and
        SHA-256 digests; the badge checks them all, moves them into place and resets."""
        files = list(files)
        for path, data in files:
            self.put_file(path, data, on_data)
        manifest = {"files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                              for p, d in files]}
        doc = self.call(COMMIT, manifest, retry=False, timeout_s=max(self.timeout_s, 30.0))
        self._ended()
        return doc

    # -- session -----------------------------------------------------------------------------
    def close(self) -> None:
        """End the session with BYE (the badge keeps tracing; no reset) and free the port."""
        if self.serial is None:
            return
        self.bye()
        self._close_port()

    def __enter__(self) -> "LockedLink":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- helpers
def open_serial(port: str, baudrate: int) -> CountingSerial:
    """pyserial for a device path or URL (socket://, a pty path), wrapped for byte counting."""
    import serial

    try:
        s = serial.serial_for_url(port, do_not_open=True, baudrate=baudrate, timeout=0.1)
        try:
            s.exclusive = True
        except (AttributeError, ValueError, serial.SerialException):
            pass
        s.open()
        sock = getattr(s, "_socket", None)      # socket:// (a virtual badge's console)
        if sock is not None:
            import socket
            try:   # no Nagle delay: pipelined requests are small writes
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
    except Exception as exc:
        raise DeviceError(f"{port}: cannot open the port ({_why(exc)})",
                          hint="is it plugged in, or busy in another program?") from None
    return CountingSerial(s)


def _repl_seen(decoder: Decoder) -> bool:
    tail = decoder.garbage_tail + bytes(decoder.buf[-64:])
    return any(m in tail for m in (b">>> ", b"raw REPL", b"Traceback (most recent", b"\r\n>"))


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)[:160]
