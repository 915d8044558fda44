# Small file helpers: atomic replace (write a temp file, then rename; rename is atomic on
# littlefs), existence checks and directory creation, over MicroPython's os module.
import os


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_atomic(path, data):
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    # Windows-free world: rename over an existing file replaces it atomically on littlefs
    # and POSIX; MicroPython's VFS also accepts it.
    os.rename(tmp, path)


def remove(path):
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def free_bytes(path):
    try:
        st = os.statvfs(path)
        return st[0] * st[3], st[0] * st[2]
    except (OSError, AttributeError):
        return -1, -1
