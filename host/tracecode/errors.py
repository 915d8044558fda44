"""The one user-facing error type: "not a bug, the input or the device is wrong".

The CLI prints it as a single line (`tracecode: error: ...`) and exits with `exit_code`;
it never shows a traceback for it. Messages must never contain key material.
"""

from __future__ import annotations


class TraceCodeError(Exception):
    """An error the user can act on. Also a ValueError-like type for library callers."""

    exit_code = 1   # subclasses say which documented code (EXIT_CODES below) they are

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


class ConsentError(TraceCodeError):
    """The wearer did not give consent (no button press in time)."""

    exit_code = 5


class NetworkError(TraceCodeError):
    """A server could not be reached, timed out, or refused a request (HTTP error)."""

    exit_code = 6


# The documented exit codes (README "Exit codes", docs/station.md); tests/unit/test_cli.py
# checks every user-caused failure against this table.
EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it)",
    2: "bad input: a file, argument or station database is malformed, missing or damaged",
    3: "a signature is missing or does not verify",
    4: "device trouble: a badge is missing, did not answer, or refused",
    5: "no consent: the wearer did not press the badge's button in time",
    6: "network or server trouble: unreachable, timed out, or the server refused",
    130: "interrupted (Ctrl-C)",
}
