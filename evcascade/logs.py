"""How much the command-line tools say on stderr: quiet by default, more with ``-v`` or ``EVCASCADE_LOG``.

Default (``warning``): our own warnings as one line each (``evcascade: warning: ...``), nothing from the
libraries underneath (no weight-loading bars, no library deprecation notices: a user of the command cannot act
on them). ``info`` (``-v``): progress steps, library warnings and progress bars. ``debug`` (``-vv``): everything.
Only entry points call `configured`; library code logs through ``logging.getLogger(__name__)`` and never
configures anything.

>>> resolve_level(0, env={}), resolve_level(1, env={}), resolve_level(0, env={"EVCASCADE_LOG": "debug"})
(30, 20, 10)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, Mapping

from evcascade.errors import InputError

ENV = "EVCASCADE_LOG"
LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def resolve_level(verbosity: int = 0, env: Mapping[str, str] | None = None) -> int:
    """The logging level for ``verbosity`` (the count of ``-v``) or ``EVCASCADE_LOG``, whichever says more."""
    env = os.environ if env is None else env
    from_flags = (logging.WARNING, logging.INFO, logging.DEBUG)[min(max(verbosity, 0), 2)]
    name = env.get(ENV, "").strip().lower()
    if not name:
        return from_flags
    if name not in LEVELS:
        raise InputError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(LEVELS)}")
    return min(from_flags, LEVELS[name])


class _OneLine(logging.Formatter):
    """``evcascade: warning: message`` with the message's first line only (an error or warning is one line)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        if record.levelno >= logging.WARNING:
            return f"evcascade: {record.levelname.lower()}: {message}"
        if record.levelno <= logging.DEBUG:
            return f"evcascade: [{record.name}] {message}"
        return f"evcascade: {message}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one log line; library deprecation notices only when verbose."""
    if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
        logging.getLogger("py.warnings").info("%s: %s", category.__name__, message)
    else:
        logging.getLogger("evcascade").warning("%s", message)


@contextlib.contextmanager
def configured(level: int) -> Iterator[None]:
    """Within the block, evcascade's logs and Python warnings go to stderr at ``level`` and transformers is as
    quiet as ``level`` says; everything is put back afterwards (``main()`` may run inside a test process)."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    loggers = [logging.getLogger(name) for name in ("evcascade", "py.warnings")]
    saved = ([logger.level for logger in loggers], warnings.showwarning, hf_logging.get_verbosity(),
             hf_logging.is_progress_bar_enabled())
    for logger in loggers:
        logger.setLevel(level)
        logger.addHandler(handler)
    warnings.showwarning = _show_warning
    if level <= logging.INFO:
        hf_logging.set_verbosity(logging.INFO if level <= logging.DEBUG else logging.WARNING)
        hf_logging.enable_progress_bar()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, old_level in zip(loggers, saved[0]):
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        warnings.showwarning = saved[1]
        hf_logging.set_verbosity(saved[2])
        (hf_logging.enable_progress_bar if saved[3] else hf_logging.disable_progress_bar)()
