# Virtual badge `select` (runs inside the MicroPython VM): the real poll object, but a wait
# with a timeout lets the fleet's virtual time run (lock-step with the host) instead of
# sleeping on the host clock. This is what asyncio's event loop waits in.
import sys
_p = sys.path
sys.path = []
try:
    from select import poll as _poll, POLLIN, POLLOUT, POLLERR, POLLHUP
finally:
    sys.path = _p
del _p
import _vmcore as _vm


class poll:
    def __init__(self):
        self._p = _poll()
        self._in = {}

    def register(self, obj, mask=POLLIN | POLLOUT):
        self._p.register(obj, mask)
        self._in[id(obj)] = (obj, mask)

    def modify(self, obj, mask):
        self._p.modify(obj, mask)
        self._in[id(obj)] = (obj, mask)

    def unregister(self, obj):
        self._p.unregister(obj)
        self._in.pop(id(obj), None)

    def _wants_input(self):
        si = sys.stdin
        sb = getattr(si, "buffer", None)
        for obj, mask in self._in.values():
            if mask & POLLIN and (obj is si or obj is sb):
                return True
        return False

    def ipoll(self, timeout=-1, flags=0):
        until = None if timeout is None or timeout < 0 else _vm.now_ms() + timeout
        while True:
            _vm.dispatch()
            if not self._in:
                # nothing registered (asyncio idle between sleeps): no allocation
                if until is not None and _vm.now_ms() >= until:
                    return ()
                _vm.wait(until, False)
                continue
            res = [(o, e) for o, e in self._p.ipoll(0, flags)]
            if res:
                return res
            if until is not None and _vm.now_ms() >= until:
                return res
            _vm.wait(until, self._wants_input())

    def poll(self, timeout=-1):
        return self.ipoll(timeout)
