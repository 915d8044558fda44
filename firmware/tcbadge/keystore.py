# Temporary Exposure Keys: one per 144-interval day, from os.urandom (the hardware RNG is
# truly random only while the radio is on, so the app creates keys after BLE is active),
# kept 14 days, persisted atomically. A file of n x 20 bytes: u32 LE start interval + TEK.
import os
import struct

from micropython import const

from . import fsutil

_PERIOD = const(144)
_KEEP_DAYS = const(14)
_REC = const(20)


class KeyStore:
    def __init__(self, root="", urandom=None):
        self._path = root + "/tc/keys.bin"
        self._urandom = urandom or os.urandom
        self._keys = []  # [(rsin, tek)], oldest first
        raw = fsutil.read(self._path)
        if raw:
            for i in range(0, len(raw) - _REC + 1, _REC):
                rsin = struct.unpack("<I", raw[i : i + 4])[0]
                if rsin % _PERIOD == 0:
                    self._keys.append((rsin, bytes(raw[i + 4 : i + _REC])))
        self._keys.sort(key=lambda k: k[0])

    def _save(self):
        buf = bytearray()
        for rsin, tek in self._keys:
            buf += struct.pack("<I", rsin)
            buf += tek
        fsutil.write_atomic(self._path, buf)

    def tek_for(self, enin, create=True):
        # The TEK valid for interval enin: (rsin, tek), created if missing and create is set.
        rsin = (enin // _PERIOD) * _PERIOD
        for k in self._keys:
            if k[0] == rsin:
                return k
        if not create:
            return None
        k = (rsin, bytes(self._urandom(16)))
        self._keys.append(k)
        self._keys.sort(key=lambda k: k[0])
        self.prune(enin, save=False)
        self._save()
        return k

    def prune(self, enin, save=True):
        # Drop keys older than 14 days (today's key plus the 13 days before it).
        oldest = (enin // _PERIOD - (_KEEP_DAYS - 1)) * _PERIOD
        keep = [k for k in self._keys if k[0] >= oldest]
        changed = len(keep) != len(self._keys)
        self._keys = keep
        if changed and save:
            self._save()
        return changed

    def export(self, enin):
        # Diagnosis keys of the last 14 days. Today's key only covers intervals already
        # broadcast (rolling_period truncated), so future RPIs of today are not revealed.
        self.prune(enin)
        out = []
        for rsin, tek in self._keys:
            if rsin > enin:
                continue
            period = _PERIOD
            if rsin + _PERIOD > enin:
                period = enin - rsin + 1
            out.append((rsin, tek, period))
        return out

    def count(self):
        return len(self._keys)

    def wipe(self):
        self._keys = []
        fsutil.remove(self._path)
