"""tune_cpu_allocator: on by default on glibc, off on request, never over the user's own MALLOC_* settings."""

from __future__ import annotations

import sys

import pytest

from pisces_cli.runtime import tune_cpu_allocator


def test_allocator_tuning_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISCES_MALLOC_TUNING", "0")
    assert tune_cpu_allocator().startswith("off")


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_allocator_tuning_respects_the_users_malloc_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.delenv("PISCES_MALLOC_TUNING", raising=False)
    monkeypatch.setenv(variable, "131072")
    assert tune_cpu_allocator() == "left to the MALLOC_*_ environment variables"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_allocator_tuning_applies_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PISCES_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    assert tune_cpu_allocator().startswith("tuned")
