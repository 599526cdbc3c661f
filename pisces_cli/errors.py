"""Error types shared by every pisces module.

The CLI maps them to exit codes: :class:`UsageError` (bad recipe, bad arguments,
mismatched artifacts) exits with 2, :class:`PiscesRuntimeError` (a failure while
running) exits with 1.
"""

from __future__ import annotations


class PiscesError(Exception):
    """Base class of every error pisces raises on purpose."""

    exit_code = 1


class UsageError(PiscesError):
    """The user asked for something invalid: a recipe key, an argument, an incompatible artifact."""

    exit_code = 2


class PiscesRuntimeError(PiscesError):
    """Something failed while running (I/O, decoding, numerics)."""

    exit_code = 1
