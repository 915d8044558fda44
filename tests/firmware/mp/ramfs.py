# Test shim: a RAM file system mounted into the MicroPython VM (the WASI build has no
# writable directory), so the encounter-log checks do real file I/O through MicroPython's
# VFS layer. `tear` simulates a power cut: the next write only lands `tear` bytes.
class RamFile:
    def __init__(self, fs, path, data, pos):
        self.fs = fs
        self.path = path
        self.data = data
        self.pos = pos

    def read(self, n=-1):
        end = len(self.data) if n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out

    def readinto(self, buf):
        b = self.read(len(buf))
        buf[0:len(b)] = b
        return len(b)

    def write(self, b):
        b = bytes(b)
        if self.fs.tear >= 0:
            b = b[:self.fs.tear]
            self.fs.tear = -1
            self.fs.cut = True
        if self.fs.used() + len(b) > self.fs.capacity:
            raise OSError(28)
        end = self.pos + len(b)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[self.pos:end] = b
        self.pos = end
        if self.fs.cut:
            raise OSError(5)  # the power went: nothing after this happens
        return len(b)

    def seek(self, off, whence=0):
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else len(self.data) + off)
        return self.pos

    def tell(self):
        return self.pos

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class RamFS:
    def __init__(self, capacity=1 << 20):
        self.files = {}
        self.dirs = {"": True}
        self.capacity = capacity
        self.tear = -1
        self.cut = False

    def used(self):
        n = 0
        for k in self.files:
            n += len(self.files[k])
        return n

    def _p(self, path):
        return path.strip("/")

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        p = self._p(path)
        if "w" in mode:
            self.files[p] = bytearray()
        elif p not in self.files:
            if "a" in mode:
                self.files[p] = bytearray()
            else:
                raise OSError(2)
        data = self.files[p]
        return RamFile(self, p, data, len(data) if "a" in mode else 0)

    def ilistdir(self, path):
        d = self._p(path)
        pre = d + "/" if d else ""
        out = []
        for k in self.files:
            if k.startswith(pre) and "/" not in k[len(pre):]:
                out.append((k[len(pre):], 0x8000, 0, len(self.files[k])))
        for k in self.dirs:
            if k and k.startswith(pre) and "/" not in k[len(pre):]:
                out.append((k[len(pre):], 0x4000, 0, 0))
        return iter(out)

    def stat(self, path):
        p = self._p(path)
        if p in self.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.files[p]), 0, 0, 0)
        if p in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        raise OSError(2)

    def statvfs(self, path):
        free = (self.capacity - self.used()) // 512
        return (512, 512, self.capacity // 512, free, free, 0, 0, 0, 0, 255)

    def mkdir(self, path):
        p = self._p(path)
        if p in self.dirs:
            raise OSError(17)
        self.dirs[p] = True

    def remove(self, path):
        p = self._p(path)
        if p not in self.files:
            raise OSError(2)
        del self.files[p]

    def rename(self, a, b):
        a = self._p(a)
        self.files[self._p(b)] = self.files.pop(a)

    def rmdir(self, path):
        del self.dirs[self._p(path)]

    def chdir(self, path):
        pass

    def getcwd(self):
        return "/"
