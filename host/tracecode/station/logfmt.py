"""Encounter log segments as the badge writes them (docs/log-format.md, version 1)."""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

MAGIC = b"TCLG"
FORMAT_VERSION = 1
HEADER_SIZE = 16
RECORD_SIZE = 32
REC_ENCOUNTER = 0x01
SECONDS_PER_DAY = 86400

_HEADER = struct.Struct("<4sB3xI4x")
_RECORD_HEAD = struct.Struct("<B16s4s")


@dataclass(frozen=True)
class Encounter:
    """One decoded encounter record (first/last seen as Unix seconds)."""

    day: int
    offset: int
    raw: bytes
    rpi: bytes
    aem: bytes
    first_seen: int
    duration_s: int
    count: int
    rssi_min: int
    rssi_max: int
    rssi_mean: int


def record_crc(rec: bytes) -> int:
    return binascii.crc32(rec[:30]) & 0xFFFF


def crc_ok(rec: bytes) -> bool:
    return len(rec) == RECORD_SIZE and struct.unpack_from("<H", rec, 30)[0] == record_crc(rec)


def encode_header(day: int) -> bytes:
    return _HEADER.pack(MAGIC, FORMAT_VERSION, day)


def check_header(data: bytes, day: int) -> str | None:
    """None when `data` (16 bytes) is a valid header for `day`, else a reason."""
    if len(data) < HEADER_SIZE:
        return "short header"
    magic, version, hday = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        return "bad magic"
    if version != FORMAT_VERSION:
        return "unsupported log format version %d" % version
    if hday != day:
        return "header day %d != file day %d" % (hday, day)
    return None


def encode_record(rpi: bytes, aem: bytes, first_s: int, duration_s: int, count: int,
                  rssi_min: int, rssi_max: int, rssi_mean: int) -> bytes:
    """Build a 32-byte record; `first_s` is seconds since the segment's day start."""
    body = (_RECORD_HEAD.pack(REC_ENCOUNTER, rpi, aem) + first_s.to_bytes(3, "little")
            + struct.pack("<HBbbb", min(duration_s, 0xFFFF), min(count, 255),
                          rssi_min, rssi_max, rssi_mean))
    return body + struct.pack("<H", binascii.crc32(body) & 0xFFFF)


def decode_record(rec: bytes, day: int, offset: int) -> Encounter:
    rtype, rpi, aem = _RECORD_HEAD.unpack_from(rec, 0)
    if rtype != REC_ENCOUNTER:
        raise ValueError("unknown record type %d" % rtype)
    first = int.from_bytes(rec[21:24], "little")
    dur, count, rmin, rmax, rmean = struct.unpack_from("<HBbbb", rec, 24)
    return Encounter(day, offset, bytes(rec), rpi, aem, day * SECONDS_PER_DAY + first, dur,
                     count, rmin, rmax, rmean)
