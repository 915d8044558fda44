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


# ---------------------------------------------------------------------------- sessions
def _flash_state(root):
    """Every file under the badge's root: {relative path: bytes}."""
    import os
    out = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_left_over_session_is_useless_to_the_next_host(badge, fw):
    """A sync unplugged after auth leaves `h` authenticated in the REPL globals; the next host
    (no soft reset) reuses it without the secret: refused once the session has idled, and as
    soon as any newer session exists."""
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    assert badge.j(h, "segments") == {"segments": []}           # the owner, authenticated
    # -- the cable is pulled; a stranger connects after 10 s without a soft reset and calls h
    fw.ticks[0] += 10_001
    before = _flash_state(badge.root)
    for name, args in (("segments", ()), ("set_health", ("red",)), ("ack", (0, 16)),
                       ("configure", ('{"scan_every_s": 30}',)), ("export_keys", (0,)),
                       ("read", (0, 0, 16)), ("set_time", (T + 999,))):
        e = badge.j(h, name, *args)
        assert e["error"] == "auth", (name, e)
    assert badge.j(h, "provision", provision_doc(secret="11" * 32))["error"] == "auth"
    assert _flash_state(badge.root) == before and badge.pins.get(2, 0) == 0
    # the session stays dead: calls after the refusal do not revive it
    assert badge.j(h, "segments")["error"] == "auth"

    # -- within the idle time, but a newer session exists (a new Host, or any hello())
    h = badge.host()
    assert login(badge, h) == {"ok": True}
    fw.ticks[0] += 9_000
    assert "segments" in badge.j(h, "segments")                 # calls keep it alive
    fw.ticks[0] += 9_000
    assert "segments" in badge.j(h, "segments")
    stranger = badge.host()                                     # `h2 = Host()`
    assert badge.j(h, "set_health", "red")["error"] == "auth"
    assert badge.j(stranger, "segments")["error"] == "auth"
    h = badge.host()
    assert login(badge, h) == {"ok": True}
    badge.j(stranger, "hello")                                  # `h2.hello()` on an old one
    assert badge.j(h, "segments")["error"] == "auth"
    h = badge.host()
    assert login(badge, h) == {"ok": True}
    badge.j(h, "hello")                                         # even its own new hello
    assert badge.j(h, "segments")["error"] == "auth"
    # an auth against a nonce of a session that another Host has since replaced fails
    h = badge.host()
    hello = badge.j(h, "hello")
    badge.host()
    mac = hmac.new(SECRET, b"tc-auth-v1" + bytes.fromhex(hello["nonce"]) + b"badge-7",
                   hashlib.sha256).hexdigest()
    assert badge.j(h, "auth", mac)["error"] == "auth"
    assert badge.pins.get(2, 0) == 0                            # no health code was set


def test_a_long_call_does_not_count_as_idle(badge, fw):
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    badge.presses["after"] = 700                                # 700 polls of 20 ms: 14 s
    badge.presses["polls"] = 0
    assert "keys" in badge.j(h, "export_keys", 30000)
    fw.ticks[0] += 5_000
    assert badge.j(h, "set_health", "red") == {"ok": True}


# ---------------------------------------------------------------------------- running
def _clock_bin(root, last, until=None):
    import struct
    with open(root + "/tc/clock.bin", "wb") as f:
        f.write(struct.pack("<IBI", last, 1, last + 60 if until is None else until))


def test_running_means_tracing_now(badge, fw):
    import tcbadge
    h = badge.host()
    badge.j(h, "provision", provision_doc())
    now = badge.now[0]
    tcbadge.RUN["state"] = "running"
    assert (badge.j(h, "status")["running"], badge.j(h, "status")["app"]) == (True, "running")
    for st in ("interrupted", "crashed"):                       # mpremote's Ctrl-C, a crash
        tcbadge.RUN["state"] = st
        s = badge.j(h, "status")
        assert s["running"] is False and s["app"] == st         # (no resume watch here)
    # Ctrl-C with the resume watch armed: paused for this session, tracing again once the
    # REPL is idle, so running; a developer's hold keeps it at the REPL: not running
    tcbadge.RUN["watch"] = object()
    try:
        for st, hold, running in (("interrupted", 0, True), ("interrupted", 1, False),
                                  ("crashed", 0, False)):
            tcbadge.RUN["state"] = st
            tcbadge.RUN["hold"] = hold
            s = badge.j(h, "status")
            assert (s["running"], s["app"]) == (running, st), (st, hold)
    finally:
        del tcbadge.RUN["watch"]
        tcbadge.RUN.pop("hold", None)
    del tcbadge.RUN["state"]                                    # after a soft reset: heartbeat
    for age, running in ((0, True), (30, True), (64, True), (66, False), (120, False),
                         (600, False), (-5, False)):
        _clock_bin(badge.root, now - age)
        s = badge.j(h, "status")
        assert (s["running"], s["app"]) == (running, "heartbeat" if running else "stopped"), age
    _clock_bin(badge.root, now - 50, until=now - 40)            # the saved resume point counts
    assert badge.j(h, "status")["running"] is False


# ---------------------------------------------------------------------------- fuzz
METHODS = ("hello", "auth", "provision", "status", "set_time", "segments", "read", "ack",
           "export_keys", "set_health", "configure")


def _garbage(rnd, depth=0):
    k = rnd.randrange(14 if depth < 2 else 10)
    if k == 0:
        return rnd.choice((0, -1, 1, 2 ** 31, -2 ** 63, 10 ** 30, T, T // 86400, 12288, 16))
    if k == 1:
        return rnd.randrange(-2 ** 40, 2 ** 40)
    if k == 2:
        return rnd.choice((None, True, False, float("nan"), float("inf"), -0.0, 1.5))
    if k == 3:
        return "".join(chr(rnd.randrange(0x20, 0x7F)) for _ in range(rnd.randrange(0, 80)))
    if k == 4:
        return rnd.randbytes(rnd.randrange(0, 64)).hex()
    if k == 5:
        return rnd.randbytes(rnd.randrange(0, 40))
    if k == 6:
        return "".join(chr(rnd.randrange(0, 0x3000)) for _ in range(rnd.randrange(0, 20)))
    if k == 7:
        return rnd.choice(("red", "green", "yellow", "off", "", "RED", "{}", "[]", "null",
                           '{"scan_every_s": 1}', '{"id": "x", "secret": "' + "00" * 32 + '"}',
                           provision_doc(), provision_doc(secret="ab" * 32), "\x00" * 8))
    if k == 8:
        return rnd.choice(METHODS)
    if k == 9:
        return bytearray(rnd.randbytes(8))
    if k == 10:
        return [_garbage(rnd, depth + 1) for _ in range(rnd.randrange(0, 4))]
    if k == 11:
        return {str(_garbage(rnd, depth + 1))[:10]: _garbage(rnd, depth + 1)
                for _ in range(rnd.randrange(0, 4))}
    if k == 12:
        return json.dumps({"id": _garbage(rnd, 2), "secret": _garbage(rnd, 2),
                           "time": _garbage(rnd, 2), "config": {"x": _garbage(rnd, 2)}},
                          default=repr)
    return object()


def test_fuzz_host_protocol_unauthenticated(badge, fw, monkeypatch):
    """10,000 seeded random calls and garbage arguments on unauthenticated Host objects of a
    provisioned badge: each answers exactly one well-formed JSON line (an error, or hello's /
    status's own answer), nothing raises, nothing on flash, config or health changes."""
    import io
    import random

    owner = badge.host()
    badge.j(owner, "provision", provision_doc())
    assert badge.j(owner, "set_health", "yellow") == {"ok": True}
    fw.enlog.EncounterLog(badge.root).add(b"\x05" * 16, b"\x01\x02\x03\x04", T - 60, T - 50,
                                          3, -70, -60, -65)
    fw.enlog.EncounterLog(badge.root)  # (a second log object writes the open record)
    before = _flash_state(badge.root)
    pins = dict(badge.pins)
    rnd = random.Random(20241)
    hosts = [badge.host() for _ in range(3)]        # also ends the owner's session
    n = int(__import__("os").environ.get("TRACECODE_HOSTIF_FUZZ", "10000"))
    counts = {}
    real_stdout = sys.stdout
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    try:
        for i in range(n):
            h = rnd.choice(hosts)
            name = rnd.choice(METHODS) if rnd.random() < 0.97 else rnd.choice(("hello", "status"))
            args = [_garbage(rnd) for _ in range(rnd.choice((0, 1, 1, 2, 3, 3, 4)))]
            kw = {} if rnd.random() < 0.9 else {rnd.choice(("js", "day", "n", "x")): _garbage(rnd)}
            if name == "auth" and rnd.random() < 0.5:   # a hello first: a fresh nonce to miss
                getattr(h, "hello")()
                buf.seek(0)
                buf.truncate()
            if name == "export_keys":
                badge.presses["after"], badge.presses["polls"] = 0, 0   # a wearer pressing
            getattr(h, name)(*args, **kw)
            out = buf.getvalue()
            buf.seek(0)
            buf.truncate()
            assert out.endswith("\n") and out.count("\n") == 1, (i, name, args, out)
            obj = json.loads(out)
            assert isinstance(obj, dict), (i, name, out)
            if "error" in obj:
                assert isinstance(obj["error"], str) and isinstance(obj.get("msg", ""), str)
                assert SECRET.hex() not in out
                key = obj["error"]
            else:
                assert name in ("hello", "status"), (i, name, args, out)
                key = name
            counts[key] = counts.get(key, 0) + 1
            badge.presses["after"] = None
    finally:
        monkeypatch.setattr(sys, "stdout", real_stdout)
    assert sum(counts.values()) == n
    assert counts.get("auth", 0) > n // 2 and counts.get("input", 0) > 0, counts
    assert set(counts) <= {"auth", "input", "hello", "status"}, counts
    assert _flash_state(badge.root) == before
    assert badge.pins == pins
    assert badge.now[0] == T                        # nobody set the clock
    assert badge.j(badge.host(), "status")["health"] == "yellow"
