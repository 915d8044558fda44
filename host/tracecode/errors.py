"""The one user-facing error type: "not a bug, the input or the device is wrong".

The CLI prints it as a single line (`tracecode: error: ...`) and exits with `exit_code`;
it never shows a traceback for it. Messages must never contain key material.
"""

from __future__ import annotations


class TraceCodeError(Exception):
    """An error the user can act on. Also a ValueError-like type for library callers."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None, hint: str | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.hint = hint


class InputError(TraceCodeError, ValueError):
    """A file or argument is malformed (truncated, wrong header, bad field, ...)."""

    exit_code = 2


class SignatureError(TraceCodeError):
    """A signature is missing where one is required, or does not verify."""

    exit_code = 3


class DeviceError(TraceCodeError):
    """A badge did not answer, answered wrongly, or refused."""

    exit_code = 4
