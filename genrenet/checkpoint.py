"""Checkpoints: self-contained, plain-data files written atomically and loaded without unpickling code.

A checkpoint holds the model weights, the whole resolved config (model, preprocessing, training),
the label list and the metrics it was chosen by, so evaluation and prediction need nothing else.
"""

import dataclasses
import hashlib
import re
import warnings
import zipfile
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
CHECKSUM = "sha256"  # of the contents (contents_digest); checkpoints written before it have none
DAMAGED = "damaged: the file changed after it was written (a disk, transfer or copy fault)"
REMEDY = "use the run's other checkpoint (best.pt or last.pt) or train again"


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
    multi_label: bool = False,
    thresholds: list[float] | None = None,
) -> None:
    """split: the tracks of each split (genrenet.recorded_split); training_state (optimizer,
    scheduler, progress, RNG) goes into last.pt only, to resume a run. multi_label: the labels are
    tags, any number per track (sigmoid outputs), with a threshold per tag."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_state": model_state,
        "config": config,
        "labels": list(labels),
        "epoch": epoch,
        "metrics": metrics,
    }
    if multi_label:  # only then: single-label checkpoints stay readable by earlier versions
        state["multi_label"] = True
        state["thresholds"] = [float(t) for t in thresholds] if thresholds is not None else None
    if split is not None:
        state["split"] = split
    if training_state is not None:
        state["training_state"] = training_state
    save_state(state, path)


def save_state(state: dict, path) -> None:
    """A checkpoint's dict written atomically with the SHA-256 of its contents, which loading checks,
    so bytes changed on disk or in a copy are named as damage (also: a loaded checkpoint, changed
    on purpose, written back)."""
    atomic_save({**state, CHECKSUM: contents_digest(state)}, path)


def contents_digest(state: dict) -> str:
    """SHA-256 over every value but the checksum: tensors as dtype, shape and bytes, everything
    else by type and repr, in the order saved (which torch.load keeps)."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != CHECKSUM})
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        text = repr(value)
        digest.update(f"{type(value).__name__} {len(text)} {text};".encode())


def load_checkpoint(path) -> dict:
    """Load with weights_only=True: tensors and plain data only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    state = _read(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a genrenet checkpoint")
    if CHECKSUM in state and state.pop(CHECKSUM) != contents_digest(state):  # none before checksums were written
        raise UserError(f"{path}: {DAMAGED} (its contents no longer match the checksum written with it); {REMEDY}")
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


def _read(path: Path):
    """torch.load(weights_only=True), its failures as one line: objects that could run code are
    refused by name; a torch.save archive that cannot be read is damaged."""
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        refused = "Weights only load failed" in str(error)  # torch met something that is not plain data
        found = re.search(r"GLOBAL ([\w.]+)", str(error)) if refused else None
        if found or (refused and not zipfile.is_zipfile(path)):  # in an archive, no named object: damage
            what = f"the Python object '{found.group(1)}'" if found else "pickled Python objects"
            raise UserError(
                f"{path}: refused: it holds {what}, which could run code when loaded; "
                "genrenet checkpoints hold only tensors and plain data"
            ) from None
        if zipfile.is_zipfile(path):  # what torch.save writes (found by the archive's end), unreadable now
            raise UserError(f"{path}: {DAMAGED} (PyTorch cannot read the archive); {REMEDY}") from None
        raise UserError(f"{path}: not a genrenet checkpoint (not a file PyTorch can read)") from None


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
