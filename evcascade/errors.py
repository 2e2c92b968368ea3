"""Errors raised for user mistakes: bad files, bad values, bad options.

Everything that a user can fix is an ``InputError`` (a ``ValueError``), and a missing file is an
``InputFileNotFoundError`` (also a ``FileNotFoundError``). The CLI maps both to exit code 2 and
prints the message alone; anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-supplied value, option or file is wrong; the message names it and what was expected.

    >>> from evcascade import Events
    >>> Events.empty((0, 480))
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: sensor_size must be positive (W, H), got (0, 480)
    """


class InputFileNotFoundError(InputError, FileNotFoundError):
    """A path given by the user does not exist."""


def require_file(path) -> "Path":  # noqa: F821 - returned type is pathlib.Path
    """Return ``path`` as a ``Path`` if it is an existing file, else raise ``InputFileNotFoundError``."""
    from pathlib import Path

    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise InputFileNotFoundError(f"no such file: {str(path)!r}")
    if resolved.is_dir():
        raise InputError(f"expected a file, got a directory: {str(path)!r}")
    return resolved
