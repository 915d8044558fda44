"""Build hook for the optional native matcher kernel; all metadata lives in pyproject.toml.

`tracecode._matchcore` is optional: if it fails to compile (no C compiler, no Python headers),
installation carries on and the matcher uses its pure-Python path. It needs no OpenSSL headers
and does not link libcrypto: at run time it takes the functions of the libcrypto the
interpreter already loaded (tracecode.native); nothing in it is specific to one CPU architecture.
"""

import platform
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithData(build_py):
    """Also copy firmware/, boards/ and scenarios/ into the built package (tracecode/_bundled),
    where `tracecode.resources` finds them in an installed wheel. Editable installs skip it
    (they read the checkout)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "tracecode" / "_bundled"
        for name in ("firmware", "boards", "scenarios"):
            if (root / name).is_dir():
                shutil.copytree(root / name, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy", ".*"))

_args = ["-O3"] if platform.system() != "Windows" else []

setup(
    cmdclass={"build_py": BuildPyWithData},
    ext_modules=[
        Extension(
            "tracecode._matchcore",
            sources=["host/tracecode/_native/matchcore.c"],
            extra_compile_args=_args,
            optional=True,
        )
    ]
)
