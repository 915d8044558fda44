"""Encounter log segments as the badge writes them (docs/log-format.md, versions 1 and 2).

A v1 segment holds one 32-byte record per RPI per scan. A v2 segment holds one
variable-length record per RPI over its lifetime (8-byte RPI prefix, AEM, one 3-byte entry
per scan). Both decode to the same per-scan `Encounter`s: a v2 entry becomes one Encounter
whose `raw` is a 32-byte v1-layout row of type 0x02 (RPI prefix zero-padded, CRC computed
here after the badge record's own CRC was verified), so the database keeps one row per scan
as before and `crc_ok` keeps checking every stored row.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from typing import Callable

MAGIC = b"TCLG"
FORMAT_VERSION = 2
VERSIONS = (1, 2)
HEADER_SIZE = 16
RECORD_SIZE = 32  # v1 record, and the database row of every version
REC_ENCOUNTER = 0x01
REC_PAD = 0x00
ROW_V2 = 0x02  # database row derived from a v2 record entry
SECONDS_PER_DAY = 86400

RPI_PREFIX = 8
V2_HEAD = 17  # type, length, t0 (u24), RPI prefix, AEM
V2_ENTRY = 3  # offset from the previous scan (2 s units), typical RSSI, max RSSI
V2_PAD_MIN = 4
V2_TYPE_ENC = 0x02
V2_TYPE_PAD = 0x00

_HEADER = struct.Struct("<4sB3xI4x")
_HEADER2 = struct.Struct("<4sBB2xII")
_RECORD_HEAD = struct.Struct("<B16s4s")


@dataclass(frozen=True)
class Encounter:
    """One RPI heard in one scan (first/last seen as Unix seconds)."""

    day: int
    offset: int
    raw: bytes
    rpi: bytes  # 16 bytes (v1) or the 8-byte prefix (v2)
    aem: bytes
    first_seen: int
    duration_s: int
    count: int  # sightings in the scan (v1); 0 = not recorded (v2)
    rssi_min: int  # v2: the typical value (v2 keeps typical and strongest only)
    rssi_max: int
    rssi_mean: int


@dataclass(frozen=True)
class SegmentHeader:
    version: int
    day: int
    generation: int  # v2: random per segment file; v1: 0


def record_crc(rec: bytes) -> int:
    return binascii.crc32(rec[:30]) & 0xFFFF


def crc_ok(rec: bytes) -> bool:
    return len(rec) == RECORD_SIZE and struct.unpack_from("<H", rec, 30)[0] == record_crc(rec)


def encode_header(day: int, version: int = 1, generation: int = 0) -> bytes:
    if version == 1:
        return _HEADER.pack(MAGIC, 1, day)
    return _HEADER2.pack(MAGIC, 2, RPI_PREFIX, day, generation)


def parse_header(data: bytes, day: int) -> SegmentHeader:
    """The header of `day`'s segment; ValueError with the reason when it is not valid."""
    if len(data) < HEADER_SIZE:
        raise ValueError("short header")
    magic, version, hday = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError("bad magic")
    if version not in VERSIONS:
        raise ValueError("unsupported log format version %d" % version)
    if hday != day:
        raise ValueError("header day %d != file day %d" % (hday, day))
    gen = 0
    if version == 2:
        _, _, plen, _, gen = _HEADER2.unpack_from(data, 0)
        if plen != RPI_PREFIX:
            raise ValueError("unsupported RPI prefix length %d" % plen)
    return SegmentHeader(version, day, gen)


def check_header(data: bytes, day: int) -> str | None:
    """None when `data` (16 bytes) is a valid header for `day`, else a reason."""
    try:
        parse_header(data, day)
    except ValueError as exc:
        return str(exc)
    return None


def encode_record(rpi: bytes, aem: bytes, first_s: int, duration_s: int, count: int,
                  rssi_min: int, rssi_max: int, rssi_mean: int, rtype: int = REC_ENCOUNTER) -> bytes:
    """Build a 32-byte v1 record; `first_s` is seconds since the segment's day start."""
    body = (_RECORD_HEAD.pack(rtype, rpi.ljust(16, b"\0"), aem) + first_s.to_bytes(3, "little")
            + struct.pack("<HBbbb", min(duration_s, 0xFFFF), min(count, 255),
                          rssi_min, rssi_max, rssi_mean))
    return body + struct.pack("<H", binascii.crc32(body) & 0xFFFF)


def decode_record(rec: bytes, day: int, offset: int) -> Encounter:
    """A 32-byte v1 record or database row (type 0x01, or 0x02 for a v2-derived row)."""
    rtype, rpi, aem = _RECORD_HEAD.unpack_from(rec, 0)
    if rtype == ROW_V2:
        rpi = rpi[:RPI_PREFIX]
    elif rtype != REC_ENCOUNTER:
        raise ValueError("unknown record type %d" % rtype)
    first = int.from_bytes(rec[21:24], "little")
    dur, count, rmin, rmax, rmean = struct.unpack_from("<HBbbb", rec, 24)
    return Encounter(day, offset, bytes(rec), rpi, aem, day * SECONDS_PER_DAY + first, dur,
                     count, rmin, rmax, rmean)


# ------------------------------------------------------------------------------ v2

def _crc16(data: bytes) -> int:
    return binascii.crc32(data) & 0xFFFF


def v2_record_len(data: bytes, pos: int) -> int:
    """Length of the valid v2 record (encounter or pad) at data[pos:], 0 if there is none."""
    avail = len(data) - pos
    if avail < V2_PAD_MIN:
        return 0
    t, n = data[pos], data[pos + 1]
    if n < V2_PAD_MIN or n > avail:
        return 0
    if t == V2_TYPE_ENC:
        if n < V2_HEAD + V2_ENTRY + 2 or (n - V2_HEAD - 2) % V2_ENTRY:
            return 0
    elif t != V2_TYPE_PAD:
        return 0
    if struct.unpack_from("<H", data, pos + n - 2)[0] != _crc16(data[pos:pos + n - 2]):
        return 0
    return n


def encode_v2(rpi: bytes, aem: bytes, t0_s: int, scans: list[tuple[int, int, int]]) -> bytes:
    """A v2 encounter record; scans = [(delta in 2 s units, typical RSSI, max RSSI)]."""
    body = bytearray([V2_TYPE_ENC, V2_HEAD + V2_ENTRY * len(scans) + 2])
    body += t0_s.to_bytes(3, "little") + rpi[:RPI_PREFIX] + aem
    for d, typ, mx in scans:
        body += struct.pack("<Bbb", d, typ, mx)
    return bytes(body) + struct.pack("<H", _crc16(bytes(body)))


def decode_v2(rec: bytes, day: int, offset: int) -> list[Encounter]:
    """The per-scan Encounters of one valid v2 encounter record."""
    t0 = day * SECONDS_PER_DAY + int.from_bytes(rec[2:5], "little")
    rpi, aem = bytes(rec[5:13]), bytes(rec[13:17])
    out, acc = [], 0
    for p in range(V2_HEAD, len(rec) - 2, V2_ENTRY):
        d, typ, mx = struct.unpack_from("<Bbb", rec, p)
        acc += d
        t = t0 + 2 * acc
        raw = encode_record(rpi, aem, t - day * SECONDS_PER_DAY, 0, 0, typ, mx, typ, rtype=ROW_V2)
        out.append(Encounter(day, offset, raw, rpi, aem, t, 0, 0, typ, mx, typ))
    return out


@dataclass
class Parsed:
    end: int  # offset just past the last whole record parsed (resume/ack from here)
    records: list[Encounter]
    crc_errors: int = 0
    header: SegmentHeader | None = None


Reread = Callable[[int, int], bytes]  # (offset, length) -> bytes read again from the badge


def parse_segment(data: bytes, start: int, day: int, version: int = 1,
                  reread: Reread | None = None) -> Parsed:
    """Decode segment bytes `data` read from offset `start` (0: with the header).

    Stops before a trailing partial record. A record failing its CRC is read again once
    through `reread`; still bad, it is counted in crc_errors and skipped (v1: the next 32
    bytes; v2: resynchronised on the next valid record). Raises ValueError on a bad header.
    """
    out = Parsed(start, [])
    pos = start
    if start < HEADER_SIZE:
        if start != 0:
            raise ValueError("offset %d inside the header" % start)
        hdr = parse_header(data[:HEADER_SIZE], day)
        out.header, version = hdr, hdr.version
        pos = HEADER_SIZE
    end = start + len(data)
    if version == 1:
        while pos + RECORD_SIZE <= end:
            rec = data[pos - start: pos - start + RECORD_SIZE]
            if not crc_ok(rec) and reread is not None:
                again = reread(pos, RECORD_SIZE)
                if crc_ok(again):
                    rec = again
            if not crc_ok(rec):
                out.crc_errors += 1
            elif rec[0] == REC_ENCOUNTER:
                out.records.append(decode_record(rec, day, pos))
            elif rec[0] != REC_PAD:
                out.crc_errors += 1
            pos += RECORD_SIZE
        out.end = pos
        return out
    if version != 2:
        raise ValueError("unsupported log format version %d" % version)
    buf = bytes(data)
    while pos < end:
        i = pos - start
        n = v2_record_len(buf, i)
        if not n and reread is not None and end - pos >= V2_PAD_MIN:
            want = buf[i + 1] if buf[i + 1] >= V2_PAD_MIN else V2_PAD_MIN
            if pos + want <= end:
                again = reread(pos, want)
                if len(again) == want and v2_record_len(again, 0) == want:
                    buf = buf[:i] + again + buf[i + want:]
                    n = want
        if n:
            if buf[i] == V2_TYPE_ENC:
                out.records.extend(decode_v2(buf[i:i + n], day, pos))
            pos += n
            continue
        # Corruption or a partial tail: the next valid record, if any, resynchronises.
        q = next((j for j in range(i + 1, len(buf)) if buf[j] in (V2_TYPE_ENC, V2_TYPE_PAD)
                  and v2_record_len(buf, j)), None)
        if q is None:
            break  # a partial record at the end: resume here next time
        out.crc_errors += 1
        pos = start + q
    out.end = pos
    return out


def count_sightings(segment: bytes) -> int:
    """RPIs heard per scan in a whole segment file (v1 records, v2 scan entries); 0 when
    its header is not valid. For reports (the simulator's `log_records`)."""
    if len(segment) < HEADER_SIZE:
        return 0
    day = int.from_bytes(segment[8:12], "little")
    try:
        return len(parse_segment(segment, 0, day).records)
    except ValueError:
        return 0
