"""Checkpoints: self-contained, plain-data files written atomically and loaded without unpickling code.

A checkpoint holds the model weights, the whole resolved config (model, preprocessing, training),
the label list and the metrics it was chosen by, so evaluation and prediction need nothing else.
"""

import re
import warnings
from pathlib import Path

import torch

from genrenet.errors import UserError
from genrenet.fileio import atomic_save

FORMAT = "genrenet-checkpoint"
VERSION = 1


def save_checkpoint(path, *, model_state: dict, config: dict, labels: list[str], epoch: int, metrics: dict,
                    training_state: dict | None = None) -> None:
    """training_state (optimizer, scheduler, progress, RNG) goes into last.pt only, to resume a run."""
    state = {"format": FORMAT, "version": VERSION, "model_state": model_state, "config": config,
             "labels": list(labels), "epoch": epoch, "metrics": metrics}
    if training_state is not None:
        state["training_state"] = training_state
    atomic_save(state, path)


def load_checkpoint(path) -> dict:
    """Load with weights_only=True: tensors and plain data only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "Weights only load failed" in str(error):  # pickled objects: never unpickle them
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            what = f"the Python object '{found.group(1)}'" if found else "pickled Python objects"
            raise UserError(f"{path}: refused: it holds {what}, which could run code when loaded; "
                            "genrenet checkpoints hold only tensors and plain data") from None
        raise UserError(f"{path}: not a genrenet checkpoint (not a file PyTorch can read)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a genrenet checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    return state


def load_model(path, device: torch.device | str = "cpu"):
    """(model in eval mode, its Config, its labels, the raw checkpoint) from a checkpoint file."""
    from genrenet.config import from_dict  # late imports keep this module free of the model code
    from genrenet.models import build_model

    state = load_checkpoint(path)
    config = from_dict(state["config"], source=f"{path} (stored config)")
    if config.model.type != "cnn":
        from genrenet.classic import ClassicModel, from_bytes

        pipeline = from_bytes(state["model_state"]["sklearn"].numpy().tobytes())
        return ClassicModel(pipeline, len(state["labels"])), config, list(state["labels"]), state
    model = build_model(config.model, len(state["labels"]), config.features.n_mels)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not fit model '{config.model.name}' ({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), config, list(state["labels"]), state
