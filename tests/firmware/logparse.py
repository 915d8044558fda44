# An independent reader of the badge's log segments, written from docs/log-format.md with
# struct (not the firmware's or the station's decoder), for the virtual-badge tests.
# v1: one 32-byte record per RPI per scan. v2: one record per RPI over its lifetime; each
# of its scan entries is returned as one dict like a v1 record (rpi = the 8-byte prefix,
# count 0 = not recorded, rssi_min = the typical value, first = last = the scan's time).
import binascii
import struct
from pathlib import Path

HEADER = 16
REC = 32
PREFIX = 8


def _crc(b):
    return binascii.crc32(b) & 0xFFFF


def parse_v2(data: bytes, day: int):
    # -> ([per-scan dicts], bad, end): `end` is where the last good record ends.
    out, bad, pos = [], 0, HEADER
    while pos < len(data):
        if len(data) - pos >= 4:
            t, n = data[pos], data[pos + 1]
            ok = (4 <= n <= len(data) - pos and t in (0, 2)
                  and (t == 0 or (n >= 22 and (n - 19) % 3 == 0))
                  and struct.unpack_from("<H", data, pos + n - 2)[0] == _crc(data[pos:pos + n - 2]))
        else:
            ok = False
        if not ok:
            bad += 1
            break
        if t == 2:
            t0 = day * 86400 + int.from_bytes(data[pos + 2:pos + 5], "little")
            rpi, aem = data[pos + 5:pos + 13], data[pos + 13:pos + 17]
            acc = 0
            for q in range(pos + 17, pos + n - 2, 3):
                d, typ, mx = struct.unpack_from("<Bbb", data, q)
                acc += d
                out.append({"rpi": bytes(rpi), "aem": bytes(aem), "first": t0 + 2 * acc,
                            "last": t0 + 2 * acc, "count": 0, "rssi_min": typ,
                            "rssi_max": mx, "rssi_mean": typ, "record": (day, pos)})
        pos += n
    return out, bad, pos


def parse_segment(data: bytes):
    # -> (day, [records], bad_crc_count). Raises ValueError on a bad header or length.
    if len(data) < HEADER or data[:4] != b"TCLG" or data[4] not in (1, 2):
        raise ValueError("bad header")
    day = struct.unpack_from("<I", data, 8)[0]
    if data[4] == 2:
        if data[5] != PREFIX:
            raise ValueError("bad RPI prefix length")
        out, bad, _ = parse_v2(data, day)
        return day, out, bad
    if (len(data) - HEADER) % REC:
        raise ValueError("length %d is not 16 + 32n" % len(data))
    out = []
    bad = 0
    for off in range(HEADER, len(data), REC):
        r = data[off: off + REC]
        crc = struct.unpack_from("<H", r, 30)[0]
        if crc != _crc(r[:30]) or r[0] not in (0, 1):
            bad += 1
            continue
        if r[0] == 0:
            continue  # a pad record written over a torn tail
        first = day * 86400 + (r[21] | r[22] << 8 | r[23] << 16)
        dur = struct.unpack_from("<H", r, 24)[0]
        rmin, rmax, rmean = struct.unpack_from("<bbb", r, 27)
        out.append({"rpi": bytes(r[1:17]), "aem": bytes(r[17:21]), "first": first,
                    "last": first + dur, "count": r[26], "rssi_min": rmin,
                    "rssi_max": rmax, "rssi_mean": rmean})
    return day, out, bad


def read_log(flash: Path):
    recs = []
    for p in sorted((flash / "log").glob("*.tcl")):
        day, rs, bad = parse_segment(p.read_bytes())
        assert bad == 0, p
        assert int(p.stem) == day
        recs += rs
    return recs


def read_keys(flash: Path):
    raw = (flash / "tc" / "keys.bin").read_bytes()
    return [(struct.unpack_from("<I", raw, i)[0], raw[i + 4: i + 20]) for i in range(0, len(raw), 20)]
