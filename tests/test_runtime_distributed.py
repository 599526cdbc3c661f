"""How stages join a torchrun process group: the collective timeout each kind of stage gets."""

from __future__ import annotations

import datetime

import pytest

from pisces_cli import runtime
from pisces_cli.errors import UsageError


@pytest.fixture
def two_ranks(monkeypatch):
    """WORLD_SIZE=2 with init_process_group recorded instead of run."""
    import torch.distributed as dist

    calls: list[dict] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv(runtime.TIMEOUT_VARIABLE, raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    return calls


def test_uneven_work_stages_wait_hours_and_training_keeps_torchs_default(two_ranks):
    runtime.init_distributed()
    runtime.init_distributed(timeout_s=None)
    assert two_ranks[0]["timeout"] == datetime.timedelta(seconds=runtime.UNEVEN_WORK_TIMEOUT_S)
    assert "timeout" not in two_ranks[1]


def test_the_environment_sets_every_stages_timeout(two_ranks, monkeypatch):
    monkeypatch.setenv(runtime.TIMEOUT_VARIABLE, "90")
    runtime.init_distributed(timeout_s=None)
    assert two_ranks[0]["timeout"] == datetime.timedelta(seconds=90)
    monkeypatch.setenv(runtime.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(UsageError, match="PISCES_DIST_TIMEOUT_S"):
        runtime.init_distributed()
