# Firmware unit tests run the badge code on CPython with tiny shims for the MicroPython-only
# modules they touch (micropython.const, cryptolib ECB, time.ticks_*). The shims are put in
# place per test and removed afterwards so other test areas never see them.
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
SHIMS = Path(__file__).resolve().parent / "shims"
VECTORS = ROOT / "tests" / "data" / "gaen-v1.2.json"

_OWNED = ("micropython", "cryptolib", "tcbadge")


def _drop_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in _OWNED:
            del sys.modules[name]


@pytest.fixture
def fw(monkeypatch):
    # Import path for firmware modules: `fw.crypto`, `fw.enlog`, ... (a namespace).
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _OWNED}
    _drop_modules()
    monkeypatch.syspath_prepend(str(SHIMS))
    monkeypatch.syspath_prepend(str(FIRMWARE))
    ticks = [0]
    monkeypatch.setattr(time, "ticks_ms", lambda: ticks[0], raising=False)
    monkeypatch.setattr(time, "ticks_diff", lambda a, b: a - b, raising=False)
    monkeypatch.setattr(time, "ticks_add", lambda a, b: a + b, raising=False)
    import importlib

    class NS:
        pass

    ns = NS()
    for m in ("crypto", "advert", "enlog", "scanner", "keystore", "clock", "config", "fsutil", "health"):
        setattr(ns, m, importlib.import_module("tcbadge." + m))
    ns.ticks = ticks
    import cryptolib

    ns.aes = lambda key: cryptolib.aes(key, 1)
    yield ns
    _drop_modules()
    sys.modules.update(saved)
