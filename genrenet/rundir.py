"""The one writer of a run directory, shared by every way of training.

A run directory holds the resolved config (config.yaml), the tracks of each split
(split.json), one JSON line of metrics per epoch (metrics.jsonl), best.pt (the model chosen by
validation) and last.pt (the latest epoch, with everything needed to continue the run). Both
checkpoints carry the split too, so evaluation uses the tracks the model was tested on. At the
end: learning_curves.png (run.plots); run.log adds metrics.csv and tensorboard/ (genrenet.runlogs).
"""

import contextlib
import json
import math
import shutil
from pathlib import Path

import torch
import yaml

from genrenet.checkpoint import save_checkpoint
from genrenet.config import Config, to_dict
from genrenet.errors import UserError
from genrenet.plots import draw_confusion, draw_learning_curves, write_plot
from genrenet.runlogs import open_logs

# What a run writes; with --overwrite, the files of the run being replaced.
RUN_FILES = (
    "config.yaml",
    "split.json",
    "metrics.jsonl",
    "metrics.csv",
    "tensorboard",
    "learning_curves.png",
    "best.pt",
    "last.pt",
)


class RunWriter:
    def __init__(self, run_dir: Path, config: Config, labels: list[str], split: dict, multi_label: bool = False):
        self.dir, self.config, self.labels, self.split = Path(run_dir), config, list(labels), split
        self.multi_label = multi_label  # the labels are tags: checkpoints carry the flag and per-tag thresholds
        self.metrics_log = self.dir / "metrics.jsonl"
        self.previous = self.dir / "previous"
        self.logs = []  # run.log's extra formats, opened by start() or keep_epochs()

    def start(self, keep_previous: bool) -> None:
        """A fresh run: the resolved config, its split and an empty metrics log.

        keep_previous: a run already in the folder (--overwrite) is moved into previous/ and
        deleted only once this run saved its first best.pt, so a run killed early never leaves
        the old best.pt beside the new config."""
        self.dir.mkdir(parents=True, exist_ok=True)
        old = [self.dir / name for name in RUN_FILES if (self.dir / name).exists()] + sorted(
            self.dir.glob("eval_*.json")
        )
        if keep_previous and old:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous.mkdir()
            for path in old:
                path.replace(self.previous / path.name)
            print(f"--overwrite: the previous run is kept in {self.previous} until this run's first epoch is saved")
        self._write("config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))
        self._write("split.json", json.dumps(self.split, indent=1))
        self._write("metrics.jsonl", "")
        self._open_logs(rows=[])

    def keep_epochs(self, completed: int) -> None:
        """On resume: drop metric lines of epochs the checkpoint does not include (and a half-written last line)."""
        rows = [row for row in self.rows() if row.get("epoch", math.inf) <= completed]
        self.metrics_log.write_text("".join(json.dumps(row) + "\n" for row in rows))
        self._open_logs(rows)

    def rows(self) -> list[dict]:
        """The metrics logged so far; a half-written line (a crash mid-write) is left out."""
        rows = []
        for line in self.metrics_log.read_text().splitlines() if self.metrics_log.exists() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def _open_logs(self, rows: list[dict]) -> None:
        with self._reporting_disk_errors(self.dir):
            self.logs = open_logs(self.config.run.log, self.dir)
            for log in self.logs:
                log.rewrite(rows)

    def log(self, row: dict) -> None:
        # NaN and infinity are not JSON: a non-finite value is written as null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        with self._reporting_disk_errors(self.metrics_log), open(self.metrics_log, "a") as log:
            log.write(json.dumps(clean, allow_nan=False) + "\n")
            for extra in self.logs:
                extra.epoch(clean)

    def log_step(self, step: int, lr: float) -> None:
        """The learning rate at one optimizer step (TensorBoard only: one line per step is too many elsewhere)."""
        for extra in self.logs:
            extra.step(step, lr)

    def finish(self, confusion: dict | None = None) -> None:
        """The end of a run: the learning-curve plot, and the validation confusion matrix
        ({"labels", "confusion_matrix"}) for TensorBoard."""
        if self.config.run.plots and self.rows():
            write_plot(draw_learning_curves(self.rows()), self.dir / "learning_curves.png")
        if confusion is not None and self.logs:
            figure = draw_confusion(confusion)
            for extra in self.logs:
                extra.figure("confusion_matrix/valid", figure)
        self.close()

    def close(self) -> None:
        for extra in self.logs:
            extra.close()
        self.logs = []

    def save(
        self,
        name: str,
        model: torch.nn.Module,
        epoch: int,
        metrics: dict,
        training_state: dict | None = None,
        thresholds: list[float] | None = None,
    ) -> None:
        """A checkpoint of the model; training_state (to resume the run) goes into last.pt only;
        thresholds: a multi-label model's per-tag thresholds."""
        with self._reporting_disk_errors(self.dir / name):
            save_checkpoint(
                self.dir / name,
                model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                config=to_dict(self.config),
                labels=self.labels,
                epoch=epoch,
                metrics=metrics,
                split=self.split,
                training_state=training_state,
                multi_label=self.multi_label,
                thresholds=thresholds,
            )
        if name == "best.pt":
            shutil.rmtree(self.previous, ignore_errors=True)  # this run now has a model of its own

    def _write(self, name: str, text: str) -> None:
        with self._reporting_disk_errors(self.dir / name):
            (self.dir / name).write_text(text)

    @contextlib.contextmanager
    def _reporting_disk_errors(self, path: Path):
        """A full disk or a lost folder is one line that says what is kept and how to go on."""
        try:
            yield
        except OSError as error:
            raise UserError(
                f"could not write {path} ({error.strerror or error}); the last good checkpoint is "
                f"kept: free space in {self.dir}, then continue with: python train.py --resume "
                f"{self.dir}"
            ) from None


class NoWriter:
    """What ranks other than 0 of a torchrun job hold instead of a RunWriter: the run directory,
    its logs and checkpoints are rank 0's alone."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    def start(self, keep_previous: bool) -> None:
        pass

    def keep_epochs(self, completed: int) -> None:
        pass

    def log(self, row: dict) -> None:
        pass

    def log_step(self, step: int, lr: float) -> None:
        pass

    def save(self, *args, **kwargs) -> None:
        pass

    def finish(self, confusion: dict | None = None) -> None:
        pass

    def close(self) -> None:
        pass
