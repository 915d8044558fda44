"""Simulated `bluetooth` module (MicroPython's low-level BLE API, NimBLE on ESP32 flavour)."""

from __future__ import annotations

import errno
import types

from .flash import oserror
from .radio import AdvSegment

_IRQ_SCAN_RESULT = 5
_IRQ_SCAN_DONE = 6
ADV_IND = 0
ADV_SCAN_IND = 2


class Radio:
    """A badge's BLE controller: what is on air, what is being scanned. Survives soft resets
    as hardware, but is deactivated by them (as MicroPython deinitialises bluetooth)."""

    def __init__(self, badge):
        self.badge = badge
        self.active = False
        self.public_addr = bytes([0x24, 0x0A, 0xC4]) + badge.unique_id[3:6]
        self.addr_mode = 0
        self.addr = self.public_addr
        self.addr_type = 0
        self.segments: list[AdvSegment] = []
        self.adv_interval_s: float | None = None
        self.adv_data = b""
        self.resp_data = b""
        self.connectable = True
        self.scan = None          # dict while scanning
        self.handler = None
        self.gap_name = b"MPY ESP32"
        self.cfg: dict = {"mtu": 23, "rxbuf": 1024, "io": 3, "mitm": False, "le_secure": False,
                          "bond": False}
        self.stats = {"adv_starts": 0, "adv_seconds": 0.0, "adverts_on_air": 0, "scans": 0,
                      "scan_seconds": 0.0, "scan_results": 0}
        self._buf = bytearray(64)
        badge.fleet.medium.attach(self)

    # -- advertising state on air --------------------------------------------------------------
    def _close_segment(self, now: float) -> None:
        if self.segments and self.segments[-1].end is None:
            seg = self.segments[-1]
            seg.end = now
            dur = max(0.0, now - seg.start)
            self.stats["adv_seconds"] += dur
            self.stats["adverts_on_air"] += int(dur / seg.interval_s)

    def _open_segment(self, now: float) -> None:
        if self.adv_interval_s is None or not self.active:
            return
        self.segments.append(AdvSegment(now, None, self.addr_type, self.addr,
                                        ADV_IND if self.connectable else ADV_SCAN_IND,
                                        bytes(self.adv_data), self.adv_interval_s))

    def _restart_segment(self) -> None:
        now = self.badge.fleet.clock()
        self._close_segment(now)
        self._open_segment(now)

    def new_random_addr(self, static: bool) -> None:
        b = bytearray(self.badge.hw_random(6))
        b[0] = (b[0] & 0x3F) | (0xC0 if static else 0x00)
        self.addr = bytes(b)
        self.addr_type = 1

    def power_off(self) -> None:
        """Deactivate (soft reset, power cut, active(False))."""
        now = self.badge.fleet.clock()
        self._close_segment(now)
        self.adv_interval_s = None
        if self.scan is not None:
            ev = self.scan.get("ev")
            if ev is not None:
                ev.cancel()
            self._finish_scan_stats(now)
            self.scan = None
        self.active = False
        self.handler = None

    # -- scanning ------------------------------------------------------------------------------
    def _finish_scan_stats(self, now: float) -> None:
        if self.scan is not None:
            self.stats["scan_seconds"] += max(0.0, now - self.scan["start"])

    def start_scan(self, duration_ms: int, interval_us: int, window_us: int, active: bool) -> None:
        fleet = self.badge.fleet
        now = fleet.clock()
        end = None if duration_ms == 0 else now + duration_ms / 1000.0
        duty = min(1.0, max(0.0, window_us / interval_us)) if interval_us > 0 else 1.0
        self.scan = {"start": now, "slice": now, "end": end, "duty": duty, "active": active,
                     "ev": None}
        self.stats["scans"] += 1
        self._arm_slice()

    def _arm_slice(self) -> None:
        sc = self.scan
        fleet = self.badge.fleet
        t = sc["slice"] + fleet.medium.params.slice_s
        if sc["end"] is not None:
            t = min(t, sc["end"])
        sc["ev"] = fleet.schedule(t, self._slice_done, sc)

    def _slice_done(self, sc) -> None:
        # driver side: a slice of scanning ended
        if self.scan is not sc:
            return
        fleet = self.badge.fleet
        now = fleet.clock()
        results = fleet.medium.collect(self, sc["slice"], now, sc["duty"])
        sc["slice"] = now
        done = sc["end"] is not None and now >= sc["end"] - 1e-9
        if done:
            self._finish_scan_stats(now)
            self.scan = None
        else:
            self._arm_slice()
        fleet.medium.prune(now - 2 * fleet.medium.params.slice_s - 1)
        if results or done:
            self.badge.cpu.post_irq(self._deliver, results, done)

    def stop_scan(self) -> None:
        # CPU side (gap_scan(None)): report the partial slice, then SCAN_DONE
        sc = self.scan
        fleet = self.badge.fleet
        now = fleet.clock()
        if sc["ev"] is not None:
            sc["ev"].cancel()
        results = fleet.medium.collect(self, sc["slice"], now, sc["duty"])
        self._finish_scan_stats(now)
        self.scan = None
        self.badge.cpu.post_irq(self._deliver, results, True)

    def _deliver(self, results, done: bool) -> None:
        # CPU side: call the IRQ handler like NimBLE does, one result at a time
        handler = self.handler
        if handler is not None and self.active:
            buf = self._buf
            for _t, addr_type, addr, adv_type, rssi, data in results:
                self.stats["scan_results"] += 1
                buf[0:6] = addr
                buf[6:6 + len(data)] = data
                mv = memoryview(buf)
                a = mv[0:6]
                d = mv[6:6 + len(data)]
                try:
                    handler(_IRQ_SCAN_RESULT, (addr_type, a, adv_type, rssi, d))
                finally:
                    a.release()
                    d.release()
                    mv.release()
                    buf[:] = b"\xee" * len(buf)   # the stack reuses its buffer
            if done:
                handler(_IRQ_SCAN_DONE, ())


def build(badge) -> types.ModuleType:
    radio: Radio = badge.radio
    m = types.ModuleType("bluetooth")

    def _require_active():
        if not radio.active:
            raise oserror(errno.EPERM)

    class UUID:
        def __init__(self, value):
            if isinstance(value, UUID):
                self._b = value._b
            elif isinstance(value, int):
                if not 0 <= value <= 0xFFFF:
                    raise ValueError("invalid UUID")
                self._b = value.to_bytes(2, "little")
            elif isinstance(value, str):
                h = value.replace("-", "")
                if len(h) != 32:
                    raise ValueError("invalid UUID")
                self._b = bytes.fromhex(h)[::-1]
            else:
                b = bytes(value)
                if len(b) not in (2, 4, 16):
                    raise ValueError("invalid UUID")
                self._b = b

        def __bytes__(self):
            return self._b

        def __len__(self):
            return len(self._b)

        def __eq__(self, other):
            return isinstance(other, UUID) and other._b == self._b

        def __hash__(self):
            return hash(self._b)

        def __repr__(self):
            if len(self._b) == 2:
                return "UUID(0x%04x)" % int.from_bytes(self._b, "little")
            h = self._b[::-1].hex()
            return "UUID('%s-%s-%s-%s-%s')" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])

        def __buffer__(self, flags):  # pragma: no cover - py3.12+
            return memoryview(self._b)

    class BLE:
        _instance = None

        def __new__(cls):
            if cls._instance is None:
                cls._instance = object.__new__(cls)
            return cls._instance

        def active(self, *args):
            if args:
                flag = bool(args[0])
                if flag and not radio.active:
                    radio.active = True
                    radio.addr = radio.public_addr
                    radio.addr_type = 0
                    radio.addr_mode = 0
                    badge.rng_entropy_on = True
                elif not flag and radio.active:
                    h = radio.handler
                    radio.power_off()
                    radio.handler = h
            return radio.active

        def config(self, *args, **kwargs):
            if args and kwargs:
                raise TypeError("must query one param")
            if args:
                if len(args) != 1:
                    raise TypeError("must query one param")
                name = args[0]
                if name == "mac":
                    _require_active()
                    return (radio.addr_type, radio.addr)
                if name == "addr_mode":
                    return radio.addr_mode
                if name == "gap_name":
                    return radio.gap_name
                if name in radio.cfg:
                    return radio.cfg[name]
                raise ValueError("unknown config param")
            for k, v in kwargs.items():
                if k == "addr_mode":
                    _require_active()
                    v = int(v)
                    if v not in (0, 1, 2, 3):
                        raise ValueError("invalid addr_mode")
                    radio.addr_mode = v
                    if v == 0:
                        radio.addr, radio.addr_type = radio.public_addr, 0
                    else:
                        radio.new_random_addr(static=(v in (1, 2)))
                    if radio.adv_interval_s is not None:
                        radio._restart_segment()
                elif k == "gap_name":
                    radio.gap_name = v.encode() if isinstance(v, str) else bytes(v)
                elif k == "mac":
                    raise ValueError("unknown config param")
                elif k in radio.cfg:
                    radio.cfg[k] = v
                else:
                    raise ValueError("unknown config param")
            return None

        def irq(self, handler):
            radio.handler = handler

        def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
            _require_active()
            now = badge.fleet.clock()
            if interval_us is None:
                radio._close_segment(now)
                radio.adv_interval_s = None
                return
            if adv_data is not None:
                d = bytes(adv_data)
                if len(d) > 31:
                    raise oserror(errno.EINVAL)
                radio.adv_data = d
            if resp_data is not None:
                r = bytes(resp_data)
                if len(r) > 31:
                    raise oserror(errno.EINVAL)
                radio.resp_data = r
            interval_us = int(interval_us)
            if interval_us < 20000:
                raise oserror(errno.EINVAL)
            radio.connectable = bool(connectable)
            radio.adv_interval_s = interval_us / 1e6
            radio.stats["adv_starts"] += 1
            radio._restart_segment()

        def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
            _require_active()
            if duration_ms is None:
                if radio.scan is None:
                    raise oserror(errno.EALREADY)
                radio.stop_scan()
                return
            if radio.scan is not None:
                raise oserror(errno.EALREADY)
            if window_us > interval_us:
                raise oserror(errno.EINVAL)
            radio.start_scan(int(duration_ms), int(interval_us), int(window_us), bool(active))

        def gap_connect(self, *a, **k):
            raise oserror(errno.EOPNOTSUPP)

        def gap_disconnect(self, *a):
            return False

        def gatts_register_services(self, services):
            raise oserror(errno.EOPNOTSUPP)

    m.BLE = BLE
    m.UUID = UUID
    m.FLAG_BROADCAST = 0x0001
    m.FLAG_READ = 0x0002
    m.FLAG_WRITE_NO_RESPONSE = 0x0004
    m.FLAG_WRITE = 0x0008
    m.FLAG_NOTIFY = 0x0010
    m.FLAG_INDICATE = 0x0020
    m.FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
    m.FLAG_AUX_WRITE = 0x0100
    m.FLAG_READ_ENCRYPTED = 0x0200
    m.FLAG_READ_AUTHENTICATED = 0x0400
    m.FLAG_READ_AUTHORIZED = 0x0800
    m.FLAG_WRITE_ENCRYPTED = 0x1000
    m.FLAG_WRITE_AUTHENTICATED = 0x2000
    m.FLAG_WRITE_AUTHORIZED = 0x4000
    return m
