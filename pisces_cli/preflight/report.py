"""The result of a preflight: one row per check, with the recipe key it is about."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    """Outcome of one check: passed, failed (exit 2), a warning that does not fail, or not applicable."""

    OK = "✓"
    FAIL = "✗"
    WARN = "!"
    SKIP = "–"


@dataclass
class Check:
    """One row of the preflight table.

    Attributes:
        name: what is checked (``reward encoder``, ``OT map``, ``output``, ...).
        key: the recipe key (or command-line option) that names the file or setting.
        status: the outcome.
        detail: one line saying what was found, or what is wrong and what to do.
    """

    name: str
    key: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.value} {self.key}: {self.detail}"


@dataclass
class PreflightReport:
    """Every check of one preflight, in the order they ran."""

    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, key: str, status: Status, detail: str) -> Check:
        check = Check(name, key, status, detail)
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed


def human_bytes(value: float) -> str:
    """``512 B``, ``3.1 MiB``, ``41.2 GiB``, ``1.6 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def human_count(value: float) -> str:
    """``950``, ``92.5 k``, ``12.3 M``, ``1.38 B`` (parameters, items)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"
