"""A trained model back from its checkpoint (the stored config names the registry entry that builds
it), or one of the taggers shipped inside genrenet, by name (genrenet.musicnn.PRETRAINED)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from genrenet.checkpoint import load_checkpoint
from genrenet.config import Config, from_dict, with_changes
from genrenet.errors import UserError, error_line
from genrenet.musicnn import PATCH_FRAMES, PRETRAINED, SAMPLE_RATE, MusicnnFrontEnd, pretrained_weights
from genrenet.registry import build_model
from genrenet.scores import DEFAULT_THRESHOLD


@dataclass
class TrainedModel:
    model: torch.nn.Module  # in eval mode, on the device asked for
    config: Config
    labels: list[str]
    checkpoint: dict  # the raw checkpoint: epoch, metrics, ...
    # Several labels (tags) per track: one sigmoid per tag, not a softmax over the classes.
    multi_label: bool = False
    thresholds: list[float] | None = None  # per tag, above which a multi-label model says the tag

    def tag_thresholds(self, default: float = DEFAULT_THRESHOLD) -> list[float]:
        """Each tag's threshold: the checkpoint's, or `default` where it has none."""
        return list(self.thresholds) if self.thresholds else [default] * len(self.labels)


def load_model(source: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The model of a checkpoint file, built by its registry entry and given its stored weights; or
    a shipped tagger by name (musicnn-msd, musicnn-mtt). A file of that name is a checkpoint."""
    if is_builtin(source):
        return builtin_tagger(str(source), device)
    path = source
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


def is_builtin(source: str | Path) -> bool:
    """A shipped tagger's name, and no file of that name (a file named so is a checkpoint)."""
    return str(source) in PRETRAINED and not Path(source).exists()


def tagger_config(name: str) -> Config:
    """How a shipped tagger reads audio, as musicnn's extractor does: 16 kHz mono, no normalization
    and no silence stripping, and non-overlapping clips of one patch each, starting where musicnn's
    patches start (every 187 frames of 256 samples: 2.992 s). A clip of that length gives the model
    188 frames, not 187: the centred STFT adds one, whose window is the clip's last 256 samples and
    its zero padding. Of the lengths a clip can have (the audio stage refuses a hop longer than a
    clip, which a 187-frame clip at musicnn's patch starts would need), this is the closest to
    musicnn's taggram (see tests/test_builtin_tagger.py)."""
    seconds = PATCH_FRAMES * MusicnnFrontEnd().mel.hop_length / SAMPLE_RATE
    audio = {"sample_rate": SAMPLE_RATE, "normalize": "off", "strip_silence": False}
    raw = {"audio": {**audio, "clip_seconds": seconds, "hop_seconds": seconds}}
    return from_dict({**raw, "model": {"name": "musicnn", "pretrained": name}}, source=f"built-in tagger {name}")


def builtin_tagger(name: str, device: torch.device | str = "cpu") -> TrainedModel:
    """A shipped tagger whole (its own 50-tag head), as a multi-label model with no thresholds of its own."""
    config, saved = tagger_config(name), pretrained_weights(name)
    # built bare (pretrained: null), as its shipped weights, head included, are loaded next: one read
    model = build_model(with_changes(config, model={"pretrained": None}), len(saved["tags"]))
    model.load_state_dict(saved["state_dict"])
    info = {"tagger": name, "source": saved["source"]}  # in place of a checkpoint's epoch and metrics
    return TrainedModel(model.to(device).eval(), config, list(saved["tags"]), info, multi_label=True, thresholds=None)
