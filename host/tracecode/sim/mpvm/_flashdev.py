# Runs INSIDE the MicroPython VM: a virtual badge's flash partition as littlefs sees it
# (vfs.VfsLfs2 block device, extended interface): 4 KiB erase blocks in one host file.
# Erased flash reads 0xFF. It can be told to lose power inside its Nth program/erase: that
# write lands torn (a random prefix of it) and `on_cut` never returns.
import os

_BS = const(4096)


class FlashDev:
    def __init__(self, path, nblocks, cut_after=None, on_cut=None):
        self.f = open(path, "r+b")
        self.n = nblocks
        self.left = cut_after
        self.on_cut = on_cut
        self.writes = 0
        self.ff = b"\xff" * _BS

    def _program(self, pos, data):
        if self.left is not None:
            if self.left <= 0:
                r = os.urandom(2)
                k = (r[0] << 8 | r[1]) % (len(data) + 1)
                self.f.seek(pos)
                self.f.write(data[:k])
                self.on_cut()
            self.left -= 1
        self.writes += 1
        self.f.seek(pos)
        self.f.write(data)

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * _BS + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        self._program(n * _BS + (0 if off is None else off), buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return _BS
        if op == 6:
            self._program(arg * _BS, self.ff)
        return 0
