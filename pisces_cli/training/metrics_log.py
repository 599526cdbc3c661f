"""Training metrics: JSONL always, a live rich table on the console, TensorBoard / W&B when installed.

``{finetune.output}/logs/metrics.jsonl`` gets one JSON object per logged step (``step``, ``time``, then every
metric). Events (a skipped NaN step, a checkpoint, an interruption) are lines with an ``event`` key. On resume
the file is appended to, after :meth:`MetricsLogger.rewind` removed the lines of steps above the resumed step:
a killed run logged them but its checkpoint does not hold them, so the resumed run trains them again and logs
them once more (each step appears once; TensorBoard drops its events of those steps too).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

#: columns of the console table (when present), in this order.
CONSOLE_COLUMNS = {
    "loss": "loss",
    "loss_cd": "L_cd",
    "reward_quality_mean": "r_q",
    "reward_semantic_mean": "r_s",
    "grad_norm": "|grad|",
    "loss_scale": "scale",
    "lr": "lr",
    "step_time_s": "s/step",
    "peak_memory_gb": "peak GB",
}
CONSOLE_ROWS = 8


def _number(value: Any) -> str:
    """A metric for the console: 4 significant digits, never shortened further."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


class _LiveView:
    """The live console view: the table when it fits the terminal, else one line per row (never cut)."""

    def __init__(self, logger: MetricsLogger) -> None:
        self.logger = logger

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        from pisces_cli.rendering import fits

        table = self.logger.table()
        if fits(console, table, options.max_width):
            yield table
            return
        for line in self.logger.lines():
            yield Text(line, overflow="fold")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Fan out metrics to the enabled sinks (only on the main process; others get a no-op logger)."""

    def __init__(
        self,
        log_dir: str | Path,
        *,
        report_to: list[str],
        console: Any = None,
        enabled: bool = True,
        run_name: str = "pisces-finetune",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console if enabled else None
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.notes: list[str] = []
        self._live = None
        self._tensorboard = None
        self._wandb = None
        self.path = Path(log_dir) / "metrics.jsonl"
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(Path(log_dir) / "tensorboard"))
            except ImportError:
                self.notes.append(
                    "report_to has tensorboard but it is not installed (pip install tensorboard)"
                )
        if "wandb" in report_to:
            try:
                import wandb

                self._wandb = wandb.init(project="pisces", name=run_name, config=config or {})
            except ImportError:
                self.notes.append("report_to has wandb but it is not installed (pip install wandb)")
        if self.console is not None:
            for note in self.notes:
                self.console.print(f"[yellow]note:[/] {note}")

    def rewind(self, step: int) -> int:
        """Drop every line of a step above ``step`` (the resumed checkpoint's) from ``metrics.jsonl`` and
        TensorBoard; returns how many lines were dropped. A torn last line (a killed write) is dropped too."""
        if not self.enabled:
            return 0
        from pisces_cli.atomic import atomic_write_text

        self._file.close()
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                keep = int(record["step"]) <= step
            except (ValueError, TypeError, KeyError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if self._tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self._tensorboard.log_dir
            self._tensorboard.close()
            self._tensorboard = SummaryWriter(log_dir, purge_step=step + 1)
        return dropped

    # --------------------------------------------------------------------------------------------- sinks
    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the metrics of optimizer step ``step``.

        Metrics without a console column (e.g. GRPO's pre-training sanity check, logged at step 0) are
        printed as one line instead of adding an empty row to the console table.
        """
        if not self.enabled:
            return
        self._write({"step": step, "time": round(time.time(), 3), **metrics})
        if self._tensorboard is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"train/{name}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
        if not any(column in metrics for column in CONSOLE_COLUMNS):
            if self.console is not None:
                details = "  ".join(f"{k}={_number(v)}" for k, v in metrics.items())
                self.console.print(f"step {step}: {details}", highlight=False, markup=False, soft_wrap=True)
            return
        self.rows = (self.rows + [(step, metrics)])[-CONSOLE_ROWS:]
        self._refresh()

    def log_validation(
        self, step: int, metrics: dict[str, float], videos: Any = None, fps: float = 8.0
    ) -> None:
        """A validation row (``validation/*`` metrics) at ``step``; TensorBoard / W&B also get the videos
        (``[P, T, 3, H, W]`` in [0, 1]) when those sinks are on."""
        if not self.enabled:
            return
        self._write({"step": step, "time": round(time.time(), 3), **metrics})
        if self._tensorboard is not None:
            for name, value in metrics.items():
                self._tensorboard.add_scalar(name, value, step)
            if videos is not None:
                import importlib.util

                if importlib.util.find_spec("moviepy") is None:  # TensorBoard encodes videos with moviepy
                    self._note_once("TensorBoard validation videos need moviepy (pip install moviepy)")
                else:
                    self._tensorboard.add_video("validation/videos", videos, step, fps=max(1, round(fps)))
        if self._wandb is not None:
            payload: dict[str, Any] = dict(metrics)
            if videos is not None:
                import torch
                import wandb

                frames = (videos.clamp(0, 1) * 255).to(dtype=torch.uint8).numpy()
                payload["validation/videos"] = [wandb.Video(clip, fps=max(1, round(fps))) for clip in frames]
            self._wandb.log(payload, step=step)
        if self.console is not None:
            shown = " ".join(f"{k[len('validation/') :]}={v:.4g}" for k, v in metrics.items())
            self.console.print(f"[magenta]validation[/] step {step} {shown}")

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            if self.console is not None:
                self.console.print(f"[yellow]note:[/] {note}")

    def event(self, step: int, name: str, **fields: Any) -> None:
        """An event line (``{"event": name, "step": step, ...}``) plus a console message."""
        if not self.enabled:
            return
        self._write({"event": name, "step": step, "time": round(time.time(), 3), **fields})
        if self.console is not None:
            details = " ".join(f"{k}={v}" for k, v in fields.items())
            self.console.print(f"[cyan]{name}[/] step {step} {details}")

    # ------------------------------------------------------------------------------------------ console
    def table(self):
        """The last :data:`CONSOLE_ROWS` logged steps as a rich table (numbers to 4 significant digits)."""
        from rich.table import Table

        from pisces_cli.rendering import prepare_table

        columns = [c for c in CONSOLE_COLUMNS if any(c in row for _, row in self.rows)]
        table = Table(title="pisces finetune", expand=False)
        table.add_column("step", justify="right")
        for column in columns:
            table.add_column(CONSOLE_COLUMNS[column], justify="right")
        for step, row in self.rows:
            table.add_row(
                str(step), *["" if row.get(column) is None else _number(row[column]) for column in columns]
            )
        return prepare_table(table)

    def lines(self) -> list[str]:
        """The same rows as :meth:`table`, one ``step N: loss=… L_cd=…`` line each (for narrow terminals)."""
        return [
            f"step {step}: "
            + "  ".join(
                f"{label}={_number(row[column])}"
                for column, label in CONSOLE_COLUMNS.items()
                if column in row
            )
            for step, row in self.rows
        ]

    def start_live(self) -> None:
        """Show the table live on a terminal; elsewhere (a log file, a pipe) it is printed once by :meth:`close`."""
        if self.console is None or self._live is not None or not self.console.is_terminal:
            return
        from rich.live import Live

        self._live = Live(_LiveView(self), console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.console.print()
        elif self.console is not None and self.rows:
            from pisces_cli.rendering import print_table

            print_table(self.console, self.table())
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
