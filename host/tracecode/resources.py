"""Where the badge firmware, board profiles and scenarios are, installed or in a checkout.

The repository keeps them at its root (`firmware/`, `boards/`, `scenarios/`). A built wheel
carries copies inside the package (`tracecode/_bundled/...`, copied by setup.py's build step),
read through `importlib.resources`. A checkout or an editable install has no such copy and
uses the repository root, so edits to the firmware are seen without reinstalling.

Every module asks here (`resources.data_root()`, `resources.firmware_dir()`, ...) instead of
counting parent folders of its own file.
"""

from __future__ import annotations

import atexit
import functools
import importlib.resources
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

BUNDLE = "_bundled"                       # package sub-folder a wheel carries the data in
FOLDERS = ("firmware", "boards", "scenarios")


def _complete(root: Path) -> bool:
    return (root / "firmware" / "main.py").is_file() and (root / "boards").is_dir()


@functools.lru_cache(maxsize=None)
def data_root() -> Path:
    """A folder holding `firmware/`, `boards/` and `scenarios/`."""
    bundled = importlib.resources.files("tracecode") / BUNDLE
    if bundled.is_dir():
        if isinstance(bundled, Path):
            if _complete(bundled):
                return bundled
        else:   # a zip import or similar: MicroPython and mpremote need real files
            return _extract(bundled)
    checkout = Path(__file__).resolve().parents[2]
    if _complete(checkout):
        return checkout
    raise InputError("this tracecode installation has no badge firmware or board profiles "
                     f"(looked in {bundled} and {checkout})",
                     hint="reinstall tracecode from a wheel or a full checkout")


def _extract(trav) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="tracecode-data-"))
    atexit.register(shutil.rmtree, dest, True)

    def copy(src, dst: Path) -> None:
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            for child in src.iterdir():
                copy(child, dst / child.name)
        else:
            dst.write_bytes(src.read_bytes())
    copy(trav, dest)
    return dest


def firmware_dir() -> Path:
    return data_root() / "firmware"


def boards_dir() -> Path:
    return data_root() / "boards"


def scenarios_dir() -> Path:
    return data_root() / "scenarios"


def board_names(boards: Path | None = None) -> list[str]:
    d = boards or boards_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def board_file(name: str, boards: Path | None = None) -> Path:
    """The profile of board `name` (or a path to a .json file); InputError if there is none."""
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        return p
    d = boards or boards_dir()
    f = d / (name + ".json")
    if "/" in name or not f.is_file():
        known = ", ".join(board_names(d)) or "none"
        raise InputError(f"unknown board {name!r} (known: {known})")
    return f


def scenario_file(name: str) -> Path:
    """A scenario given as a path, or by name from the shipped scenarios (`office`)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (scenarios_dir() / name, scenarios_dir() / (name + ".yaml")):
        if cand.is_file():
            return cand
    raise InputError(f"no scenario {name!r} (shipped: "
                     f"{', '.join(sorted(q.stem for q in scenarios_dir().glob('*.yaml')))})")
