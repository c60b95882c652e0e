"""Feature stage: log-mel spectrograms (torchaudio), every parameter from the config."""

import torch
import torchaudio.transforms

from genrenet.config import AudioConfig, FeatureConfig


class MelFeatures(torch.nn.Module):
    """Waveforms [clips, samples] -> log-mel spectrograms in dB [clips, n_mels, frames]."""

    def __init__(self, features: FeatureConfig, audio: AudioConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=audio.sample_rate,
            n_fft=features.n_fft,
            win_length=features.win_length,
            hop_length=features.hop_length,
            f_min=features.f_min,
            f_max=features.f_max,
            n_mels=features.n_mels,
            power=features.power,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(
            stype="power" if features.power == 2.0 else "magnitude", top_db=features.top_db
        )

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        # A channel axis makes AmplitudeToDB apply top_db per clip: with [clips, mels, frames] it
        # would take the loudest clip of the file as the reference for all of them.
        return self.to_db(self.mel(waves).unsqueeze(1)).squeeze(1)


class HalfPrecision(torch.nn.Module):
    """Wraps an extractor to return float16, halving the cache and memory (a module, not a lambda,
    so worker processes can pickle it and an exported model can hold it)."""

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.extractor(waves).to(torch.float16)


def mel_extractor(config) -> HalfPrecision:
    """Waveforms [clips, samples] -> float16 log-mel spectrograms [clips, n_mels, frames]."""
    return HalfPrecision(MelFeatures(config.features, config.audio))
