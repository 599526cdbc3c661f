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


def torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in pisces' terms.

    torch's own message for a pickle that needs code suggests re-running with ``weights_only=False``, which pisces
    never does (it would run code from the file); this keeps torch's one-line cause and says what to do instead.
    """
    text = str(error).strip() or type(error).__name__
    if "Weights only load failed" not in text:
        return text
    causes = [
        line.strip()
        for line in text.splitlines()
        if line.strip().lower().startswith(("trying to", "unsupported"))
    ]
    cause = f" ({causes[0]})" if causes else ""
    return (
        f"its pickle needs code to rebuild its objects{cause}; pisces reads only tensors and plain containers "
        "from a .pt and never runs code from a file: save the weights as a plain dict of tensors (a state_dict)"
    )
