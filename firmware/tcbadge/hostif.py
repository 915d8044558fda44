# Host interface (docs/hostif.md). The logic lives in `Core`: each method returns its result
# (a dict, or bytes for `read`) or raises (HostError with a code, ValueError/TypeError/KeyError
# for bad input, OSError for flash errors). Two front ends use it:
# - `Host`, version 1: the host calls its methods through the raw REPL; each prints exactly
#   one line, a JSON object or a base64 line, and never raises. Only hello, auth, status and
#   (unprovisioned) provision work before authentication.
# - `hostproto.Server`, version 2 (locked mode): framed requests on the serial port.
# v1 authentication is bound to one session: one Host object, after its latest hello(). It
# dies when any newer session starts (a new Host object or any hello(): a class-level counter)
# and after _AUTH_IDLE_MS without an authenticated call, so a session left behind by an
# unplugged host (the REPL globals survive without a soft reset) is of no use to the next.
import binascii
import json
import os
import sys
import time

from micropython import const

import tcbadge

from . import clock, config, crypto, enlog, fsutil, health, keystore

PROTO = const(1)
_MAX_READ = const(12288)
_MAX_WAIT_MS = const(300000)
_POLL_MS = const(20)
_AUTH_IDLE_MS = const(10000)  # below the resume watch's REPL idle reset (watch.py, 15 s)
_FILE_GAP_S = const(60)  # clock.bin resume window: the app saves its heartbeat within it
_TICK_SLACK_S = const(5)  # one supervisor tick of lateness
LOCK_PATH = "/tc/locked"


class HostError(Exception):
    # A refusal with a protocol error code: HostError(code, msg), code "auth", "clock",
    # "no-consent", "locked", ... (MicroPython exceptions take no attributes: both are args).
    pass


def _out(obj):
    sys.stdout.write(json.dumps(obj))
    sys.stdout.write("\n")


def _err(code, msg):
    _out({"error": code, "msg": msg})


def same(a, b):
    # Constant-time comparison of two byte strings.
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


_same = same


def _obj(js):
    if isinstance(js, dict):
        return js
    return json.loads(js)


def is_locked(root=""):
    return fsutil.exists(root + LOCK_PATH)


def error_reply(e):
    # (code, msg) of an exception raised by a Core method; never a key or the secret.
    if isinstance(e, HostError):
        return e.args[0], e.args[1]
    if isinstance(e, (ValueError, TypeError, KeyError)):
        return "input", str(e)
    if isinstance(e, OSError):
        return "os", "flash error %s" % (e.args[0] if e.args else "")
    return "internal", type(e).__name__


class Core:
    # What a host may ask of a badge, without the session rules. In the running app (locked
    # mode) it works on the app's own clock, log and health objects (app=...); a v1 session,
    # which interrupted the app, makes its own.
    def __init__(self, root="", app=None):
        self.root = root
        self.app = app
        config.ensure_dirs(root)
        if app is not None:
            self.prov = app.prov
            self.clock = app.clock
        else:
            self.prov = config.Provisioning(root)
            self.clock = clock.Clock(root)

    def _log(self):
        if self.app is not None:
            return self.app.log
        # The host interface reads, acknowledges and flushes; it never holds open records, so
        # its log object takes one open slot, not the app's table (~4.6 KB in one piece,
        # which a heap fragmented by hours of tracing may not have when a host breaks in).
        return enlog.EncounterLog(self.root, open_max=1)

    def _health(self):
        if self.app is not None:
            return self.app.health
        return health.Health(self.prov.profile(), self.root)

    def info(self):
        return {"id": self.prov.badge_id(), "fw": tcbadge.VERSION,
                "board": self.prov.profile().get("name", "generic-esp32"),
                "provisioned": self.prov.provisioned()}

    def provision(self, js, locked=False):
        # `locked`: the caller is a locked badge's protocol server (version 2), where the lock
        # is lifted by UNLOCK only.
        d = _obj(js)
        bid = d.get("id")
        if not isinstance(bid, str) or not 0 < len(bid) <= 40:
            raise ValueError("id must be a string of 1..40 characters")
        secret = binascii.unhexlify(d.get("secret", ""))
        if len(secret) != 32:
            raise ValueError("secret must be 32 bytes in hex")
        profile = d.get("profile") or self.prov.profile()
        if not isinstance(profile, dict):
            raise ValueError("profile must be an object")
        base = dict(config.DEFAULTS)
        base["tx_power_dbm"] = profile.get("tx_power_dbm", base["tx_power_dbm"])
        cfg = config.validate(d.get("config") or {}, base)
        t = d.get("time")
        if t is not None and (not isinstance(t, int) or t < 1577836800):
            raise ValueError("time must be Unix seconds")
        lock = d.get("lock", None)
        if lock is not None and not isinstance(lock, bool):
            raise ValueError("lock must be true or false")
        if lock is False and locked:
            raise HostError("locked", "a locked badge is unlocked with UNLOCK")
        self.prov.data = {"id": bid, "board": d.get("board") or profile.get("name", ""),
                          "secret": binascii.hexlify(secret).decode(), "config": cfg,
                          "profile": profile}
        self.prov.save()
        if t is not None:
            self.clock.set(t)
        if lock:
            fsutil.write_atomic(self.root + LOCK_PATH, "1")
        return {"ok": True}

    def _battery(self):
        b = self.prov.profile().get("battery")
        if not b:
            return None, None
        try:
            import machine

            adc = machine.ADC(machine.Pin(b["pin"]))
            try:
                adc.atten(machine.ADC.ATTN_11DB)
            except (AttributeError, ValueError):
                pass
            mv = int(adc.read_uv() * b.get("divider", 2) / 1000)
        except (ImportError, OSError, ValueError, KeyError):
            return None, None
        lo = b.get("empty_mv", 3300)
        hi = b.get("full_mv", 4150)
        pct = (mv - lo) * 100 // (hi - lo)
        return mv, max(0, min(100, pct))

    def _running(self):
        # True only while the app traces: "crashed" is not running, whatever the heartbeat
        # says; "interrupted" (Ctrl-C: this host session, mpremote) is paused, and counts as
        # running only while the resume watch (watch.py) will restart it once the REPL is idle
        # (not when a developer set RUN["hold"], and not on a badge without the watch).
        run = tcbadge.RUN
        st = run.get("state")
        if st is not None:
            if st == "interrupted":
                return run.get("watch") is not None and not run.get("hold"), st
            return st == "running", st
        if fsutil.exists(self.root + "/tc/crash.txt"):
            return False, "crashed"
        # After a soft reset into the raw REPL (a host session) the RAM record is gone: the
        # app saves clock.bin (u32 save time, u8 source, u32 resume point = save + 60 s)
        # before each resume point while it runs, so a save whose resume window (plus one
        # tick) still covers now means the app ran until this session began.
        raw = fsutil.read(self.root + "/tc/clock.bin")
        if raw and len(raw) >= 4 and self.clock.is_set():
            last = raw[0] | (raw[1] << 8) | (raw[2] << 16) | (raw[3] << 24)
            until = last + _FILE_GAP_S
            if len(raw) >= 9:
                u = raw[5] | (raw[6] << 8) | (raw[7] << 16) | (raw[8] << 24)
                if last <= u < until:
                    until = u
            if last <= self.clock.now() <= until + _TICK_SLACK_S:
                return True, "heartbeat"
        return False, "stopped"

    def status(self):
        log = self._log()
        mv, pct = self._battery()
        free, total = fsutil.free_bytes(self.root + "/")
        running, app = self._running()
        code = self._health().code
        s = log.summary()
        stats = tcbadge.RUN.get("stats")
        return {"id": self.prov.badge_id(), "fw": tcbadge.VERSION, "time": self.clock.now(),
                "clock": self.clock.state, "battery_mv": mv, "battery_pct": pct,
                "flash_free": free, "flash_total": total, "health": code,
                "running": running, "app": app, "radio": tcbadge.RUN.get("radio"),
                "provisioned": self.prov.provisioned(),
                "stats": stats() if stats is not None else None,
                "log": {"days": s["days"], "records": s["records"], "first": s["first"],
                        "last": s["last"], "unacked_bytes": s["unacked_bytes"],
                        "cut_bytes": log.cut_bytes, "generation": "%08x" % s["generation"]}}

    def set_time(self, unix):
        if not isinstance(unix, int) or unix < 1577836800:
            raise ValueError("time must be Unix seconds")
        drift = self.clock.set(unix)
        return {"ok": True, "drift_s": drift}

    def segments(self):
        out = []
        log = self._log()
        if self.app is not None:
            # a locked badge's sync runs beside tracing: it starts by writing what the app
            # holds (closed records waiting in the write buffer, open ones closed here), as
            # the app does when a developer-mode host breaks in
            log.flush(True)
        for day, size, acked in log.segments():
            v, gen = log.info(day)  # format version; generation (v2), a new one per file
            out.append({"day": day, "size": size, "acked": acked, "v": v,
                        "gen": "%08x" % gen if v == 2 else None})
        return {"segments": out}

    def read(self, day, off, n):
        if not isinstance(day, int) or not isinstance(off, int) or not isinstance(n, int):
            raise ValueError("day, off and n must be integers")
        if off < 0 or n < 0:
            raise ValueError("negative offset or length")
        p = self.root + "/log/" + str(day) + ".tcl"
        if fsutil.size(p) < 0:
            raise ValueError("no segment for day %d" % day)
        if n > _MAX_READ:
            n = _MAX_READ
        with open(p, "rb") as f:
            f.seek(off)
            return f.read(n)

    def ack(self, day, off):
        if not isinstance(day, int) or not isinstance(off, int):
            raise ValueError("day and off must be integers")
        deleted = self._log().ack(day, off, self.clock.now() // 86400 if self.clock.is_set() else day + 1)
        return {"ok": True, "deleted": deleted}

    def button(self):
        # (machine.Pin, active level) of the consent button, (None, 0) without one.
        b = self.prov.profile().get("button")
        if not b:
            return None, 0
        import machine

        pull = b.get("pull", "up")
        if pull == "up":
            pin = machine.Pin(b["pin"], machine.Pin.IN, machine.Pin.PULL_UP)
        elif pull == "down":
            pin = machine.Pin(b["pin"], machine.Pin.IN, machine.Pin.PULL_DOWN)
        else:  # input-only pins (GPIO34-39) have no internal pull resistors
            pin = machine.Pin(b["pin"], machine.Pin.IN)
        return pin, b.get("active", 0)

    def export_wait_ms(self, wait_ms):
        # The checks before waiting for consent; returns the capped wait.
        if not isinstance(wait_ms, int) or wait_ms < 0:
            raise ValueError("wait_ms must be a non-negative integer")
        if wait_ms > _MAX_WAIT_MS:
            wait_ms = _MAX_WAIT_MS
        if not self.clock.is_set():
            raise HostError("clock", "clock not set")
        return wait_ms

    def keys(self):
        ks = keystore.KeyStore(self.root)
        keys = []
        for rsin, tek, period in ks.export(self.clock.now() // 600):
            keys.append({"key_data": binascii.hexlify(tek).decode(),
                         "rolling_start_interval_number": rsin, "rolling_period": period})
        return {"keys": keys}

    def set_health(self, code):
        self._health().set(code)
        return {"ok": True}

    def configure(self, js):
        changes = _obj(js)
        cfg = config.validate(changes, self.prov.config())
        self.prov.data["config"] = cfg
        self.prov.save()
        return {"ok": True, "config": cfg}


class Host:
    _session = 0  # the newest session; older Host objects lose their authentication

    def __init__(self, root=""):
        self.root = root
        self._nonce = None
        self._authed = False
        self._auth_t = 0
        self._sid = self._new_session()
        self.core = Core(root)
        self.prov = self.core.prov
        self.clock = self.core.clock

    @staticmethod
    def _new_session():
        Host._session = (Host._session + 1) & 0x3FFFFFFF
        return Host._session

    def _grant(self):
        self._authed = True
        self._auth_t = time.ticks_ms()

    def _is_authed(self):
        if not self._authed:
            return False
        if self._sid != Host._session or time.ticks_diff(time.ticks_ms(), self._auth_t) > _AUTH_IDLE_MS:
            self._authed = False  # for good: a new hello() and auth() are needed
            return False
        return True

    def _call(self, fn, need_auth, args, kw):
        # Every public method takes any arguments and comes here: a wrong number or kind of
        # argument is one "input" error line like any other bad input, never a traceback.
        if need_auth:
            if not self._is_authed():
                _err("auth", "authenticate first")
                return
            self._auth_t = time.ticks_ms()
        tcbadge.RUN["host_busy"] = 1  # the resume watch (watch.py) never cuts a call short
        try:
            r = fn(*args, **kw)
            if isinstance(r, dict):
                _out(r)
            elif r is not None:
                # b2a_base64 ends with a newline: the one line `read` prints.
                sys.stdout.write(binascii.b2a_base64(r).decode())
        except Exception as e:
            code, msg = error_reply(e)
            _err(code, msg)
        finally:
            tcbadge.RUN["host_busy"] = 0
            t = tcbadge.RUN["host_t"] = time.ticks_ms()
            if need_auth and self._authed:
                self._auth_t = t  # the idle time counts from the end of a (long) call

    # -- no authentication
    def hello(self, *a, **kw):
        self._call(self._hello, False, a, kw)

    def _hello(self):
        # A new session: this object's earlier authentication and every other Host's end.
        self._authed = False
        self._sid = self._new_session()
        self._nonce = os.urandom(16)
        i = self.core.info()
        return {"proto": PROTO, "fw": i["fw"], "id": i["id"], "board": i["board"],
                "provisioned": i["provisioned"], "nonce": binascii.hexlify(self._nonce).decode()}

    def auth(self, *a, **kw):
        self._call(self._auth, False, a, kw)

    def _auth(self, mac_hex):
        secret = self.prov.secret()
        nonce = self._nonce
        self._nonce = None  # one attempt per nonce
        if secret is None or nonce is None:
            raise HostError("auth", "no pairing secret or no nonce (call hello first)")
        want = crypto.hmac_sha256(secret, b"tc-auth-v1" + nonce + self.prov.badge_id().encode())
        try:
            got = binascii.unhexlify(mac_hex)
        except ValueError:
            got = b""
        if same(want, got) and self._sid == Host._session:
            self._grant()
            return {"ok": True}
        raise HostError("auth", "wrong MAC")

    def provision(self, *a, **kw):
        if self.prov.provisioned() and not self._is_authed():
            _err("auth", "already provisioned; authenticate first")
            return
        self._call(self._provision, False, a, kw)

    def _provision(self, js):
        r = self.core.provision(js)
        self._sid = self._new_session()  # sessions opened before this secret existed end
        self._grant()
        return r

    def status(self, *a, **kw):
        self._call(self.core.status, False, a, kw)

    # -- authenticated
    def set_time(self, *a, **kw):
        self._call(self.core.set_time, True, a, kw)

    def segments(self, *a, **kw):
        self._call(self.core.segments, True, a, kw)

    def read(self, *a, **kw):
        self._call(self.core.read, True, a, kw)

    def ack(self, *a, **kw):
        self._call(self.core.ack, True, a, kw)

    def export_keys(self, *a, **kw):
        self._call(self._export_keys, True, a, kw)

    def _export_keys(self, wait_ms=30000):
        wait_ms = self.core.export_wait_ms(wait_ms)
        pin, active = self.core.button()
        if pin is None:
            raise HostError("no-consent", "board has no button")
        hl = health.Health(self.prov.profile(), self.root)
        pressed = False
        start = time.ticks_ms()
        blink = 0
        while time.ticks_diff(time.ticks_ms(), start) <= wait_ms:
            if pin.value() == active:
                pressed = True
                break
            blink += 1
            if blink % 25 == 0:  # blink the LED while waiting for consent
                hl.show("off" if (blink // 25) % 2 else hl.code)
            time.sleep_ms(_POLL_MS)
        hl.show()
        if not pressed:
            raise HostError("no-consent", "button not pressed within %d ms" % wait_ms)
        return self.core.keys()

    def set_health(self, *a, **kw):
        self._call(self.core.set_health, True, a, kw)

    def configure(self, *a, **kw):
        self._call(self.core.configure, True, a, kw)
