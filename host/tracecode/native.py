"""Optional native kernel for the diagnosis-key matcher.

`tracecode._matchcore` is a C extension (source in `_native/matchcore.c`) that derives RPIKs
(HKDF-SHA256, with SHA-NI when the CPU has it) and RPIs (AES-128 with AES-NI) and looks them up
among the heard RPIs, all without the GIL. It is built by `pip install` when a C compiler is
around and is never required: when it is missing, fails to import, the CPU lacks AES-NI, or
the environment sets TRACECODE_NATIVE=0, `available()` is False and the matcher keeps its
pure-Python path (`tracecode.en` stays the reference implementation).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

try:
    from . import _matchcore as _mc  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler, other platform): the Python path is used
    _mc = None

_MIN_BITS, _MAX_BITS = 16, 26


def available() -> bool:
    """True when the native kernel is built, importable, enabled and supported by this CPU."""
    if _mc is None or os.environ.get("TRACECODE_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    return bool(_mc.available())


def kernel_name() -> str:
    """Which matcher kernel runs: "native (AES-NI, SHA-NI)", "native (AES-NI)" or "python"."""
    if not available():
        return "python"
    assert _mc is not None
    return "native (AES-NI, SHA-NI)" if _mc.features()["sha"] else "native (AES-NI)"


def _kernel():
    if not available():
        raise RuntimeError("the native matcher kernel is not available")
    return _mc


def rpik(tek: bytes) -> bytes:
    """RPIK of one TEK (ValueError unless it is 16 bytes)."""
    return _kernel().rpik(tek)


def derive(keys: Sequence[tuple[bytes, int, int]]) -> bytes:
    """The RPIs of every (tek, rolling start, rolling period), as one buffer of 16-byte blocks."""
    return _kernel().derive(keys)


class HeardIndex:
    """The heard RPIs in the form the kernel searches: a bitmap on the low bits of each RPI's
    first 8 bytes (little-endian) and the distinct RPIs in sorted order."""

    def __init__(self, heard: Iterable[bytes]):
        kernel = _kernel()
        items = list(heard)
        buf = b"".join(items)
        if len(buf) != 16 * len(items):
            raise ValueError("heard RPIs are 16 bytes each")
        self.bits = min(_MAX_BITS, max(_MIN_BITS, len(items).bit_length() + 6))
        self.bitmap, self.sorted = kernel.build_index(buf, self.bits)
        self._scan = kernel.scan

    def __len__(self) -> int:
        return len(self.sorted) // 16

    def scan(self, keys: Sequence[tuple[bytes, int, int]], base: int = 0) -> list[tuple[int, int, bytes]]:
        """(base + key index, interval, rpi) for every derived RPI that is in the index, in key
        order then interval order (the same hits, in the same order, as the Python path)."""
        return self._scan(keys, base, self.bits, self.bitmap, self.sorted)
