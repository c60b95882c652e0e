"""Models: small CNNs over log-mel spectrograms (registered by name in genrenet.catalog).

Every model maps a batch [batch, 1, n_mels, frames] to a dict with "logits" [batch, classes]
and "embedding" [batch, dim], so training, evaluation and prediction share one path.
"""

from typing import Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from genrenet.config import STRICT
from genrenet.registry import MODELS


@dataclass(config=STRICT)
class CNNSettings:
    """The model section of a CNN (small_cnn, resnet_cnn)."""

    name: str = "small_cnn"
    width: int = Field(32, gt=0, le=1024)  # channels of the first block; later blocks double it
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    # Input normalization: global (one batch norm over all dB values) or frequency (a batch norm
    # per mel band, so every band is standardized on its own).
    input_norm: Literal["global", "frequency"] = "global"
    # Pooling before the head: global (over frequency and time) or time (over time only, keeping
    # where in the spectrum each feature fired).
    pooling: Literal["global", "time"] = "global"


class FrequencyNorm(nn.Module):
    """Batch norm with one mean, variance and affine pair per mel band: [batch, 1, n_mels, frames]
    is standardized band by band, so quiet high bands weigh as much as loud low ones."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def input_norm(kind: str, n_mels: int) -> nn.Module:
    return FrequencyNorm(n_mels) if kind == "frequency" else nn.BatchNorm2d(1)


class GlobalPoolCNN(nn.Module):
    """The frame every CNN here shares: input normalization, conv blocks, mean and max pooling,
    dropout and a linear head.

    pooling="global" pools over frequency and time, so the network is independent of the clip
    length and (except with norm="frequency") of the mel count. pooling="time" pools over time
    only and keeps the pooled frequency rows apart, so the head knows where in the spectrum a
    feature fired: convolutions alone barely do, and the spectral envelope is what tells steady
    textures (rain, sea waves, an engine) apart."""

    def __init__(
        self,
        blocks: nn.Sequential,
        channels: int,
        n_classes: int,
        n_mels: int,
        dropout: float,
        norm: str,
        pooling: str = "global",
    ):
        super().__init__()
        self.input_norm = input_norm(norm, n_mels)
        self.blocks = blocks
        self.pooling = pooling
        with torch.no_grad():  # frequency rows left after the blocks' pooling
            rows = blocks.eval()(torch.zeros(1, 1, n_mels, 16)).shape[2] if pooling == "time" else 1
        blocks.train()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels * rows, n_classes)
        # Channels-last convolutions run about 1.3x faster on CPU (oneDNN) and suit tensor cores on GPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict:
        x = self.blocks(self.input_norm(x).contiguous(memory_format=torch.channels_last))
        # Mean and max over time (and frequency): the mean hears texture, the max hears events.
        dims = (3,) if self.pooling == "time" else (2, 3)
        embedding = torch.cat([x.mean(dim=dims).flatten(1), x.amax(dim=dims).flatten(1)], dim=1)
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding}

    @classmethod
    def from_settings(cls, settings: CNNSettings, n_classes: int, n_mels: int) -> "GlobalPoolCNN":
        return cls(
            n_classes=n_classes,
            n_mels=n_mels,
            width=settings.width,
            dropout=settings.dropout,
            norm=settings.input_norm,
            pooling=settings.pooling,
        )


class SmallCNN(GlobalPoolCNN):
    """Four conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) and global pooling.

    The classic small mel-spectrogram CNN (cf. Choi et al., "Automatic tagging using deep
    convolutional neural networks", ISMIR 2016), kept small enough to train on a laptop CPU.
    Batch norm on the input standardizes the dB values, so features need no extra scaling.
    """

    def __init__(
        self,
        n_classes: int,
        n_mels: int,
        width: int = 32,
        dropout: float = 0.3,
        norm: str = "global",
        pooling: str = "global",
    ):
        channels = [1, width, width * 2, width * 4, width * 8]
        blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, ceil_mode=True),
                )
                for c_in, c_out in zip(channels, channels[1:])
            ]
        )
        super().__init__(blocks, channels[-1], n_classes, n_mels, dropout, norm, pooling)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with batch norm, added to a shortcut (1x1 conv + batch norm when the channel
    count changes), ReLU, then a 2x2 max-pool."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.body(x) + self.shortcut(x)))


class ResidualCNN(GlobalPoolCNN):
    """Four residual blocks (width, 2w, 4w, 4w channels), each halving frequency and time, and global pooling.

    A short-chunk residual CNN after ShortChunkCNN_Res in Won et al., "Evaluation of CNN-based
    automatic music tagging models", SMC 2020, cut from 7 blocks to 4 (and max-pool in place of
    strided convs) to train on a 2-core CPU. At width 32 with 10 classes: 595,596 parameters and
    about 1,440 MFLOPs per 128-mel x 130-frame clip (1,184 for 64 x 216), 3x SmallCNN at the same
    width, as every block runs two convs before its pool; width 16 gives 150,092 parameters and
    362 MFLOPs. FLOPs are 2 x the multiply-accumulates of the convs and the linear head, counted
    by count_flops with forward hooks (batch norm, ReLU and pooling left out).
    """

    def __init__(
        self,
        n_classes: int,
        n_mels: int,
        width: int = 32,
        dropout: float = 0.3,
        norm: str = "global",
        pooling: str = "global",
    ):
        channels = [1, width, width * 2, width * 4, width * 4]
        blocks = nn.Sequential(*[ResidualBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])])
        super().__init__(blocks, channels[-1], n_classes, n_mels, dropout, norm, pooling)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, n_mels: int, frames: int) -> int:
    """FLOPs (2 x multiply-accumulates) of the convs and linear layers for one clip, counted with
    forward hooks in eval mode; batch norm, activations and pooling are left out (a few percent)."""
    macs = []

    def count(layer, inputs, output):
        per_output = (
            layer.in_features
            if isinstance(layer, nn.Linear)
            else (layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1])
        )
        macs.append(output.numel() * per_output)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, n_mels, frames))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return 2 * sum(macs)


def describe_models(n_classes: int = 10, shapes: tuple = ((128, 130), (64, 216))) -> list[dict]:
    """Every registered CNN at its default width: name, parameters and MFLOPs per clip for each (n_mels,
    frames) shape, as keys like "mflops_128x130" (128 mels x 130 frames: 3 s at 22050 Hz, hop
    512; 64 x 216: 5 s at 22050 Hz, hop 512)."""
    rows = []
    for name, entry in MODELS.items():
        if entry.family != "cnn":
            continue
        model = entry.build(entry.settings(name=name), n_classes, shapes[0][0])
        row = {"name": name, "parameters": count_parameters(model)}
        row.update({f"mflops_{m}x{f}": round(count_flops(model, m, f) / 1e6, 1) for m, f in shapes})
        rows.append(row)
    return rows
