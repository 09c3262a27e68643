"""What a training run leaves in its folder besides checkpoints: metrics.csv, TensorBoard
events and curves.png, all rewritten from the run's history so a resumed run stays consistent."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from volseg.io.atomic import atomic_target, write_text

logger = logging.getLogger(__name__)


class RunLog:
    """Per-epoch records of one run; ``write`` is only called on the main process."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.history: list[dict[str, Any]] = []
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.info("tensorboard is not installed; skipping TensorBoard logs")
            else:
                self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Continue from a checkpoint's history (later epochs logged before a crash are dropped)."""
        self.history = [dict(row) for row in history]

    def record(self, row: dict[str, Any]) -> None:
        """Add one epoch's values and rewrite the files."""
        self.history.append(dict(row))
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()
        self._write_csv()
        self._write_curves()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.history:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def _write_curves(self) -> None:
        try:  # a private Agg canvas: pyplot and the process's matplotlib backend stay untouched
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            return
        epochs = [row["epoch"] for row in self.history]
        figure = Figure(figsize=(10, 4))
        FigureCanvasAgg(figure)
        loss_axes, dice_axes = figure.subplots(1, 2)
        loss_axes.plot(epochs, [row.get("train_loss") for row in self.history], label="training loss")
        loss_axes.set_xlabel("epoch")
        loss_axes.legend()
        for key in sorted({k for row in self.history for k in row if k.startswith("val_dice")}):
            points = [(row["epoch"], row[key]) for row in self.history if key in row]
            dice_axes.plot(*zip(*points), marker=".", label=key.removeprefix("val_"))
        dice_axes.set_xlabel("epoch")
        dice_axes.set_ylim(0, 1)
        if dice_axes.lines:
            dice_axes.legend()
        figure.tight_layout()
        with atomic_target(self.run_dir / "curves.png") as temporary:
            figure.savefig(temporary, format="png", dpi=90)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
