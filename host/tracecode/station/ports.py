"""Finding badges: USB serial bridges by VID/PID, or ports/URLs given on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeviceError

# (vid, pid or None for any product of that vendor, description)
BADGE_USB_IDS: tuple[tuple[int, int | None, str], ...] = (
    (0x10C4, 0xEA60, "CP210x"),
    (0x1A86, 0x7523, "CH340"),
    (0x1A86, 0x55D4, "CH9102"),
    (0x0403, 0x6001, "FTDI FT232R"),
    (0x0403, 0x6015, "FTDI FT231X"),
    (0x303A, 0x1001, "Espressif USB-serial/JTAG"),
    (0x303A, None, "Espressif USB CDC"),
)

URL_SCHEMES = ("socket://", "rfc2217://", "loop://", "spy://", "alt://", "hwgrep://")


@dataclass(frozen=True)
class BadgePort:
    device: str            # device path or pyserial URL
    description: str = ""
    serial_number: str | None = None

    @property
    def is_virtual(self) -> bool:
        """A virtual badge's console (socket URL or pty): no esptool ROM loader behind it."""
        return self.device.startswith(URL_SCHEMES) or self.device.startswith("/dev/pts/")


def usb_kind(vid: int | None, pid: int | None) -> str | None:
    if vid is None:
        return None
    for v, p, name in BADGE_USB_IDS:
        if vid == v and (p is None or pid == p):
            return name
    return None


def detect(list_ports=None) -> list[BadgePort]:
    """Badges attached over USB, sorted by device name. `list_ports` is injectable for tests."""
    if list_ports is None:
        from serial.tools import list_ports as lp
        list_ports = lp.comports
    found = []
    for info in list_ports():
        kind = usb_kind(getattr(info, "vid", None), getattr(info, "pid", None))
        if kind:
            found.append(BadgePort(info.device, kind, getattr(info, "serial_number", None)))
    return sorted(found, key=lambda p: p.device)


def resolve(ports: list[str] | None, list_ports=None) -> list[BadgePort]:
    """The ports to serve: those given (paths or pyserial URLs), else every detected badge."""
    if ports:
        out, seen = [], set()
        for p in ports:
            if p not in seen:
                seen.add(p)
                out.append(BadgePort(p, "given"))
        return out
    found = detect(list_ports)
    if not found:
        raise DeviceError("no badge found on USB (CP210x, CH34x, FTDI or Espressif USB serial)",
                          hint="plug one in or pass --port PATH|socket://HOST:PORT")
    return found
