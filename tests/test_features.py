"""Feature stage: log-mel spectrograms with the configured shape, frequency mapping and range."""

import numpy as np
import pytest
import torch
import torchaudio

from conftest import SR, tone
from genrenet.config import AudioConfig, FeatureConfig
from genrenet.features import MelFeatures


def waves(*signals) -> torch.Tensor:
    return torch.from_numpy(np.stack(signals).astype(np.float32))


def make(n_fft=256, hop_length=128, n_mels=32, **kw):
    features = FeatureConfig(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, **kw)
    audio = AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0)
    return MelFeatures(features, audio), features


@pytest.mark.parametrize("n_fft,hop_length,n_mels", [(256, 128, 32), (512, 64, 40), (256, 256, 16)])
def test_shape_matches_config(n_fft, hop_length, n_mels):
    mel, _ = make(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    x = waves(tone(440, 1.0), tone(880, 1.0), np.random.default_rng(0).uniform(-0.5, 0.5, SR))
    out = mel(x)
    # centered STFT: one frame per hop plus one
    assert out.shape == (3, n_mels, 1 + SR // hop_length)
    assert torch.isfinite(out).all()


def test_silence_is_finite():
    mel, _ = make()
    out = mel(torch.zeros(2, SR))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tone_energy_in_expected_mel_band(freq):
    mel, cfg = make()
    out = mel(waves(tone(freq, 1.0, amp=0.5)))[0]
    band = int(out.mean(dim=1).argmax())
    # the filter bank torchaudio builds for this config: the winning band must cover the tone
    fbanks = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, 0.0, SR / 2, cfg.n_mels, SR)
    bins = fbanks[:, band].nonzero().flatten().float() * SR / cfg.n_fft
    assert bins.min() - SR / cfg.n_fft <= freq <= bins.max() + SR / cfg.n_fft
    # and it is far louder than a distant band
    far = (band + cfg.n_mels // 2) % cfg.n_mels
    assert out.mean(dim=1)[band] - out.mean(dim=1)[far] > 30


def test_higher_tone_lands_in_higher_band():
    mel, _ = make()
    out = mel(waves(*(tone(f, 1.0) for f in (200, 800, 2000, 3500))))
    bands = out.mean(dim=2).argmax(dim=1).tolist()
    assert bands == sorted(bands) and len(set(bands)) == 4


@pytest.mark.parametrize("top_db", [20.0, 60.0])
def test_top_db_clamps_dynamic_range(top_db):
    mel, _ = make(top_db=top_db)
    x = waves(tone(1000, 1.0, amp=0.5))  # a pure tone has > 100 dB between its band and silence
    out = mel(x)
    assert out.max() - out.min() == pytest.approx(top_db, abs=1e-3)
    unclamped, _ = make(top_db=None)
    assert (unclamped(x).max() - unclamped(x).min()) > top_db + 20


def test_each_clip_features_do_not_depend_on_other_clips():
    mel, _ = make(top_db=80.0)
    loud, quiet = tone(1000, 1.0, amp=0.5), tone(1000, 1.0, amp=1e-4)
    together = mel(waves(loud, quiet))
    alone = mel(waves(quiet))
    torch.testing.assert_close(together[1], alone[0])
