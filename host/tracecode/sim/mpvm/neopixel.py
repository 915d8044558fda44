# Virtual badge `neopixel` (runs inside the MicroPython VM): what write() sends goes to the
# host's LED state.
import _vmcore as _vm


class NeoPixel:
    ORDER = (1, 0, 2, 3)

    def __init__(self, pin, n, bpp=3, timing=1):
        self.pin = pin
        self.n = n
        self.bpp = bpp
        self.buf = bytearray(n * bpp)

    def __len__(self):
        return self.n

    def __setitem__(self, i, v):
        off = i * self.bpp
        for j in range(self.bpp):
            self.buf[off + self.ORDER[j]] = v[j]

    def __getitem__(self, i):
        off = i * self.bpp
        return tuple(self.buf[off + self.ORDER[j]] for j in range(self.bpp))

    def fill(self, v):
        for i in range(self.n):
            self[i] = v

    def write(self):
        pid = self.pin._id if hasattr(self.pin, "_id") else int(self.pin)
        _vm.send(["np", pid, [list(self[i]) for i in range(self.n)]])
