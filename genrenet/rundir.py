"""The one writer of a run directory, shared by every way of training.

A run directory holds the resolved config (config.yaml), the tracks of each split
(split.json), one JSON line of metrics per epoch (metrics.jsonl), best.pt (the model chosen by
validation) and last.pt (the latest epoch, with everything needed to continue the run). Both
checkpoints carry the split too, so evaluation uses the tracks the model was tested on.
"""

import json
import math
from pathlib import Path

import torch
import yaml

from genrenet.checkpoint import save_checkpoint
from genrenet.config import Config, to_dict


class RunWriter:
    def __init__(self, run_dir: Path, config: Config, labels: list[str], split: dict):
        self.dir, self.config, self.labels, self.split = Path(run_dir), config, list(labels), split
        self.metrics_log = self.dir / "metrics.jsonl"

    def start(self) -> None:
        """A fresh run: the resolved config and an empty metrics log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        (self.dir / "split.json").write_text(json.dumps(self.split, indent=1))
        self.metrics_log.write_text("")

    def keep_epochs(self, completed: int) -> None:
        """On resume: drop metric lines of epochs the checkpoint does not include (and a half-written last line)."""
        rows = []
        for line in self.metrics_log.read_text().splitlines() if self.metrics_log.exists() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("epoch", math.inf) <= completed:
                rows.append(line)
        self.metrics_log.write_text("".join(line + "\n" for line in rows))

    def log(self, row: dict) -> None:
        # NaN and infinity are not JSON: a non-finite value is written as null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        with open(self.metrics_log, "a") as log:
            log.write(json.dumps(clean, allow_nan=False) + "\n")

    def save(self, name: str, model: torch.nn.Module, epoch: int, metrics: dict,
             training_state: dict | None = None) -> None:
        """A checkpoint of the model; training_state (to resume the run) goes into last.pt only."""
        save_checkpoint(self.dir / name, model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                        config=to_dict(self.config), labels=self.labels, epoch=epoch, metrics=metrics,
                        split=self.split, training_state=training_state)
