"""How a number is written in a printed or HTML table (no heavy imports: the CLI uses it at start-up).

A fixed number of decimals would show a small difference such as ``-0.00003`` as ``-0.0000`` (a zero
with a sign) or ``0.0000`` (a zero): :func:`fixed` writes such a value with two significant digits
instead (``-3.0e-05``), so a table never shows a non-zero value as zero nor a sign without its size.
"""

from __future__ import annotations

import math

#: what a missing or non-finite value reads as in a table (never a number)
NOT_A_NUMBER = "n/a"


def fixed(value: object, digits: int = 4, *, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals (``+`` before positives when ``signed``).

    A non-zero value that would round to zero is written with two significant digits (``-3.0e-05``);
    an exact zero is ``0.0000`` without a sign; None, NaN, inf and non-numbers read :data:`NOT_A_NUMBER`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NOT_A_NUMBER
    number = float(value)
    if not math.isfinite(number):
        return NOT_A_NUMBER
    if number == 0.0:
        return f"{0.0:.{digits}f}"
    sign = "+" if signed else ""
    if abs(number) < 0.5 * 10.0**-digits:
        return f"{number:{sign}.1e}"
    return f"{number:{sign}.{digits}f}"


def interval(low: object, high: object, digits: int = 4, *, signed: bool = False) -> str:
    """``[low, high]`` written with :func:`fixed`."""
    return f"[{fixed(low, digits, signed=signed)}, {fixed(high, digits, signed=signed)}]"
