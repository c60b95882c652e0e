"""Transfer learning from a frozen tagger: its clip embeddings as features, and small heads on them.

A shipped musicnn tagger (genrenet.musicnn) is run once per clip, when the feature store is filled,
and its embedding is stored as the clip's features; later epochs, runs and cross-validation folds
read them back, so a linear probe trains in seconds where fine-tuning the network takes minutes
per epoch on a CPU. The same features feed the classic models (musicnn_svm, musicnn_logreg).

Two embeddings (model.embedding): "pooled", the 1506 max- and mean-pooled front- and mid-end
features (musicnn's max_pool and mean_pool, the layers its authors suggest for transfer), or
"penultimate", the 200-unit layer under the tags.
"""

from typing import Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from genrenet.classic import ClassicSettings
from genrenet.config import STRICT
from genrenet.musicnn import MusicnnFrontEnd, load_pretrained, musicnn_extractor

EMBEDDING_WIDTHS = {"pooled": 1506, "penultimate": 200}
Tagger = Literal["musicnn-msd", "musicnn-mtt"]
Embedding = Literal["pooled", "penultimate"]


class TaggerEmbedding(nn.Module):
    """16 kHz waveforms [clips, samples] -> a frozen tagger's clip embeddings [clips, width]."""

    def __init__(self, pretrained: str, embedding: str, front_end: MusicnnFrontEnd | None = None):
        super().__init__()
        self.front_end = front_end if front_end is not None else MusicnnFrontEnd()
        self.tagger, _ = load_pretrained(pretrained)
        self.key = "embedding" if embedding == "penultimate" else "pooled"

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.tagger.eval()(self.front_end(waves).unsqueeze(1))[self.key]


def embedding_extractor(config) -> TaggerEmbedding:
    # the tagger's own front end, with its 16 kHz check
    return TaggerEmbedding(config.model.pretrained, config.model.embedding, musicnn_extractor(config))


def embedding_width(config) -> int:
    return EMBEDDING_WIDTHS[config.model.embedding]


def embedding_keys(config) -> dict:
    """What the stored embeddings depend on beyond the audio: which tagger, which layer."""
    return {"pretrained": config.model.pretrained, "embedding": config.model.embedding}


@dataclass(config=STRICT)
class ProbeSettings:
    """The model section of musicnn_probe: a head trained on a frozen tagger's clip embeddings."""

    name: str = "musicnn_probe"
    pretrained: Tagger = "musicnn-msd"
    embedding: Embedding = "pooled"
    hidden: int = Field(0, ge=0, le=8192)  # 0: a linear probe; more: one hidden layer of this width (an MLP)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class EmbeddingHead(nn.Module):
    """Clip embeddings [batch, 1, width] -> {"logits", "embedding"}: standardized by a batch norm,
    then dropout and a linear layer, with a hidden layer and ReLU before them when hidden > 0. The
    embedding returned is the head's input after the norm, or the hidden layer's output."""

    def __init__(self, width: int, n_classes: int, hidden: int = 0, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.BatchNorm1d(width)
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden or width, n_classes)

    def forward(self, x: torch.Tensor) -> dict:
        embedding = self.hidden(self.norm(x.flatten(1).float()))
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding}

    @classmethod
    def from_settings(cls, settings: ProbeSettings, n_classes: int, width: int) -> "EmbeddingHead":
        return cls(width, n_classes, settings.hidden, settings.dropout)


@dataclass(config=STRICT)
class TaggerClassicSettings(ClassicSettings):
    """The model section of musicnn_svm and musicnn_logreg: a classic model on a frozen tagger's clip
    embeddings (the classic keys, plus which tagger and which embedding)."""

    name: Literal["musicnn_svm", "musicnn_logreg"] = "musicnn_svm"
    pretrained: Tagger = "musicnn-msd"
    embedding: Embedding = "pooled"
