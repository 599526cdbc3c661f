"""One model call per batch, and when it fails, one per item: a bad item costs its own row, not the batch.

``score`` and ``eval`` compute a batch's rewards (and features) in one call. Some failures belong to
one item — a prompt with no token the encoder can align (``!!!``, an emoji, a number with the CLIP
backend), a caption a tokenizer rejects — and would otherwise stop the whole run, and every re-run, at
that batch. :func:`split_on_failure` then computes each item alone and reports the items that still
fail with their reason, so the caller writes error rows for them and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Part(Generic[T]):
    """Items ``start:stop`` of a batch: their result (``value``), or why computing them failed (``error``)."""

    start: int
    stop: int
    value: T | None = None
    error: str | None = None

    def positions(self) -> range:
        return range(self.start, self.stop)


def failure_reason(error: BaseException) -> str:
    """The reason written into an item's error row (a pisces error's message; else its type and text)."""
    from pisces_cli.errors import PiscesError

    return str(error) if isinstance(error, PiscesError) else f"{type(error).__name__}: {error}"


def split_on_failure(compute: Callable[..., T], *inputs: Any) -> list[Part[T]]:
    """``compute(*inputs)`` as one part; when it raises, ``compute`` of every item's slice of ``inputs`` alone.

    An item that fails alone becomes a part with its ``error``. When every item fails alone and no failure
    is a :class:`~pisces_cli.errors.PiscesError` (so nothing points at the items: a broken device or
    model), the batch's own exception is raised again. ``KeyboardInterrupt`` is never caught.

    Args:
        compute: the batch call, e.g. ``reward(clips [B, ...], prompts [B])``.
        inputs: sliceable batch inputs of one length ``B`` > 0 (tensors, lists).
    """
    from pisces_cli.errors import PiscesError

    size = len(inputs[0])
    try:
        return [Part(0, size, value=compute(*inputs))]
    except Exception as batch_error:
        first = batch_error
    parts: list[Part[T]] = []
    errors: list[Exception] = []
    for index in range(size):
        try:
            value = compute(*(values[index : index + 1] for values in inputs))
            parts.append(Part(index, index + 1, value=value))
        except Exception as error:
            errors.append(error)
            parts.append(Part(index, index + 1, error=failure_reason(error)))
    if len(errors) == size and not any(isinstance(e, PiscesError) for e in errors):
        raise first
    return parts
