"""The station side of host protocol version 2 (locked badges, docs/hostif.md).

Part 1: the frame codec and `LockedLink` against frames built here from the spec with
struct/zlib/hmac (not with the code under test), served by a small fake badge on a socket:
handshake, an impostor, pipelined reads, bad CRCs, garbage, a session lost mid-read.
Part 2: the station workflow against virtual badges running the real firmware in locked mode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import socket
import struct
import threading
import time
import zlib

import pytest

from tracecode.errors import DeviceError
from tracecode.station import frames
from tracecode.station.link import BadgeRefused

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- spec, by hand
def spec_frame(ftype: int, seq: int, payload: bytes = b"", key: bytes | None = None,
               direction: bytes = b"B") -> bytes:
    body = bytes([2, ftype]) + seq.to_bytes(4, "little") + payload
    if key is not None:
        body += hmac.new(key, direction + bytes([2, ftype]) + seq.to_bytes(4, "little") + payload,
                         hashlib.sha256).digest()[:16]
    ln = len(body).to_bytes(2, "little")
    return b"\xa7\x7c" + ln + body + (zlib.crc32(ln + body) & 0xFFFFFFFF).to_bytes(4, "little")


def spec_parse(buf: bytearray):
    """Pop one frame (type, seq, rest of body) from buf, hunting MAGIC; None if incomplete."""
    while True:
        i = buf.find(b"\xa7\x7c")
        if i < 0:
            del buf[:max(0, len(buf) - 1)]
            return None
        del buf[:i]
        if len(buf) < 4:
            return None
        ln = int.from_bytes(buf[2:4], "little")
        if not 6 <= ln <= 4200:
            del buf[:1]
            continue
        if len(buf) < ln + 8:
            return None
        body = bytes(buf[4:4 + ln])
        if int.from_bytes(buf[4 + ln:8 + ln], "little") != zlib.crc32(bytes(buf[2:4 + ln])):
            del buf[:1]
            continue
        del buf[:ln + 8]
        if body[0] != 2:
            continue
        return body[1], int.from_bytes(body[2:6], "little"), body[6:]


def mac(secret, *parts):
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


class FakeBadge:
    """A locked badge as docs/hostif.md describes it, on socket://127.0.0.1:PORT."""

    def __init__(self, badge_id="tc-fake", secret=b"s" * 32, *, proof_secret=None,
                 log=None, locked=True):
        self.id, self.secret = badge_id, secret
        self.proof_secret = proof_secret or secret      # an impostor proves another secret
        self.locked = locked
        self.log = dict(log or {})                      # day -> bytes
        self.acks: dict[int, int] = {}
        self.health = None
        self.staged: dict[str, bytearray] = {}
        self.installed: dict[str, bytes] = {}
        self.resets = 0
        self.requests: list[tuple[int, int]] = []       # (type, seq) of accepted requests
        self.pipelined = 0
        self.corrupt_reads: set[int] = set()            # READ reply numbers to corrupt
        self.drop_session_at_read: int | None = None    # end the session at this READ
        self.garbage = False
        self.reads = 0
        self.key = None
        self.nb = None
        self.expect = 1
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.url = "socket://127.0.0.1:%d" % self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.srv.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = bytearray()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while (f := spec_parse(buf)) is not None:
                out = self._handle(*f)
                if f[0] == 0x13 and (buf or select.select([conn], [], [], 0)[0]):
                    self.pipelined += 1     # the next request came before this reply left
                if out:
                    if self.garbage:
                        out = b"\xa7\x7c\x40\x10junk\r\n" + os.urandom(20) + out
                    conn.sendall(out)

    def _err(self, seq, code, tagged=True):
        payload = json.dumps({"error": code, "msg": code}, separators=(",", ":")).encode()
        return spec_frame(0xFF, seq, payload, self.key if tagged else None)

    def _handle(self, ftype, seq, rest):
        if ftype == 0x01:
            self.key, self.nb = None, os.urandom(16)
            info = json.dumps({"proto": 2, "fw": "9.9", "id": self.id, "locked": self.locked},
                              separators=(",", ":")).encode()
            self.nh = rest
            return spec_frame(0x81, 0, self.nb + info)
        if ftype == 0x02:
            nb, self.nb = self.nb, None
            if nb is None or not hmac.compare_digest(
                    rest, mac(self.secret, b"tc-auth-v2/host", nb, self.nh, self.id.encode())):
                return self._err(0, "auth", tagged=False)
            self.key = mac(self.secret, b"tc-session-v2", nb, self.nh)
            self.expect = 1
            return spec_frame(0x82, 0, mac(self.proof_secret, b"tc-auth-v2/badge", self.nh, nb,
                                           self.id.encode()))
        if self.key is None:
            return self._err(seq, "auth", tagged=False)
        payload, tag = rest[:-16], rest[-16:]
        want = mac(self.key, b"H", bytes([2, ftype]), seq.to_bytes(4, "little"), payload)[:16]
        if not hmac.compare_digest(tag, want):
            out = self._err(seq, "auth")
            self.key = None
            return out
        if seq != self.expect:
            out = self._err(seq, "seq")
            self.key = None
            return out
        self.expect += 1
        self.requests.append((ftype, seq))
        ok = {"ok": True}
        if ftype == 0x13:
            day, off, n = struct.unpack("<IIH", payload)
            self.reads += 1
            time.sleep(0.005)                      # flash read: pipelined requests queue up
            if self.drop_session_at_read == self.reads:
                self.key = None                    # idle expiry: this request is lost
                self.drop_session_at_read = None
                return b""
            if day not in self.log:
                return self._err(seq, "input")
            frame = spec_frame(0x93, seq, self.log[day][off:off + min(n, 4096)], self.key)
            if self.reads in self.corrupt_reads:
                frame = frame[:40] + bytes([frame[40] ^ 1]) + frame[41:]
            return frame
        if ftype == 0x10:
            reply = {"id": self.id, "fw": "9.9", "running": True, "battery_pct": 80}
        elif ftype == 0x11:
            reply = {"ok": True, "drift_s": 1.5}
        elif ftype == 0x12:
            reply = {"segments": [{"day": d, "size": len(b), "acked": self.acks.get(d, 0),
                                   "v": 1, "gen": None} for d, b in sorted(self.log.items())]}
        elif ftype == 0x14:
            doc = json.loads(payload)
            self.acks[doc["day"]] = max(self.acks.get(doc["day"], 0), doc["off"])
            reply = {"ok": True, "deleted": []}
        elif ftype == 0x16:
            self.health = json.loads(payload)["code"]
            reply = ok
        elif ftype == 0x1A:
            jl = struct.unpack_from("<H", payload)[0]
            doc = json.loads(payload[2:2 + jl])
            data = payload[2 + jl:]
            f = self.staged.setdefault(doc["path"], bytearray())
            f[doc["off"]:doc["off"] + len(data)] = data
            reply = ok
        elif ftype == 0x1B:
            files = json.loads(payload)["files"]
            for f in files:
                got = bytes(self.staged.get(f["path"], b""))
                if len(got) != f["size"] or hashlib.sha256(got).hexdigest() != f["sha256"]:
                    self.staged.clear()
                    return self._err(seq, "input")
            self.installed.update({f["path"]: bytes(self.staged[f["path"]]) for f in files})
            self.resets += 1
            reply = ok
        elif ftype in (0x19, 0x1C, 0x1F):
            if ftype == 0x19:
                self.locked = False
            reply = ok
        else:
            return self._err(seq, "input")
        out = spec_frame(ftype | 0x80, seq, json.dumps(reply).encode(), self.key)
        if ftype in (0x19, 0x1B, 0x1C, 0x1F):
            self.key = None
        return out


@pytest.fixture
def fake():
    made = []

    def make(**kw):
        b = FakeBadge(**kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


# ---------------------------------------------------------------------------- codec
def test_encode_matches_the_spec_byte_for_byte():
    key = os.urandom(32)
    for ftype, seq, payload in [(0x01, 0, os.urandom(16)), (0x13, 7, struct.pack("<IIH", 20000, 16, 4096)),
                                (0x1F, 2**32 - 1, b"")]:
        assert frames.encode(ftype, seq, payload, key if seq else None, b"H") == spec_frame(
            ftype, seq, payload, key if seq else None, b"H")
    with pytest.raises(ValueError):
        frames.encode(0x1A, 1, b"x" * 4200, key)


def test_decoder_hunts_through_garbage_bad_crc_and_other_versions():
    key = os.urandom(32)
    good1 = spec_frame(0x93, 1, b"log bytes", key)
    good2 = spec_frame(0x92, 2, b'{"segments":[]}', key)
    bad = bytearray(good1)
    bad[12] ^= 0xFF                                       # CRC fails
    v3 = bytearray(spec_frame(0x90, 3, b"x"))
    v3[4] = 3                                             # another version, valid CRC
    v3[-4:] = (zlib.crc32(bytes(v3[2:-4])) & 0xFFFFFFFF).to_bytes(4, "little")
    stream = (b"\xa7garbage\xa7\x7c\xff\xff" + bytes(bad) + b"raw REPL\r\n" + good1 + bytes(v3)
              + b"\xa7\x7c" + good2)
    d = frames.Decoder()
    got = []
    for i in range(0, len(stream), 7):                    # byte-wise arrival in pieces
        d.feed(stream[i:i + 7])
        while (f := d.next()) is not None:
            got.append(f)
    assert [(f.type, f.seq) for f in got] == [(0x93, 1), (0x92, 2)]
    assert got[0].open_tagged(key) == b"log bytes"
    assert got[0].open_tagged(os.urandom(32)) is None
    assert d.bad_crc >= 1 and d.other_versions == 1 and d.buf == bytearray()
    # a MAGIC + long LEN in garbage must not swallow a real frame for ever once stalled
    d = frames.Decoder()
    d.feed(b"\xa7\x7c\x00\x10" + good1)
    assert d.next() is None
    assert d.next(stalled=True).seq == 1


def test_handshake_proofs_follow_the_spec():
    s, nb, nh = os.urandom(32), os.urandom(16), os.urandom(16)
    assert frames.host_proof(s, nb, nh, "tc-1") == mac(s, b"tc-auth-v2/host", nb, nh, b"tc-1")
    assert frames.badge_proof(s, nh, nb, "tc-1") == mac(s, b"tc-auth-v2/badge", nh, nb, b"tc-1")
    assert frames.session_key(s, nb, nh) == mac(s, b"tc-session-v2", nb, nh)
    for _ in range(50):   # the probe frame holds no control byte a friendly REPL acts on
        nh, frame = frames.host_nonce_frame()
        assert spec_frame(0x01, 0, nh, direction=b"H") == frame
        assert all(b >= 0x20 and b != 0x7F for b in nh + frame[-4:])


# ---------------------------------------------------------------------------- LockedLink
def test_session_with_the_fake_badge(fake):
    log = {20000: os.urandom(30_000), 20001: os.urandom(4096 * 3)}
    b = fake(log=log)
    with frames.LockedLink(b.url) as link:
        link.window = 4
        assert link.hello["locked"] and link.badge_id == "tc-fake" and link.hello["provisioned"]
        with pytest.raises(DeviceError):
            link.status()                                  # not authenticated: refused locally
        link.auth(b.secret)
        assert link.status()["battery_pct"] == 80
        assert link.set_time(1_700_000_000) == 1.5
        assert [s["day"] for s in link.segments()] == [20000, 20001]
        seen = []
        w0 = link.wire_bytes
        assert link.read_range(20000, 16, 30_000, on_data=seen.append) == log[20000][16:30_000]
        ratio = (30_000 - 16) / (link.wire_bytes - w0)
        assert ratio > 0.98, ratio
        assert sum(seen) == 30_000 - 16
        assert b.pipelined >= 3                            # READs are pipelined
        assert link.read_range(20001, 0, 99_999) == log[20001]     # short reply ends the file
        assert link.read_range(20001, 5000, 5000) == b""
        with pytest.raises(BadgeRefused) as ei:
            link.read_range(12345, 0, 100)                 # unknown day
        assert ei.value.code == "input"
        link.ack(20000, 16 + 32 * 10)
        link.set_health("yellow")
        assert b.acks == {20000: 336} and b.health == "yellow"
    assert b.key is None                                   # closed with BYE
    assert b.requests[-1][0] == 0x1F


def test_impostor_and_wrong_secret_are_refused_without_leaking(fake):
    secret = os.urandom(32)
    b = fake(secret=secret, proof_secret=os.urandom(32))    # accepts our AUTH, cannot prove
    with frames.LockedLink(b.url) as link:
        with pytest.raises(DeviceError) as ei:
            link.auth(secret)
        assert "failed to prove" in str(ei.value) and secret.hex() not in str(ei.value)
        assert not link.authenticated
        with pytest.raises(DeviceError):
            link.segments()
    assert b.requests == []                                 # nothing was asked of it
    b2 = fake(secret=os.urandom(32))                        # does not know our secret
    with frames.LockedLink(b2.url) as link:
        with pytest.raises(BadgeRefused) as ei:
            link.auth(secret)
        assert ei.value.code == "auth" and secret.hex() not in str(ei.value)
        # one AUTH per badge nonce: a second attempt says hello again first
        with pytest.raises(BadgeRefused):
            link.auth(secret)


def test_lost_replies_and_sessions_are_asked_for_again(fake):
    data = os.urandom(4096 * 9 + 100)
    b = fake(log={20000: data})
    b.corrupt_reads = {2, 5}            # two replies fail their CRC on the way
    b.garbage = True                    # and every reply comes after junk with a MAGIC
    with frames.LockedLink(b.url, timeout_s=2.0) as link:
        link.window = 4
        link.auth(b.secret)
        assert link.read_range(20000, 0, len(data)) == data
        assert link.rerequests >= 2 and link.decoder.bad_crc >= 2
        b.drop_session_at_read = b.reads + 3     # the badge forgets the session mid-read
        assert link.read_range(20000, 0, len(data)) == data
        assert link.sessions >= 2
        assert link.status()["id"] == "tc-fake"


def test_firmware_update_and_unlock(fake):
    b = fake()
    files = [("main.py", b"print(1)\n"), ("tcbadge/big.py", os.urandom(10_000))]
    with frames.LockedLink(b.url) as link:
        link.auth(b.secret)
        assert link.put_files(files)["ok"]
    assert b.installed == dict(files) and b.resets == 1
    with frames.LockedLink(b.url) as link:
        link.auth(b.secret)
        link.put_file("main.py", b"other")
        with pytest.raises(BadgeRefused):           # COMMIT with a wrong digest: refused
            link.call(frames.COMMIT, {"files": [{"path": "main.py", "size": 5,
                                                 "sha256": "00" * 32}]}, retry=False)
    with frames.LockedLink(b.url) as link:
        link.auth(b.secret)
        assert link.unlock()["ok"]
    assert not b.locked


def test_no_answer_is_a_clear_error(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    url = "socket://127.0.0.1:%d" % srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError) as ei:
            frames.LockedLink(url, hello_timeout_s=0.5).open()
        assert "no locked-mode" in str(ei.value) and time.monotonic() - t0 < 3
    finally:
        srv.close()
    with pytest.raises(DeviceError) as ei:
        frames.LockedLink(url).open()
    assert "cannot open" in str(ei.value)


# ============================================================================ virtual badges
# The real firmware, provisioned locked by the station code (flasher: "lock": true). Each test
# runs on the imitation in `make test`, and (all but the classroom log) again on badges running
# the real MicroPython VM (littlefs, ESP32-sized heap) in `make test-slow` (which CI runs too).
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tracecode.cli import main  # noqa: E402
from tracecode.station import flasher, logfmt  # noqa: E402
from tracecode.station.db import Database  # noqa: E402
from tracecode.station.link import BadgeLink, open_link  # noqa: E402
from tracecode.station.ports import BadgePort  # noqa: E402
from tracecode.station.sync import sync_badge  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BOARD = "m5stack-atom-lite"     # RGB LED: the health colour can be read back
BUTTON_BOARD = "esp32-devkitc"  # consent button


def _sim():
    return pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not installed")


def _vm_reason():
    try:
        from tracecode.sim.vmbadge import vm_available
    except ImportError as e:
        return "virtual badges (tracecode.sim) not installed: %s" % e
    return vm_available()


VM_TIMEOUT = 600    # a MicroPython VM badge is slower than the imitation (checks unchanged)
# imitation: `make test`; vm: `make test-slow` (marked slow), skipped where the VM cannot run
BACKENDS = ["imitation",
            pytest.param("vm", marks=[pytest.mark.slow, pytest.mark.timeout(VM_TIMEOUT),
                                      pytest.mark.skipif(_vm_reason() is not None,
                                                         reason=str(_vm_reason()))])]


@pytest.fixture(params=BACKENDS)
def fleet(request, tmp_path):
    f = _sim().Fleet(workdir=tmp_path / "fleet", seed=3, start_unix=int(time.time()),
                     backend=request.param)
    yield f
    f.close()


def _is_vm(badge) -> bool:
    return getattr(badge, "backend", "imitation") == "vm"


def put_files(badge, fleet, files: dict[str, bytes]) -> None:
    """Write {path: bytes} onto the badge's flash. The imitation's flash is a host folder,
    written in place as before; a VM badge's littlefs image is only written with the badge
    off (the VM mounts it while powered), so it is switched off, written, booted again."""
    if not _is_vm(badge):
        for path, data in files.items():
            host = Path(badge.flash.root) / path.lstrip("/")
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(data)
        badge.flash.rescan()
        return
    badge.power_cut(at=fleet.clock())
    fleet.run_for(0.1)
    for path, data in files.items():
        badge.flash.write(path, data)
    badge.power_on(at=fleet.clock())
    fleet.run_for(2)                    # booted: main.py runs (locked) again


def flash_read(badge, path: str) -> bytes:
    """A file's bytes from the badge's flash (FileNotFoundError if absent), either backend."""
    if not _is_vm(badge):
        return (Path(badge.flash.root) / path.lstrip("/")).read_bytes()
    return badge.flash.read(path)


def flash_exists(badge, path: str) -> bool:
    if not _is_vm(badge):
        return (Path(badge.flash.root) / path.lstrip("/")).exists()
    return badge.flash.exists(path)


def provision_locked(fleet, db, name, board=BOARD, **kw):
    badge = fleet.add_badge(name, board=board, **kw)
    badge.power_on()
    url = badge.console_url()
    opts = flasher.FlashOptions(board=flasher.Board.load(board), skip_image=True,
                                aioble_mip=False, now=fleet.unix_time, lock=True)
    bid = flasher.flash_badge(BadgePort(url), opts, db)["badge_id"]
    link = open_link(url)
    try:
        assert isinstance(link, frames.LockedLink) and link.hello["locked"], link.hello
    finally:
        link.close()
    return badge, url, bid


def fill_log(badge, fleet, days=3, per_day=50, seed=1):
    rnd = random.Random(seed)
    today = int(fleet.unix_time()) // 86400
    files = {}
    want = set()
    for di, day in enumerate(range(today - days, today)):
        recs = [logfmt.encode_record(rnd.randbytes(16), rnd.randbytes(4), 600 * i + di, 5, 3,
                                     -80, -60, -70) for i in range(per_day)]
        want |= set(recs)
        files[f"/log/{day}.tcl"] = logfmt.encode_header(day) + b"".join(recs)
    put_files(badge, fleet, files)
    return want


def stored(db, bid):
    return {bytes(r["raw"]) for r in db.encounters(bid)}


def log_files(badge):
    if not _is_vm(badge):
        d = Path(badge.flash.root) / "log"
        return sorted(p.name for p in d.glob("*.tcl")) if d.exists() else []
    return sorted(p[5:] for p, n in badge.flash.files().items()
                  if n >= 0 and p.startswith("/log/") and p.endswith(".tcl") and "/" not in p[5:])


def test_locked_sync_acks_after_commit_and_survives_unplugs(fleet, db):
    badge, url, bid = provision_locked(fleet, db, "alice")
    want = fill_log(badge, fleet, days=3, per_day=300)
    with pytest.raises(Exception):            # the raw REPL is gone: Ctrl-C is just a byte
        BadgeLink(url, timeout_s=2).open()
    for cut in (150, 3_000, 25_000):
        badge.console.disconnect_after(cut)
        with pytest.raises(DeviceError):
            sync_badge(db, url, now=fleet.unix_time)
        badge.console.disconnect_after(None)
        assert db.encounter_count(bid) == 0    # nothing half-committed
        assert len(log_files(badge)) == 3      # nothing acknowledged, nothing freed

    class UnplugBeforeAck(frames.LockedLink):
        def ack(self, day, offset):
            badge.console.disconnect()
            return super().ack(day, offset)

    with pytest.raises(DeviceError):
        sync_badge(db, url, now=fleet.unix_time, link_factory=UnplugBeforeAck)
    assert stored(db, bid) == want             # committed, not yet acknowledged
    assert len(log_files(badge)) == 3
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.ok and rep.protocol == 2
    assert rep.records_new == 0 and rep.records_dup == 0 and len(rep.acked) == 3
    assert stored(db, bid) == want and log_files(badge) == []
    rep = sync_badge(db, url, now=fleet.unix_time)          # idempotent
    assert rep.ok and rep.records_new == 0 and rep.acked == {}
    statuses = [s["status"] for s in db.sessions(bid)]
    assert statuses[-2:] == ["ok", "ok"] and statuses.count("failed") >= 2
    assert db.check()["ok"]


# Imitation only: a VM badge reboots to take files; that boot's 14-day retention deletes today-14
@pytest.mark.parametrize("fleet", ["imitation"], indirect=True)
def test_classroom_log_syncs_at_payload_wire_above_095(fleet, db):
    """14 school days of a classroom (log v2, ~620 KB): the ratio of a real sync."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_sync
    finally:
        sys.path.remove(str(ROOT / "tools"))
    badge, url, bid = provision_locked(fleet, db, "bench", board="esp32-devkitc",
                                       flash_size=8 * 1024 * 1024)
    today = int(fleet.unix_time()) // 86400
    payload, rows = bench_sync.write_log(Path(badge.flash.root), today, 14, "classroom")
    badge.flash.rescan()
    rep = sync_badge(db, url, now=fleet.unix_time)
    assert rep.ok and rep.protocol == 2
    assert rep.payload_bytes == payload > 500_000 and rep.records_new == rows
    assert rep.ratio >= 0.95, rep.ratio
    assert len(rep.acked) == 14 and log_files(badge) == []


def test_status_and_health_code_on_a_locked_badge(fleet, db, capsys):
    badge, url, bid = provision_locked(fleet, db, "erin")
    rc = main(["db", "set-health", "--db", str(db.path), bid, "yellow"])
    assert rc == 0
    capsys.readouterr()
    rc = main(["sync", "--db", str(db.path), "--port", url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out[0]["health_set"] == "yellow" and out[0]["protocol"] == 2
    profile = json.loads((flasher.DEFAULT_BOARDS_DIR / f"{BOARD}.json").read_text())
    pin = profile["led"]["pin"]
    assert tuple(badge.led()["neopixel"][pin][0]) == tuple(profile["led"]["colours"]["yellow"])
    rc = main(["status", "--db", str(db.path), "--port", url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    row = next(r for r in out["badges"] if r["badge_id"] == bid)
    assert row["mode"] == "locked" and row["running"] is True
    assert row["health"] == "yellow" and row["health_shown"] == "yellow" and row["fw"]
    # a station that does not hold the badge's secret learns its id and firmware only
    with Database(db.path.parent / "other.sqlite") as other:
        pass
    rc = main(["status", "--db", str(other.path), "--port", url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 4 and out["badges"][0]["badge_id"] == bid
    assert out["badges"][0]["error"].startswith("unknown badge")
    assert out["badges"][0].get("running") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_diagnose_with_consent_on_a_locked_badge(db, tmp_path, capsys, backend):
    from tracecode.export import generate_signing_key, load_batch

    fleet = _sim().Fleet(workdir=tmp_path / "fleet", seed=4, start_unix=int(time.time()) - 130000,
                         backend=backend)
    try:
        badge, url, bid = provision_locked(fleet, db, "grace", board=BUTTON_BOARD)
        fleet.run_for(86400)
        raw = flash_read(badge, "/tc/keys.bin")
        teks = {int.from_bytes(raw[i:i + 4], "little"): raw[i + 4:i + 20]
                for i in range(0, len(raw), 20)}
        priv, pub = generate_signing_key(tmp_path / "keys")
        args = ["diagnose", "--badge", bid, "--port", url, "--db", str(db.path), "--out",
                str(tmp_path / "out"), "--signing-key", str(priv), "--json"]
        # virtual time runs at wall-clock speed during the session (docs/sim.md): the badge's
        # waits (EXPORT's button, the delay before a reset) need no help from the test
        badge.press_button(duration=20)                 # held since BEFORE the request: no
        rc = main(args + ["--wait", "2"])               # consent
        cap = capsys.readouterr()
        assert rc == 5 and "no consent" in cap.err and db.diagnosed_keys() == [], cap.err
        fleet.run_for(20)
        # the wearer presses once asked (the prompt comes just before the request)
        from tracecode.station.diagnose import diagnose
        res = diagnose(db, url, bid, out_dir=tmp_path / "out", signing_key=priv, wait_s=10,
                       prompt=lambda text: badge.press_button(after=2.0))
        cap = capsys.readouterr()
        batch = load_batch(res["file"], pubkeys=[pub])
        got = {k.rolling_start_interval_number: k.key_data for k in batch.keys}
        assert len(got) >= 2 and all(teks.get(r) == k for r, k in got.items())
        assert db.current_health(bid)["code"] == "red"
        for tek in teks.values():
            assert tek.hex() not in cap.err + cap.out.replace(res["file"], "")
    finally:
        fleet.close()


def test_maintenance_unlock_then_relock(fleet, db, capsys):
    badge, url, bid = provision_locked(fleet, db, "ivan")
    want = fill_log(badge, fleet, days=1, per_day=20)
    rc = main(["unlock", url, "--db", str(db.path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["unlocked"] and doc["mode"] == "developer" and doc["badge_id"] == bid
    with BadgeLink(url) as link:                      # the raw REPL answers again
        assert link.hello["provisioned"] and link.badge_id == bid
        link.auth(db.secret(bid))
    rep = sync_badge(db, url, now=fleet.unix_time)    # developer mode: protocol 1, same data
    assert rep.ok and rep.protocol == 1 and stored(db, bid) == want
    rc = main(["unlock", url, "--db", str(db.path)])
    assert rc == 0 and "already in developer mode" in capsys.readouterr().out
    # flashing again (same station) locks it, keeping its pairing
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(db.path)])
    assert rc == 0, capsys.readouterr().err
    link = open_link(url)
    try:
        assert isinstance(link, frames.LockedLink)
        link.auth(db.secret(bid))
    finally:
        link.close()
    # flashing files onto a locked badge: told to unlock it first, nothing written
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(db.path)])
    err = capsys.readouterr().err
    assert rc == 4 and "is locked" in err and "tracecode unlock" in err, err
    # a stranger's database can neither unlock nor re-flash it
    with Database(db.path.parent / "stranger.sqlite") as other:
        other.add_badge(bid, BOARD, os.urandom(32))
    rc = main(["unlock", url, "--db", str(other.path)])
    err = capsys.readouterr().err
    assert rc == 4 and "refused this station" in err and db.secret(bid).hex() not in err
    rc = main(["flash", "--board", BOARD, "--skip-image", "--no-aioble", "--port", url,
               "--db", str(db.path.parent / "nobody.sqlite")])
    err = capsys.readouterr().err
    assert rc == 4 and "paired with another station" in err, err
    link = open_link(url)                              # still locked, still paired with us
    try:
        assert isinstance(link, frames.LockedLink)
        link.auth(db.secret(bid))
    finally:
        link.close()


def test_firmware_update_over_the_locked_protocol(fleet, db, tmp_path, capsys):
    import shutil

    badge, url, bid = provision_locked(fleet, db, "judy")
    want = fill_log(badge, fleet, days=2, per_day=40)
    fw = tmp_path / "fw"
    shutil.copytree(flasher.DEFAULT_FIRMWARE_DIR, fw,
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = fw / "tcbadge" / "__init__.py"
    old = flasher.DEFAULT_FIRMWARE_DIR / "tcbadge" / "__init__.py"
    init.write_text(old.read_text().replace('VERSION = "', 'VERSION = "9.9.9-', 1))
    rc = main(["update", url, "--firmware", str(fw), "--db", str(db.path), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    doc = json.loads(cap.out)
    assert doc["fw_after"].startswith("9.9.9-") and doc["fw_before"] != doc["fw_after"]
    assert flash_read(badge, "/tcbadge/__init__.py") == init.read_bytes()
    assert not flash_exists(badge, "/fw.new")
    rep = sync_badge(db, url, now=fleet.unix_time)    # still locked, still paired, log kept
    assert rep.ok and rep.protocol == 2 and stored(db, bid) == want
    assert db.badge(bid)["fw_version"].startswith("9.9.9-")


def test_impostor_and_strangers_are_refused(fleet, db, fake, tmp_path):
    badge, url, bid = provision_locked(fleet, db, "mallory-target")
    fill_log(badge, fleet, days=1, per_day=10)
    secret = db.secret(bid)
    # a badge that knows the id and accepts our AUTH, but cannot prove the secret
    imp = fake(badge_id=bid, secret=secret, proof_secret=os.urandom(32), log={19000: b"x" * 100})
    with pytest.raises(DeviceError, match="failed to prove") as ei:
        sync_badge(db, imp.url, now=fleet.unix_time)
    assert secret.hex() not in str(ei.value)
    assert imp.requests == [] and db.encounter_count(bid) == 0
    # a station with the right id but the wrong secret, and one that never heard of it
    with Database(tmp_path / "stranger.sqlite") as other:
        with pytest.raises(DeviceError, match="unknown to this station"):
            sync_badge(other, url, now=fleet.unix_time)
        other.add_badge(bid, BOARD, os.urandom(32))
        with pytest.raises(DeviceError, match="refused this station"):
            sync_badge(other, url, now=fleet.unix_time)
        assert other.encounter_count() == 0
    assert len(log_files(badge)) == 1
    assert sync_badge(db, url, now=fleet.unix_time).records_new == 10
