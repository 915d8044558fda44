# Locked mode (docs/hostif.md, protocol version 2) on virtual badges of both backends: the
# unmodified firmware, provisioned with a lock, serves only the framed protocol on its serial
# port while it keeps tracing. The host side is tests/firmware/frameclient.py, written from
# the spec (it imports no firmware code).
import hashlib
import json
import struct
import threading
import time
from pathlib import Path

import pytest

import frameclient as fc
from frameclient import FrameClient, FrameError, Link

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
START = 1709280000 + 7 * 3600  # 2024-03-01 07:00 UTC

sim = pytest.importorskip("tracecode.sim", reason="virtual badges (tracecode.sim) not built yet")


def _vm_reason():
    from tracecode.sim.vmbadge import vm_available
    return vm_available()


BACKENDS = [pytest.param("vm", marks=pytest.mark.skipif(_vm_reason() is not None, reason=str(_vm_reason()))),
            "imitation"]
SECRET = hashlib.sha256(b"alice").digest()
BUTTON = 4  # not a strapping pin of the ESP32


def profile(pin=BUTTON, chip="esp32"):
    p = json.loads((BOARDS / "esp32-devkitc.json").read_text())
    p["chip"] = chip
    p["button"] = {"pin": pin, "active": 0, "pull": "up"}
    return p


def provision(badge, name="alice", lock=True, prof=None):
    doc = {"id": name, "board": "esp32-devkitc", "secret": SECRET.hex(), "config": {},
           "profile": prof or profile()}
    badge.flash.write("/tc/prov.json", json.dumps(doc).encode())
    if lock:
        badge.flash.write("/tc/locked", b"1")


def files(badge):
    """{path: bytes} of the badge's flash (imitation folder or VM image)."""
    root = getattr(badge.flash, "root", None)
    out = {}
    if root is not None:
        for p in Path(root).rglob("*"):
            if p.is_file():
                out["/" + str(p.relative_to(root))] = p.read_bytes()
        return out
    for p, n in badge.flash.files().items():
        if n >= 0:
            out[p] = badge.flash.read(p)
    return out


class Bench:
    def __init__(self, tmp_path, backend, lock=True, prof=None, trace_s=1500):
        self.fleet = sim.Fleet(workdir=tmp_path, seed=3, start_unix=START, backend=backend)
        self.backend = backend
        self.alice = self.fleet.add_badge("alice", firmware_dir=str(FIRMWARE), position=(0.0, 0.0),
                                          board="esp32-devkitc")
        self.bob = self.fleet.add_badge("bob", firmware_dir=str(FIRMWARE), position=(1.0, 0.0),
                                        board="esp32-devkitc")
        provision(self.alice, "alice", lock=lock, prof=prof)
        provision(self.bob, "bob", lock=False)
        self.fleet.power_on_all()
        self.alice.set_clock()
        self.bob.set_clock()
        if trace_s:
            self.fleet.run_for(trace_s)
        self.link = Link(self.alice.console_url())
        self.client = FrameClient(self.link)
        time.sleep(0.1)
        self.link.take()

    def send_and_wait(self, data):
        """Send bytes and wait until the badge's console has them (before virtual time runs)."""
        con = self.alice.console
        want = con.rx_bytes + len(data)
        self.link.send(data)
        end = time.monotonic() + 10
        while con.rx_bytes < want and time.monotonic() < end:
            time.sleep(0.005)
        assert con.rx_bytes >= want

    def run(self, seconds):
        """Let virtual time run (the fleet is paused otherwise: requests are served at once,
        at a frozen virtual time, by the simulator's host driver)."""
        self.fleet.run_for(seconds)

    def run_while(self, fn, seconds, step=0.5):
        """Run `fn` (a blocking host call) in a thread while virtual time runs `seconds`."""
        res = {}

        def go():
            try:
                res["v"] = fn()
            except BaseException as e:  # noqa: BLE001
                res["e"] = e

        con = self.alice.console
        before = con.rx_bytes
        t = threading.Thread(target=go, daemon=True)
        t.start()
        end = time.monotonic() + 10
        while con.rx_bytes == before and time.monotonic() < end:   # the request is in
            time.sleep(0.005)
        time.sleep(0.2)
        n = 0.0
        while n < seconds and t.is_alive():
            self.fleet.run_for(step)
            n += step
            time.sleep(0.01)
        t.join(30)
        if "e" in res:
            raise res["e"]
        return res.get("v")

    def records(self, badge=None):
        return (badge or self.alice).log_records()

    def close(self):
        self.link.close()
        self.fleet.close()


@pytest.fixture(params=BACKENDS)
def bench(request, tmp_path):
    b = Bench(tmp_path, request.param)
    yield b
    b.close()


@pytest.mark.timeout(300)
def test_handshake_status_read_ack(bench):
    c = bench.client
    info = c.hello()
    assert info == {"proto": 2, "fw": "0.1.0", "id": "alice", "locked": True}
    assert len(c.nb) == 16
    # nothing but HELLO before AUTH
    assert _unauth(c, fc.STATUS)["error"] == "auth"
    c.auth(SECRET)
    st = c.request(fc.STATUS)
    assert st["id"] == "alice" and st["clock"] == "set" and st["running"] is True
    assert st["app"] == "running" and st["log"]["records"] > 0
    segs = c.request(fc.SEGMENTS)["segments"]
    assert len(segs) == 1 and segs[0]["acked"] == 0
    day, size = segs[0]["day"], segs[0]["size"]
    data = b""
    while len(data) < size:
        chunk = c.read(day, len(data), 4096)
        assert chunk
        data += chunk
    assert c.read(day, size, 100) == b""
    assert data == files(bench.alice)["/log/%d.tcl" % day]
    assert c.request(fc.ACK, {"day": day, "off": 16}) == {"ok": True, "deleted": []}
    assert c.request(fc.SEGMENTS)["segments"][0]["acked"] == 16
    assert c.request(fc.BYE) == {"ok": True}


def _unauth(c, typ, payload=b"", seq=1):
    """A request outside any session: the untagged error it gets."""
    rtyp, rseq, p, tagged = c.exchange(typ, payload, seq=seq)
    assert rtyp == fc.ERROR and rseq == seq and not tagged
    return json.loads(p)


def _err(fn, *a):
    with pytest.raises(FrameError) as e:
        fn(*a)
    return e.value


@pytest.mark.timeout(300)
def test_replay_wrong_seq_bad_tag_and_idle_end_the_session(bench):
    c = bench.client
    # every request type before AUTH: "auth", untagged, nothing else
    for typ in list(range(0x10, 0x1D)) + [0x1F, 0x30, 0x80, 0xFE]:
        assert _unauth(c, typ, b"{}")["error"] == "auth", typ
    # a wrong MAC uses up the nonce: even the right one fails after it
    c.hello()
    assert _err(c.auth, SECRET, b"\0" * 32).code == "auth"
    assert _err(c.auth, SECRET).code == "auth"
    # a replayed AUTH (right MAC for an old nonce) meets a new Nb and fails
    c.hello()
    auth_frame = fc.frame(fc.body(fc.AUTH, 0, c.auth_mac(SECRET)))
    c.auth(SECRET)
    assert c.request(fc.STATUS)["id"] == "alice"
    bench.link.send(auth_frame)                          # same nonce, already used
    assert json.loads(c.read_reply()[2])["error"] == "auth"
    c.hello()
    bench.link.send(auth_frame)                          # a fresh Nb
    assert json.loads(c.read_reply()[2])["error"] == "auth"
    # a wrong secret: the badge's Mb would not verify either; the badge refuses first
    c.hello()
    assert _err(c.auth, b"x" * 32).code == "auth"
    # a replayed request (valid TAG, old SEQ): "seq", and the session is over
    c.login(SECRET)
    st = fc.body(fc.STATUS, 1, b"", c.ks)
    c.send_body(st)
    assert c.read_reply()[0] == fc.STATUS | 0x80
    c.seq = 1
    c.send_body(st)
    typ, seq, p, tagged = c.read_reply()
    assert (typ, seq, json.loads(p)["error"], tagged) == (fc.ERROR, 1, "seq", False)
    c.send_body(fc.body(fc.STATUS, 2, b"", c.ks))         # the old key opens nothing now
    assert json.loads(c.read_reply()[2])["error"] == "auth"
    # skipping a number: "seq"
    c.login(SECRET)
    c.seq = 1
    assert _err(c.request, fc.SEGMENTS).code == "seq"
    # a bad TAG: "auth", session over
    c.login(SECRET)
    c.send_body(fc.body(fc.STATUS, 1, b"", b"k" * 32))
    typ, seq, p, tagged = c.read_reply()
    assert (typ, json.loads(p)["error"], tagged) == (fc.ERROR, "auth", False)
    c.send_body(fc.body(fc.STATUS, 1, b"", c.ks))
    assert json.loads(c.read_reply()[2])["error"] == "auth"
    # a tag over a frame too short to hold one
    c.login(SECRET)
    c.send_body(bytes([2, fc.STATUS]) + struct.pack("<I", 1) + b"short")
    assert json.loads(c.read_reply()[2])["error"] == "auth"
    # 10 s without a request (virtual time) ends the session; a stranger's HELLO does too
    c.login(SECRET)
    assert c.request(fc.BYE) == {"ok": True}
    assert _unauth(c, fc.STATUS, seq=2)["error"] == "auth"
    c.login(SECRET)
    bench.run(9)
    assert "segments" in c.request(fc.SEGMENTS)
    bench.run(11)
    e = _err(c.request, fc.SEGMENTS)
    assert (e.code, e.msg, e.tagged) == ("auth", "session expired", False)
    c.login(SECRET)
    other = FrameClient(bench.link)
    other.hello()
    e = _err(c.request, fc.SEGMENTS)
    assert e.code == "auth"


@pytest.mark.timeout(300)
def test_every_request(bench):
    c = bench.client
    c.login(SECRET)
    now = bench.fleet.unix_time()
    r = c.request(fc.SET_TIME, {"unix": int(now) + 5})
    assert r["ok"] and abs(r["drift_s"] + 5) <= 1
    assert _err(c.request, fc.SET_TIME, {"unix": 5}).code == "input"
    assert _err(c.request, fc.SET_TIME, b"not json").code == "input"
    assert _err(c.request, fc.SET_TIME, b"[1]").code == "input"
    assert c.request(fc.SET_HEALTH, {"code": "red"}) == {"ok": True}
    assert _err(c.request, fc.SET_HEALTH, {"code": "blue"}).code == "input"
    assert c.request(fc.STATUS)["health"] == "red"
    r = c.request(fc.CONFIGURE, {"scan_every_s": 60})
    assert r["ok"] and r["config"]["scan_every_s"] == 60
    e = _err(c.request, fc.CONFIGURE, {"adv_interval_ms": 100})
    assert e.code == "input" and e.tagged                  # the session goes on
    segs = c.request(fc.SEGMENTS)["segments"]
    day = segs[-1]["day"]
    assert _err(c.request, fc.READ, b"\0" * 9).code == "frame"
    assert _err(c.read, day + 9, 0, 16).code == "input"
    assert len(c.read(day, 0, 60000 % 65536)) <= 4096
    assert _err(c.request, fc.ACK, {"day": day, "off": 7}).code == "input"
    assert _err(c.request, 0x30).code == "frame"           # unknown request type
    assert _err(c.request, fc.PROVISION, {"id": "alice", "secret": "00"}).code == "input"
    e = _err(c.request, fc.PROVISION, {"id": "alice", "secret": SECRET.hex(), "lock": False})
    assert e.code == "locked"
    new = hashlib.sha256(b"alice2").digest()
    assert c.request(fc.PROVISION, {"id": "alice", "secret": new.hex(), "lock": True,
                                    "profile": profile()}) == {"ok": True}
    assert _unauth(c, fc.STATUS, seq=c.seq + 1)["error"] == "auth"   # handshake again
    c.hello()
    assert _err(c.auth, SECRET).code == "auth"
    c.login(new)
    assert c.request(fc.STATUS)["provisioned"] is True
    assert c.request(fc.BYE) == {"ok": True}
    # RESET: the reply, then the badge boots again (still locked) and answers HELLO
    c.login(new)
    boots = bench.alice.boots
    assert c.request(fc.RESET) == {"ok": True}
    bench.run(3)
    assert bench.alice.boots == boots + 1
    assert c.hello()["locked"] is True
    c.auth(new)
    st = c.request(fc.STATUS)
    assert st["health"] == "red" and st["running"] is True


TRANSCRIPT_MARKERS = (b">>>", b"raw REPL", b"Traceback", b"MicroPython v")


@pytest.mark.timeout(300)
def test_garbage_and_control_bytes_get_nothing_and_tracing_goes_on(bench):
    import random

    c = bench.client
    rnd = random.Random(5)
    boots = bench.alice.boots
    before = bench.records()
    junk = [b"\x03", b"\x03\x03", b"\r\x03\r\x01", b"\x04", b"\x01", b"\x05A\x01", b"\x02",
            b"\x05", b"\r\nimport os\r\n", b"print(1)\r\x04", b"\xa7", b"\xa7\x7c",
            b"\xa7\x7c\xff\xff" + b"\0" * 64,                            # LEN past 4200
            b"\xa7\x7c\x00\x00",                                          # LEN below a body
            fc.frame(fc.body(fc.HELLO, 0, b"n" * 16))[:-1] + b"\0",      # bad CRC
            fc.frame(bytes([3, fc.HELLO]) + b"\0" * 4 + b"n" * 16)]       # another version
    junk += [rnd.randbytes(rnd.randrange(1, 300)).replace(b"\xa7", b"") for _ in range(30)]
    for j in junk:
        bench.send_and_wait(j)
    assert c.silence(0.5) == b""
    bench.run(5)
    assert c.silence(0.2) == b""
    # a frame cut short, then a whole one: answered once the cut frame's time is up
    bench.send_and_wait(fc.frame(fc.body(fc.STATUS, 1, b"x" * 200))[:50])
    nh = b"h" * 16
    bench.send_and_wait(fc.frame(fc.body(fc.HELLO, 0, nh)))
    assert c.silence(0.3) == b""                         # inside the cut frame, for now
    bench.run(3)
    c.nh = nh
    typ, seq, p, tagged = c.read_reply()
    assert typ == fc.HELLO | 0x80 and json.loads(p[16:])["id"] == "alice"
    # a garbage prefix glued to a frame, and Ctrl-C inside a session
    c.login(SECRET)
    bench.link.send(b"\x03\x03\x01\x02\x04" + fc.frame(fc.body(fc.STATUS, 1, b"", c.ks)))
    c.seq = 1
    assert c.read_reply()[0] == fc.STATUS | 0x80
    assert c.request(fc.SEGMENTS)["segments"]
    # the badge kept tracing all along: same boot, new log records, no REPL ever
    bench.run(1200)
    assert bench.alice.boots == boots
    assert bench.records() > before
    out = bytes(bench.alice.console.transcript)
    for m in TRANSCRIPT_MARKERS:
        assert m not in out, m


@pytest.mark.timeout(300)
def test_raw_repl_entry_gets_nothing(bench):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    bench.link.close()
    boots = bench.alice.boots
    for soft in (False, True):
        t = SerialTransport(bench.alice.console_url(), baudrate=115200)
        try:
            with pytest.raises(TransportError):
                t.enter_raw_repl(soft_reset=soft, timeout_overall=2)
        finally:
            t.close()
    bench.run(5)
    assert bench.alice.boots == boots
    out = bytes(bench.alice.console.transcript)
    for m in TRANSCRIPT_MARKERS:
        assert m not in out, m
    link = Link(bench.alice.console_url())
    try:
        c = FrameClient(link)
        c.login(SECRET)
        assert c.request(fc.STATUS)["app"] == "running"
    finally:
        link.close()


def _keys_on_flash(badge):
    raw = files(badge)["/tc/keys.bin"]
    return {raw[i + 4:i + 20].hex(): struct.unpack("<I", raw[i:i + 4])[0] for i in range(0, len(raw), 20)}


@pytest.mark.timeout(300)
def test_export_needs_a_press_after_the_request(bench):
    c = bench.client
    a = bench.alice
    c.login(SECRET)
    # no press within the wait
    e = bench.run_while(lambda: _err(c.request, fc.EXPORT, {"wait_ms": 1500}), 4)
    assert e.code == "no-consent" and e.tagged
    # held since before the request (and all through the wait): not consent
    a.press_button(after=0.0, duration=8.0, pin=BUTTON)
    bench.run(0.5)
    e = bench.run_while(lambda: _err(c.request, fc.EXPORT, {"wait_ms": 3000}), 6)
    assert e.code == "no-consent"
    bench.run(5)                                        # released
    # a press after the request: the keys; the badge traced meanwhile
    a.press_button(after=1.5, duration=0.5, pin=BUTTON)
    keys = bench.run_while(lambda: c.request(fc.EXPORT, {"wait_ms": 10000}), 6)["keys"]
    flash = _keys_on_flash(a)
    assert keys and all(flash[k["key_data"]] == k["rolling_start_interval_number"] for k in keys)
    assert 0 < keys[-1]["rolling_period"] <= 144
    # held before the request, released, then pressed again: counts
    a.press_button(after=0.0, duration=1.0, pin=BUTTON)
    a.press_button(after=2.0, duration=0.5, pin=BUTTON)
    bench.run(0.5)
    assert "keys" in bench.run_while(lambda: c.request(fc.EXPORT, {"wait_ms": 10000}), 6)
    assert c.request(fc.STATUS)["running"] is True      # the session outlived the waits


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["imitation"])
@pytest.mark.parametrize("chip,pin", [("esp32", 0), ("esp32", 2), ("esp32c3", 9), ("esp32s3", 0)])
def test_consent_button_on_a_strapping_pin_is_refused(tmp_path, backend, chip, pin):
    b = Bench(tmp_path, backend, prof=profile(pin=pin, chip=chip), trace_s=30)
    try:
        b.client.login(SECRET)
        b.alice.press_button(after=0.5, duration=0.5, pin=pin)
        e = b.run_while(lambda: _err(b.client.request, fc.EXPORT, {"wait_ms": 2000}), 3)
        assert e.code == "no-consent" and "strapping pin" in e.msg, e.msg
        assert b.client.request(fc.STATUS)["id"] == "alice"
    finally:
        b.close()


@pytest.mark.timeout(300)
def test_put_commit_updates_firmware_and_a_bad_sha_changes_nothing(bench):
    c = bench.client
    a = bench.alice
    c.login(SECRET)
    init = (FIRMWARE / "tcbadge" / "__init__.py").read_bytes()
    new_init = init.replace(b'VERSION = "0.1.0"', b'VERSION = "0.1.1"')
    assert new_init != init
    extra = b"# a library file\n" + bytes(range(256)) * 10
    # paths outside the firmware are refused
    for bad in ("tc/locked", "../boot.py", "/boot.py", "tcbadge/x.txt", "log/1.tcl", "lib/../tc/x",
                "lib//x", "", 5):
        js = json.dumps({"path": bad, "off": 0, "size": 1}).encode()
        assert _err(c.request, fc.PUT, struct.pack("<H", len(js)) + js + b"x").code == "input", bad
    assert _err(c.request, fc.PUT, b"\xff\x00{}").code == "frame"
    js = json.dumps({"path": "lib/x.py", "off": 5, "size": 10}).encode()
    assert _err(c.request, fc.PUT, struct.pack("<H", len(js)) + js + b"x").code == "input"
    before = files(a)
    # staged, then a COMMIT with a wrong SHA-256: nothing changes, the staging is gone
    c.put("tcbadge/__init__.py", new_init, chunk=200)
    c.put("lib/tcx/extra.bin", extra, chunk=1000)
    good = [{"path": "tcbadge/__init__.py", "size": len(new_init),
             "sha256": hashlib.sha256(new_init).hexdigest()},
            {"path": "lib/tcx/extra.bin", "size": len(extra), "sha256": hashlib.sha256(extra).hexdigest()}]
    bad = [dict(good[0]), good[1]]
    bad[0]["sha256"] = hashlib.sha256(b"other").hexdigest()
    assert _err(c.request, fc.COMMIT, {"files": bad}).code == "input"
    after = files(a)
    assert not any(p.startswith("/fw.new") for p in after)
    assert {p: v for p, v in after.items() if not p.startswith(("/log/", "/tc/"))} == \
        {p: v for p, v in before.items() if not p.startswith(("/log/", "/tc/"))}
    # a size that does not match, and a file never staged
    c.put("lib/tcx/extra.bin", extra, chunk=1000)
    assert _err(c.request, fc.COMMIT, {"files": [dict(good[1], size=1)]}).code == "input"
    assert _err(c.request, fc.COMMIT, {"files": [good[1]]}).code == "input"   # staging gone
    # the real thing: staged, checked, moved into place at the reset
    c.put("tcbadge/__init__.py", new_init, chunk=200)
    c.put("lib/tcx/extra.bin", extra, chunk=1000)
    boots = a.boots
    assert c.request(fc.COMMIT, {"files": good}) == {"ok": True}
    bench.run(3)
    assert a.boots == boots + 1
    info = c.hello()
    assert info["fw"] == "0.1.1" and info["locked"] is True
    after = files(a)
    assert after["/tcbadge/__init__.py"] == new_init and after["/lib/tcx/extra.bin"] == extra
    assert not any(p.startswith("/fw.new") for p in after)
    c.auth(SECRET)
    assert c.request(fc.STATUS)["running"] is True


def _raw_repl(url):
    from mpremote.transport_serial import SerialTransport

    t = SerialTransport(url, baudrate=115200)
    t.enter_raw_repl(soft_reset=False)
    return t


@pytest.mark.timeout(300)
def test_unlock_returns_developer_mode(bench):
    c = bench.client
    c.login(SECRET)
    assert c.request(fc.UNLOCK) == {"ok": True}
    bench.run(3)
    assert "/tc/locked" not in files(bench.alice)
    bench.link.close()
    t = _raw_repl(bench.alice.console_url())
    try:
        out = t.exec("from tcbadge.hostif import Host\nh = Host()\nh.hello()")
        hello = json.loads(out.decode().strip().splitlines()[-1])
        assert hello["proto"] == 1 and hello["id"] == "alice"
    finally:
        t.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_v1_provision_with_lock_locks_the_badge(tmp_path, backend):
    # The station's flasher provisions through version 1 (raw REPL); "lock": true locks the
    # badge from its next boot on.
    b = Bench(tmp_path, backend, lock=False, trace_s=30)
    try:
        b.link.close()
        t = _raw_repl(b.alice.console_url())
        new = hashlib.sha256(b"new").digest()
        doc = {"id": "alice", "board": "esp32-devkitc", "secret": new.hex(), "lock": True,
               "profile": profile()}
        try:
            # a provisioned badge: authenticate with the old secret first
            hello = json.loads(t.exec("from tcbadge.hostif import Host\nh = Host()\nh.hello()")
                               .decode().strip().splitlines()[-1])
            import hmac
            mac = hmac.new(SECRET, b"tc-auth-v1" + bytes.fromhex(hello["nonce"]) + b"alice",
                           hashlib.sha256).hexdigest()
            assert json.loads(t.exec("h.auth('%s')" % mac).decode().strip()) == {"ok": True}
            bad = dict(doc, lock="yes")
            r = json.loads(t.exec("h.provision(%r)" % json.dumps(bad)).decode().strip())
            assert r["error"] == "input"
            r = json.loads(t.exec("h.provision(%r)" % json.dumps(doc)).decode().strip())
            assert r == {"ok": True}
            t.exit_raw_repl()
            t.serial.write(b"\x04")                    # soft reset: boots locked
        finally:
            t.close()
        b.run(2)
        assert "/tc/locked" in files(b.alice)
        link = Link(b.alice.console_url())
        try:
            c = FrameClient(link)
            assert c.hello()["locked"] is True
            c.auth(new)
            assert c.request(fc.STATUS)["running"] is True
        finally:
            link.close()
    finally:
        b.close()
