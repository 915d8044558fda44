# Provisioning, board profile and runtime configuration, stored as /tc/prov.json on flash.
import json

from . import fsutil

DEFAULTS = {
    "tx_power_dbm": -8,  # goes into the AEM metadata; the board profile overrides it
    "scan_every_s": 120,
    "scan_window_ms": 4000,
    "rotation_jitter_s": 120,
    "adv_interval_ms": 250,
}

# (min, max) per setting; the rules that keep the protocol's promises:
# adverts every 200-270 ms, a scan at least every 5 min, an RPI on air for at most 20 min.
LIMITS = {
    "tx_power_dbm": (-50, 20),
    "scan_every_s": (10, 300),
    "scan_window_ms": (500, 30000),
    "rotation_jitter_s": (0, 540),
    "adv_interval_ms": (200, 270),
}

GENERIC_PROFILE = {
    "name": "generic-esp32",
    "chip": "esp32",
    "tx_power_dbm": -8,
    "calibration_confidence": 0,
    "led": {"kind": "none"},
}


# Strapping (boot-mode) pins per chip: their level at reset selects how the chip boots, and
# the DevKits' auto-program circuit drives GPIO0/GPIO9 from the USB bridge, so a consent
# button on one of them is refused (hostproto EXPORT answers "no-consent").
STRAPPING_PINS = {
    "esp32": (0, 2, 5, 12, 15),
    "esp32c3": (2, 8, 9),
    "esp32s3": (0, 3, 45, 46),
}


def strapping_pin(profile, pin):
    # True when `pin` is a strapping pin of the profile's chip (unknown chips: the ESP32's).
    chip = str(profile.get("chip") or "esp32").lower().replace("-", "").replace("_", "")
    pins = STRAPPING_PINS.get(chip)
    if pins is None:
        pins = STRAPPING_PINS["esp32"]
    return pin in pins


def ensure_dirs(root):
    fsutil.mkdir(root + "/tc")
    fsutil.mkdir(root + "/log")


def validate(changes, base=None):
    # A new config dict with changes applied; ValueError naming the bad key otherwise.
    out = dict(DEFAULTS)
    if base:
        out.update(base)
    if not isinstance(changes, dict):
        raise ValueError("config must be an object")
    for k in changes:
        if k not in LIMITS:
            raise ValueError("unknown config key " + str(k))
        v = changes[k]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(k + " must be an integer")
        lo, hi = LIMITS[k]
        if v < lo or v > hi:
            raise ValueError("%s must be in %d..%d" % (k, lo, hi))
        out[k] = v
    if out["scan_window_ms"] >= out["scan_every_s"] * 1000:
        raise ValueError("scan_window_ms must be shorter than scan_every_s")
    return out


class Provisioning:
    def __init__(self, root=""):
        self.root = root
        self._path = root + "/tc/prov.json"
        self.data = {}
        raw = fsutil.read(self._path)
        if raw:
            try:
                self.data = json.loads(raw)
            except ValueError:
                self.data = {}

    def provisioned(self):
        return bool(self.data.get("secret"))

    def badge_id(self):
        bid = self.data.get("id")
        if bid:
            return bid
        try:
            import machine
            import binascii

            return "tc-" + binascii.hexlify(machine.unique_id()).decode()
        except ImportError:
            return "tc-unprovisioned"

    def secret(self):
        import binascii

        s = self.data.get("secret")
        return binascii.unhexlify(s) if s else None

    def profile(self):
        p = self.data.get("profile")
        if p:
            return p
        return GENERIC_PROFILE

    def config(self):
        base = dict(DEFAULTS)
        base["tx_power_dbm"] = self.profile().get("tx_power_dbm", DEFAULTS["tx_power_dbm"])
        c = self.data.get("config") or {}
        try:
            return validate(c, base)
        except ValueError:
            return base

    def save(self):
        ensure_dirs(self.root)
        fsutil.write_atomic(self._path, json.dumps(self.data))
