"""Audio stage: decoding every supported format, downmix, resampling, normalization, silence
stripping, clip cutting and decode errors."""

import shutil

import numpy as np
import pytest
import soundfile

from conftest import SR, tone, write_audio, write_garbage, write_tone
from genrenet.audio import cut_clips, decode, load_clips, prepare
from genrenet.config import AudioConfig
from genrenet.errors import AudioError, UserError


def samples_of(segment) -> np.ndarray:
    return np.frombuffer(segment.raw_data, dtype="<i2").astype(np.float64) / 32768.0


def peak_frequency(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64)))
    return float(np.argmax(spectrum) * sr / len(x))


def audio_config(**kw) -> AudioConfig:
    defaults = dict(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0)
    defaults.update(kw)
    return AudioConfig(**defaults)


# --- decoding -----------------------------------------------------------------------------------

LOSSLESS = [
    ("wav", "WAV", "PCM_U8", 1 / 128),
    ("wav", "WAV", "PCM_16", 1e-4),
    ("wav", "WAV", "PCM_24", 1e-4),
    ("wav", "WAV", "PCM_32", 1e-4),
    ("wav", "WAV", "FLOAT", 1e-4),
    ("wav", "WAV", "DOUBLE", 1e-4),
    ("au", "AU", "PCM_16", 1e-4),
    ("flac", "FLAC", "PCM_16", 1e-4),
]


@pytest.mark.parametrize("ext,fmt,subtype,tolerance", LOSSLESS, ids=[f"{e}-{s}" for e, _, s, _ in LOSSLESS])
def test_decode_lossless_formats_exactly(tmp_path, ext, fmt, subtype, tolerance):
    sr = 16000
    path = write_tone(tmp_path / f"tone.{ext}", freq=1000, seconds=0.5, sr=sr, amp=0.5, format=fmt, subtype=subtype)
    segment = decode(path)
    assert segment.channels == 1
    assert segment.frame_rate == sr
    assert segment.sample_width == 2
    x = samples_of(segment)
    assert len(x) == sr // 2
    # Sample-accurate: the decoded waveform is the written one up to the format's quantization.
    np.testing.assert_allclose(x, tone(1000, 0.5, sr, 0.5), atol=tolerance + 1 / 32768)


LOSSY = [("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]


@pytest.mark.parametrize("ext,fmt,subtype", LOSSY, ids=[e for e, _, _ in LOSSY])
def test_decode_lossy_formats(tmp_path, ext, fmt, subtype):
    sr = 16000
    path = write_tone(tmp_path / f"tone.{ext}", freq=1000, seconds=1.0, sr=sr, amp=0.5, format=fmt, subtype=subtype)
    segment = decode(path)
    assert segment.channels == 1 and segment.frame_rate == sr
    x = samples_of(segment)
    assert abs(len(x) - sr) <= 0.05 * sr  # encoder padding/delay is small
    assert peak_frequency(x, sr) == pytest.approx(1000, abs=5)
    assert 0.4 < np.abs(x).max() < 0.6


def test_decode_stereo_downmix_averages_channels(tmp_path):
    left = tone(440, 1.0, amp=0.5)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1))
    assert soundfile.info(str(path)).channels == 2
    segment = decode(path)
    assert segment.channels == 1
    np.testing.assert_allclose(samples_of(segment), left / 2, atol=2 / 32768)


def test_decode_six_channel_downmix(tmp_path):
    x = np.zeros((SR, 6))
    x[:, 2] = tone(440, 1.0, amp=0.6)
    x[:, 5] = tone(440, 1.0, amp=0.6)
    path = write_audio(tmp_path / "surround.wav", x)
    assert soundfile.info(str(path)).channels == 6
    clips = load_clips(path, audio_config(normalize="off"))
    assert clips.shape == (1, SR)
    # two of six channels carry the tone: the mono mix has a third of its amplitude
    assert clips.abs().max().item() == pytest.approx(0.6 * 2 / 6, abs=1e-3)


# --- resampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source_rate", [4000, 16000, 44100])
def test_resampling_to_config_rate_keeps_pitch(tmp_path, source_rate):
    path = write_tone(tmp_path / f"tone_{source_rate}.wav", freq=1000, seconds=1.0, sr=source_rate, amp=0.5)
    clips = load_clips(path, audio_config(normalize="off", clip_seconds=1.0, hop_seconds=1.0))
    assert clips.shape == (1, SR)
    assert peak_frequency(clips[0].numpy(), SR) == pytest.approx(1000, abs=2)
    assert clips.abs().max().item() == pytest.approx(0.5, abs=0.02)


def test_output_length_is_clip_seconds_times_sample_rate(tmp_path):
    path = write_tone(tmp_path / "t.wav", seconds=3.0, sr=22050)
    clips = load_clips(path, AudioConfig(sample_rate=SR, clip_seconds=0.75, hop_seconds=0.5))
    assert clips.shape == (1 + (3000 - 750) // 500, round(0.75 * SR))
    assert clips.dtype.is_floating_point


# --- level ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peak_dbfs", [-1.0, -6.0, -20.0])
def test_peak_normalization(tmp_path, peak_dbfs):
    path = write_tone(tmp_path / "quiet.wav", seconds=1.0, amp=0.05)
    clips = load_clips(path, audio_config(normalize="peak", peak_dbfs=peak_dbfs))
    assert clips.abs().max().item() == pytest.approx(10 ** (peak_dbfs / 20), abs=1e-3)


def test_normalize_off_keeps_level(tmp_path):
    path = write_tone(tmp_path / "quiet.wav", seconds=1.0, amp=0.1)
    clips = load_clips(path, audio_config(normalize="off"))
    assert clips.abs().max().item() == pytest.approx(0.1, abs=1e-3)


def test_strip_silence_removes_silent_middle(tmp_path):
    x = np.concatenate([tone(440, 1.0), np.zeros(2 * SR), tone(440, 1.0)])
    path = write_audio(tmp_path / "gap.wav", x)
    segment = decode(path)
    assert len(segment) == 4000
    kept = prepare(segment, audio_config(strip_silence=True, min_silence_ms=1000, silence_dbfs=-50))
    assert 1900 <= len(kept) <= 2200
    unstripped = prepare(segment, audio_config(strip_silence=False))
    assert len(unstripped) == 4000
    # and it carries through to the clip count
    cfg = dict(clip_seconds=0.5, hop_seconds=0.5)
    assert load_clips(path, audio_config(strip_silence=False, **cfg)).shape[0] == 8
    assert load_clips(path, audio_config(strip_silence=True, **cfg)).shape[0] == 4


def test_strip_silence_keeps_short_pauses(tmp_path):
    x = np.concatenate([tone(440, 1.0), np.zeros(SR // 4), tone(440, 1.0)])  # 250 ms pause
    segment = decode(write_audio(tmp_path / "pause.wav", x))
    kept = prepare(segment, audio_config(strip_silence=True, min_silence_ms=1000))
    assert len(kept) == len(segment) == 2250


# --- clips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip,hop,count", [(3, 3, 3), (3, 1, 8), (3, 2, 4), (2.5, 1.5, 6), (10, 10, 1)])
def test_clip_counts(tmp_path, clip, hop, count):
    path = write_tone(tmp_path / "ten.wav", seconds=10.0)
    clips = load_clips(path, AudioConfig(sample_rate=SR, clip_seconds=clip, hop_seconds=hop))
    assert clips.shape == (count, round(clip * SR))


def test_clips_follow_the_hop(tmp_path):
    # a ramp makes every position unique: clip i must start at i * hop
    ramp = np.linspace(-0.9, 0.9, 4 * SR)
    path = write_audio(tmp_path / "ramp.wav", ramp)
    clips = load_clips(path, audio_config(normalize="off", clip_seconds=1.0, hop_seconds=0.5))
    assert clips.shape[0] == 7
    for i, clip in enumerate(clips):
        start = i * SR // 2
        np.testing.assert_allclose(clip.numpy(), ramp[start : start + SR], atol=2 / 32768)


def test_short_track_is_padded_to_one_clip_with_trailing_zeros(tmp_path):
    path = write_tone(tmp_path / "short.wav", seconds=0.3, amp=0.5)
    clips = load_clips(path, audio_config(normalize="off", clip_seconds=1.0, hop_seconds=1.0))
    assert clips.shape == (1, SR)
    head, tail = clips[0, : int(0.3 * SR)], clips[0, int(0.3 * SR) :]
    np.testing.assert_allclose(head.numpy(), tone(440, 0.3, amp=0.5), atol=2 / 32768)
    assert tail.abs().max().item() == 0.0


def test_cut_clips_drops_short_tail():
    from pydub import AudioSegment

    segment = AudioSegment.silent(duration=2700, frame_rate=SR)
    clips = cut_clips(segment, 1.0, 1.0)
    assert [len(c) for c in clips] == [1000, 1000]


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ffmpeg") is not None, reason="ffmpeg is installed: .m4a would be decoded")
def test_unknown_extension_without_ffmpeg_says_to_install_it(tmp_path):
    path = write_garbage(tmp_path / "song.m4a", b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 500)
    with pytest.raises(AudioError) as info:
        decode(path)
    message = str(info.value)
    assert "ffmpeg" in message and "install" in message
    assert "song.m4a" in message
    assert "\n" not in message


def test_garbage_wav_is_one_line_audio_error_naming_the_file(tmp_path):
    path = write_garbage(tmp_path / "broken.wav")
    with pytest.raises(AudioError) as info:
        load_clips(path, audio_config())
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert isinstance(info.value, UserError)


def test_empty_file_is_audio_error(tmp_path):
    path = write_garbage(tmp_path / "empty.flac", b"")
    with pytest.raises(AudioError, match="empty.flac"):
        decode(path)


def test_missing_file_is_audio_error(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        decode(tmp_path / "nope.wav")
