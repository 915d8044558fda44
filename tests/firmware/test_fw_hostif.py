# Host interface on CPython with a fake `machine` (RTC, Pin) and a fake clock: every call
# prints exactly one line; authentication; provisioning; time; log read/ack; consent-gated
# key export; health; configure; bad input gives one-line errors.
import base64
import calendar
import hashlib
import hmac
import json
import sys
import time
import types

import pytest

SECRET = bytes(range(32))
T = 1709280000 + 3600  # 2024-03-01 01:00 UTC


@pytest.fixture
def badge(fw, tmp_path, monkeypatch, capsys):
    now = [T - 10 * 86400]  # an RTC that was never set would be near 2000; any < 2020 works
    now[0] = 100
    monkeypatch.setattr(time, "time", lambda: now[0])
    presses = {"after": None, "polls": 0}

    def sleep_ms(ms):
        fw.ticks[0] += ms

    monkeypatch.setattr(time, "sleep_ms", sleep_ms, raising=False)
    m = types.ModuleType("machine")

    class RTC:
        def datetime(self, t):
            now[0] = calendar.timegm((t[0], t[1], t[2], t[4], t[5], t[6]))

    class Pin:
        IN, OUT, PULL_UP, PULL_DOWN = 1, 2, 3, 4
        levels = {}

        def __init__(self, n, mode=None, pull=None):
            self.n = n

        def value(self, v=None):
            if v is not None:
                Pin.levels[self.n] = v
                return None
            if self.n == 0:
                presses["polls"] += 1
                a = presses["after"]
                return 0 if a is not None and presses["polls"] > a else 1
            return 1

    m.RTC, m.Pin = RTC, Pin
    m.unique_id = lambda: b"\x24\x0a\xc4\x01\x02\x03"
    monkeypatch.setitem(sys.modules, "machine", m)
    from tcbadge import hostif

    class Badge:
        root = str(tmp_path)

        def host(self):
            return hostif.Host(self.root)

        def call(self, h, name, *args):
            capsys.readouterr()
            getattr(h, name)(*args)
            out = capsys.readouterr().out
            assert out.endswith("\n") and out.count("\n") == 1, out  # exactly one line
            return out

        def j(self, h, name, *args):
            return json.loads(self.call(h, name, *args))

    b = Badge()
    b.now, b.presses, b.pins = now, presses, Pin.levels
    return b


def login(b, h, bid="badge-7", secret=SECRET):
    hello = b.j(h, "hello")
    mac = hmac.new(secret, b"tc-auth-v1" + bytes.fromhex(hello["nonce"]) + bid.encode(),
                   hashlib.sha256).hexdigest()
    return b.j(h, "auth", mac)


def provision_doc(**kw):
    doc = {"id": "badge-7", "board": "esp32-devkitc", "secret": SECRET.hex(), "time": T,
           "config": {"scan_every_s": 60},
           "profile": {"name": "esp32-devkitc", "tx_power_dbm": 3, "calibration_confidence": 0,
                       "led": {"kind": "single", "pin": 2, "active": 1},
                       "button": {"pin": 0, "active": 0}}}
    doc.update(kw)
    return json.dumps(doc)


def test_unprovisioned_then_provision_and_auth(badge):
    h = badge.host()
    hello = badge.j(h, "hello")
    assert hello["proto"] == 1 and hello["provisioned"] is False and len(hello["nonce"]) == 32
    assert hello["id"] == "tc-240ac4010203"
    st = badge.j(h, "status")
    assert st["clock"] == "unset" and st["log"]["records"] == 0
    assert badge.j(h, "segments")["error"] == "auth"
    assert badge.j(h, "provision", provision_doc(secret="12"))["error"] == "input"
    assert badge.j(h, "provision", provision_doc()) == {"ok": True}
    assert badge.now[0] == T  # provisioning set the clock
    # A new session: provisioning again needs authentication.
    h2 = badge.host()
    assert badge.j(h2, "status")["clock"] == "set"
    assert badge.j(h2, "provision", provision_doc())["error"] == "auth"
    assert badge.j(h2, "auth", "00" * 32)["error"] == "auth"
    # the nonce was used up by the failed attempt: even the right MAC for it fails now
    assert badge.j(h2, "auth", "00" * 32)["error"] == "auth"
    assert login(badge, h2, secret=b"x" * 32)["error"] == "auth"
    assert login(badge, h2) == {"ok": True}
    out = badge.call(h2, "set_time", T + 100)
    assert json.loads(out) == {"ok": True, "drift_s": -100}
    assert SECRET.hex() not in out


def test_log_read_ack_and_health(badge, fw):
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    log = fw.enlog.EncounterLog(badge.root)
    day = T // 86400
    for i in range(5):
        log.add(bytes([i]) * 16, b"\x01\x02\x03\x04", T - 3000 + i, T - 2990 + i, 3, -70, -60, -65)
    log.add(b"\x09" * 16, b"\x01\x02\x03\x04", T - 86400, T - 86390, 3, -70, -60, -65)
    log.flush(True)
    segs = badge.j(h, "segments")["segments"]
    gens = [s.pop("gen") for s in segs]  # log format v2: a random generation per file
    assert all(len(g) == 8 for g in gens) and gens[0] != gens[1]
    assert segs == [{"day": day - 1, "size": 38, "acked": 0, "v": 2},
                    {"day": day, "size": 126, "acked": 0, "v": 2}]
    data = base64.b64decode(badge.call(h, "read", day, 0, 1000))
    assert data == open(log.path(day), "rb").read()
    assert base64.b64decode(badge.call(h, "read", day, 48, 64)) == data[48:112]
    assert badge.call(h, "read", day, 500, 64) == "\n"
    assert badge.j(h, "read", day + 5, 0, 10)["error"] == "input"
    assert badge.j(h, "ack", day, 15)["error"] == "input"
    assert badge.j(h, "ack", day, 127)["error"] == "input"
    assert badge.j(h, "ack", day - 1, 38) == {"ok": True, "deleted": [day - 1]}
    assert badge.j(h, "ack", day, 126) == {"ok": True, "deleted": []}  # today is kept
    st = badge.j(h, "status")
    assert st["log"]["days"] == 1 and st["log"]["unacked_bytes"] == 0 and st["log"]["records"] == 5
    assert badge.j(h, "set_health", "red") == {"ok": True}
    assert badge.pins[2] == 1  # single LED lit for red
    assert badge.j(h, "set_health", "green") == {"ok": True}
    assert badge.pins[2] == 0
    assert badge.j(h, "set_health", "blue")["error"] == "input"
    assert badge.j(badge.host(), "status")["health"] == "green"


def test_export_keys_needs_the_button(badge, fw):
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    ks = fw.keystore.KeyStore(badge.root)
    enin = T // 600
    for d in range(16):
        ks.tek_for(enin - 144 * d)
    assert badge.j(h, "export_keys", 1000)["error"] == "no-consent"
    badge.presses["after"] = 10
    badge.presses["polls"] = 0
    keys = badge.j(h, "export_keys", 30000)["keys"]
    assert len(keys) == 14
    assert [k["rolling_start_interval_number"] for k in keys] == sorted(
        (enin // 144 - d) * 144 for d in range(14))
    assert keys[-1]["rolling_period"] == enin - keys[-1]["rolling_start_interval_number"] + 1
    assert all(k["rolling_period"] == 144 for k in keys[:-1])
    assert all(len(bytes.fromhex(k["key_data"])) == 16 for k in keys)
    # Unauthenticated sessions get nothing.
    assert badge.j(badge.host(), "export_keys", 10)["error"] == "auth"


def test_configure_validates(badge):
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    r = badge.j(h, "configure", '{"rotation_jitter_s": 300, "tx_power_dbm": -4}')
    assert r["ok"] and r["config"]["rotation_jitter_s"] == 300 and r["config"]["scan_every_s"] == 60
    for bad in ('{"adv_interval_ms": 100}', '{"scan_window_ms": 70000}', '{"x": 1}', "not json",
                '{"scan_every_s": "60"}', '{"rotation_jitter_s": 600}'):
        e = badge.j(h, "configure", bad)
        assert e["error"] == "input", bad
    assert badge.j(badge.host(), "hello")["provisioned"] is True
