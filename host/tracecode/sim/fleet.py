"""A fleet of virtual badges sharing one radio medium and one virtual clock."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path as FsPath

from .badge import Badge
from .core import Scheduler
from .radio import Medium, Path, RadioParams

DEFAULT_START_UNIX = 1709280000   # 2024-03-01T08:00:00Z
BACKENDS = ("vm", "imitation")


def default_backend() -> str:
    """TRACECODE_SIM_BACKEND if set (vm | imitation), else the imitation."""
    b = os.environ.get("TRACECODE_SIM_BACKEND", "").strip().lower()
    if b in BACKENDS:
        return b
    return "imitation"


class Fleet(Scheduler):
    """Many badges in one process. Virtual time by default; `realtime=True` for interactive use."""

    def __init__(self, workdir: str | os.PathLike | None = None, *, seed: int = 0,
                 start_unix: float = DEFAULT_START_UNIX, radio: RadioParams | None = None,
                 realtime: bool = False, pin_cpu: bool | None = None, backend: str | None = None):
        super().__init__(realtime=realtime, pin_cpu=pin_cpu)
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError("unknown simulator backend %r (vm or imitation)" % self.backend)
        self.workdir = FsPath(workdir) if workdir is not None else FsPath(tempfile.mkdtemp(prefix="tcsim-"))
        self.seed = seed
        self.start_unix = float(start_unix)
        self.medium = Medium(radio, seed=seed)
        self.badges: dict[str, Badge] = {}
        self.start_drivers()

    def unix_time(self) -> float:
        """The fleet's virtual Unix time (what a host clock would read)."""
        return self.start_unix + self.clock()

    def add_badge(self, name: str, *, flash_dir: str | os.PathLike | None = None,
                  firmware_dir: str | os.PathLike | None = None,
                  aioble_dir: str | os.PathLike | None = None,
                  position: tuple[float, float] = (0.0, 0.0), path: Path | None = None,
                  board: str | None = None, **kw) -> Badge:
        if name in self.badges:
            raise ValueError("badge %r exists" % name)
        fd = FsPath(flash_dir) if flash_dir is not None else self.workdir / name / "flash"
        backend = kw.pop("backend", None) or self.backend
        if backend == "vm":
            from .vmbadge import VMBadge
            b = VMBadge(self, name, fd, position=position, path=path, board=board,
                        seed=self.seed, **kw)
        else:
            b = Badge(self, name, fd, position=position, path=path, board=board,
                      seed=self.seed, **kw)
        if firmware_dir is not None:
            b.install_firmware(firmware_dir)
        if aioble_dir is not None:
            b.install(aioble_dir, "/lib/aioble")
        self.badges[name] = b
        return b

    def power_on_all(self) -> None:
        for b in self.badges.values():
            b.power_on()

    def summary(self) -> list[dict]:
        return [b.summary() for b in self.badges.values()]

    def close(self) -> None:
        for b in self.badges.values():
            try:
                b._do(b.shutdown)
            except RuntimeError:
                pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
