# Health code shown on the badge: an LED colour (or on/off for a single LED) from the board
# profile, persisted in /tc/health.txt so it survives resets.
from . import fsutil

CODES = ("green", "yellow", "red")
_DEFAULT_COLOURS = {"green": (0, 40, 0), "yellow": (40, 25, 0), "red": (60, 0, 0), "off": (0, 0, 0)}


class Health:
    def __init__(self, profile, root=""):
        self._path = root + "/tc/health.txt"
        self.led = profile.get("led") or {"kind": "none"}  # type: dict
        self.code = "green"
        raw = fsutil.read(self._path)
        if raw:
            c = raw.decode().strip()
            if c in CODES:
                self.code = c
        self._dev = None

    def colour(self, code):
        cols = self.led.get("colours") or {}
        c = cols.get(code) or _DEFAULT_COLOURS.get(code) or (0, 0, 0)
        return (int(c[0]), int(c[1]), int(c[2]))

    def set(self, code):
        if code not in CODES:
            raise ValueError("code must be green, yellow or red")
        self.code = code
        fsutil.write_atomic(self._path, code)
        self.show()

    def show(self, code=None):
        code = code or self.code
        kind = self.led.get("kind", "none")
        try:
            import machine

            if kind == "neopixel":
                import neopixel

                if self._dev is None:
                    self._dev = neopixel.NeoPixel(machine.Pin(self.led["pin"]), self.led.get("count", 1))
                self._dev[0] = self.colour(code)
                self._dev.write()
            elif kind == "rgb":
                on = self.led.get("active", 1)
                c = self.colour(code)
                pins = self.led["pins"]
                for i in range(3):
                    machine.Pin(pins[i], machine.Pin.OUT).value(on if c[i] else 1 - on)
            elif kind == "single":
                on = self.led.get("active", 1)
                lit = code != "green"
                machine.Pin(self.led["pin"], machine.Pin.OUT).value(on if lit else 1 - on)
            return True
        except (ImportError, OSError, ValueError, KeyError):
            return False
