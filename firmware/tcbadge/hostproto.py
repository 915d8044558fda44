# Host protocol version 2 (docs/hostif.md, "Protocol version 2: locked mode"): the framed
# protocol a locked badge serves on its serial port, as a supervised asyncio task of the app
# (main.py: attach(app)), while the badge keeps tracing. The logic of each request is
# hostif.Core's, working on the app's own clock, log and health objects.
#
# frame = A7 7C | LEN u16 LE (BODY, 6..4200) | BODY | CRC-32 LE over LEN + BODY
# BODY  = VER 2 | TYPE | SEQ u32 LE | PAYLOAD | TAG (16, in a session)
#
# Reading: the serial port's stdin is awaited through asyncio.StreamReader (the loop sleeps in
# its poller); once bytes come, they are taken one at a time while select.poll says more are
# there (sys.stdin.buffer.read(n) blocks until n bytes on the ESP32), into one preallocated
# buffer. A frame has _FRAME_MS to arrive whole; while one streams in, short gaps are waited
# out synchronously (bounded per frame) so that the ESP32's 260-byte stdin ring buffer keeps
# draining. Garbage, bad LEN or CRC, a frame cut short: the receiver drops the first byte and
# hunts for the next MAGIC in what it holds. Nothing is ever echoed.
#
# Session rules (the station must follow them; see docs/firmware.md "Locked mode"):
# - HELLO ends any session and makes a fresh Nb; Nb allows one AUTH attempt.
# - HELLO/AUTH frames and their replies carry no TAG. Every reply to a request of a live
#   session carries a TAG (results and errors such as "input"); an error reply that ends the
#   session (bad TAG: "auth", wrong SEQ: "seq", expired: "auth") or one to a request without
#   a session carries none.
# - 10 s without a valid request ends the session (counted from the end of the last reply,
#   so a long EXPORT is never cut). PROVISION ends the session after its reply.
import asyncio
import binascii
import gc
import hashlib
import json
import os
import select
import struct
import sys
import time

from micropython import const

from . import config, crypto, fsutil, hostif

_MAGIC0 = const(0xA7)
_MAGIC1 = const(0x7C)
_VER = const(2)
_MAX_LEN = const(4200)
_CAP = const(4208)  # MAGIC + LEN + largest BODY + CRC
_HEAD = const(6)  # VER, TYPE, SEQ
_TAG = const(16)
_IDLE_MS = const(10000)
_FRAME_MS = const(2000)  # 4208 bytes take 0.37 s at 115200 baud
_GAP_MS = const(5)  # mid-frame gaps waited out synchronously ...
_BURST_MS = const(200)  # ... for at most this long per frame
_HUNT_YIELD = const(512)  # bytes of garbage between two yields to the other tasks
_MAX_READ = const(4096)
_MAX_WAIT_MS = const(300000)
_POLL_MS = const(20)
_BLINK = const(25)  # polls per LED blink phase (0.5 s)
_RESET_DELAY_MS = const(200)  # the reply leaves the UART before the reset
_MAX_FILE = const(1048576)

T_HELLO = const(0x01)
T_AUTH = const(0x02)
T_STATUS = const(0x10)
T_SET_TIME = const(0x11)
T_SEGMENTS = const(0x12)
T_READ = const(0x13)
T_ACK = const(0x14)
T_EXPORT = const(0x15)
T_SET_HEALTH = const(0x16)
T_CONFIGURE = const(0x17)
T_PROVISION = const(0x18)
T_UNLOCK = const(0x19)
T_PUT = const(0x1A)
T_COMMIT = const(0x1B)
T_RESET = const(0x1C)
T_BYE = const(0x1F)
T_ERROR = const(0xFF)

STAGING = "/fw.new"
COMMIT_LIST = "/fw.new/commit.txt"  # main.py moves the files listed here into place at boot
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"

try:
    _crc32 = binascii.crc32
except AttributeError:  # a port built without it: a nibble table
    _crc32 = None
_CRC_T = (0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158,
          0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4,
          0xA00AE278, 0xBDBDF21C)


def crc32(data, crc=0):
    # CRC-32 (zlib), continued from `crc` (the value over the bytes before).
    if _crc32 is not None:
        return _crc32(data, crc) & 0xFFFFFFFF
    c = crc ^ 0xFFFFFFFF
    t = _CRC_T
    for b in data:
        c = t[(c ^ b) & 15] ^ (c >> 4)
        c = t[(c ^ (b >> 4)) & 15] ^ (c >> 4)
    return c ^ 0xFFFFFFFF


def _dumps(obj):
    # JSON without spaces (ports built without `separators` get the plain form).
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:
        return json.dumps(obj)


class _Mac:
    # HMAC-SHA256 with one key, its pads computed once (MicroPython's sha256 has no copy()).
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        k = bytearray(64)
        k[: len(key)] = key
        i = bytearray(64)
        o = bytearray(64)
        for n in range(64):
            i[n] = k[n] ^ 0x36
            o[n] = k[n] ^ 0x5C
        self._i = bytes(i)
        self._o = bytes(o)

    def start(self, d):
        h = hashlib.sha256(self._i)
        h.update(d)
        return h

    def end(self, h):
        # The first 16 bytes of the HMAC of what went into h.
        inner = h.digest()
        h = hashlib.sha256(self._o)
        h.update(inner)
        return h.digest()[:_TAG]

    def tag(self, d, data):
        # The first 16 bytes of HMAC(key, d + data).
        h = self.start(d)
        h.update(data)
        return self.end(h)


class Frame(Exception):
    # A well-formed frame with a malformed request (error code "frame").
    pass


def check_path(p):
    # A firmware path PUT/COMMIT may write: boot.py, main.py, tcbadge/*.py|.mpy, lib/**.
    if not isinstance(p, str) or not 0 < len(p) <= 96:
        raise ValueError("path must be a string of 1..96 characters")
    parts = p.split("/")
    for part in parts:
        if not part or part == "." or part == "..":
            raise ValueError("bad path")
        for ch in part:
            if ch not in _NAME_CHARS:
                raise ValueError("bad path")
    if len(parts) == 1 and (p == "boot.py" or p == "main.py"):
        return p
    if len(parts) == 2 and parts[0] == "tcbadge" and (p.endswith(".py") or p.endswith(".mpy")):
        return p
    if len(parts) >= 2 and parts[0] == "lib":
        return p
    raise ValueError("path not allowed: " + p)


def _mkdirs(root, path):
    # The folders above `path` (relative, '/'-separated) under root.
    i = path.find("/")
    while i >= 0:
        fsutil.mkdir(root + "/" + path[:i])
        i = path.find("/", i + 1)


def rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            rmtree(p)
        else:
            fsutil.remove(p)
    try:
        os.rmdir(path)
    except OSError:
        pass


class Server:
    # Server() first (its frame buffer taken from a fresh heap), then attach(app) once the app
    # exists (main.py), or Server(app) in one go.
    def __init__(self, app=None, root=None, inp=None, out=None):
        self._in = inp if inp is not None else sys.stdin.buffer
        self._out = out if out is not None else sys.stdout.buffer
        self._reader = None
        self._poll = None
        self._rx = bytearray(_CAP)
        self._rxv = memoryview(self._rx)
        self._hdr = bytearray(10)
        self._chunk = bytearray(256)
        self._one = bytearray(1)
        self._s = 0  # frame start in _rx
        self._n = 0  # bytes held in _rx
        self._deadline = 0
        self._burst = 0
        self._hunted = 0
        # handshake / session
        self._nb = None
        self._nh = None
        self._mac = None
        self._next = 0
        self._last = 0
        self.frames = 0  # valid frames served
        self.dropped = 0  # bytes dropped while hunting for frames
        self.bind(app, root)

    def bind(self, app=None, root=None):
        self.app = app
        self.root = root if root is not None else (app.root if app is not None else "")
        self.core = hostif.Core(self.root, app) if app is not None or root is not None else None
        return self

    def _core(self):
        c = self.core
        if c is None:
            raise hostif.HostError("internal", "not attached to the app")
        return c

    def attach(self, app):
        # Serve from the app's next run() on: a supervised task, restarted if it fails.
        self.bind(app)
        app.add_task("host", self.run)
        return self

    # -- serial input
    def _open(self):
        if self._reader is None:
            self._reader = asyncio.StreamReader(self._in)
            p = select.poll()
            p.register(self._in, select.POLLIN)
            self._poll = p

    def _ready(self):
        for _ in self._poll.ipoll(0):  # type: ignore
            return True
        return False

    def _take(self, b):
        self._rx[self._n] = b
        self._n += 1

    def _skip(self, k):
        self._s += k
        if self._s >= self._n:
            self._s = 0
            self._n = 0

    def _compact(self):
        # Move the held bytes to the front, in pieces that never overlap (no allocation).
        s = self._s
        m = self._n - s
        rx = self._rx
        v = self._rxv
        i = 0
        while i < m:
            c = s if s < m - i else m - i
            rx[i : i + c] = v[s + i : s + i + c]
            i += c
        self._s = 0
        self._n = m

    async def _fill(self, k, mid):
        # Hold at least k bytes from the frame start. mid: inside a frame (its deadline
        # applies); False when the frame would not come in time.
        gap = 0
        while self._n - self._s < k:
            if self._s + k > _CAP:
                self._compact()
            if self._ready():
                if self._in.readinto(self._one) == 1:
                    self._take(self._one[0])
                    gap = 0
                    continue
                await asyncio.sleep_ms(100)  # end of input (a closed pipe): not a busy loop
                continue
            if mid:
                left = time.ticks_diff(self._deadline, time.ticks_ms())
                if left <= 0:
                    return False
                if gap < _GAP_MS and self._burst < _BURST_MS:
                    time.sleep_ms(1)
                    gap += 1
                    self._burst += 1
                    continue
                try:
                    b = await asyncio.wait_for_ms(self._reader.read(1), left)  # type: ignore
                except asyncio.TimeoutError:
                    return False
            else:
                b = await self._reader.read(1)  # type: ignore
            if b:
                self._take(b[0])
                gap = 0
            else:
                await asyncio.sleep_ms(100)
        return True

    async def _frame(self):
        # The next valid frame: returns its BODY length, the frame starts at self._s.
        rx = self._rx
        while True:
            await self._fill(1, False)
            if rx[self._s] != _MAGIC0:
                self._skip(1)
                self.dropped += 1
                self._hunted += 1
                if self._hunted >= _HUNT_YIELD:
                    self._hunted = 0
                    await asyncio.sleep_ms(0)
                continue
            self._deadline = time.ticks_add(time.ticks_ms(), _FRAME_MS)
            self._burst = 0
            if not await self._fill(4, True) or rx[self._s + 1] != _MAGIC1:
                self._skip(1)
                self.dropped += 1
                continue
            s = self._s
            ln = rx[s + 2] | (rx[s + 3] << 8)
            if ln < _HEAD or ln > _MAX_LEN:
                self._skip(1)
                self.dropped += 1
                continue
            if not await self._fill(ln + 8, True):
                self._skip(1)
                self.dropped += 1
                continue
            s = self._s  # _fill may have compacted the buffer: the frame moved to its start
            got = struct.unpack_from("<I", rx, s + 4 + ln)[0]
            if crc32(self._rxv[s + 2 : s + 4 + ln]) != got:
                self._skip(1)
                self.dropped += 1
                continue
            if rx[s + 4] != _VER:
                self._skip(ln + 8)  # another protocol version: dropped whole
                continue
            return ln

    # -- serial output
    def _send(self, typ, seq, payload, tagged, f=None, n=0):
        # One frame, written in pieces (no frame-sized buffer): the payload is `payload`, or
        # n bytes read from file f in small chunks (READ).
        plen = len(payload) if f is None else n
        ln = _HEAD + plen + (_TAG if tagged else 0)
        h = self._hdr
        h[0] = _MAGIC0
        h[1] = _MAGIC1
        h[2] = ln & 0xFF
        h[3] = ln >> 8
        h[4] = _VER
        h[5] = typ
        struct.pack_into("<I", h, 6, seq)
        hv = memoryview(h)
        out = self._out
        crc = crc32(hv[2:10])
        m = None
        mac = self._mac
        if tagged and mac is not None:
            m = mac.start(b"B")
            m.update(hv[4:10])
        out.write(h)
        if f is None:
            crc = crc32(payload, crc)
            if m is not None:
                m.update(payload)
            out.write(payload)
        else:
            c = self._chunk
            cv = memoryview(c)
            left = n
            while left > 0:
                k = f.readinto(cv[: left if left < len(c) else len(c)]) or 0
                if k <= 0:
                    break  # cannot happen (the size was checked): a short frame, dropped by the host
                piece = cv[:k]
                crc = crc32(piece, crc)
                if m is not None:
                    m.update(piece)
                out.write(piece)
                left -= k
        if m is not None:
            t = mac.end(m)  # type: ignore
            crc = crc32(t, crc)
            out.write(t)
        struct.pack_into("<I", h, 0, crc)
        out.write(hv[:4])

    def _reply(self, typ, seq, payload, tagged):
        if len(payload) > _MAX_LEN - _HEAD - _TAG:
            typ = T_ERROR
            payload = _dumps({"error": "internal", "msg": "reply too long"}).encode()
        self._send(typ, seq, payload, tagged)

    def _json(self, typ, seq, obj, tagged):
        self._reply(typ, seq, _dumps(obj).encode(), tagged)

    def _error(self, seq, code, msg, tagged):
        self._json(T_ERROR, seq, {"error": code, "msg": msg}, tagged)

    # -- session
    def _end(self):
        self._mac = None
        self._next = 0

    def _hello(self, seq, p):
        self._end()  # any HELLO ends the session, as any hello() does in version 1
        self._nb = None
        if seq != 0:
            self._error(seq, "seq", "HELLO has SEQ 0", False)
            return
        if len(p) != 16:
            self._error(seq, "frame", "HELLO carries a 16-byte nonce", False)
            return
        self._nh = bytes(p)
        nb = os.urandom(16)
        self._nb = nb
        i = self._core().info()
        js = _dumps({"proto": 2, "fw": i["fw"], "id": i["id"],
                     "locked": hostif.is_locked(self.root)}).encode()
        self._reply(T_HELLO | 0x80, 0, nb + js, False)

    def _auth(self, seq, p):
        nb = self._nb
        nh = self._nh
        self._nb = None  # one attempt per nonce, right or wrong
        if seq != 0:
            self._error(seq, "seq", "AUTH has SEQ 0", False)
            return
        secret = self._core().prov.secret()
        if secret is None or nb is None or nh is None:
            self._error(seq, "auth", "no pairing secret or no nonce (send HELLO first)", False)
            return
        bid = self._core().prov.badge_id().encode()
        want = crypto.hmac_sha256(secret, b"tc-auth-v2/host" + nb + nh + bid)
        if len(p) != 32 or not hostif.same(want, p):
            self._error(seq, "auth", "wrong MAC", False)
            return
        mb = crypto.hmac_sha256(secret, b"tc-auth-v2/badge" + nh + nb + bid)
        self._mac = _Mac(crypto.hmac_sha256(secret, b"tc-session-v2" + nb + nh))
        self._next = 1
        self._last = time.ticks_ms()
        self._reply(T_AUTH | 0x80, 0, mb, False)

    async def _handle(self, ln):
        b = self._s + 4  # BODY
        rx = self._rx
        v = self._rxv
        typ = rx[b + 1]
        seq = struct.unpack_from("<I", rx, b + 2)[0]
        if self._mac is not None and time.ticks_diff(time.ticks_ms(), self._last) > _IDLE_MS:
            self._end()
            if typ != T_HELLO:
                self._error(seq, "auth", "session expired", False)
                return
        if typ == T_HELLO:
            self._hello(seq, v[b + _HEAD : b + ln])
            return
        if typ == T_AUTH:
            self._auth(seq, v[b + _HEAD : b + ln])
            return
        mac = self._mac
        if mac is None:
            self._error(seq, "auth", "authenticate first", False)
            return
        if ln < _HEAD + _TAG or not hostif.same(mac.tag(b"H", v[b : b + ln - _TAG]), v[b + ln - _TAG : b + ln]):
            self._end()
            self._error(seq, "auth", "bad TAG", False)
            return
        if seq != self._next:
            self._end()
            self._error(seq, "seq", "expected SEQ %d" % self._next, False)
            return
        self._next += 1
        self._last = time.ticks_ms()
        p = v[b + _HEAD : b + ln - _TAG]
        after = None
        try:
            if typ == T_READ:
                self._read(seq, p)
                return
            if typ == T_EXPORT:
                r = await self._export(p)
            else:
                r, after = self._request(typ, p)
            self._json(typ | 0x80, seq, r, True)
        except Frame as e:
            self._error(seq, "frame", str(e), True)
        except Exception as e:  # noqa: BLE001 - every failure is one error reply
            code, msg = hostif.error_reply(e)
            self._error(seq, code, msg, True)
        finally:
            self._last = time.ticks_ms()  # idle time counts from the end of a (long) request
        if after == "bye" or after == "end":
            self._end()
        elif after == "reset":
            await self._reset()

    def _obj(self, p):
        try:
            d = json.loads(bytes(p).decode())
        except (ValueError, UnicodeError):
            raise ValueError("payload must be JSON")
        if not isinstance(d, dict):
            raise ValueError("payload must be a JSON object")
        return d

    def _request(self, typ, p):
        # The synchronous requests: (reply object, what to do after replying).
        core = self._core()
        if typ == T_STATUS:
            st = core.status()
            gc.collect()
            st["mem_free"] = gc.mem_free()
            return st, None
        if typ == T_SEGMENTS:
            return core.segments(), None
        if typ == T_SET_TIME:
            return core.set_time(self._obj(p).get("unix")), None
        if typ == T_ACK:
            d = self._obj(p)
            return core.ack(d.get("day"), d.get("off")), None
        if typ == T_SET_HEALTH:
            return core.set_health(self._obj(p).get("code")), None
        if typ == T_CONFIGURE:
            return core.configure(self._obj(p)), None
        if typ == T_PROVISION:
            return core.provision(self._obj(p), True), "end"  # a new secret: handshake again
        if typ == T_UNLOCK:
            fsutil.remove(self.root + hostif.LOCK_PATH)
            return {"ok": True}, "reset"
        if typ == T_PUT:
            return self._put(p), None
        if typ == T_COMMIT:
            return self._commit(p), "reset"
        if typ == T_RESET:
            return {"ok": True}, "reset"
        if typ == T_BYE:
            return {"ok": True}, "bye"
        raise Frame("unknown request type 0x%02x" % typ)

    def _read(self, seq, p):
        # READ: <IIH day, offset, n; the bytes go from the file straight into the reply.
        if len(p) != 10:
            raise Frame("READ payload is <IIH")
        day, off, n = struct.unpack("<IIH", p)
        if n > _MAX_READ:
            n = _MAX_READ
        path = self.root + "/log/" + str(day) + ".tcl"
        size = fsutil.size(path)
        if size < 0:
            raise ValueError("no segment for day %d" % day)
        got = size - off if off < size else 0
        if got > n:
            got = n
        with open(path, "rb") as f:
            f.seek(off)
            self._send(T_READ | 0x80, seq, None, True, f, got)

    async def _export(self, p):
        core = self._core()
        wait_ms = core.export_wait_ms(self._obj(p).get("wait_ms", 30000))
        prof = core.prov.profile()
        b = prof.get("button")
        if not b:
            raise hostif.HostError("no-consent", "board has no button")
        if config.strapping_pin(prof, b.get("pin")):
            raise hostif.HostError("no-consent", "consent button on GPIO%s, a strapping pin of the %s: "
                                   "refused (move the button)" % (b.get("pin"), prof.get("chip", "esp32")))
        pin, active = core.button()
        hl = core._health()
        released = 0
        pressed = False
        polls = 0
        start = time.ticks_ms()
        # A press after this request: the button seen released (twice in a row, 40 ms), then
        # pressed. A button held since before the request does not count.
        while time.ticks_diff(time.ticks_ms(), start) <= wait_ms:
            if pin.value() != active:  # type: ignore
                released += 1
            elif released >= 2:
                pressed = True
                break
            else:
                released = 0
            polls += 1
            if polls % _BLINK == 0:
                hl.show("off" if (polls // _BLINK) % 2 else hl.code)
            await asyncio.sleep_ms(_POLL_MS)
        hl.show()
        if not pressed:
            raise hostif.HostError("no-consent", "button not pressed within %d ms" % wait_ms)
        return core.keys()

    def _put(self, p):
        if len(p) < 2:
            raise Frame("PUT payload is <H + JSON + bytes")
        jl = p[0] | (p[1] << 8)
        if 2 + jl > len(p):
            raise Frame("PUT JSON length past the payload")
        d = self._obj(p[2 : 2 + jl])
        path = check_path(d.get("path"))
        off = d.get("off")
        size = d.get("size")
        if not isinstance(off, int) or not isinstance(size, int) or off < 0 or size < 0 or size > _MAX_FILE:
            raise ValueError("off and size must be integers, size at most %d" % _MAX_FILE)
        data = p[2 + jl :]
        if off + len(data) > size:
            raise ValueError("data past size")
        target = self.root + STAGING + "/" + path
        if off == 0:
            fsutil.mkdir(self.root + STAGING)
            _mkdirs(self.root + STAGING, path)
            mode = "wb"
        else:
            have = fsutil.size(target)
            if have != off:
                raise ValueError("off %d but %d bytes staged" % (off, have))
            mode = "ab"
        with open(target, mode) as f:
            f.write(data)
        return {"ok": True}

    def _commit(self, p):
        d = self._obj(p)
        files = d.get("files")
        staging = self.root + STAGING
        try:
            if not isinstance(files, list) or not files:
                raise ValueError("files must be a non-empty list")
            names = []
            buf = self._chunk
            for f in files:
                if not isinstance(f, dict):
                    raise ValueError("files must be objects")
                path = check_path(f.get("path"))
                want = f.get("sha256")
                size = f.get("size")
                staged = staging + "/" + path
                if not isinstance(size, int) or fsutil.size(staged) != size:
                    raise ValueError("%s: size differs from the staged file" % path)
                h = hashlib.sha256()
                with open(staged, "rb") as fh:
                    while True:
                        k = fh.readinto(buf)
                        if not k:
                            break
                        h.update(memoryview(buf)[:k])
                if not isinstance(want, str) or binascii.hexlify(h.digest()).decode() != want.lower():
                    raise ValueError("%s: SHA-256 differs from the staged file" % path)
                names.append(path)
            # main.py moves the listed files into place at the next boot, before it imports
            # anything (so a power cut halfway is finished at the boot after it).
            fsutil.write_atomic(self.root + COMMIT_LIST, "\n".join(names) + "\n")
        except Exception:
            rmtree(staging)
            raise
        return {"ok": True}

    async def _reset(self):
        await asyncio.sleep_ms(_RESET_DELAY_MS)  # the reply leaves the serial port first
        app = self.app
        if app is not None:
            app.shutdown()  # open log records to flash, clock saved
        import machine

        machine.reset()

    # -- the task
    async def run(self):
        self._open()
        while True:
            ln = await self._frame()
            self.frames += 1
            try:
                await self._handle(ln)
            finally:
                self._skip(ln + 8)
            await asyncio.sleep_ms(0)  # a stream of frames never starves the other tasks


def main(root=""):
    # The locked badge's program (main.py): the app with the protocol server; returns only when
    # the app ended (main.py then resets the badge). Everything is compiled first, the garbage
    # of compiling collected, then the long-lived buffers are taken: on the VM badge's
    # ESP32-sized heap, compiling this module after the app's tables exist (or the app after
    # the frame buffer) failed with MemoryError in some layouts.
    try:
        from . import app as tcapp

        gc.collect()
        srv = Server()
        a = tcapp.App(root)
        srv.attach(a)
        tcapp.run_app(a)
    except Exception as e:  # noqa: BLE001 - recorded for the next session, then a reset
        try:
            with open(root + "/tc/crash.txt", "w") as f:
                f.write("main: ")
                sys.print_exception(e, f)  # type: ignore
        except Exception:  # noqa: BLE001
            pass
        raise


def attach(app):
    # Serve the protocol from the app's next run() on (a supervised task, restarted if it fails).
    return Server().attach(app)
