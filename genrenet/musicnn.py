"""musicnn in PyTorch: the pretrained music taggers of Pons and Serra, "musicnn: pre-trained
convolutional neural networks for music audio tagging" (ISMIR 2019 late-breaking demo).

Two sets of weights ship in genrenet/pretrained: musicnn-msd (Million Song Dataset) and musicnn-mtt
(MagnaTagATune), 50 tags each, converted from the TensorFlow checkpoints of musicnn 0.1.0 by
tools/convert_musicnn.py (ISC licence: genrenet/pretrained/LICENSE-musicnn). tests/test_musicnn.py
checks the port against outputs of the original code recorded by that script.

The pipeline: 16 kHz mono -> log-mel (96 bands, n_fft 512, hop 256, log10(10000 x + 1) of the
power after a float16 cast) -> 187-frame patches (3 s) -> MusiCNN -> 50 tag logits per patch.
musicnn resamples with librosa (soxr); genrenet uses torchaudio.functional.resample, so for audio
at other rates the tag probabilities are close to musicnn's, not identical (by up to 0.04 on the
22.05 kHz song of tests/test_musicnn.py; librosa's soxr resampler would give musicnn's to 1e-5).
"""

from pathlib import Path
from typing import Literal

import torch
import torchaudio
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn
from torch.nn import functional

from genrenet.audio import resampling_rates
from genrenet.config import STRICT
from genrenet.errors import UserError

SAMPLE_RATE = 16000
N_MELS = 96
PATCH_FRAMES = 187  # 3 s: the patch length the taggers were trained on
PRETRAINED_DIR = Path(__file__).with_name("pretrained")
PRETRAINED = {"musicnn-msd": "musicnn_msd.pt", "musicnn-mtt": "musicnn_mtt.pt"}
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon (PyTorch's default is 1e-5)
BN_MOMENTUM = 0.01  # TensorFlow's momentum 0.99 for the moving averages, in PyTorch's convention


def to_sample_rate(waves: torch.Tensor, rate: int) -> torch.Tensor:
    """Waveforms [..., samples] at `rate` -> 16 kHz, with the resampler genrenet's audio stage uses
    (torchaudio's windowed sinc, its default filter): fixed, so tags do not move between versions."""
    if rate == SAMPLE_RATE:
        return waves
    return torchaudio.functional.resample(waves, *resampling_rates(rate, SAMPLE_RATE))


class MusicnnFrontEnd(nn.Module):
    """16 kHz waveforms [clips, samples] -> musicnn's log-mel spectrograms [clips, 96, frames].

    The mel power is librosa's melspectrogram as musicnn computes it (Slaney mel scale and
    normalization, a centred STFT padded with zeros as librosa 0.11 does, power 2)."""

    def __init__(self):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=512,
            hop_length=256,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            n_mels=N_MELS,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
            center=True,
            pad_mode="constant",
        )

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        # musicnn rounds the power to float16, then takes the log in float32. Clamped to float16's
        # largest value first: where musicnn's cast gives inf (and its network NaN), this saturates.
        power = self.mel(waves).clamp(max=torch.finfo(torch.float16).max).half().float()
        return torch.log10(10000 * power + 1)


def patches(logmel: torch.Tensor, step: int = PATCH_FRAMES) -> torch.Tensor:
    """One log-mel spectrogram [96, frames] -> patches [n, 1, 96, 187], one every `step` frames while
    a whole patch fits, as musicnn cuts them; a recording shorter than a patch is one shorter patch
    (the network takes any length)."""
    if logmel.shape[-1] < PATCH_FRAMES:
        return logmel[None, None]
    return logmel.unfold(-1, PATCH_FRAMES, step).transpose(0, 1).unsqueeze(1)


class FrontEndBlock(nn.Module):
    """A conv over [time, frequency] with TensorFlow's 'same' padding in time (63 frames before and 64
    after for a 128-frame kernel), ReLU, then batch norm (musicnn's order), then the maximum over
    frequency: [batch, 1, frames, mels] -> [batch, channels, frames]."""

    def __init__(self, channels: int, time: int, frequency: int):
        super().__init__()
        self.padding = ((time - 1) // 2, time // 2)
        self.conv = nn.Conv2d(1, channels, (time, frequency))
        self.norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(functional.pad(x, (0, 0, *self.padding)))
        return self.norm(torch.relu(x)).amax(dim=3)


class MidEndBlock(nn.Module):
    """A 7-frame conv over every feature at once (musicnn's [7, width] 2D conv on one channel), ReLU,
    batch norm: [batch, features, frames] -> [batch, channels, frames]."""

    def __init__(self, features: int, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(features, channels, 7, padding=3)
        self.norm = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x)))


class MusiCNN(nn.Module):
    """musicnn's network: log-mel patches [batch, 1, 96, frames] -> {"logits" [batch, tags] (before
    the sigmoid), "embedding" [batch, 200] (the penultimate layer)}.

    Front end: timbral convs (7 frames x 38 and x 67 mel bands, 204 channels each) and temporal convs
    (128, 64 and 32 frames x 1 band, 51 channels each), each max-pooled over frequency (561
    features per frame). Mid end: three 64-channel convs over time, the last two residual. Back end:
    the front- and mid-end features (753) max- and mean-pooled over time, interleaved (max, mean of
    feature 0, then of feature 1, ...) as musicnn flattens them, a 200-unit dense layer, the tags.
    The output dict also holds "pooled" [batch, 1506], those pooled features (musicnn's max_pool and
    mean_pool), for heads trained on a frozen tagger."""

    def __init__(self, n_tags: int = 50, midend: int = 64, backend: int = 200, dropout: float = 0.5):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.timbral = nn.ModuleList([FrontEndBlock(204, 7, int(share * N_MELS)) for share in (0.4, 0.7)])
        self.temporal = nn.ModuleList([FrontEndBlock(51, frames, 1) for frames in (128, 64, 32)])
        front = 2 * 204 + 3 * 51
        self.midend = nn.ModuleList([MidEndBlock(width, midend) for width in (front, midend, midend)])
        self.pool_norm = nn.BatchNorm1d(2 * (front + 3 * midend), eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dense = nn.Linear(2 * (front + 3 * midend), backend)
        self.dense_norm = nn.BatchNorm1d(backend, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backend, n_tags)
        self.frozen: list[nn.Module] = []

    def freeze_front_end(self) -> "MusiCNN":
        """Fine-tune the last blocks only: the input norm and front-end convs keep their pretrained
        weights, and their batch norms their statistics (they stay in eval mode when training)."""
        self.frozen = [self.input_norm, self.timbral, self.temporal]
        for part in self.frozen:
            part.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "MusiCNN":
        super().train(mode)
        for part in self.frozen:
            part.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict:
        x = self.input_norm(x.transpose(2, 3))  # [batch, 1, frames, mels]: musicnn's [time, frequency]
        features = [torch.cat([block(x) for block in [*self.timbral, *self.temporal]], dim=1)]
        for i, block in enumerate(self.midend):
            y = block(features[-1])
            features.append(y if i == 0 else y + features[-1])
        features = torch.cat(features, dim=1)  # [batch, 753, frames]
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        embedding = self.dense_norm(torch.relu(self.dense(self.dropout(self.pool_norm(pooled)))))
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding, "pooled": pooled}


def pretrained_path(name: str) -> Path:
    if name not in PRETRAINED:
        raise UserError(f"'{name}' is not a pretrained tagger (choose from {', '.join(PRETRAINED)})")
    return PRETRAINED_DIR / PRETRAINED[name]


def pretrained_weights(name: str) -> dict:
    """A shipped tagger's file: {"state_dict", "tags", "source"}."""
    return torch.load(pretrained_path(name), map_location="cpu", weights_only=True)


def load_pretrained(name: str) -> tuple[MusiCNN, list[str]]:
    """A shipped tagger by name (musicnn-msd, musicnn-mtt), in eval mode, and its tag names."""
    saved = pretrained_weights(name)
    model = MusiCNN(n_tags=len(saved["tags"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), list(saved["tags"])


@dataclass(config=STRICT)
class MusicnnSettings:
    """The model section of musicnn fine-tuned on the user's classes: a shipped tagger's layers (or
    none: from scratch) under a new head."""

    name: str = "musicnn"
    pretrained: Literal["musicnn-msd", "musicnn-mtt"] | None = "musicnn-msd"
    # all: every layer trains; last_blocks: the front end stays as pretrained (about 4x faster
    # steps on a CPU), the mid end, back end and head train.
    fine_tune: Literal["all", "last_blocks"] = "all"
    # The learning rate of the pretrained layers (None: train.lr, as the new head); the schedule
    # scales both alike. Smaller than the head's keeps more of what the tagger learned.
    backbone_lr: float | None = Field(None, gt=0.0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _pretrained_to_tune(self):
        if self.pretrained is None and (self.fine_tune != "all" or self.backbone_lr is not None):
            raise ValueError("model.fine_tune: last_blocks and model.backbone_lr need model.pretrained")
        return self


def build_musicnn(settings: MusicnnSettings, n_classes: int, width: int) -> MusiCNN:
    model = MusiCNN(n_tags=n_classes, dropout=settings.dropout)
    if settings.pretrained is not None:
        state = pretrained_weights(settings.pretrained)["state_dict"]
        model.load_state_dict({**state, "head.weight": model.head.weight, "head.bias": model.head.bias})
    return model.freeze_front_end() if settings.fine_tune == "last_blocks" else model


def musicnn_parameter_groups(settings: MusicnnSettings, model: MusiCNN, lr: float) -> list[dict]:
    """The optimizer's groups: the new head at lr, the trainable pretrained layers at backbone_lr."""
    head = list(model.head.parameters())
    backbone = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    return [{"params": head, "lr": lr}, {"params": backbone, "lr": settings.backbone_lr or lr}]


def musicnn_extractor(config) -> MusicnnFrontEnd:
    """The feature kind of musicnn: its log-mel front end, on 16 kHz clips."""
    if config.audio.sample_rate != SAMPLE_RATE:
        raise UserError(
            f"model {config.model.name} reads 16 kHz audio: set audio.sample_rate: {SAMPLE_RATE} "
            f"(it is {config.audio.sample_rate})"
        )
    return MusicnnFrontEnd()
