"""A trained model back from its checkpoint: the stored config names the registry entry that builds it."""

from dataclasses import dataclass
from pathlib import Path

import torch

from genrenet.checkpoint import load_checkpoint
from genrenet.config import Config, from_dict
from genrenet.errors import UserError, error_line
from genrenet.registry import build_model


@dataclass
class TrainedModel:
    model: torch.nn.Module  # in eval mode, on the device asked for
    config: Config
    labels: list[str]
    checkpoint: dict  # the raw checkpoint: epoch, metrics, ...
    # Several labels (tags) per track: one sigmoid per tag, not a softmax over the classes.
    multi_label: bool = False
    thresholds: list[float] | None = None  # per tag, above which a multi-label model says the tag

    def tag_thresholds(self, default: float = 0.5) -> list[float]:
        """Each tag's threshold: the checkpoint's, or `default` where it has none."""
        return list(self.thresholds) if self.thresholds else [default] * len(self.labels)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model of a checkpoint file, built by its registry entry and given its stored weights."""
    state = load_checkpoint(path)
    config = from_dict(state["config"], source=f"{path} (stored config)")
    model = build_model(config, len(state["labels"]))
    try:
        model.load_state_dict(state["model_state"])
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path}: weights do not fit model '{config.model.name}' ({error_line(error)})") from None
    broken = [
        name
        for name, tensor in state["model_state"].items()
        if torch.is_floating_point(tensor) and not torch.isfinite(tensor).all()
    ]
    if broken:  # a diverged run: every prediction would be NaN
        raise UserError(
            f"{path}: refused: weights hold NaN or infinite values ({broken[0]}); "
            "the run that wrote it diverged; retrain with a lower train.lr"
        )
    multi_label = bool(state.get("multi_label", False))  # absent: written before multi-label models
    thresholds = state.get("thresholds")
    return TrainedModel(model.to(device).eval(), config, list(state["labels"]), state, multi_label, thresholds)
