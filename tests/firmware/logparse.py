# An independent reader of the badge's log segments, written from docs/log-format.md with
# struct (not the firmware's own decoder), for the virtual-badge tests.
import binascii
import struct
from pathlib import Path

HEADER = 16
REC = 32


def parse_segment(data: bytes):
    # -> (day, [records], bad_crc_count). Raises ValueError on a bad header or length.
    if len(data) < HEADER or data[:4] != b"TCLG" or data[4] != 1:
        raise ValueError("bad header")
    day = struct.unpack_from("<I", data, 8)[0]
    if (len(data) - HEADER) % REC:
        raise ValueError("length %d is not 16 + 32n" % len(data))
    out = []
    bad = 0
    for off in range(HEADER, len(data), REC):
        r = data[off: off + REC]
        crc = struct.unpack_from("<H", r, 30)[0]
        if r[0] != 1 or crc != binascii.crc32(r[:30]) & 0xFFFF:
            bad += 1
            continue
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
