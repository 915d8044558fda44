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

        t = threading.Thread(target=go, daemon=True)
        t.start()
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
    with pytest.raises(FrameError) as e:
        c.exchange_json = None
        typ, seq, p, tagged = c.exchange(fc.STATUS)
        raise FrameError(json.loads(p), tagged)
    assert e.value.code == "auth" and not e.value.tagged
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
