"""Audio stage: decode a file into a pydub AudioSegment, normalize, strip silence, cut into clips.

Decoding goes through soundfile first (its wheel bundles libsndfile, which reads wav, au, flac,
ogg and mp3), so a pip-only install needs no system ffmpeg. Formats libsndfile cannot read
(m4a, aac, wma, ...) go to pydub's ffmpeg path when ffmpeg is installed.
"""

import contextlib
import functools
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

from genrenet.config import AudioConfig
from genrenet.errors import AudioError, error_line

# pydub warns at import when ffmpeg is missing; that is expected on a pip-only install, and we
# say what ffmpeg would add only when a file needs it.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
    from pydub import AudioSegment, effects, silence

SAMPLE_WIDTH = 2  # 16-bit PCM inside pydub: 96 dB of range is plenty for log-mel features

# Extensions libsndfile reads; anything else needs ffmpeg.
SOUNDFILE_EXTENSIONS = {".wav", ".wave", ".au", ".snd", ".flac", ".ogg", ".oga", ".opus",
                        ".mp3", ".aif", ".aiff", ".caf", ".w64", ".rf64"}
FFMPEG_EXTENSIONS = {".m4a", ".aac", ".wma", ".mp4", ".webm", ".mka", ".ac3", ".amr"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

# torchaudio's resampler builds a filter table of about new x orig entries (gcd-reduced rates): a
# few thousand for ordinary rates, but 8e9 (64 GB) for a header claiming 999,983 Hz. Above
# MAX_FILTER_ENTRIES the rate ratio is approximated by one whose terms are at most MAX_RATIO_TERM.
MAX_FILTER_ENTRIES = 1 << 21  # 8 MB as float32; 768 kHz -> 22050 Hz still resamples exactly (815k)
MAX_RATIO_TERM = 1000  # keeps an approximated table near 1M entries
# Short tracks are padded to a whole clip at their own rate before resampling, so a header claiming
# 2 GHz would make even a 2 KB file take gigabytes. No audio is recorded anywhere near this rate.
MAX_SAMPLE_RATE = 3_072_000  # 4 x 768 kHz, the highest rate audio hardware offers


def _one_file(function):
    """Any failure while reading one file becomes an AudioError naming it (even running out of
    memory on a huge or hostile file), so a run can skip that file instead of stopping."""

    @functools.wraps(function)
    def wrapper(path, *args, **kwargs):
        try:
            return function(path, *args, **kwargs)
        except AudioError:
            raise
        except MemoryError:
            raise AudioError(f"{path}: not enough memory to decode it") from None
        except Exception as error:  # a library failing in a way we did not foresee
            raise AudioError(f"{path}: cannot decode ({type(error).__name__}: {error_line(error)})") from error

    return wrapper


@_one_file
def decode(path: str | Path) -> AudioSegment:
    """Read any supported file as a mono 16-bit AudioSegment at its own sample rate."""
    path = Path(path)
    if not path.exists():  # follows symlinks: a dangling one is missing too
        raise AudioError(f"{path}: no such file")
    if not path.is_file():  # a folder, FIFO or device: opening a FIFO would block
        raise AudioError(f"{path}: not a regular file")
    try:
        with open(path, "rb"):  # permission problems surface here, as an OSError with a plain reason
            pass
        with _library_messages() as messages, soundfile.SoundFile(str(path)) as file:
            rate = file.samplerate
            # Downmix block by block (pydub's own multi-channel downmix is a per-sample Python
            # loop), so a long multichannel file is never held whole as float32.
            blocks = [to_pcm16(block.mean(axis=1))
                      for block in file.blocks(blocksize=1 << 20, dtype="float32", always_2d=True)]
    except OSError as error:  # permission denied, I/O error: nothing to decode
        raise AudioError(f"{path}: cannot read ({error.strerror or error})") from None
    except (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError) as error:
        if _ffmpeg_available():
            return _decode_with_ffmpeg(path)
        if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
            reason = _last_line(error)
            if "does not exist" in reason:  # libsndfile's words for data that looks like MPEG but is not
                reason = "unrecognised or damaged audio data"
            raise AudioError(f"{path}: cannot decode ({reason})") from None
        raise AudioError(f"{path}: {path.suffix or 'this'} files need ffmpeg; install it "
                         "(apt install ffmpeg, brew install ffmpeg, or conda install ffmpeg)") from None
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, dtype="<i2")
    if len(pcm) == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if messages:  # decoded, but the decoder had to skip damaged data: one line, not its raw log
        print(f"warning: {path}: damaged data skipped while decoding ({_library_reason(messages)})", file=sys.stderr)
    return AudioSegment(data=pcm.tobytes(), sample_width=SAMPLE_WIDTH, frame_rate=int(rate), channels=1)


def prepare(segment: AudioSegment, config: AudioConfig) -> AudioSegment:
    """Peak-normalize and optionally strip silence, as the config asks."""
    if config.normalize == "peak":
        segment = effects.normalize(segment, headroom=-config.peak_dbfs)
    if config.strip_silence:
        # seek_step: scanning every millisecond (pydub's default) is needlessly slow for music.
        spans = silence.detect_nonsilent(segment, min_silence_len=config.min_silence_ms,
                                         silence_thresh=config.silence_dbfs, seek_step=10)
        if spans:
            segment = functools.reduce(lambda a, b: a + b, (segment[start:end] for start, end in spans))
    return segment


def cut_clips(segment: AudioSegment, clip_seconds: float, hop_seconds: float) -> list[AudioSegment]:
    """Clips of clip_seconds every hop_seconds; a track shorter than one clip is padded with
    silence, and a tail shorter than a clip is dropped."""
    clip_ms, hop_ms = round(clip_seconds * 1000), round(hop_seconds * 1000)
    if len(segment) <= clip_ms:
        padding = AudioSegment.silent(duration=clip_ms - len(segment), frame_rate=segment.frame_rate)
        return [segment + padding.set_sample_width(segment.sample_width)]
    count = 1 + (len(segment) - clip_ms) // hop_ms
    return [segment[i * hop_ms:i * hop_ms + clip_ms] for i in range(count)]


@_one_file
def load_clips(path: str | Path, config: AudioConfig) -> torch.Tensor:
    """The whole audio stage for one file: a float tensor [clips, samples] at config.sample_rate."""
    segment = decode(path)
    if segment.frame_rate > MAX_SAMPLE_RATE:  # checked before padding a short track to a clip at that rate
        raise AudioError(f"{path}: implausible sample rate in its header ({segment.frame_rate} Hz)")
    segment = prepare(segment, config)
    clips = cut_clips(segment, config.clip_seconds, config.hop_seconds)
    rate = segment.frame_rate
    # pydub slices in milliseconds; fix every clip to the same sample count before stacking.
    length = round(config.clip_seconds * rate)
    waves = torch.from_numpy(np.stack([_fit(_samples(clip), length) for clip in clips]))
    if rate != config.sample_rate:
        waves = torchaudio.functional.resample(waves, *resampling_rates(rate, config.sample_rate))
    target = round(config.clip_seconds * config.sample_rate)
    return torch.nn.functional.pad(waves, (0, max(0, target - waves.shape[1])))[:, :target]


def resampling_rates(orig: int, new: int) -> tuple[int, int]:
    """The (orig, new) pair to resample with: the exact rates when torchaudio's filter table stays
    small (every ordinary rate), else the nearest ratio of small terms, so an odd header rate
    (44,101 Hz, 999,983 Hz) cannot make resampling allocate gigabytes.

    The approximated ratio is off by under 0.2% at worst (3.5 cents of pitch, below what a listener
    notices), and by about 2e-5 for headers such as 44,101 or 999,983 Hz."""
    gcd = math.gcd(orig, new)
    if _filter_entries(orig // gcd, new // gcd) <= MAX_FILTER_ENTRIES:
        return orig, new
    ratio = Fraction(max(orig, new), min(orig, new))  # >= 1: its numerator is the larger term
    approx = ratio.limit_denominator(max(1, MAX_RATIO_TERM // math.ceil(ratio)))
    larger, smaller = approx.numerator, approx.denominator
    return (larger, smaller) if orig > new else (smaller, larger)


def _filter_entries(orig: int, new: int, zero_crossings: int = 6, rolloff: float = 0.99) -> int:
    """Size of torchaudio.functional.resample's filter table, [new, orig + 2 * width], for
    gcd-reduced rates and its default filter settings."""
    width = math.ceil(zero_crossings * orig / (rolloff * min(orig, new)))
    return new * (orig + 2 * width)


def to_pcm16(mono: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to 16-bit PCM (pydub's sample format), clipped at full scale; NaN and
    infinite samples (broken float files) become silence."""
    mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")


def _decode_with_ffmpeg(path: Path) -> AudioSegment:
    try:
        segment = AudioSegment.from_file(path)
    except Exception as error:  # pydub raises bare exceptions carrying ffmpeg's stderr
        raise AudioError(f"{path}: cannot decode ({_last_line(error)})") from None
    if segment.frame_count() == 0:
        raise AudioError(f"{path}: contains no audio samples")
    samples = np.array(segment.get_array_of_samples(), dtype=np.float32).reshape(-1, segment.channels)
    pcm = to_pcm16(samples.mean(axis=1) / (1 << (8 * segment.sample_width - 1)))
    return AudioSegment(data=pcm.tobytes(), sample_width=SAMPLE_WIDTH, frame_rate=segment.frame_rate, channels=1)


def _samples(segment: AudioSegment) -> np.ndarray:
    return np.frombuffer(segment.raw_data, dtype="<i2").astype(np.float32) / 32768.0


def _fit(samples: np.ndarray, length: int) -> np.ndarray:
    return np.pad(samples[:length], (0, max(0, length - len(samples))))


@contextlib.contextmanager
def _library_messages():
    """Collect what C libraries print to file descriptor 2 inside the block (libmpg123 prints a
    line for every damaged frame of an mp3) instead of letting it reach the user's terminal."""
    messages: list[str] = []
    try:
        if sys.stderr is not None:
            sys.stderr.flush()  # Python's own pending output goes out before fd 2 is swapped
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing can leak either
        yield messages
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16).decode("utf-8", errors="replace")
            messages.extend(line.strip() for line in text.splitlines() if line.strip())


def _library_reason(messages: list[str]) -> str:
    """The first message without its source location or "Note:" prefix, and how many more there were."""
    first = re.sub(r"^(\[[^]]*\]\s*)?(error:|note:)?\s*", "", messages[0], flags=re.IGNORECASE)
    more = f"; {len(messages) - 1} more decoder messages" if len(messages) > 1 else ""
    return first[:120] + more


def _ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _last_line(error: Exception) -> str:
    """The last line of an error: libsndfile's reason (without its repeat of the path), or
    ffmpeg's after its banner."""
    return re.sub(r"^Error opening .*?: ", "", error_line(error, last=True))
