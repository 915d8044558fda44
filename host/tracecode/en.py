"""Exposure Notification v1.2 cryptography (host side).

    RPIK = HKDF-SHA256(TEK, salt=None, info=b"EN-RPIK", 16)
    AEMK = HKDF-SHA256(TEK, salt=None, info=b"EN-AEMK", 16)
    RPI_j = AES-128-ECB(RPIK, b"EN-RPI" + 6 zero bytes + ENIN_j as uint32 little-endian)
    AEM_j = Metadata XOR AES-128-ECB(AEMK, RPI_j)[:4]      (= AES-128-CTR with RPI as counter)

HKDF with no salt is HMAC-SHA256 keyed with 32 zero bytes for the extract step; for a 16-byte
output the expand step is one HMAC over `info || 0x01`. Both are done with `hmac.digest`,
OpenSSL's one-shot HMAC, which is the fastest path CPython offers.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

EN_INTERVAL_S = 600
TEK_ROLLING_PERIOD = 144
_ZERO_SALT = bytes(32)
_RPIK_INFO = b"EN-RPIK\x01"
_AEMK_INFO = b"EN-AEMK\x01"
_ECB = modes.ECB()
_PAD_PREFIX = b"EN-RPI" + bytes(6)

# PaddedData for every ENIN is prefix + 4 bytes; building 144 of them for each key is avoided
# by caching per rolling-start (keys of a daily batch share a handful of start intervals).
_padded_cache: dict[tuple[int, int], bytes] = {}


def enin(unix_seconds: float) -> int:
    """EN interval number of a Unix time (1970 epoch)."""
    return int(unix_seconds) // EN_INTERVAL_S


def day_start_enin(interval: int) -> int:
    """First interval of the TEK day that contains `interval`."""
    return interval // TEK_ROLLING_PERIOD * TEK_ROLLING_PERIOD


def _hkdf16(tek: bytes, info_with_counter: bytes) -> bytes:
    if len(tek) != 16:
        raise ValueError("a TEK is 16 bytes")
    prk = hmac.digest(_ZERO_SALT, tek, "sha256")
    return hmac.digest(prk, info_with_counter, "sha256")[:16]


def rpik(tek: bytes) -> bytes:
    return _hkdf16(tek, _RPIK_INFO)


def aemk(tek: bytes) -> bytes:
    return _hkdf16(tek, _AEMK_INFO)


def padded_data(interval: int) -> bytes:
    return _PAD_PREFIX + struct.pack("<I", interval)


def padded_run(start: int, count: int) -> bytes:
    """PaddedData of `count` consecutive intervals from `start`, concatenated."""
    key = (start, count)
    run = _padded_cache.get(key)
    if run is None:
        run = b"".join(padded_data(start + i) for i in range(count))
        if len(_padded_cache) > 4096:
            _padded_cache.clear()
        _padded_cache[key] = run
    return run


def aes_ecb(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), _ECB).encryptor().update(data)


def rpi(rpik_: bytes, interval: int) -> bytes:
    return aes_ecb(rpik_, padded_data(interval))


def rpis_block(tek: bytes, start: int, count: int) -> bytes:
    """The RPIs of `count` intervals from `start`, as one buffer of 16-byte blocks."""
    return aes_ecb(rpik(tek), padded_run(start, count))


def rpis(tek: bytes, start: int, count: int = TEK_ROLLING_PERIOD) -> list[bytes]:
    block = rpis_block(tek, start, count)
    return [block[i : i + 16] for i in range(0, len(block), 16)]


def aem(aemk_: bytes, rpi_: bytes, metadata: bytes) -> bytes:
    """Encrypt (or, being an XOR stream, decrypt) 4 bytes of metadata for one RPI."""
    if len(metadata) != 4:
        raise ValueError("metadata is 4 bytes")
    stream = aes_ecb(aemk_, rpi_)
    return bytes(a ^ b for a, b in zip(metadata, stream[:4]))


decrypt_aem = aem


@dataclass(frozen=True)
class Metadata:
    """Associated metadata: version, TX power (dBm) and, from v1.1, calibration confidence."""

    tx_power_dbm: int
    major: int = 1
    minor: int = 0
    calibration_confidence: int = 0

    def encode(self) -> bytes:
        if not -128 <= self.tx_power_dbm <= 127:
            raise ValueError("TX power must fit a signed byte")
        if not 0 <= self.calibration_confidence <= 3:
            raise ValueError("calibration confidence is 0..3")
        if not (0 <= self.major <= 3 and 0 <= self.minor <= 3):
            raise ValueError("version fields are 2 bits each")
        b0 = (self.major << 6) | (self.minor << 4)
        if (self.major, self.minor) >= (1, 1):
            b0 |= self.calibration_confidence << 2
        return bytes((b0, self.tx_power_dbm & 0xFF, 0, 0))

    @classmethod
    def decode(cls, data: bytes) -> "Metadata":
        if len(data) != 4:
            raise ValueError("metadata is 4 bytes")
        b0 = data[0]
        major, minor = b0 >> 6, (b0 >> 4) & 3
        cc = (b0 >> 2) & 3 if (major, minor) >= (1, 1) else 0
        tx = data[1] - 256 if data[1] > 127 else data[1]
        return cls(tx_power_dbm=tx, major=major, minor=minor, calibration_confidence=cc)


def encode_metadata(tx_power_dbm: int, calibration_confidence: int | None = None) -> bytes:
    """v1.0 metadata, or v1.1 when a calibration confidence is given."""
    if calibration_confidence is None:
        return Metadata(tx_power_dbm).encode()
    return Metadata(tx_power_dbm, 1, 1, calibration_confidence).encode()


def decode_metadata(data: bytes) -> Metadata:
    return Metadata.decode(data)


@dataclass(frozen=True)
class IntervalIds:
    enin: int
    rpi: bytes
    aem: bytes | None


def derive(tek: bytes, start: int, count: int = TEK_ROLLING_PERIOD, metadata: bytes | None = None) -> list[IntervalIds]:
    """RPI (and AEM when metadata is given) for each interval of a key's validity."""
    ids = rpis(tek, start, count)
    out: list[IntervalIds] = []
    if metadata is None:
        return [IntervalIds(start + i, r, None) for i, r in enumerate(ids)]
    if len(metadata) != 4:
        raise ValueError("metadata is 4 bytes")
    stream = aes_ecb(aemk(tek), b"".join(ids))
    for i, r in enumerate(ids):
        ks = stream[16 * i : 16 * i + 4]
        out.append(IntervalIds(start + i, r, bytes(a ^ b for a, b in zip(metadata, ks))))
    return out


def advertisement(rpi_: bytes, aem_: bytes) -> bytes:
    """The 31-byte legacy advertising payload of an EN beacon."""
    if len(rpi_) != 16 or len(aem_) != 4:
        raise ValueError("RPI is 16 bytes and AEM 4 bytes")
    return b"\x02\x01\x1a\x03\x03\x6f\xfd\x17\x16\x6f\xfd" + rpi_ + aem_
