"""The streaming audio stage: iter_clip_batches reads a file in blocks and gives exactly the clips
that decoding, normalizing and cutting the whole file gave (the reference below is the old
load_clips, kept verbatim), in bounded memory."""

import sys
import tracemalloc

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

import genrenet.audio as audio
from conftest import SR, tiny_config, tone, write_audio, write_garbage, write_tone
from genrenet.audio import cut_clips, decode, iter_clip_batches, load_clips, open_stream, prepare
from genrenet.cache import compute_features, feature_extractor, iter_feature_batches
from genrenet.config import AudioConfig
from genrenet.errors import AudioError


def whole_file_clips(path, config: AudioConfig) -> torch.Tensor:
    """The audio stage as it was before streaming: the whole file decoded, normalized and cut at once."""
    segment = prepare(decode(path), config)
    clips = cut_clips(segment, config.clip_seconds, config.hop_seconds)
    rate = segment.frame_rate
    length = round(config.clip_seconds * rate)
    waves = torch.from_numpy(np.stack([audio._fit(audio._samples(clip), length) for clip in clips]))
    if rate != config.sample_rate:
        waves = torchaudio.functional.resample(waves, *audio.resampling_rates(rate, config.sample_rate))
    target = round(config.clip_seconds * config.sample_rate)
    return torch.nn.functional.pad(waves, (0, max(0, target - waves.shape[1])))[:, :target]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and batches much smaller than a clip, so every clip spans several blocks."""
    monkeypatch.setattr(audio, "BLOCK_FRAMES", 997)
    monkeypatch.setattr(audio, "BATCH_SAMPLES", 1)  # one clip per batch


def streamed(path, config, max_clips=None) -> torch.Tensor:
    batches = list(iter_clip_batches(path, config, max_clips))
    assert all(b.dim() == 2 for b in batches)
    return torch.cat(batches)


# --- equal to the whole-file stage -----------------------------------------------------------------

FORMATS = [
    ("wav", "WAV", "PCM_16"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 22050, 44100])
@pytest.mark.parametrize("ext,fmt,subtype", FORMATS, ids=[f[0] for f in FORMATS])
def test_streamed_clips_equal_the_whole_file_stage(tmp_path, small_blocks, ext, fmt, subtype, rate, channels):
    path = write_tone(
        tmp_path / f"tone.{ext}",
        freq=440,
        seconds=2.7,
        sr=rate,
        amp=0.3,
        channels=channels,
        noise=0.05,
        format=fmt,
        subtype=subtype,
    )
    config = AudioConfig(sample_rate=16000, clip_seconds=1.0, hop_seconds=0.5)
    expected = whole_file_clips(path, config)
    got = streamed(path, config)
    assert got.shape == expected.shape and got.shape[1] == 16000
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(load_clips(path, config), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalize", ["peak", "off"])
@pytest.mark.parametrize("max_clips", [1, 3, None])
def test_batches_are_consecutive_clips(tmp_path, normalize, max_clips):
    path = write_tone(tmp_path / "t.wav", seconds=10.0, sr=22050, amp=0.2, noise=0.1)
    config = AudioConfig(sample_rate=SR, clip_seconds=1.5, hop_seconds=0.75, normalize=normalize)
    batches = list(iter_clip_batches(path, config, max_clips))
    if max_clips:
        assert all(len(b) <= max_clips for b in batches) and all(len(b) == max_clips for b in batches[:-1])
    torch.testing.assert_close(torch.cat(batches), whole_file_clips(path, config), rtol=0, atol=1e-6)


# --- clip boundaries ---------------------------------------------------------------------------------


def _ramp(n):
    return np.linspace(-0.9, 0.9, n)


@pytest.mark.parametrize("rate,clip,hop", [(8000, 1.0, 1.0), (22050, 0.75, 0.5), (44100, 0.3, 0.2), (11025, 1.0, 0.3)])
def test_files_just_shorter_and_longer_than_a_clip(tmp_path, small_blocks, rate, clip, hop):
    length = round(clip * rate)
    config = AudioConfig(sample_rate=rate, clip_seconds=clip, hop_seconds=hop, normalize="off")
    for frames in [
        1,
        length - 30,
        length - 1,
        length,
        length + 1,
        length + 30,
        round((clip + hop) * rate) - 1,
        round((clip + hop) * rate),
        round((clip + hop) * rate) + 1,
    ]:
        path = write_audio(tmp_path / f"ramp_{frames}.wav", _ramp(frames), sr=rate)
        expected = whole_file_clips(path, config)
        got = streamed(path, config)
        assert got.shape == expected.shape, frames
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"{frames} frames")


def test_a_short_file_is_padded_to_one_clip_and_a_short_tail_dropped(tmp_path):
    config = AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0, normalize="off")
    short = write_audio(tmp_path / "short.wav", _ramp(SR // 3))
    clips = streamed(short, config)
    assert clips.shape == (1, SR) and (clips[0, SR // 3 :] == 0).all()
    tail = write_audio(tmp_path / "tail.wav", _ramp(2 * SR + SR // 2))
    assert streamed(tail, config).shape == (2, SR)


# --- the peak pass --------------------------------------------------------------------------------------


def test_streaming_peak_equals_the_whole_file_peak(tmp_path):
    x = tone(440, 5.0, amp=0.1)
    x[3 * SR + 17] = -0.8  # the peak sits in one block in the middle, negative
    path = write_audio(tmp_path / "spike.wav", np.stack([x, 0.5 * x], axis=1))
    stream = open_stream(path, block_frames=1000)
    assert stream.peak() == decode(path).max == audio.to_pcm16(np.array([-0.8 * 1.5 / 2]))[0] * -1
    config = AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0, peak_dbfs=-3.0)
    assert streamed(path, config).abs().max().item() == pytest.approx(10 ** (-3 / 20), abs=1e-4)


def test_silent_file_is_left_silent(tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros(3 * SR))
    assert open_stream(path).peak() == 0
    assert streamed(path, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0)).abs().max() == 0


# --- bounded memory ---------------------------------------------------------------------------------------


def _write_long(path, minutes):
    with soundfile.SoundFile(path, "w", samplerate=SR, channels=2, subtype="PCM_16") as out:
        for minute in range(minutes):  # written a minute at a time
            out.write(np.repeat(tone(440 + minute, 60.0, amp=0.4)[:, None], 2, axis=1))
    return path


def _traced_peak(path, config) -> tuple[int, int]:
    """(clips, the largest Python/numpy allocation total while streaming them)."""
    tracemalloc.start()
    count = 0
    try:
        for batch in iter_clip_batches(path, config, max_clips=8):
            assert len(batch) <= 8
            count += len(batch)
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_file_is_decoded_in_bounded_memory(tmp_path, monkeypatch):
    # Files up to HOLD_FRAMES are kept from the peak pass (one decode); past it memory stays flat.
    monkeypatch.setattr(audio, "HOLD_FRAMES", 1 << 16)
    largest = []
    real = soundfile.SoundFile.read

    def read(self, *args, **kwargs):
        block = real(self, *args, **kwargs)
        largest.append(len(block))
        return block

    monkeypatch.setattr(soundfile.SoundFile, "read", read)
    config = AudioConfig(sample_rate=16000, clip_seconds=3.0, hop_seconds=1.5)
    short_count, short_peak = _traced_peak(_write_long(tmp_path / "one.wav", 1), config)
    long_count, long_peak = _traced_peak(_write_long(tmp_path / "ten.wav", 10), config)
    assert (short_count, long_count) == (39, 399)
    assert max(largest) <= audio.BLOCK_FRAMES
    # ten times the audio, the same memory (the whole ten minutes as 16-bit mono alone is 9.6 MB)
    assert long_peak < 1.2 * short_peak, f"traced peaks {short_peak / 1e6:.1f} and {long_peak / 1e6:.1f} MB"
    assert long_peak < 10 * 60 * SR * 2 / 2


# --- features batch by batch ------------------------------------------------------------------------------


def test_compute_features_batch_by_batch_equals_all_at_once(tmp_path, monkeypatch):
    path = write_tone(tmp_path / "data" / "a" / "t.wav", seconds=6.0, noise=0.1)
    config = tiny_config(tmp_path, tmp_path / "data")
    extractor = feature_extractor(config)
    everything = extractor(load_clips(path, config.audio))
    monkeypatch.setattr(audio, "BATCH_SAMPLES", 3 * SR // 2)  # three 0.5 s clips per batch
    batches = list(iter_feature_batches(path, config, extractor))
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    torch.testing.assert_close(compute_features(path, config, extractor), everything)


# --- formats only ffmpeg reads ---------------------------------------------------------------------------

FAKE_FFMPEG = """
import io, json, sys
import numpy as np, soundfile
args = sys.argv[1:]
source = next(a for a in args if a.startswith("file:")).removeprefix("file:")
data = open(source, "rb").read()
if not data.startswith(b"FAKE"):
    sys.stderr.write("ffmpeg version 0\\n  configuration: --fake\\n"
                     + source + ": Invalid data found when processing input\\n")
    sys.exit(1)
x, rate = soundfile.read(io.BytesIO(data[4:]), dtype="float32", always_2d=True)
if sys.argv[0].endswith("ffprobe"):
    print(json.dumps({"streams": [{"sample_rate": str(rate), "channels": x.shape[1]}]}))
else:
    sys.stdout.buffer.write(x.astype("<f4").tobytes())
"""


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """ffmpeg and ffprobe stand-ins that read 'FAKE' + WAV bytes, a file libsndfile refuses."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        script = tools / name
        script.write_text(f"#!{sys.executable}\n" + FAKE_FFMPEG)
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{__import__('os').environ['PATH']}")


def test_ffmpeg_only_formats_stream_from_a_pipe(tmp_path, fake_ffmpeg, small_blocks):
    wav = write_tone(tmp_path / "song.wav", seconds=3.3, sr=22050, channels=2, noise=0.05)
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"FAKE" + wav.read_bytes())
    stream = open_stream(m4a)
    assert stream.use_ffmpeg and stream.rate == 22050 and stream.channels == 2
    config = AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=0.5)
    torch.testing.assert_close(streamed(m4a, config), whole_file_clips(wav, config), rtol=0, atol=1e-6)
    batches = iter_clip_batches(m4a, config)
    next(batches)
    batches.close()  # stopping early ends the ffmpeg process


def test_ffmpeg_failure_is_one_line_naming_the_file(tmp_path, fake_ffmpeg):
    path = write_garbage(tmp_path / "broken.m4a")
    with pytest.raises(AudioError) as caught:
        load_clips(path, AudioConfig(sample_rate=SR))
    assert str(caught.value) == f"{path}: cannot decode ({path}: Invalid data found when processing input)"


# --- errors -----------------------------------------------------------------------------------------------


def test_errors_while_streaming_are_one_line_naming_the_file(tmp_path, monkeypatch):
    garbage = write_garbage(tmp_path / "broken.wav")
    with pytest.raises(AudioError) as caught:
        next(iter_clip_batches(garbage, AudioConfig(sample_rate=SR)))
    assert str(caught.value).startswith(f"{garbage}: ") and "\n" not in str(caught.value)

    path = write_tone(tmp_path / "t.wav", seconds=5.0, sr=22050)
    real, calls = torchaudio.functional.resample, []

    def fails_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(audio.torchaudio.functional, "resample", fails_second_time)
    batches = iter_clip_batches(path, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0), max_clips=2)
    assert len(next(batches)) == 2
    with pytest.raises(AudioError, match=f"^{path}: not enough memory to decode it$"):
        next(batches)


def test_strip_silence_still_takes_the_whole_file_path(tmp_path):
    x = np.concatenate([tone(440, 1.0), np.zeros(2 * SR), tone(440, 1.0)])
    path = write_audio(tmp_path / "gap.wav", x)
    config = AudioConfig(sample_rate=SR, clip_seconds=0.5, hop_seconds=0.5, strip_silence=True)
    torch.testing.assert_close(streamed(path, config, max_clips=3), whole_file_clips(path, config))
    assert len(streamed(path, config)) == 4


def test_a_song_is_decoded_once_and_a_long_file_twice(tmp_path, monkeypatch):
    song = _write_long(tmp_path / "song.wav", 1)
    opened = []
    real = soundfile.SoundFile.__init__

    def counting(self, file, *args, **kwargs):
        opened.append(str(file))
        real(self, file, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "__init__", counting)
    config = AudioConfig(sample_rate=16000, clip_seconds=3.0, hop_seconds=1.5)
    held = torch.cat(list(iter_clip_batches(song, config)))
    reads_of_song = len(opened)  # one look at the header, one pass for the peak that keeps the blocks
    monkeypatch.setattr(audio, "HOLD_FRAMES", 1 << 16)
    opened.clear()
    reread = torch.cat(list(iter_clip_batches(song, config)))
    assert (reads_of_song, len(opened)) == (2, 3)
    assert torch.equal(held, reread)
