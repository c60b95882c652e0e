"""Handcrafted features: each one measures what it claims on signals whose answer is known."""

import numpy as np
import pytest
import torch

from genrenet.handcrafted import SILENCE_DBFS, HandcraftedFeatures

SR = 22050  # the default pipeline rate: the tempo and chroma resolutions tested are the real ones


def tone(freq: float, seconds: float = 2.0, peak: float = 0.5, sr: int = SR) -> np.ndarray:
    return peak * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


def clicks(bpm: float, seconds: float = 10.0, sr: int = SR, offset: float = 0.13) -> np.ndarray:
    """Short bursts every beat; the offset keeps beats off the STFT frame grid."""
    x = np.zeros(int(seconds * sr))
    for start in np.arange(offset, seconds, 60.0 / bpm):
        i = int(round(start * sr))
        x[i : i + 20] = 0.9
    return x


def waves(*signals) -> torch.Tensor:
    return torch.from_numpy(np.stack(signals).astype(np.float32))


@pytest.fixture(scope="module")
def features():
    return HandcraftedFeatures(SR)


def column(features, out: torch.Tensor, name: str) -> torch.Tensor:
    return out[:, features.names.index(name)]


def test_shape_dtype_and_names(features):
    out = features(waves(tone(440), tone(880), np.random.default_rng(0).uniform(-0.5, 0.5, 2 * SR)))
    assert out.shape == (3, len(features.names)) and out.dtype == torch.float32
    assert len(set(features.names)) == len(features.names) == 5 + 8 + 2 * 20 + 24 + 4
    for name in ("loudness_mean", "centroid_std", "mfcc03_mean", "chroma07_mean", "tempo_bpm", "pulse_clarity"):
        assert name in features.names
    assert len(HandcraftedFeatures(SR, n_mfcc=13).names) == 5 + 8 + 2 * 13 + 24 + 4


def test_finite_for_degenerate_clips(features):
    n = 3 * SR
    click = np.zeros(n)
    click[n // 2] = 1.0
    square = np.sign(tone(100, 3.0)) * 0.99
    out = features(waves(np.zeros(n), click, np.random.default_rng(1).uniform(-1, 1, n), square))
    assert torch.isfinite(out).all()
    assert column(features, out, "loudness_mean")[0] == SILENCE_DBFS  # a floor, not -inf
    assert column(features, out, "tempo_bpm")[0] == 0 and column(features, out, "pulse_clarity")[0] == 0
    # shorter than one FFT window, and an empty batch
    assert torch.isfinite(features(waves(np.ones(100) * 0.1))).all()
    assert features(torch.zeros(0, n)).shape == (0, len(features.names))


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_centroid_of_a_tone_is_its_frequency(features, freq):
    centroid = column(features, features(waves(tone(freq))), "centroid_mean").item()
    assert abs(centroid / freq - 1) < 0.05


def test_brighter_sounds_have_higher_centroid_and_zcr(features):
    noise = np.random.default_rng(2).uniform(-0.5, 0.5, 2 * SR)
    out = features(waves(tone(440), tone(1000), tone(3000), noise))
    centroid = column(features, out, "centroid_mean").tolist()
    assert centroid == sorted(centroid)
    zcr = column(features, out, "zcr_mean")
    assert zcr[3] > 10 * zcr[0]  # white noise crosses zero about half the samples, a 440 Hz tone 4%


@pytest.mark.parametrize("bpm,sr", [(120, SR), (90, SR), (150, SR), (120, 8000)])
def test_tempo_of_a_click_track(bpm, sr):
    features = HandcraftedFeatures(sr)
    out = features(waves(clicks(bpm, sr=sr), np.random.default_rng(3).uniform(-0.5, 0.5, 10 * sr)))
    tempo = column(features, out, "tempo_bpm")[0].item()
    assert abs(tempo / bpm - 1) < 0.04  # the exact tempo, no octave error
    clarity = column(features, out, "pulse_clarity")
    assert clarity[0] > 0.5 > clarity[1]  # a steady beat against noise


def test_loudness_follows_level(features):
    loud, quiet = tone(440, peak=10 ** (-6 / 20)), tone(440, peak=10 ** (-26 / 20))
    out = features(waves(loud, quiet, np.zeros_like(loud)))
    level = column(features, out, "loudness_mean")
    assert abs(level[0] - level[1] - 20) < 0.5
    assert abs(level[0] - (-6 - 3.01)) < 0.2  # a sine's RMS is 3 dB below its peak
    assert column(features, out, "loudness_range")[0] < 0.5  # a steady tone
    assert (out[2, :5] == torch.tensor([SILENCE_DBFS, 0, SILENCE_DBFS, SILENCE_DBFS, 0])).all()


def test_chroma_of_a_tone_peaks_at_its_pitch_class(features):
    out = features(waves(tone(440), tone(261.63), tone(392)))  # A4, C4, G4
    means = out[:, [features.names.index(f"chroma{i:02d}_mean") for i in range(12)]]
    assert means.argmax(dim=1).tolist() == [9, 0, 7]


def test_clip_features_do_not_depend_on_the_batch(features):
    quiet = tone(440, peak=0.001) + 0.0005 * np.random.default_rng(4).standard_normal(2 * SR)
    alone = features(waves(quiet))
    together = features(waves(tone(3000, peak=0.99), quiet))[1:]
    assert torch.allclose(alone, together, rtol=1e-3, atol=1e-3)
