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


def build_model(config: "Config", n_classes: int) -> "torch.nn.Module":
    """An untrained model as the config's model section describes it."""
    entry = model_entry(config.model.name)
    return entry.build(config.model, n_classes, FEATURES[entry.features].width(config))
