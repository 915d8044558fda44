"""A small, independent host for protocol version 2 (docs/hostif.md, "Protocol version 2:
locked mode"), written from the spec for the firmware tests; it imports no firmware code.

    c = FrameClient(sock_or_io)
    info = c.hello()            # {"proto":2,"fw":..,"id":..,"locked":bool} (+ c.nb)
    c.auth(secret)              # checks the badge's Mb, derives Ks
    c.request(0x10)             # STATUS -> dict (or bytes for READ); FrameError on an error
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import time
import zlib

MAGIC = b"\xa7\x7c"
VER = 2
HELLO, AUTH = 0x01, 0x02
STATUS, SET_TIME, SEGMENTS, READ, ACK, EXPORT = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
SET_HEALTH, CONFIGURE, PROVISION, UNLOCK, PUT, COMMIT, RESET, BYE = (
    0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F)
ERROR = 0xFF


def frame(body: bytes) -> bytes:
    ln = struct.pack("<H", len(body))
    return MAGIC + ln + body + struct.pack("<I", zlib.crc32(ln + body) & 0xFFFFFFFF)


def body(typ: int, seq: int, payload: bytes = b"", ks: bytes | None = None) -> bytes:
    b = bytes([VER, typ]) + struct.pack("<I", seq) + payload
    if ks is not None:
        b += hmac.new(ks, b"H" + b, hashlib.sha256).digest()[:16]
    return b


class FrameError(Exception):
    def __init__(self, obj: dict, tagged: bool):
        super().__init__(obj)
        self.code = obj.get("error")
        self.msg = obj.get("msg")
        self.obj = obj
        self.tagged = tagged


class Link:
    """A byte pipe to the badge's console (a loopback socket), collecting what it sends."""

    def __init__(self, url: str):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._rx, daemon=True).start()

    def _rx(self) -> None:
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                d = b""
            with self.cond:
                if not d:
                    self.closed = True
                    self.cond.notify_all()
                    return
                self.buf += d
                self.cond.notify_all()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def take(self) -> bytes:
        with self.cond:
            d = bytes(self.buf)
            self.buf.clear()
            return d

    def wait_for(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while not pred(self.buf):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def parse_frames(buf: bytearray) -> list[bytes]:
    """Take every whole, CRC-valid frame's BODY out of buf (hunting for MAGIC, like the badge);
    bytes before a frame are dropped, an incomplete frame stays."""
    out = []
    i = 0
    while True:
        j = buf.find(MAGIC, i)
        if j < 0:
            keep = buf[-1:] if buf[-1:] == MAGIC[:1] else b""
            del buf[:]
            buf += keep
            return out
        if len(buf) < j + 4:
            del buf[:j]
            return out
        ln = struct.unpack_from("<H", buf, j + 2)[0]
        if ln < 6 or ln > 4200:
            i = j + 1
            continue
        if len(buf) < j + 8 + ln:
            del buf[:j]
            return out
        crc = struct.unpack_from("<I", buf, j + 4 + ln)[0]
        if zlib.crc32(bytes(buf[j + 2: j + 4 + ln])) & 0xFFFFFFFF != crc:
            i = j + 1
            continue
        out.append(bytes(buf[j + 4: j + 4 + ln]))
        i = j + 8 + ln


class FrameClient:
    def __init__(self, link: Link, timeout: float = 10.0):
        self.link = link
        self.timeout = timeout
        self.rx = bytearray()
        self.ks: bytes | None = None
        self.seq = 0
        self.nb = b""
        self.nh = b""
        self.id = ""
        self.mb = b""

    # -- frames
    def send_body(self, b: bytes) -> None:
        self.link.send(frame(b))

    def recv_body(self, timeout: float | None = None) -> bytes:
        """The next frame's BODY from the badge (TimeoutError when none comes)."""
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            self.rx += self.link.take()
            got = parse_frames(self.rx)
            if got:
                if len(got) > 1:
                    raise AssertionError("more than one frame came: %r" % got)
                return got[0]
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the badge")
            self.link.wait_for(lambda b: len(b) > 0, min(left, 0.2))

    def silence(self, wait: float = 0.5) -> bytes:
        """Whatever the badge sends within `wait` seconds (expected: nothing)."""
        time.sleep(wait)
        return self.link.take()

    def exchange(self, typ: int, payload: bytes = b"", seq: int | None = None,
                 timeout: float | None = None):
        """Send one request and return (reply type, reply seq, payload, tagged)."""
        in_session = self.ks is not None and typ not in (HELLO, AUTH)
        if seq is None:
            seq = 0
            if in_session:
                self.seq += 1
                seq = self.seq
        self.send_body(body(typ, seq, payload, self.ks if in_session else None))
        return self.read_reply(timeout)

    def read_reply(self, timeout: float | None = None):
        b = self.recv_body(timeout)
        assert b[0] == VER, b
        rtyp = b[1]
        rseq = struct.unpack_from("<I", b, 2)[0]
        rest = b[6:]
        tagged = False
        if self.ks is not None and len(rest) >= 16:
            want = hmac.new(self.ks, b"B" + b[:-16], hashlib.sha256).digest()[:16]
            if hmac.compare_digest(want, rest[-16:]):
                tagged = True
                rest = rest[:-16]
        return rtyp, rseq, rest, tagged

    # -- handshake
    def hello(self, nh: bytes | None = None) -> dict:
        self.ks = None
        self.seq = 0
        self.nh = nh if nh is not None else os.urandom(16)
        typ, seq, p, _ = self.exchange(HELLO, self.nh)
        if typ == ERROR:
            raise FrameError(json.loads(p), False)
        assert typ == HELLO | 0x80 and seq == 0, (typ, seq)
        self.nb = p[:16]
        info = json.loads(p[16:])
        self.id = info["id"]
        return info

    def auth_mac(self, secret: bytes) -> bytes:
        return hmac.new(secret, b"tc-auth-v2/host" + self.nb + self.nh + self.id.encode(),
                        hashlib.sha256).digest()

    def auth(self, secret: bytes, mac: bytes | None = None) -> None:
        mh = self.auth_mac(secret) if mac is None else mac
        typ, seq, p, _ = self.exchange(AUTH, mh)
        if typ == ERROR:
            raise FrameError(json.loads(p), False)
        assert typ == AUTH | 0x80 and seq == 0, (typ, seq)
        want = hmac.new(secret, b"tc-auth-v2/badge" + self.nh + self.nb + self.id.encode(),
                        hashlib.sha256).digest()
        assert hmac.compare_digest(p, want), "the badge does not know the secret"
        self.mb = p
        self.ks = hmac.new(secret, b"tc-session-v2" + self.nb + self.nh, hashlib.sha256).digest()
        self.seq = 0

    def login(self, secret: bytes) -> dict:
        info = self.hello()
        self.auth(secret)
        return info

    # -- requests
    def request(self, typ: int, payload=b"", timeout: float | None = None):
        """A request in the session: the reply's JSON (dict) or, for READ, bytes. Raises
        FrameError for an error reply; checks type, seq and TAG."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, separators=(",", ":")).encode()
        sent = self.seq + 1
        rtyp, rseq, p, tagged = self.exchange(typ, payload, timeout=timeout)
        assert rseq == sent, (rseq, sent)
        if rtyp == ERROR:
            obj = json.loads(p)
            if not tagged:
                self.ks = None  # the badge ended the session
            raise FrameError(obj, tagged)
        assert tagged, "a session reply without a valid TAG"
        assert rtyp == typ | 0x80, (rtyp, typ)
        if typ == READ:
            return p
        return json.loads(p)

    def read(self, day: int, off: int, n: int) -> bytes:
        return self.request(READ, struct.pack("<IIH", day, off, n))

    def put(self, path: str, data: bytes, chunk: int = 1024) -> None:
        for off in range(0, max(1, len(data)), chunk):
            js = json.dumps({"path": path, "off": off, "size": len(data)}).encode()
            r = self.request(PUT, struct.pack("<H", len(js)) + js + data[off:off + chunk])
            assert r == {"ok": True}, r
