# Exposure Notification v1.2 cryptography: HKDF-SHA256 on hashlib, RPI/AEM on AES-128-ECB.
# MicroPython's sha256 has no copy(), so the HMAC hashes the padded keys each time.
import hashlib
import struct

from micropython import const

_BLOCK = const(64)
ROLLING_PERIOD = const(144)


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = bytearray(_BLOCK)
    k[: len(key)] = key
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(_BLOCK):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    h = hashlib.sha256(ipad)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(opad)
    h.update(inner)
    return h.digest()


def hkdf_sha256(ikm, salt, info, length):
    # RFC 5869. No salt means 32 zero bytes.
    if not salt:
        salt = bytes(32)
    prk = hmac_sha256(salt, ikm)
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        t = hmac_sha256(prk, t + info + bytes((n,)))
        out += t
        n += 1
    return out[:length]


def rpik(tek):
    return hkdf_sha256(tek, None, b"EN-RPIK", 16)


def aemk(tek):
    return hkdf_sha256(tek, None, b"EN-AEMK", 16)


def padded_data(enin):
    return b"EN-RPI" + bytes(6) + struct.pack("<I", enin)


def metadata(tx_power_dbm, calibration_confidence=None):
    # v1.0 byte 0x40; v1.1 0x50 | confidence << 2. TX power is a signed byte.
    if calibration_confidence is None:
        b0 = 0x40
    else:
        b0 = 0x50 | ((calibration_confidence & 3) << 2)
    return bytes((b0, tx_power_dbm & 0xFF, 0, 0))


class Deriver:
    # Derives RPIs and AEMs of one TEK. aes_factory(key) returns an object with
    # encrypt(block16) in ECB mode (cryptolib.aes(key, 1) on the badge).
    def __init__(self, tek, aes_factory):
        self._rpi_aes = aes_factory(rpik(tek))
        self._aem_aes = aes_factory(aemk(tek))

    def rpi(self, enin):
        return self._rpi_aes.encrypt(padded_data(enin))

    def aem(self, rpi, meta):
        mask = self._aem_aes.encrypt(rpi)
        out = bytearray(4)
        for i in range(4):
            out[i] = meta[i] ^ mask[i]
        return bytes(out)


def ecb_factory():
    # cryptolib on the badge (ECB is mode 1; CTR is not enabled in ESP32 builds).
    import cryptolib

    def make(key):
        return cryptolib.aes(key, 1)

    return make
