"""Epoch metrics in the formats other tools read, beside the run's own metrics.jsonl (run.log).

csv: metrics.csv, one row per epoch, for spreadsheets and pandas. tensorboard: a tensorboard/
folder with the epoch metrics, the learning rate at every step and, at the end, the validation
confusion matrix as a figure (`tensorboard --logdir RUN_DIR`). TensorBoard is an optional
dependency: `pip install 'genrenet[tensorboard]'`.
"""

import csv
from pathlib import Path

from genrenet.errors import UserError

# The last two are multi-label runs' (validation macro ROC-AUC and PR-AUC), empty in the others.
CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "lr",
    "valid_loss",
    "valid_clip_acc",
    "valid_track_acc",
    "seconds",
    "valid_roc_auc",
    "valid_pr_auc",
)
# metrics.jsonl key -> TensorBoard tag; grouped by what is compared on one chart.
TENSORBOARD_TAGS = {
    "train_loss": "loss/train",
    "valid_loss": "loss/valid",
    "train_acc": "accuracy/train",
    "valid_clip_acc": "accuracy/valid_clip",
    "valid_track_acc": "accuracy/valid_track",
    "valid_roc_auc": "auc/valid_macro_roc",
    "valid_pr_auc": "auc/valid_macro_pr",
    "lr": "lr/epoch",
}
MISSING_TENSORBOARD = (
    "run.log includes tensorboard, which needs the tensorboard package: "
    "pip install 'genrenet[tensorboard]' (or leave tensorboard out of run.log)"
)


def check_logs(names: list[str]) -> None:
    """Found before any long work: a log format whose library is not installed."""
    if "tensorboard" in names:
        _summary_writer_class()


class CsvLog:
    def __init__(self, path: Path):
        self.path = path

    def rewrite(self, rows: list[dict]) -> None:
        """The whole file from these rows (a new run: none; a resumed one: the epochs it keeps)."""
        with open(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def epoch(self, row: dict) -> None:
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, CSV_COLUMNS, extrasaction="ignore").writerow(row)

    def step(self, step: int, lr: float) -> None:
        pass

    def figure(self, tag: str, figure) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog:
    def __init__(self, folder: Path):
        self.writer = _summary_writer_class()(str(folder))

    def rewrite(self, rows: list[dict]) -> None:
        pass  # event files are appended to; a resumed run writes its epochs again and TensorBoard shows the latest

    def epoch(self, row: dict) -> None:
        for key, tag in TENSORBOARD_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def step(self, step: int, lr: float) -> None:
        self.writer.add_scalar("lr/step", lr, step)

    def figure(self, tag: str, figure) -> None:
        self.writer.add_figure(tag, figure)

    def close(self) -> None:
        self.writer.close()


def open_logs(names: list[str], run_dir: Path) -> list:
    """The extra logs run.log names (metrics.jsonl is written by the run directory itself)."""
    logs = []
    if "csv" in names:
        logs.append(CsvLog(run_dir / "metrics.csv"))
    if "tensorboard" in names:
        logs.append(TensorBoardLog(run_dir / "tensorboard"))
    return logs


def _summary_writer_class():
    try:
        # Imported only when asked for: TensorBoard is an optional dependency and slow to import.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(MISSING_TENSORBOARD) from None
    return SummaryWriter
