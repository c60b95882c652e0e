"""Hostile audio inputs: headers with odd sample rates, files that exhaust memory, FIFOs and
devices given as audio, and the one float -> 16-bit PCM conversion every stage shares."""

import math
import os
import subprocess
import sys
import threading
import warnings
from unittest.mock import patch

import numpy as np
import pytest
import torch

import genrenet.audio as audio
import genrenet.handcrafted as handcrafted
from conftest import REPO_ROOT, SR, tiny_config, write_tone
from genrenet.cache import cached_features
from genrenet.config import AudioConfig
from genrenet.errors import AudioError

ORDINARY_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000]
HOSTILE_RATES = [999_983, 44_101, 7_919]  # primes: nothing cancels in orig / new
TARGET_RATES = [22050, 16000, 8000]


def _reduced(orig: int, new: int) -> tuple[int, int]:
    gcd = math.gcd(orig, new)
    return orig // gcd, new // gcd


# --- resampling at any header rate ----------------------------------------------------------------


@pytest.mark.parametrize("new", TARGET_RATES)
@pytest.mark.parametrize("orig", ORDINARY_RATES)
def test_ordinary_rates_resample_with_the_exact_ratio(orig, new):
    assert audio.resampling_rates(orig, new) == (orig, new)


@pytest.mark.parametrize("new", TARGET_RATES)
@pytest.mark.parametrize("orig", HOSTILE_RATES)
def test_odd_header_rates_resample_with_small_terms(orig, new):
    pair = audio.resampling_rates(orig, new)
    assert max(_reduced(*pair)) <= audio.MAX_RATIO_TERM
    assert audio._filter_entries(*_reduced(*pair)) <= audio.MAX_FILTER_ENTRIES
    assert (pair[0] / pair[1]) / (orig / new) == pytest.approx(1, abs=1e-4)  # pitch off by under 0.2 cents


def test_extreme_ratios_keep_a_valid_pair():
    for orig, new in [(2**31 - 1, 8000), (1, 22050), (8000, 2**31 - 1), (22051, 22050)]:
        a, b = audio.resampling_rates(orig, new)
        assert a >= 1 and b >= 1
        assert (a / b) / (orig / new) == pytest.approx(1, rel=2e-3)


# Loads each file under an address-space limit of what the process already maps plus 1 GiB: the
# unbounded resampler needed 64 GB (999,983 Hz) and 8.9 GB (44,101 Hz) of filter table.
_LOAD_UNDER_LIMIT = """
import resource, sys
import numpy as np, torch
from genrenet.audio import load_clips
from genrenet.config import AudioConfig
torch.set_num_threads(1)
mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**30, resource.RLIM_INFINITY))
for path in sys.argv[1:]:
    clips = load_clips(path, AudioConfig(sample_rate=22050, clip_seconds=1.0, hop_seconds=1.0, normalize="off"))
    spectrum = np.abs(np.fft.rfft(clips[0].numpy()))
    print(tuple(clips.shape), int(np.argmax(spectrum)) * 22050 / clips.shape[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the address-space limit is read from /proc")
def test_short_files_with_odd_header_rates_load_in_bounded_memory(tmp_path):
    paths = [
        write_tone(tmp_path / "tiny_999983.wav", sr=999_983, seconds=0.001),  # a 2 KB file
        write_tone(tmp_path / "tone_44101.wav", freq=1000, sr=44_101, seconds=1.0),
        write_tone(tmp_path / "tone_7919.wav", freq=1000, sr=7_919, seconds=1.0),
    ]
    assert paths[0].stat().st_size < 2100
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_UNDER_LIMIT, *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(")")[0] + ")" for line in lines] == ["(1, 22050)"] * 3
    for line in lines[1:]:  # the tones keep their pitch
        assert float(line.split(") ")[1]) == pytest.approx(1000, abs=2)


def test_implausible_header_rate_is_an_audio_error(tmp_path):
    """A short track is padded to a clip at its own rate: at 2 GHz that would take gigabytes."""
    path = write_tone(tmp_path / "tiny_2ghz.wav", sr=2**31 - 1, seconds=1e-6)
    with pytest.raises(AudioError, match=r"implausible sample rate in its header \(2147483647 Hz\)$"):
        audio.load_clips(path, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0))
    highest = write_tone(tmp_path / "tiny_max.wav", sr=audio.MAX_SAMPLE_RATE, seconds=1e-4)
    assert audio.load_clips(highest, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0)).shape == (1, SR)


# --- a failure on one file skips that file ---------------------------------------------------------


def _raises(error):
    def fail(*args, **kwargs):
        raise error

    return fail


TORCH_OUT_OF_MEMORY = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough "
    "memory: you tried to allocate 64032076800 bytes."
)


@pytest.mark.parametrize(
    "error",
    [MemoryError(), TORCH_OUT_OF_MEMORY, ZeroDivisionError("division by zero")],
    ids=["MemoryError", "torch out of memory", "unexpected"],
)
def test_a_failure_while_resampling_is_an_audio_error_naming_the_file(tmp_path, monkeypatch, error):
    path = write_tone(tmp_path / "tone_44100.wav", sr=44100)
    monkeypatch.setattr(audio.torchaudio.functional, "resample", _raises(error))
    with pytest.raises(AudioError) as caught:
        audio.load_clips(path, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message


def test_memory_error_while_decoding_is_an_audio_error(tmp_path, monkeypatch):
    path = write_tone(tmp_path / "tone.wav")
    monkeypatch.setattr(audio.soundfile, "SoundFile", _raises(MemoryError()))
    with pytest.raises(AudioError, match="not enough memory"):
        audio.decode(path)


def test_cache_skips_a_file_that_runs_out_of_memory(tmp_path, monkeypatch):
    good = write_tone(tmp_path / "data" / "a" / "good.wav", sr=SR)
    bad = write_tone(tmp_path / "data" / "a" / "bad.wav", sr=44100)  # only this one is resampled
    monkeypatch.setattr(audio.torchaudio.functional, "resample", _raises(MemoryError()))
    config = tiny_config(tmp_path, tmp_path / "data", data={"on_error": "skip"})
    features, failures = cached_features([good, bad], config)
    assert len(features) == 1 and features[0].shape[0] == 2  # the good file's, alone
    assert list(failures) == [bad] and str(bad) in failures[bad]


def test_cache_skips_a_file_whose_features_run_out_of_memory(tmp_path):
    good = write_tone(tmp_path / "data" / "a" / "good.wav", sr=SR)
    big = write_tone(tmp_path / "data" / "a" / "big.wav", sr=SR, seconds=2.0)  # only this one has 4 clips
    config = tiny_config(tmp_path, tmp_path / "data", data={"on_error": "skip"})

    def extractor(waves):
        if len(waves) > 2:
            raise MemoryError
        return torch.zeros(len(waves), config.features.n_mels, 5, dtype=torch.float16)

    with patch("genrenet.cache.feature_extractor", return_value=extractor):
        features, failures = cached_features([good, big], config)
    assert len(features) == 1 and features[0].shape[0] == 2  # the good file's, alone
    assert list(failures) == [big] and "not enough memory" in failures[big]


# --- files that are not regular files ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_not_a_regular_file_and_is_never_opened(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            audio.load_clips(fifo, AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0))
        except AudioError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # blocked opening the FIFO: open its other end to release the reader
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("decoding opened the FIFO")
    assert outcome == [f"{fifo}: not a regular file"]


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null on this platform")
def test_device_is_not_a_regular_file():
    with pytest.raises(AudioError, match="^/dev/null: not a regular file$"):
        audio.decode("/dev/null")


def test_missing_file_is_still_no_such_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        audio.decode(tmp_path / "missing.wav")


# --- one float -> 16-bit PCM conversion -------------------------------------------------------------


def test_to_pcm16_clips_and_silences_broken_samples():
    pcm = audio.to_pcm16(np.array([0.0, 0.5, -1.0, 2.0, -3.0, np.nan, np.inf, -np.inf], dtype=np.float32))
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.tolist() == [0, 16383, -32767, 32767, -32767, 0, 0, 0]


def test_handcrafted_loudness_uses_the_shared_conversion(monkeypatch):
    calls = []
    monkeypatch.setattr(handcrafted, "to_pcm16", lambda clip: calls.append(len(clip)) or audio.to_pcm16(clip))
    y = np.stack([0.5 * np.sin(np.arange(SR) / 10), np.zeros(SR)]).astype(np.float32)
    handcrafted.HandcraftedFeatures(SR, n_fft=256, hop_length=128).loudness(y)
    assert calls == [SR, SR]


def test_handcrafted_loudness_treats_nan_as_silence():
    features = handcrafted.HandcraftedFeatures(SR, n_fft=256, hop_length=128)
    y = 0.5 * np.sin(np.arange(SR, dtype=np.float32) / 10)
    broken = y.copy()
    broken[: SR // 2] = np.nan
    silenced = y.copy()
    silenced[: SR // 2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # casting NaN to integers warns ("invalid value encountered in cast")
        assert np.array_equal(features.loudness(broken[None]), features.loudness(silenced[None]))


def test_ffmpeg_error_reason_is_its_last_line_trimmed(tmp_path, monkeypatch):
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00" * 100)
    banner = "ffmpeg version 6.1\n  configuration: --enable-everything\n"
    tools = tmp_path / "bin"  # stand-ins: ffprobe finds a stream, ffmpeg fails after its banner
    tools.mkdir()
    probe = 'print(\'{"streams": [{"sample_rate": "8000", "channels": 1}]}\')\n'
    (tools / "ffprobe").write_text(f"#!{sys.executable}\n{probe}")
    failure = banner + "   " + "x" * 500 + "   \n\n"
    (tools / "ffmpeg").write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write({failure!r})\nsys.exit(1)\n")
    for tool in ("ffprobe", "ffmpeg"):
        (tools / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(AudioError) as caught:
        audio.decode(path)
    assert str(caught.value) == f"{path}: cannot decode ({'x' * 200})"
