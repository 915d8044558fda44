"""A badge's flash file system: a host folder with littlefs-like limits.

Sizes are accounted in 4096-byte blocks (2 blocks per directory, at least one per file, two
for the root), so a badge of `capacity` bytes runs out of space like a littlefs partition
(OSError 28, ENOSPC; the failed write changes nothing). Writes go straight to the host file,
so a power cut keeps exactly what was written, including a torn last write when the cut is
armed with `cut_after_bytes`.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Callable

from .core import PowerCut

BLOCK = 4096


def oserror(code: int) -> OSError:
    """An OSError that prints like MicroPython's: `OSError: [Errno 2] ENOENT`."""
    return OSError(code, errno.errorcode.get(code, str(code)))


def log_segments(folder: str | os.PathLike) -> dict[int, bytes]:
    """day -> bytes of each non-empty DAY.tcl in a host folder (a badge's /log)."""
    out: dict[int, bytes] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in sorted(names):
        if name.endswith(".tcl") and name[:-4].isdigit():
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            if data:
                out[int(name[:-4])] = data
    return out


class FlashFS:
    def __init__(self, root: str | os.PathLike, capacity: int = 2 * 1024 * 1024):
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self.capacity = capacity
        self.dead = False
        self.cut_after: int | None = None
        self.on_cut: Callable[[], None] = lambda: None
        self.bytes_written = 0
        self.cwd = "/"
        self._sizes: dict[str, int] = {}
        self._dirs: set[str] = set()
        self.rescan()

    # -- accounting ----------------------------------------------------------------------------
    def rescan(self) -> None:
        self._sizes.clear()
        self._dirs.clear()
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = "/" + os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "/" if rel == "/." else rel
            if rel != "/":
                self._dirs.add(rel)
            for f in filenames:
                p = posixpath.join(rel, f)
                try:
                    self._sizes[p] = os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass

    def used_blocks(self, override: tuple[str, int] | None = None) -> int:
        n = 2 + 2 * len(self._dirs)
        sizes = self._sizes
        for p, s in sizes.items():
            if override is not None and p == override[0]:
                continue
            n += max(1, -(-s // BLOCK))
        if override is not None:
            n += max(1, -(-override[1] // BLOCK))
        return n

    def total_blocks(self) -> int:
        return self.capacity // BLOCK

    def free_bytes(self) -> int:
        return max(0, self.total_blocks() - self.used_blocks()) * BLOCK

    def set_free(self, free_bytes: int) -> None:
        """Shrink (or grow) the partition so that about `free_bytes` remain free."""
        self.capacity = (self.used_blocks() + max(0, free_bytes) // BLOCK) * BLOCK

    # -- paths ---------------------------------------------------------------------------------
    def abspath(self, path: str) -> str:
        if not isinstance(path, str):
            raise TypeError("can't convert to str implicitly")
        p = posixpath.normpath(posixpath.join(self.cwd, path)) if path else self.cwd
        if p.startswith("//"):
            p = p[1:]
        return p if p.startswith("/") else "/" + p

    def host(self, path: str) -> str:
        p = self.abspath(path)
        parts = [x for x in p.split("/") if x and x != ".."]
        return os.path.join(self.root, *parts)

    # -- the host's view of the files (the same calls on VMFlash: tests use either backend) ---
    def read(self, path: str) -> bytes:
        """A file's bytes (FileNotFoundError if the badge has no such file)."""
        with open(self.host(path), "rb") as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        """Put a file on the flash while the badge is off (parent folders made)."""
        h = self.host(path)
        os.makedirs(os.path.dirname(h), exist_ok=True)
        with open(h, "wb") as f:
            f.write(data)
        self.rescan()

    def exists(self, path: str) -> bool:
        return os.path.exists(self.host(path))

    def files(self) -> dict[str, int]:
        """Path -> size (-1 for folders), as VMFlash.files() reports them."""
        out: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else "/" + rel.replace(os.sep, "/")
            for d in dirnames:
                out[base + "/" + d] = -1
            for f in filenames:
                out[base + "/" + f] = os.path.getsize(os.path.join(dirpath, f))
        return dict(sorted(out.items()))

    def segments(self) -> dict[int, bytes]:
        """The encounter log: day -> bytes of each non-empty /log/DAY.tcl."""
        return log_segments(self.host("/log"))

    def check_alive(self) -> None:
        if self.dead:
            raise PowerCut()

    # -- power cut -----------------------------------------------------------------------------
    def account_write(self, path: str, new_size: int) -> None:
        if self.used_blocks((path, new_size)) > self.total_blocks():
            raise oserror(errno.ENOSPC)

    def write_budget(self, n: int) -> int:
        """How many of `n` bytes may be written before an armed power cut (n if none)."""
        if self.cut_after is None:
            return n
        return max(0, min(n, self.cut_after))

    def note_written(self, n: int) -> None:
        self.bytes_written += n
        if self.cut_after is not None:
            self.cut_after -= n

    def open(self, path: str, mode: str = "r", *args, **kwargs):
        self.check_alive()
        ap = self.abspath(path)
        hp = self.host(path)
        if not mode or any(c not in "rwabxt+" for c in mode):
            raise ValueError("invalid mode")
        binary = "b" in mode
        if os.path.isdir(hp):
            raise oserror(errno.EISDIR)
        parent = os.path.dirname(hp)
        if not os.path.isdir(parent):
            raise oserror(errno.ENOENT)
        pymode = mode.replace("t", "")
        if "b" not in pymode:
            pymode += "b"
        creating = any(c in mode for c in "wax") and not os.path.exists(hp)
        if creating or "w" in mode:
            self.account_write(ap, 0)
        try:
            f = open(hp, pymode, buffering=0)
        except FileExistsError:
            raise oserror(errno.EEXIST) from None
        except FileNotFoundError:
            raise oserror(errno.ENOENT) from None
        except OSError as e:
            raise oserror(e.errno or errno.EIO) from None
        if creating or "w" in mode:
            self._sizes[ap] = os.path.getsize(hp)
        return FlashFile(self, ap, f, binary, "a" in mode)


class FlashFile:
    """A file on the badge's flash (MicroPython's FileIO / TextIOWrapper)."""

    def __init__(self, fs: FlashFS, path: str, f, binary: bool, append: bool):
        self._fs = fs
        self._path = path
        self._f = f
        self._binary = binary
        self._append = append
        self.closed = False

    def _check(self) -> None:
        self._fs.check_alive()
        if self.closed:
            raise oserror(errno.EBADF)

    def write(self, data) -> int:
        self._check()
        if isinstance(data, str):
            if self._binary:
                raise TypeError("object with buffer protocol required")
            data = data.encode()
        elif not self._binary:
            raise TypeError("can't convert 'bytes' object to str implicitly")
        data = bytes(data)
        pos = self._f.seek(0, 2) if self._append else self._f.tell()
        old = self._fs._sizes.get(self._path, 0)
        new_size = max(old, pos + len(data))
        self._fs.account_write(self._path, new_size)
        n = self._fs.write_budget(len(data))
        if n:
            self._f.write(data[:n])
        self._fs._sizes[self._path] = max(old, pos + n)
        self._fs.note_written(n)
        if n < len(data):
            self._fs.dead = True
            self._fs.on_cut()
            raise PowerCut()
        return len(data)

    def read(self, n: int = -1):
        self._check()
        b = self._f.read() if n is None or n < 0 else self._f.read(n)
        return b if self._binary else b.decode()

    def readinto(self, buf, n: int | None = None) -> int:
        self._check()
        mv = memoryview(buf).cast("B")
        if n is not None:
            mv = mv[:n]
        return self._f.readinto(mv) or 0

    def readline(self, limit: int = -1):
        self._check()
        b = self._f.readline(limit)
        return b if self._binary else b.decode()

    def readlines(self):
        return list(iter(self.readline, b"" if self._binary else ""))

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, off: int, whence: int = 0) -> int:
        self._check()
        return self._f.seek(off, whence)

    def tell(self) -> int:
        self._check()
        return self._f.tell()

    def flush(self) -> None:
        self._check()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._f.close()
            self._fs.check_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._f.close()
        except Exception:  # noqa: BLE001
            pass
