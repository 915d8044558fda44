"""Build hook for the optional native matcher kernel; all metadata lives in pyproject.toml.

`tracecode._matchcore` is optional: if it fails to compile (no C compiler, no Python headers,
not x86-64), installation carries on and the matcher uses its pure-Python path.
"""

import platform

from setuptools import Extension, setup

_args = ["-O3"] if platform.system() != "Windows" else []

setup(
    ext_modules=[
        Extension(
            "tracecode._matchcore",
            sources=["host/tracecode/_native/matchcore.c"],
            extra_compile_args=_args,
            optional=True,
        )
    ]
)
