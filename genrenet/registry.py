"""The registry: one name picks a model and everything the pipeline needs to run it.

A model entry says which settings class validates its `model:` section, which kind of features
it reads, how it is built, and whether it is trained by gradient steps or fitted in one call.
Every model is a torch.nn.Module that maps a batch of clip features [batch, 1, ...] to a dict
with "logits" [batch, classes] (and, where it has one, "embedding" [batch, dim]); it is saved
and loaded through its own state_dict() / load_state_dict(), so one checkpoint path serves all.

A feature kind says how waveforms [clips, samples] become features, their width along dimension
1 (mel bands, feature columns), and whether they have a time axis (framed) that training may crop
and evaluation may window.

The built-in entries are registered by genrenet.catalog when the package is imported; code
outside the package registers its own with register_model / register_features.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genrenet.errors import UserError

if TYPE_CHECKING:  # annotations only: the config module itself looks models up here
    import torch

    from genrenet.config import Config


@dataclass(frozen=True)
class FeatureKind:
    name: str
    # config -> a picklable callable: waveforms [clips, samples] -> features [clips, width, ...]
    extractor: Callable[["Config"], Callable]
    width: Callable[["Config"], int]  # size of dimension 1, to recognize a damaged or foreign cache entry
    framed: bool  # [clips, width, frames]: crops, windows and spectrogram augmentation apply
    # config -> samples between frames (framed kinds): crops and masks given in seconds count frames by it
    frame_hop: Callable[["Config"], int] = lambda config: config.features.hop_length
    # config -> the model settings the features also depend on (a pretrained network's name, say),
    # part of the feature store's key
    model_keys: Callable[["Config"], dict] = lambda config: {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    settings: type  # a config dataclass of the model.* keys, whose `name` field holds this name
    features: str  # the FeatureKind it reads
    # (settings, number of classes, feature width) -> an untrained torch.nn.Module
    build: Callable[[Any, int, int], "torch.nn.Module"]
    # False: trained by gradient steps (genrenet.training's loop); True: by one model.fit(features,
    # targets, seed) call on every training clip, as scikit-learn models are.
    fitted: bool = False
    family: str = "neural"  # a word for reports: "cnn", "classic", ...
    # (settings, model, train.lr) -> the optimizer's parameter groups, for a model whose parts learn
    # at their own rates (a pretrained backbone under a new head); None: every trainable
    # parameter at train.lr
    parameter_groups: Callable[[Any, "torch.nn.Module", float], list[dict]] | None = None


MODELS: dict[str, ModelEntry] = {}
FEATURES: dict[str, FeatureKind] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.features not in FEATURES:
        raise ValueError(f"model '{entry.name}' reads features '{entry.features}', which are not registered")
    MODELS[entry.name] = entry
    return entry


def register_features(kind: FeatureKind) -> FeatureKind:
    FEATURES[kind.name] = kind
    return kind


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise UserError(f"model.name '{name}' is not a known model (choose from {', '.join(sorted(MODELS))})")
    return MODELS[name]


def features_of(config: "Config") -> FeatureKind:
    """The kind of features the config's model reads."""
    return FEATURES[model_entry(config.model.name).features]


def frames_per_second(config: "Config") -> float:
    """Frames per second of the config's (framed) features."""
    return config.audio.sample_rate / features_of(config).frame_hop(config)


def parameter_groups(config: "Config", model: "torch.nn.Module") -> list[dict]:
    """The optimizer's parameter groups for the config's model (frozen parameters left out)."""
    entry = model_entry(config.model.name)
    if entry.parameter_groups is not None:
        return entry.parameter_groups(config.model, model, config.train.lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.train.lr}]


def build_model(config: "Config", n_classes: int) -> "torch.nn.Module":
    """An untrained model as the config's model section describes it."""
    entry = model_entry(config.model.name)
    return entry.build(config.model, n_classes, FEATURES[entry.features].width(config))
