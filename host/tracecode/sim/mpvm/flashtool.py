# Runs INSIDE the MicroPython VM, offline (badge powered off): make, fill and read a virtual
# badge's littlefs image with MicroPython's own littlefs (vfs.VfsLfs2).
# usage: flashtool.py IMAGE BLOCKS mkfs | put HOSTSRC DEST | get SRC HOSTDEST | ls | df | stat PATH
# Exit status 3: the path is not on the flash (the host's FileNotFoundError).
import sys
import os
import vfs
import json
from _flashdev import FlashDev

_DIR = const(0x4000)


def _isdir(p):
    try:
        return os.stat(p)[0] & _DIR != 0
    except OSError:
        return False


def _mkdirs(p):
    parts = [x for x in p.split("/") if x]
    cur = ""
    for x in parts:
        cur += "/" + x
        if not _isdir(cur):
            os.mkdir(cur)


def _copy(src, dst):
    if _isdir(src):
        if not _isdir(dst):
            os.mkdir(dst)
        for ent in os.ilistdir(src):
            name = ent[0]
            if name in ("__pycache__",) or name.endswith(".pyc"):
                continue
            _copy(src.rstrip("/") + "/" + name, dst.rstrip("/") + "/" + name)
        return
    buf = bytearray(4096)
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf[:n] if n < len(buf) else buf)


def _tree(p, out):
    for ent in os.ilistdir(p):
        full = (p.rstrip("/") + "/" + ent[0])
        if ent[1] == _DIR:
            out.append([full[6:] or "/", -1])
            _tree(full, out)
        else:
            out.append([full[6:], os.stat(full)[6]])


_ENOENT = const(2)
_EXIT_MISSING = const(3)


def main():
    image, blocks, op = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    dev = FlashDev(image, blocks)
    if op == "mkfs":
        vfs.VfsLfs2.mkfs(dev)
        return
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    if op == "put":
        dst = "/flash" + sys.argv[5]
        if _isdir(sys.argv[4]):
            _mkdirs(dst)
        else:
            _mkdirs(dst.rsplit("/", 1)[0])
        _copy(sys.argv[4], dst.rstrip("/") or "/flash")
    elif op == "get" or op == "stat":
        try:
            os.stat("/flash" + sys.argv[4])
        except OSError as e:
            if e.errno == _ENOENT:
                vfs.umount("/flash")
                sys.exit(_EXIT_MISSING)
            raise
        if op == "get":
            _copy("/flash" + sys.argv[4], sys.argv[5])
    elif op == "ls":
        out = []
        _tree("/flash", out)
        print(json.dumps(out))
    elif op == "df":
        st = os.statvfs("/flash")
        print(json.dumps([st[0], st[2], st[3]]))
    vfs.umount("/flash")


main()
