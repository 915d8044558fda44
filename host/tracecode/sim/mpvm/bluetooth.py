# Virtual badge `bluetooth` (runs inside the MicroPython VM): MicroPython's low-level BLE API
# as the ESP32 (NimBLE) build behaves; the air and the other badges are in the host.
import _vmcore as _vm
from micropython import const
import os
import sys

FLAG_BROADCAST = const(0x0001)
FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
_EPERM = const(1)
_EINVAL = const(22)
_EALREADY = const(114)
_EBUSY = const(16)


class UUID:
    def __init__(self, v):
        if isinstance(v, int):
            if not 0 <= v <= 0xFFFF:
                raise ValueError("invalid UUID")
            self._b = bytes((v & 0xFF, v >> 8))
        elif isinstance(v, str):
            h = v.replace("-", "")
            if len(h) != 32:
                raise ValueError("invalid UUID")
            self._b = bytes(reversed(bytes.fromhex(h)))
        else:
            b = bytes(v)
            if len(b) not in (2, 4, 16):
                raise ValueError("invalid UUID")
            self._b = b

    def __bytes__(self):
        return self._b

    def __eq__(self, o):
        return isinstance(o, UUID) and o._b == self._b

    def __hash__(self):
        return hash(self._b)

    def __repr__(self):
        if len(self._b) == 2:
            return "UUID(0x%04x)" % (self._b[0] | self._b[1] << 8)
        return "UUID(%s)" % repr(self._b)


_ble = None


class BLE:
    def __new__(cls, *a):
        global _ble
        if _ble is None:
            o = object.__new__(cls)
            o._active = False
            o._handler = None
            o._adv = False
            o._scan = False
            o._addr_mode = 0
            o._addr_type = 0
            o._addr = bytes.fromhex(_vm.cfg["mac"])
            o._public = o._addr
            o._name = b"MPY ESP32"
            o._mtu = 23
            o._rxbuf = 1024
            o._adv_data = b""
            o._resp_data = b""
            # scan results point into this buffer, reused by the next event (as modbluetooth.c)
            o._buf = bytearray(6 + 31)
            o._mv = memoryview(o._buf)
            _ble = o
        return _ble

    def __init__(self, *a):
        pass

    def active(self, *a):
        if not a:
            return self._active
        on = bool(a[0])
        if on and not self._active:
            self._active = True
            self._apply_addr_mode()
            _vm.call(["ble", 1])
        elif not on and self._active:
            self._active = False
            self._adv = False
            self._scan = False
            _vm.call(["ble", 0])
        return self._active

    def _need_active(self):
        if not self._active:
            raise OSError(_EPERM)

    def _apply_addr_mode(self):
        m = self._addr_mode
        if m == 0:
            self._addr_type = 0
            self._addr = self._public
        else:
            b = bytearray(os.urandom(6))
            if m == 1:
                b[0] |= 0xC0           # static random
            else:
                b[0] &= 0x3F           # resolvable/non-resolvable private
            self._addr_type = 1
            self._addr = bytes(b)
        if self._active:
            _vm.call(["addr", self._addr_type, self._addr.hex()])

    def config(self, *a, **kw):
        if a and kw:
            raise TypeError("can't specify pos and kw args")
        if a:
            if len(a) != 1:
                raise TypeError("must query one param")
            k = a[0]
            if k == "mac":
                self._need_active()
                return (self._addr_type, self._addr)
            if k == "gap_name":
                return self._name
            if k == "mtu":
                return self._mtu
            if k == "rxbuf":
                return self._rxbuf
            raise ValueError("unknown config param")
        for k, v in kw.items():
            if k == "gap_name":
                self._name = bytes(v, "utf-8") if isinstance(v, str) else bytes(v)
            elif k == "mtu":
                self._mtu = int(v)
            elif k == "rxbuf":
                self._rxbuf = int(v)
            elif k == "addr_mode":
                self._need_active()
                if self._adv or self._scan:
                    raise OSError(_EBUSY)
                if not 0 <= int(v) <= 3:
                    raise ValueError("invalid addr_mode")
                self._addr_mode = int(v)
                self._apply_addr_mode()
            elif k in ("io", "bond", "mitm", "le_secure"):
                pass
            else:
                raise ValueError("unknown config param")
        return None

    def irq(self, handler):
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")
        self._handler = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self._need_active()
        if adv_data is not None:
            d = bytes(adv_data)
            if len(d) > 31:
                raise OSError(_EINVAL)
            self._adv_data = d
        if resp_data is not None:
            r = bytes(resp_data)
            if len(r) > 31:
                raise OSError(_EINVAL)
            self._resp_data = r
        if interval_us is None:
            self._adv = False
            _vm.call(["adv", None])
            return
        iv = int(interval_us)
        if iv < 20000:
            raise OSError(_EINVAL)
        # the stack's answer: an errno when it refused (ble_hs_err_to_errno; the host's fault
        # injection, VMBadge.inject_fault), advertising then being off
        err = _vm.call(["adv", iv, self._adv_data.hex(), 1 if connectable else 0])
        self._adv = not err
        if err:
            raise OSError(err)

    def gap_scan(self, *a):
        # positional only, like the C function (MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN 2..5)
        if not a or len(a) > 4:
            raise TypeError("function takes 2 to 5 positional arguments")
        self._need_active()
        if a[0] is None:
            if self._scan:
                self._scan = False
                _vm.call(["scan", None])
            return
        duration = int(a[0])
        interval = int(a[1]) if len(a) > 1 else 1280000
        window = int(a[2]) if len(a) > 2 else 11250
        active = bool(a[3]) if len(a) > 3 else False
        if self._scan:
            raise OSError(_EALREADY)
        if window > interval:
            raise OSError(_EINVAL)
        err = _vm.call(["scan", duration, interval, window, 1 if active else 0])
        if err:
            raise OSError(err)      # the stack refused (VMBadge.inject_fault): no scan
        self._scan = True

    def gap_connect(self, *a, **kw):
        raise OSError(_EPERM)

    def gap_disconnect(self, *a):
        return False

    def gatts_register_services(self, services):
        self._need_active()
        out = []
        h = 1
        for svc in services:
            hs = []
            for _ch in svc[1]:
                hs.append(h)
                h += 2
            out.append(tuple(hs))
        return tuple(out)

    def gatts_write(self, *a):
        pass

    def gatts_read(self, *a):
        return b""

    def gatts_notify(self, *a):
        pass

    def _call(self, ev, data):
        h = self._handler
        if h is None:
            return
        try:
            h(ev, data)
        except BaseException as e:
            # modbluetooth.c: the exception is printed and the handler is switched off
            self._handler = None
            sys.print_exception(e)


def _scan_result(ev):
    b = _ble
    if b is None or not b._active:
        return
    addr = bytes.fromhex(ev[2])
    data = bytes.fromhex(ev[5])
    buf = b._buf
    buf[0:6] = addr
    n = len(data)
    buf[6:6 + n] = data
    mv = b._mv
    b._call(_IRQ_SCAN_RESULT, (ev[1], mv[0:6], ev[3], ev[4], mv[6:6 + n]))


def _scan_done(ev):
    b = _ble
    if b is None or not b._active:
        return
    b._scan = False
    b._call(_IRQ_SCAN_DONE, None)


_vm.handlers["sr"] = _scan_result
_vm.handlers["sd"] = _scan_done
