"""Checkpoints: self-contained, plain-data files written atomically and loaded without unpickling code.

A checkpoint holds the model weights, the whole resolved config (model, preprocessing, training),
the label list and the metrics it was chosen by, so evaluation and prediction need nothing else.
"""

import dataclasses
import re
import warnings
from pathlib import Path

import torch

from genrenet.errors import UserError
from genrenet.fileio import atomic_save
from genrenet.registry import MODELS

FORMAT = "genrenet-checkpoint"
# 2: the model section holds only its own model's keys, and model.name alone picks the model.
# 1: the model section held every model's keys, and model.type picked CNN or a classic model.
VERSION = 2
REQUIRED = {"model_state": dict, "config": dict, "labels": list, "epoch": int}


def save_checkpoint(
    path,
    *,
    model_state: dict,
    config: dict,
    labels: list[str],
    epoch: int,
    metrics: dict,
    split: dict | None = None,
    training_state: dict | None = None,
) -> None:
    """split: the tracks of each split (genrenet.recorded_split); training_state (optimizer,
    scheduler, progress, RNG) goes into last.pt only, to resume a run."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_state": model_state,
        "config": config,
        "labels": list(labels),
        "epoch": epoch,
        "metrics": metrics,
    }
    if split is not None:
        state["split"] = split
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
            raise UserError(
                f"{path}: refused: it holds {what}, which could run code when loaded; "
                "genrenet checkpoints hold only tensors and plain data"
            ) from None
        raise UserError(f"{path}: not a genrenet checkpoint (not a file PyTorch can read)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a genrenet checkpoint")
    if state.get("version") == 1:
        state = upgrade_from_version_1(state)
    if state.get("version") != VERSION:
        raise UserError(
            f"{path}: checkpoint version {state.get('version')} is not supported (this genrenet reads "
            f"1 and {VERSION}); use the genrenet version that wrote it"
        )
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise UserError(f"{path}: damaged checkpoint: '{key}' is missing or not a {kind.__name__}")
    return state


def upgrade_from_version_1(state: dict) -> dict:
    """A version-1 checkpoint as version 2: model.type becomes the model's name for the classic
    models, and the model section keeps only the keys of the model it names."""
    config = state.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return {**state, "version": VERSION}  # damaged: the required-key checks say what is missing
    name = model.get("type") if model.get("type") in ("svm", "random_forest") else model.get("name")
    entry = MODELS.get(name)
    keys = {f.name for f in dataclasses.fields(entry.settings)} if entry else set(model)
    upgraded = {key: value for key, value in model.items() if key in keys and key != "type"}
    return {**state, "version": VERSION, "config": {**config, "model": {**upgraded, "name": name}}}
