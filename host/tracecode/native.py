"""Optional native kernel for the diagnosis-key matcher.

`tracecode._matchcore` is a C extension (source in `_native/matchcore.c`) that derives RPIKs
and RPIs and looks them up among the heard RPIs without the GIL, and walks export.bin's
protobuf into columns. Its cryptography is the platform's OpenSSL libcrypto (SHA-256 and
AES-128-ECB through EVP, accelerated by the CPU's SHA/AES instructions on x86-64 and ARMv8):
the extension is not linked against it and needs no OpenSSL headers. This module finds the
libcrypto the interpreter already loaded (CPython's `_hashlib`/`_ssl` link it on Linux), or
the system's `libcrypto.so.3` / `.so.1.1`, hands the function addresses to the kernel, and
checks the result against the reference derivation (`tracecode.en`) before using it.

The kernel is never required: when it is not built (no compiler), no libcrypto is found,
the check fails, or the environment sets TRACECODE_NATIVE=0, `available()` is False and the
matcher keeps its pure-Python path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Iterable, Sequence

import numpy as np

try:
    from . import _matchcore as _mc  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler): the Python path is used
    _mc = None

_MIN_BITS, _MAX_BITS = 16, 26
_crypto: dict = {}  # {"path": ..., "version": ...} once bound
_bind_error: str | None = None

_SYMBOLS = ("SHA256_Init", "SHA256_Update", "SHA256_Final", "EVP_CIPHER_CTX_new", "EVP_CIPHER_CTX_free",
            "EVP_EncryptInit_ex", "EVP_EncryptUpdate", "EVP_CIPHER_CTX_set_padding",
            "SHA256_Transform")


def _candidates() -> list[str]:
    """libcrypto paths, best first: the one already mapped into this process, then the system's."""
    out: list[str] = []
    try:
        import _hashlib  # noqa: F401  (links libcrypto in every Linux CPython build that has it)
    except ImportError:
        pass
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1] if line.strip() else ""
                if "libcrypto" in os.path.basename(path) and path not in out and os.path.exists(path):
                    out.append(path)
    except OSError:
        pass
    out += ["libcrypto.so.3", "libcrypto.so.1.1"]
    found = ctypes.util.find_library("crypto")
    if found:
        out.append(found)
    return out


def _bind() -> None:
    global _bind_error
    if _mc is None or _crypto or _bind_error:
        return
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            addrs = {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _SYMBOLS}
            cipher = None
            if hasattr(lib, "EVP_CIPHER_fetch"):  # OpenSSL 3: fetch once, no implicit fetch per key
                lib.EVP_CIPHER_fetch.restype = ctypes.c_void_p
                lib.EVP_CIPHER_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
                cipher = lib.EVP_CIPHER_fetch(None, b"AES-128-ECB", None)
            if not cipher:
                lib.EVP_aes_128_ecb.restype = ctypes.c_void_p
                cipher = lib.EVP_aes_128_ecb()
            addrs["cipher"] = cipher
            if hasattr(lib, "EVP_EncryptInit_ex2"):
                addrs["EVP_EncryptInit_ex2"] = ctypes.cast(lib.EVP_EncryptInit_ex2, ctypes.c_void_p).value
            _mc.bind_crypto(addrs)
            from . import en  # the reference: HKDF and AES-ECB from `cryptography`

            tek = bytes(range(16))
            if _mc.rpik(tek) != en.rpik(tek) or _mc.derive(tek, np.array([2_650_000], "=u4"),
                                                           np.array([3], "=u4")) != en.aes_ecb(
                    en.rpik(tek), en.padded_run(2_650_000, 3)):
                raise RuntimeError("known-answer check failed")
            version = ""
            if hasattr(lib, "OpenSSL_version"):
                lib.OpenSSL_version.restype = ctypes.c_char_p
                lib.OpenSSL_version.argtypes = [ctypes.c_int]
                version = (lib.OpenSSL_version(0) or b"").decode("ascii", "replace")
            _crypto.update(path=path, version=version, lib=lib)
            return
        except (OSError, AttributeError, RuntimeError, ValueError, KeyError) as exc:
            errors.append(f"{path}: {exc}")
    _bind_error = "; ".join(errors) or "no libcrypto found"


def available() -> bool:
    """True when the native kernel is built, importable, enabled and bound to libcrypto."""
    if _mc is None or os.environ.get("TRACECODE_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    _bind()
    return bool(_crypto) and bool(_mc.available())


def walker():
    """The kernel's export.bin walker (needs no libcrypto), or None."""
    if _mc is None or os.environ.get("TRACECODE_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        return None
    return _mc.walk_export


def kernel_name() -> str:
    """Which matcher kernel runs: "native (OpenSSL ...)" or "python"."""
    if not available():
        return "python"
    return f"native ({_crypto.get('version') or os.path.basename(_crypto['path'])})"


def _kernel():
    if not available():
        raise RuntimeError("the native matcher kernel is not available")
    return _mc


def rpik(tek: bytes) -> bytes:
    """RPIK of one TEK (ValueError unless it is 16 bytes)."""
    return _kernel().rpik(tek)


def _u32(values) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == np.dtype("=u4"):
        return np.ascontiguousarray(values)
    try:
        a = np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise ValueError("rolling start/period out of range") from None
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise ValueError("rolling start/period out of range")
    return a.astype("=u4")


def _tuple_columns(keys: Sequence[tuple[bytes, int, int]]):
    for k in keys:
        if not isinstance(k, tuple) or len(k) != 3:
            raise TypeError("each key must be a (tek, start, period) tuple")
    teks = [bytes(k[0]) if not isinstance(k[0], str) else None for k in keys]
    if any(t is None for t in teks):
        raise TypeError("a TEK is a bytes-like object")
    if any(len(t) != 16 for t in teks):  # type: ignore[arg-type]
        raise ValueError("a TEK is 16 bytes")
    return b"".join(teks), _u32([k[1] for k in keys]), _u32([k[2] for k in keys])  # type: ignore[arg-type]


def derive(keys: Sequence[tuple[bytes, int, int]]) -> bytes:
    """The RPIs of every (tek, rolling start, rolling period), as one buffer of 16-byte blocks."""
    return derive_columns(*_tuple_columns(keys))


def derive_columns(teks: bytes, starts, periods) -> bytes:
    return _kernel().derive(teks, _u32(starts), _u32(periods))


class HeardIndex:
    """The heard RPIs in the form the kernel searches: a bitmap on the low bits of each RPI's
    first 8 bytes (little-endian) and the distinct RPIs in sorted order."""

    def __init__(self, heard: Iterable[bytes] | bytes):
        kernel = _kernel()
        if isinstance(heard, (bytes, bytearray, memoryview)):
            buf = bytes(heard)
            if len(buf) % 16:
                raise ValueError("heard RPIs are 16 bytes each")
            count = len(buf) // 16
        else:
            items = list(heard)
            buf = b"".join(items)
            if len(buf) != 16 * len(items):
                raise ValueError("heard RPIs are 16 bytes each")
            count = len(items)
        # about 1 bit in 32 set: few false candidates, a bitmap that stays in cache longer
        self.bits = min(_MAX_BITS, max(_MIN_BITS, count.bit_length() + 5))
        self.bitmap, self.sorted, self.buckets, self.bucket_bits = kernel.build_index(buf, self.bits)
        self._scan = kernel.scan

    def __len__(self) -> int:
        return len(self.sorted) // 16

    def scan_columns(self, teks: bytes, starts: np.ndarray, periods: np.ndarray, lo: int, hi: int
                     ) -> tuple[np.ndarray, bytes]:
        """Hits of keys lo..hi-1: ((n, 2) uint32 array of (key index, interval), RPIs buffer)."""
        pairs, rpis = self._scan(teks, starts, periods, lo, hi, self.bits, self.bitmap, self.sorted, self.buckets,
                                 self.bucket_bits)
        return np.frombuffer(pairs, dtype="=u4").reshape(-1, 2), rpis

    def scan(self, keys: Sequence[tuple[bytes, int, int]], base: int = 0) -> list[tuple[int, int, bytes]]:
        """(base + key index, interval, rpi) for every derived RPI that is in the index, in key
        order then interval order (the same hits, in the same order, as the Python path)."""
        teks, starts, periods = _tuple_columns(keys)
        pairs, rpis = self.scan_columns(teks, starts, periods, 0, len(keys))
        return [(base + int(k), int(i), rpis[16 * n : 16 * n + 16]) for n, (k, i) in enumerate(pairs.tolist())]
