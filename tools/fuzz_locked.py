#!/usr/bin/env python3
"""Fuzz campaign against a locked virtual badge running the real firmware (issue 10).

A badge provisioned with a lock serves only the framed protocol v2 (docs/hostif.md, "Protocol
version 2: locked mode"). This campaign checks that a host WITHOUT the pairing secret gets
nothing out of it through any byte sequence, and that the badge neither crashes nor stops
tracing meanwhile.

Setup: a fleet of two virtual badges (backend imitation or vm): "alice", provisioned locked
(the target), and "bob", a neighbour in developer mode. Both trace (alice's RPIs are heard by
bob, bob's by alice). A legitimate station session (tracecode.station.frames.LockedLink, with
the secret) is run first and its input bytes recorded: the HELLO, the AUTH and tagged
requests become material for replays and mutations.

A seeded generator then mixes, per "frame" (one generated unit):
  (i)   random bytes;
  (ii)  well-formed frames (right MAGIC, LEN and CRC) with random VER / TYPE / SEQ / payload /
        TAG;
  (iii) mutations of the recorded session: the recorded AUTH replayed (alone, or after a
        HELLO with the recorded Nh), HELLO + AUTH with wrong MACs, replayed tagged requests,
        bit flips (CRC fixed up or not), truncations, oversize or lying LEN, SEQ games;
  (iv)  control bytes and REPL entry sequences (Ctrl-A raw REPL, Ctrl-E paste mode, Ctrl-C,
        Ctrl-D, Ctrl-B, raw-paste "\\x05A\\x01", mpremote's "\\r\\x03\\x03", code lines);
written straight into the badge's console input in batches (no socket round trip), with
virtual time run after each batch until the badge has taken every byte.

Checks, on everything the badge wrote during the campaign:
  - every byte belongs to a well-formed frame (MAGIC, LEN, CRC, VER 2): no REPL prompt, no
    traceback, no stray byte;
  - each frame is a HELLO answer (16-byte Nb + exactly {"proto":2,"fw","id","locked":true})
    or an untagged error frame ({"error": auth|seq|frame, "msg": ...}); nothing else (no AUTH
    answer, no request answer);
  - no output contains a TEK of /tc/keys.bin (raw or hex), the pairing secret (raw or hex),
    or 16 bytes of the badge's log;
  - the badge never crashed: same boot count, no /tc/crash.txt, no /tc/tasks.txt, and after
    the campaign the legitimate session's STATUS shows app "running" and task_failures 0;
  - it kept tracing: alice's log and bob's log (alice's RPIs heard) grew during the campaign
    and after it;
  - a legitimate station session with the secret still works after the campaign.

Prints a summary (frames, bytes, outputs parsed, secrets out, crashes, wall time, frames/s);
exits 1 when any check fails.
Usage: tools/fuzz_locked.py [--frames 100000] [--seed 1] [--backend imitation|vm] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from tracecode.station import frames as fr  # noqa: E402

FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
START = 1709280000 + 7 * 3600          # 2024-03-01 07:00 UTC
SECRET = hashlib.sha256(b"fuzz-locked-alice").digest()
BUTTON = 4
ERROR_CODES = {"auth", "seq", "frame"}  # all an unauthenticated host may be told
HELLO_KEYS = {"proto", "fw", "id", "locked"}
REPL_MARKERS = (b">>> ", b"raw REPL", b"Traceback", b"MicroPython v", b"paste mode")


# ---------------------------------------------------------------------------- wire helpers
def crc32(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def wrap(body: bytes) -> bytes:
    """A well-formed frame around any BODY (right LEN and CRC)."""
    head = struct.pack("<H", len(body))
    return fr.MAGIC + head + body + struct.pack("<I", crc32(head + body))


def body(ver: int, typ: int, seq: int, payload: bytes = b"") -> bytes:
    return bytes([ver & 0xFF, typ & 0xFF]) + struct.pack("<I", seq & 0xFFFFFFFF) + payload


def fix_crc(frame: bytes) -> bytes:
    """Recompute the CRC of a frame whose LEN is right."""
    if len(frame) < 8:
        return frame
    return frame[:-4] + struct.pack("<I", crc32(frame[2:-4]))


# ---------------------------------------------------------------------------- generator
CONTROL = [b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x03\x03", b"\r\x03\x03", b"\r\x01",
           b"\x05A\x01", b"\x01\x05A\x01", b"\r\x03\x03\r\x01\x04", b"\x02\x03\x04",
           b"\x05print(open('/tc/prov.json').read())\x04",
           b"\x01import os\x04", b"\x01print(open('/tc/keys.bin','rb').read())\x04\x04",
           b"\x05A\x01\x80\x00import os;print(os.listdir('/tc'))\x04",
           b"\r\nimport tcbadge.hostif as h\r\n", b"help()\r\n", b"\x04\x04\x04",
           b"\x03" * 10, b"\x1b[A\r", b"\xa7", b"\xa7\x7c", b"\r\n"]
KNOWN_TYPES = [fr.HELLO, fr.AUTH, fr.STATUS, fr.SET_TIME, fr.SEGMENTS, fr.READ, fr.ACK,
               fr.EXPORT, fr.SET_HEALTH, fr.CONFIGURE, fr.PROVISION, fr.UNLOCK, fr.PUT,
               fr.COMMIT, fr.RESET, fr.BYE, 0x81, 0x82, 0x90, 0x93, fr.ERROR, 0x00, 0x7F]


class Generator:
    """Seeded mix of the four families; next() -> (family, bytes). `recorded` holds the
    legitimate session's input frames: {"hello": bytes, "auth": bytes, "requests": [bytes]}."""

    FAMILIES = ("random", "frame", "mutation", "control")
    WEIGHTS = (15, 40, 30, 15)

    def __init__(self, seed: int, recorded: dict):
        self.rnd = random.Random(seed)
        self.rec = recorded
        self.hello = recorded["hello"]
        self.auth = recorded["auth"]
        self.nh = self.hello[4 + 6:4 + 6 + 16]
        self.pool = [recorded["hello"], recorded["auth"]] + list(recorded["requests"])

    def next(self) -> tuple[str, bytes]:
        fam = self.rnd.choices(self.FAMILIES, self.WEIGHTS)[0]
        return fam, getattr(self, "_" + fam)()

    # (i) random bytes (a MAGIC now and then, so the hunter meets candidates)
    def _random(self) -> bytes:
        r = self.rnd
        n = r.choice((1, 2, 4, 8, 16, 32, 64)) if r.random() < 0.7 else r.randrange(1, 400)
        b = bytearray(r.randbytes(n))
        if r.random() < 0.2 and n >= 4:
            i = r.randrange(0, n - 1)
            b[i:i + 2] = fr.MAGIC
        return bytes(b)

    def _payload(self) -> bytes:
        r = self.rnd
        x = r.random()
        if x < 0.45:
            return r.randbytes(r.choice((0, 1, 2, 10, 16, 32, 48)))
        if x < 0.65:
            return json.dumps(r.choice([{}, {"unix": r.randrange(2**33)}, {"day": 1, "off": 0},
                                        {"wait_ms": 1}, {"code": "red"}, {"id": "x", "lock": False},
                                        {"path": "main.py", "off": 0, "size": 1}])).encode()
        if x < 0.985:
            return r.randbytes(r.randrange(0, 160))
        return r.randbytes(r.randrange(160, fr.MAX_BODY - fr.HEADER + 1))

    # (ii) well-formed frames, random fields
    def _frame(self) -> bytes:
        r = self.rnd
        ver = 2 if r.random() < 0.85 else r.randrange(256)
        typ = r.choice(KNOWN_TYPES) if r.random() < 0.7 else r.randrange(256)
        seq = r.choice((0, 0, 1, 2, r.randrange(1, 100), 2**32 - 1, r.randrange(2**32)))
        if typ == fr.HELLO and r.random() < 0.6:
            p = r.randbytes(16 if r.random() < 0.8 else r.choice((0, 15, 17, 64)))
        elif typ == fr.AUTH and r.random() < 0.6:
            p = r.randbytes(32 if r.random() < 0.8 else r.choice((0, 31, 33)))
        else:
            p = self._payload()
        if r.random() < 0.5:
            p += r.randbytes(fr.TAG_LEN)
        b = body(ver, typ, seq, p)[:fr.MAX_BODY]
        return wrap(b)

    # (iii) the recorded session, mutated
    def _mutation(self) -> bytes:
        r = self.rnd
        k = r.randrange(12)
        fresh_hello = wrap(body(2, fr.HELLO, 0, r.randbytes(16)))
        if k == 0:      # the recorded AUTH replayed as is (its Nb was used long ago)
            return self.auth
        if k == 1:      # HELLO with the recorded Nh, then the recorded AUTH (a new Nb: fails)
            return self.hello + self.auth
        if k == 2:      # HELLO + AUTH with a wrong MAC (random, or the recorded one)
            mac = r.randbytes(32) if r.random() < 0.5 else self.auth[10:42]
            return fresh_hello + wrap(body(2, fr.AUTH, 0, mac))
        if k == 3:      # HELLO, AUTH with a wrong MAC, then the recorded AUTH (nonce used up)
            return (fresh_hello + wrap(body(2, fr.AUTH, 0, r.randbytes(32))) + self.auth)
        if k == 4:      # replayed tagged requests (old session key, old SEQs)
            reqs = self.rec["requests"]
            return b"".join(r.sample(reqs, r.randint(1, len(reqs))))
        if k == 5:      # HELLO + replayed requests (no AUTH)
            return self.hello + b"".join(self.rec["requests"])
        f = bytearray(r.choice(self.pool))
        if k == 6:      # bit flips, CRC fixed up half the time
            for _ in range(r.randint(1, 4)):
                i = r.randrange(len(f))
                f[i] ^= 1 << r.randrange(8)
            return fix_crc(bytes(f)) if r.random() < 0.5 else bytes(f)
        if k == 7:      # truncation, sometimes followed by a whole (fresh) HELLO
            cut = bytes(f[:r.randrange(1, len(f))])
            return cut + (fresh_hello if r.random() < 0.5 else b"")
        if k == 8:      # oversize LEN (past 4200), or a LEN that lies about the body
            if r.random() < 0.5:
                ln = r.randrange(fr.MAX_BODY + 1, 65536)
            else:
                ln = max(0, len(f) - 8 + r.choice((-3, -1, 1, 2, 16, 300)))
            f[2:4] = struct.pack("<H", ln & 0xFFFF)
            return bytes(f)
        if k == 9:      # SEQ games: the recorded frame with another SEQ, CRC fixed
            f[6:10] = struct.pack("<I", r.choice((0, 1, 2, 3, 2**31, 2**32 - 1)))
            return fix_crc(bytes(f))
        if k == 10:     # another TYPE on a recorded body (tagged request as AUTH, AUTH as STATUS)
            f[5] = r.choice(KNOWN_TYPES)
            return fix_crc(bytes(f))
        # k == 11: a recorded frame under another VER, or glued to garbage
        if r.random() < 0.5:
            f[4] = r.choice((0, 1, 3, 0x82, 0xFF))
            return fix_crc(bytes(f))
        return r.randbytes(r.randrange(1, 8)) + bytes(f)

    # (iv) control bytes and REPL entry
    def _control(self) -> bytes:
        r = self.rnd
        seq = b"".join(r.choice(CONTROL) for _ in range(r.randint(1, 3)))
        if r.random() < 0.3:    # a REPL sequence glued to a frame
            seq += self._frame()
        return seq


# ---------------------------------------------------------------------------- checker
class Checker:
    """Everything the badge wrote to an unauthenticated host, parsed strictly.

    `secrets`: {label: bytes} searched raw and as hex in the whole output; `log_windows`: the
    set of 16-byte windows of the badge's log files, searched in every frame's payload."""

    def __init__(self, badge_id: str, fw: str | None, secrets: dict[str, bytes],
                 log_windows: set[bytes]):
        self.badge_id = badge_id
        self.fw = fw
        self.secrets = secrets
        self.log_windows = log_windows
        self.frames = 0
        self.hello_replies = 0
        self.error_replies = 0
        self.unparsed_bytes = 0
        self.violations: list[str] = []
        self.secrets_out = 0

    def _bad(self, msg: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(msg)

    def _leak(self, what: str) -> None:
        self.secrets_out += 1
        self._bad("SECRET OUT: " + what)

    def check(self, out: bytes) -> "Checker":
        low = out.lower()
        for label, s in self.secrets.items():
            for form, needle, hay in (("raw", s, out), ("hex", s.hex().encode(), low)):
                n = hay.count(needle)
                if n:
                    self.secrets_out += n - 1
                    self._leak(f"{label} ({form}) x{n}")
        for m in REPL_MARKERS:
            if m in out:
                self._bad(f"REPL output {m!r}")
        i = 0
        n = len(out)
        while i < n:
            ln = struct.unpack_from("<H", out, i + 2)[0] if i + 4 <= n else -1
            total = 8 + ln
            if (out[i:i + 2] != fr.MAGIC or not fr.HEADER <= ln <= fr.MAX_BODY or i + total > n
                    or struct.unpack_from("<I", out, i + 4 + ln)[0] != crc32(out[i + 2:i + 4 + ln])
                    or out[i + 4] != fr.VERSION):
                # not a frame: count the bytes up to the next MAGIC
                j = out.find(fr.MAGIC, i + 1)
                j = n if j < 0 else j
                self.unparsed_bytes += j - i
                self._bad(f"unparsed output at {i}: {out[i:min(j, i + 40)]!r}")
                i = j
                continue
            self._frame(out[i + 5], struct.unpack_from("<I", out, i + 6)[0],
                        out[i + 10:i + 4 + ln])
            i += total
        return self

    def _scan_log(self, p: bytes, what: str) -> None:
        lw = self.log_windows
        for k in range(0, len(p) - 15):
            if p[k:k + 16] in lw:
                self._leak(f"16 log bytes in {what}")
                return

    def _frame(self, typ: int, seq: int, p: bytes) -> None:
        self.frames += 1
        if typ == fr.HELLO | fr.REPLY:
            self.hello_replies += 1
            if seq != 0 or len(p) < 16:
                self._bad(f"HELLO reply seq {seq} len {len(p)}")
                return
            self._scan_log(p[:16], "a HELLO nonce")
            try:
                doc = json.loads(p[16:])
            except ValueError:
                self._bad(f"HELLO reply not JSON: {p[16:80]!r}")
                self._scan_log(p, "a HELLO reply")
                return
            if (not isinstance(doc, dict) or set(doc) != HELLO_KEYS or doc["proto"] != 2
                    or doc["id"] != self.badge_id or doc["locked"] is not True
                    or (self.fw is not None and doc["fw"] != self.fw)):
                self._bad(f"HELLO reply tells more or else: {doc!r}"[:200])
            return
        if typ == fr.ERROR:
            self.error_replies += 1
            try:
                doc = json.loads(p)           # untagged: the whole payload is the JSON
            except ValueError:
                self._bad(f"error frame not JSON (tagged?): {p[:80]!r}")
                self._scan_log(p, "an error frame")
                return
            if (not isinstance(doc, dict) or set(doc) != {"error", "msg"}
                    or doc["error"] not in ERROR_CODES or not isinstance(doc["msg"], str)
                    or len(doc["msg"]) > 200):
                self._bad(f"unexpected error frame: {doc!r}"[:200])
            self._scan_log(p, "an error frame")
            return
        self._bad(f"frame type 0x{typ:02x} to an unauthenticated host ({len(p)} bytes)")
        self._scan_log(p, f"a 0x{typ:02x} frame")

    def summary(self) -> dict:
        return {"outputs_parsed": self.frames, "hello_replies": self.hello_replies,
                "error_replies": self.error_replies, "unparsed_bytes": self.unparsed_bytes,
                "secrets_out": self.secrets_out, "violations": list(self.violations)}


def log_windows(segments: dict) -> set[bytes]:
    w: set[bytes] = set()
    for data in segments.values():
        for k in range(16, len(data) - 15):     # past the file header
            w.add(bytes(data[k:k + 16]))
    return w


def tek_list(raw: bytes) -> list[bytes]:
    """The 16-byte TEKs of /tc/keys.bin (20-byte entries: <I interval, TEK)."""
    return [raw[i + 4:i + 20] for i in range(0, len(raw) - 19, 20)]


# ---------------------------------------------------------------------------- the bench
def profile() -> dict:
    p = json.loads((BOARDS / "esp32-devkitc.json").read_text())
    p["chip"] = "esp32"
    p["button"] = {"pin": BUTTON, "active": 0, "pull": "up"}
    return p


def provision(badge, name: str, lock: bool) -> None:
    doc = {"id": name, "board": "esp32-devkitc", "secret": SECRET.hex(), "config": {},
           "profile": profile()}
    badge.flash.write("/tc/prov.json", json.dumps(doc).encode())
    if lock:
        badge.flash.write("/tc/locked", b"1")


def flash_file(badge, path: str) -> bytes | None:
    try:
        if not badge.flash.exists(path):
            return None
        return badge.flash.read(path)
    except (OSError, KeyError, FileNotFoundError):
        return None


def segments(badge) -> dict:
    seg = getattr(badge.flash, "segments", None)
    if seg is not None:
        return dict(seg())
    root = Path(badge.flash.host("/log"))
    return {int(p.stem): p.read_bytes() for p in root.glob("*.tcl")} if root.is_dir() else {}


class Bench:
    def __init__(self, workdir: Path, backend: str, seed: int, warm_s: float,
                 firmware: str | Path | None = None):
        from tracecode import sim

        fw = str(firmware or FIRMWARE)
        self.fleet = sim.Fleet(workdir=workdir, seed=seed, start_unix=START, backend=backend)
        self.backend = backend
        self.alice = self.fleet.add_badge("alice", firmware_dir=fw, position=(0.0, 0.0),
                                          board="esp32-devkitc")
        self.bob = self.fleet.add_badge("bob", firmware_dir=fw, position=(1.0, 0.0),
                                        board="esp32-devkitc")
        provision(self.alice, "alice", lock=True)
        provision(self.bob, "bob", lock=False)
        self.fleet.power_on_all()
        self.alice.set_clock()
        self.bob.set_clock()
        self.fleet.run_for(warm_s)
        con = self.alice.console
        self.con = con
        self._feed = con.feed
        self._note = con._note_frames
        self.recorded_in = bytearray()       # host -> badge during legitimate sessions
        self.capture: bytearray | None = None
        self._write = con.write

        def feed(data, _orig=self._feed):
            if self.capture is None:
                self.recorded_in += data
            _orig(data)

        def write(data, _orig=self._write):
            if self.capture is not None and data and self.alice.powered:
                self.capture += data
            _orig(data)

        con.feed = feed
        con.write = write

    # -- legitimate station sessions (the real station code, with the secret)
    def station_session(self) -> dict:
        link = fr.LockedLink(self.alice.console_url(), timeout_s=20.0, hello_timeout_s=10.0)
        link.open()
        try:
            link.auth(SECRET)
            st = link.status()
            segs = link.segments()
        finally:
            link.close()
        return {"hello": dict(link.hello), "status": st, "segments": segs}

    def record_session(self) -> dict:
        """A legitimate session, its host frames recorded: HELLO, AUTH, tagged requests."""
        self.recorded_in.clear()
        res = self.station_session()
        got = fr.decode_all(bytes(self.recorded_in))
        wire = [fr.encode(f.type, f.seq, f.body) for f in got]   # body holds PAYLOAD + TAG
        hello = [w for w, f in zip(wire, got) if f.type == fr.HELLO]
        auth = [w for w, f in zip(wire, got) if f.type == fr.AUTH]
        reqs = [w for w, f in zip(wire, got) if f.type not in (fr.HELLO, fr.AUTH)]
        if not hello or not auth or not reqs:
            raise RuntimeError("the recorded station session lacks HELLO, AUTH or requests")
        res["recorded"] = {"hello": hello[-1], "auth": auth[-1], "requests": reqs}
        return res

    # -- feeding the console directly
    def pending(self) -> int:
        """Input bytes the badge has not taken yet (imitation: its console buffer; VM: the
        bytes still in the pipe to the VM's stdin)."""
        buf = getattr(self.con, "_in", None)
        if buf is not None:
            return len(buf)
        p = getattr(self.alice, "_proc", None)
        if p is None or p.stdin is None:
            return 0
        import fcntl
        import termios
        n = bytearray(4)
        try:
            fcntl.ioctl(p.stdin.fileno(), termios.FIONREAD, n)
        except OSError:
            return 0
        return struct.unpack("<i", bytes(n))[0]

    def feed(self, data: bytes, step_s: float) -> float:
        """Write `data` into the console input and run virtual time until the badge took it
        (and any frame it cut short timed out). -> virtual seconds run."""
        run = 0.0
        if self.backend == "vm":
            # the VM's stdin is a pipe: write in pieces it holds, run time in between
            for i in range(0, len(data), 16384):
                self._feed(data[i:i + 16384])
                self.fleet.run_for(0.05)
                run += 0.05
        else:
            self._feed(data)
        while True:
            self.fleet.run_for(step_s)
            run += step_s
            if self.pending() == 0:
                break
            if run > 600:
                raise RuntimeError(f"the badge stopped reading its console "
                                   f"({self.pending()} bytes pending after {run:.0f} s)")
        return run

    def close(self) -> None:
        self.fleet.close()


# ---------------------------------------------------------------------------- campaign
def campaign(frames: int, seed: int, backend: str, batch: int = 2000, min_virtual_s: float = 1800.0,
             warm_s: float = 900.0, workdir: str | None = None, plant: bytes | None = None,
             progress=None, firmware: str | Path | None = None) -> dict:
    """Run the campaign -> a summary dict ("ok": every check passed). `plant`: bytes
    appended to the captured output before it is checked (to prove the checker catches
    them)."""
    t_setup = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="fuzz-locked-") if workdir is None else None
    wd = Path(workdir or tmp.name)
    bench = Bench(wd, backend, seed, warm_s, firmware)
    res: dict = {"backend": backend, "seed": seed, "failures": []}
    fail = res["failures"]
    try:
        a, b = bench.alice, bench.bob
        first = bench.record_session()
        hello = first["hello"]
        if not hello.get("locked"):
            raise RuntimeError("alice is not locked: %r" % hello)
        keys_before = flash_file(a, "/tc/keys.bin") or b""
        boots = a.boots
        rec_a0, rec_b0 = a.log_records(), b.log_records()
        setup_s = time.monotonic() - t_setup

        step_s = max(1.0, min_virtual_s / max(1, -(-frames // batch)))
        gen = Generator(seed, first["recorded"])
        fams = dict.fromkeys(Generator.FAMILIES, 0)
        sent = 0
        nbytes = 0
        vtime = 0.0
        mid = None
        bench.capture = bytearray()
        bench.con._note_frames = lambda data, incoming: None   # virtual time runs only here
        t0 = time.monotonic()
        try:
            while sent < frames:
                n = min(batch, frames - sent)
                parts = []
                for _ in range(n):
                    fam, data = gen.next()
                    fams[fam] += 1
                    parts.append(data)
                data = b"".join(parts)
                vtime += bench.feed(data, step_s)
                sent += n
                nbytes += len(data)
                if mid is None and sent >= frames // 2:
                    mid = (a.log_records(), b.log_records())
                if progress:
                    progress(sent, nbytes, time.monotonic() - t0)
            # the last replies (VM: the output pump runs in a thread)
            last = -1
            while len(bench.capture) != last:
                last = len(bench.capture)
                bench.fleet.run_for(0.5)
                vtime += 0.5
                time.sleep(0.05 if backend == "vm" else 0)
        finally:
            bench.con._note_frames = bench._note
        wall = time.monotonic() - t0
        out = bytes(bench.capture)
        bench.capture = None
        rec_a1, rec_b1 = a.log_records(), b.log_records()
        if mid is None:
            mid = (rec_a1, rec_b1)

        # after the campaign: tracing goes on, and a legitimate session works
        bench.fleet.run_for(600)
        rec_a2, rec_b2 = a.log_records(), b.log_records()
        after = bench.record_session()
        st = after["status"]
        stats = st.get("stats") or {}
        host_task = (stats.get("tasks") or {}).get("host") or {}
        keys_after = flash_file(a, "/tc/keys.bin") or b""
        teks = {("TEK#%d" % i): k for i, k in enumerate(dict.fromkeys(
            tek_list(keys_before) + tek_list(keys_after)))}
        secrets = dict(teks)
        secrets["pairing secret"] = SECRET
        crash = flash_file(a, "/tc/crash.txt")
        tasks_txt = flash_file(a, "/tc/tasks.txt")
        checker = Checker("alice", hello.get("fw"), secrets, log_windows(segments(a)))
        checker.check(out + (plant or b""))
        crashes = (a.boots - boots) + (1 if crash else 0) + int(stats.get("task_failures") or 0)

        res.update({
            "frames": sent, "families": fams, "bytes": nbytes, "wall_s": round(wall, 2),
            "frames_per_s": round(sent / wall, 1) if wall else None,
            "bytes_per_s": round(nbytes / wall) if wall else None,
            "virtual_s": round(vtime, 1), "setup_s": round(setup_s, 1),
            "output_bytes": len(out), **checker.summary(),
            "teks_checked": len(teks), "log_bytes_checked": sum(len(s) for s in segments(a).values()),
            "crashes": crashes, "boots_during": a.boots - boots, "crash_txt": (crash or b"")[:300].decode("latin-1"),
            "tasks_txt": (tasks_txt or b"")[:300].decode("latin-1"),
            "host_task": host_task, "app_after": st.get("app"), "running_after": st.get("running"),
            "log_records": {"alice": [rec_a0, mid[0], rec_a1, rec_a2],
                            "bob": [rec_b0, mid[1], rec_b1, rec_b2]},
            "session_after": {"id": after["hello"].get("id"), "status_id": st.get("id"),
                              "segments": len(after["segments"])},
        })
        if checker.secrets_out:
            fail.append(f"{checker.secrets_out} secrets out")
        if checker.violations:
            fail.append(f"{len(checker.violations)}+ output violations")
        if crashes:
            fail.append(f"{crashes} crashes (boots {a.boots - boots}, crash.txt "
                        f"{bool(crash)}, task failures {stats.get('task_failures')})")
        if tasks_txt:
            fail.append("a task failed: " + tasks_txt[:200].decode("latin-1"))
        if st.get("app") != "running" or st.get("running") is not True:
            fail.append(f"app {st.get('app')!r} running {st.get('running')!r} after the campaign")
        if not (rec_b1 > rec_b0 and rec_b2 > rec_b1):
            fail.append(f"bob stopped hearing alice: {res['log_records']['bob']}")
        if not (rec_a1 > rec_a0 and rec_a2 > rec_a1):
            fail.append(f"alice stopped tracing: {res['log_records']['alice']}")
        if st.get("id") != "alice":
            fail.append("the legitimate session after the campaign failed")
        if checker.frames == 0 and sent >= 100:
            fail.append("the badge answered nothing (the campaign reached no frame parser)")
    except Exception as e:  # noqa: BLE001 - a failure of the bench is a failure of the run
        fail.append(f"{type(e).__name__}: {e}")
    finally:
        bench.close()
        if tmp is not None:
            tmp.cleanup()
    res["ok"] = not fail
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=("imitation", "vm"), default="imitation")
    ap.add_argument("--batch", type=int, default=2000, help="frames per console write")
    ap.add_argument("--json", action="store_true", help="the summary as JSON")
    ap.add_argument("--workdir", default=None, help="keep the fleet here (default: a temp dir)")
    ap.add_argument("--firmware", default=None, help="firmware folder (default: firmware/)")
    a = ap.parse_args(argv)

    def progress(sent, nbytes, wall):
        if not a.json and sent % (a.batch * 10) == 0:
            print(f"  {sent} frames, {nbytes} bytes, {wall:.1f} s", file=sys.stderr, flush=True)

    res = campaign(a.frames, a.seed, a.backend, batch=a.batch, workdir=a.workdir,
                   progress=progress, firmware=a.firmware)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"fuzz_locked: backend {res['backend']}, seed {res['seed']}")
        if "frames" in res:
            print(f"  frames sent      {res['frames']} {res['families']}")
            print(f"  bytes sent       {res['bytes']}")
            print(f"  outputs parsed   {res['outputs_parsed']} frames ({res['hello_replies']} "
                  f"HELLO answers, {res['error_replies']} errors), {res['unparsed_bytes']} "
                  f"unparsed bytes of {res['output_bytes']}")
            print(f"  secrets out      {res['secrets_out']} ({res['teks_checked']} TEKs, the "
                  f"pairing secret, {res['log_bytes_checked']} log bytes checked)")
            print(f"  crashes          {res['crashes']} (boots {res['boots_during']}, host task "
                  f"{res['host_task'].get('crashes')} crashes)")
            print(f"  tracing          alice log {res['log_records']['alice']}, bob log "
                  f"{res['log_records']['bob']} (start, mid, end, +600 s)")
            print(f"  session after    {res['session_after']}")
            print(f"  wall time        {res['wall_s']} s ({res['virtual_s']} s virtual, setup "
                  f"{res['setup_s']} s), {res['frames_per_s']} frames/s, {res['bytes_per_s']} B/s")
            for v in res["violations"][:20]:
                print("  !", v)
        for f in res["failures"]:
            print("  FAIL", f)
        print("  OK" if res["ok"] else "  FAILED")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
