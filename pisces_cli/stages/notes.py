"""What ``score`` / ``eval`` tell the user about failed videos and skipped files, on the console and on disk.

- Failed videos: the first :data:`MAX_LISTED_FAILURES` with their reason on the console, and the full
  list in ``failed.jsonl`` (one ``{"video", "prompt", "error"}`` per line, input order) in the output
  folder; the file is removed when nothing failed.
- Skipped entries of the video folder (hidden files, broken links, other file types, pisces' own files):
  every one with its reason in ``summary.json`` / ``eval.json``, and a one-line console note when
  something other than pisces' own files was skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pisces_cli.io.prompts import SkippedFile

FAILED_FILE = "failed.jsonl"
MAX_LISTED_FAILURES = 5


def write_failed_list(folder: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Write ``folder/failed.jsonl`` with every error row (atomically); remove it when there is none."""
    from pisces_cli.stages.row_store import publish_text

    path = folder / FAILED_FILE
    failed = [r for r in rows if r.get("error") is not None]
    if not failed:
        path.unlink(missing_ok=True)
        return None
    lines = (
        json.dumps({"video": r["video"], "prompt": r.get("prompt"), "error": r["error"]}, ensure_ascii=False)
        for r in failed
    )
    publish_text(path, "".join(line + "\n" for line in lines))
    return path


def note_failures(console: Any, rows: list[dict[str, Any]], full_list: Path | None) -> None:
    """Print the first failed videos with their reasons and where the full list is."""
    failed = [r for r in rows if r.get("error") is not None]
    if console is None or not failed:
        return
    shown = failed[:MAX_LISTED_FAILURES]
    head = f"{len(failed)} of {len(rows)} videos failed" + (
        f" (first {len(shown)}):" if len(failed) > len(shown) else ":"
    )
    console.print(f"[yellow]{head}[/]", highlight=False, soft_wrap=True)
    for row in shown:
        console.print(f"  {row['video']}: {row['error']}", markup=False, highlight=False, soft_wrap=True)
    if full_list is not None:
        console.print(f"  full list: {full_list}", markup=False, highlight=False, soft_wrap=True)


def skipped_summary(skipped: list[SkippedFile]) -> dict[str, Any]:
    """``{"count", "by_reason": {reason: n}, "files": [{"path", "reason"}]}`` for summary files."""
    return {
        "count": len(skipped),
        "by_reason": dict(sorted(Counter(s.reason for s in skipped).items())),
        "files": [{"path": s.path, "reason": s.reason} for s in skipped],
    }


def note_skipped(console: Any, skipped: list[SkippedFile], summary_file: Path) -> None:
    """One line naming how many entries were skipped and why (pisces' own files alone need no note)."""
    from pisces_cli.io.prompts import PISCES_FILE_REASONS

    if console is None or not any(s.reason not in PISCES_FILE_REASONS for s in skipped):
        return
    counts = Counter(s.reason for s in skipped)
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    from rich.markup import escape

    console.print(
        f"[yellow]note:[/] skipped {len(skipped)} entries of the input "
        f"({escape(reasons)}); listed in {escape(str(summary_file))}",
        highlight=False,
        soft_wrap=True,
    )


def tell(
    console: Any,
    plan: Any,
    skipped: list[SkippedFile],
    rows: list[dict[str, Any]],
    failed_list: Path | None,
    summary_file: Path,
    verb: str,
) -> None:
    """The end-of-run notes: videos redone because they changed, skipped entries, failures."""
    if console is None:
        return
    if plan.changed:
        console.print(
            f"{verb} {plan.changed} videos whose prompt or file changed", highlight=False, soft_wrap=True
        )
    note_skipped(console, skipped, summary_file)
    note_failures(console, rows, failed_list)
