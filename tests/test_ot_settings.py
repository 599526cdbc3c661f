"""TokenOTSettings: paper defaults in one place and validation."""

from __future__ import annotations

import dataclasses

import pytest

from pisces_cli.errors import UsageError
from pisces_cli.ot import TokenOTSettings


def test_ot_settings_paper_defaults():
    s = TokenOTSettings()
    assert (s.gamma, s.eta, s.eps, s.mass, s.mode) == (0.2, 0.2, 0.05, 0.9, "unbalanced")
    assert (s.max_iter, s.tol, s.check_every, s.exclude_cls, s.layers) == (200, 1e-3, 4, False, None)
    assert s.validate() is s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "exact"),
        ("eps", 0.0),
        ("mass", 0.0),
        ("mass", 1.5),
        ("gamma", -1.0),
        ("max_iter", 0),
        ("tol", 0.0),
        ("check_every", 0),
        ("layers", ("a",)),
    ],
)
def test_ot_settings_validate_rejects(field, value):
    with pytest.raises(UsageError, match=field):
        TokenOTSettings(**{field: value}).validate()
