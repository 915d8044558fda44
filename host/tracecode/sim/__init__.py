"""Virtual badges: a simulated ESP32 + BLE radio that runs the unmodified MicroPython firmware.

Public API: `Fleet` (virtual clock, badges, radio medium), `Badge`, `Path`, `RadioParams`, `Wall`.
See docs/sim.md.
"""

from .badge import Badge
from .core import PowerCut
from .fleet import Fleet
from .radio import Medium, Path, RadioParams, Wall

__all__ = ["Badge", "Fleet", "Medium", "Path", "PowerCut", "RadioParams", "Wall"]
