"""Models: small CNNs over log-mel spectrograms, picked by name from a registry.

Every model maps a batch [batch, 1, n_mels, frames] to a dict with "logits" [batch, classes]
and "embedding" [batch, dim], so training, evaluation and embedding export share one path.
"""

import torch
from torch import nn

from genrenet.config import ModelConfig
from genrenet.errors import UserError


class SmallCNN(nn.Module):
    """Four conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) and global pooling.

    The classic small mel-spectrogram CNN (cf. Choi et al., "Automatic tagging using deep
    convolutional neural networks", ISMIR 2016), kept small enough to train on a laptop CPU.
    Batch norm on the input standardizes the dB values, so features need no extra scaling.
    """

    def __init__(self, n_classes: int, n_mels: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        del n_mels  # global pooling makes the network independent of the mel count
        channels = [1, width, width * 2, width * 4, width * 8]
        self.input_norm = nn.BatchNorm2d(1)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                          nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True))
            for c_in, c_out in zip(channels, channels[1:])])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels[-1], n_classes)

    def forward(self, x: torch.Tensor) -> dict:
        x = self.blocks(self.input_norm(x))
        # Mean and max over frequency and time: the mean hears texture, the max hears events.
        embedding = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding}


MODELS = {"small_cnn": SmallCNN}


def build_model(config: ModelConfig, n_classes: int, n_mels: int) -> nn.Module:
    if config.name not in MODELS:
        raise UserError(f"model.name '{config.name}' is not a known model (choose from {', '.join(sorted(MODELS))})")
    return MODELS[config.name](n_classes=n_classes, n_mels=n_mels, width=config.width, dropout=config.dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
