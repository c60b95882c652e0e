"""Audio stage: a file in, clips out, in bounded memory: decode in blocks, peak-normalize, cut
into clips (each a pydub AudioSegment), resample; optionally strip silence.

Decoding goes through soundfile first (its wheel bundles libsndfile, which reads wav, au, flac,
ogg and mp3), so a pip-only install needs no system ffmpeg. Formats libsndfile cannot read
(m4a, aac, wma, ...) are read from an ffmpeg pipe when ffmpeg is installed.

iter_clip_batches is the stage: it yields consecutive clips a batch at a time, so a file of any
length is never held whole (except with strip_silence, see there). load_clips gathers them all.
"""

import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
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
    from pydub.utils import db_to_float, ratio_to_db

SAMPLE_WIDTH = 2  # 16-bit PCM inside pydub: 96 dB of range is plenty for log-mel features
BLOCK_FRAMES = 1 << 16  # frames decoded at a time (1.5 s at 44.1 kHz)
BATCH_SAMPLES = 1 << 22  # samples (at the file's rate) in one batch of clips by default: 16 MB as float32
# A file of at most this many frames (3.2 min at 44.1 kHz, 17 MB as 16-bit PCM) is decoded once:
# the peak pass keeps its blocks for cutting clips. A longer one is read twice, in bounded memory.
HOLD_FRAMES = 1 << 23

# Extensions libsndfile reads; anything else needs ffmpeg.
SOUNDFILE_EXTENSIONS = {
    ".wav",
    ".wave",
    ".au",
    ".snd",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".caf",
    ".w64",
    ".rf64",
}
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
        except Exception as error:
            raise _file_error(path, error) from (None if isinstance(error, MemoryError) else error)

    return wrapper


def _one_file_iter(generator):
    """_one_file for a generator: failures while it runs (not only when it is made) name the file."""

    @functools.wraps(generator)
    def wrapper(path, *args, **kwargs):
        try:
            yield from generator(path, *args, **kwargs)
        except AudioError:
            raise
        except Exception as error:
            raise _file_error(path, error) from (None if isinstance(error, MemoryError) else error)

    return wrapper


def _file_error(path, error: Exception) -> AudioError:
    if isinstance(error, MemoryError):
        return AudioError(f"{path}: not enough memory to decode it")
    # a library failing in a way we did not foresee
    return AudioError(f"{path}: cannot decode ({type(error).__name__}: {error_line(error)})")


class PcmStream:
    """One file's audio as mono 16-bit PCM blocks at its own rate (`rate`), never held whole.

    Each call to blocks() reads the file again from its start: the audio stage reads a file twice,
    once for its peak and once to cut clips. Files libsndfile reads (wav, au, flac, ogg, mp3) are
    read with soundfile, `block_frames` frames at a time; other formats come from an ffmpeg pipe.
    Channels are averaged block by block (pydub's own downmix is a per-sample Python loop)."""

    def __init__(self, path: Path, rate: int, channels: int, use_ffmpeg: bool, block_frames: int | None = None):
        self.path, self.rate, self.channels, self.use_ffmpeg = path, rate, channels, use_ffmpeg
        self.block_frames = block_frames or BLOCK_FRAMES
        self.warned = False  # the decoder's complaints become one warning line per file, not per pass

    def blocks(self) -> Iterator[np.ndarray]:
        if self.use_ffmpeg:
            yield from _ffmpeg_blocks(self.path, self.channels, self.block_frames)
            return
        complaints: list[str] = []
        try:
            with soundfile.SoundFile(str(self.path)) as file:
                while True:
                    # Captured block by block, never across a yield: what others print meanwhile stays theirs.
                    with _library_messages() as messages:
                        block = file.read(self.block_frames, dtype="float32", always_2d=True)
                    complaints += messages
                    if not len(block):
                        break
                    yield to_pcm16(block.mean(axis=1))
        except OSError as error:
            raise AudioError(f"{self.path}: cannot read ({error.strerror or error})") from None
        except SOUNDFILE_ERRORS as error:  # damaged data past the first block
            raise AudioError(f"{self.path}: cannot decode ({_soundfile_reason(error)})") from None
        if complaints and not self.warned:  # decoded, but the decoder skipped damaged data
            self.warned = True
            print(
                f"warning: {self.path}: damaged data skipped while decoding ({_library_reason(complaints)})",
                file=sys.stderr,
            )

    def peak(self) -> int:
        """The largest |sample| of the whole file as 16-bit PCM: a streaming pass over it."""
        return self.peak_and_replay(hold_frames=0)[0]

    def peak_and_replay(self, hold_frames: int | None = None) -> tuple[int, Callable[[], Iterator[np.ndarray]]]:
        """The file's peak, and a way to read its blocks again: the blocks of the peak pass when
        the file has at most hold_frames (HOLD_FRAMES) frames, so most songs are decoded once, not
        twice; else a new read."""
        hold_frames = HOLD_FRAMES if hold_frames is None else hold_frames
        held, count, peak = [], 0, 0
        for block in self.blocks():
            if len(block):
                peak = max(peak, int(np.abs(block.astype(np.int32)).max()))
            count += len(block)
            if count <= hold_frames:
                held.append(block)
            else:  # a long file is read again instead: memory stays bounded
                held = []
        return peak, (lambda: iter(held)) if count <= hold_frames else self.blocks


SOUNDFILE_ERRORS = (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError)


def open_stream(path: str | Path, block_frames: int | None = None) -> PcmStream:
    """Open any supported file for reading in blocks (see PcmStream); AudioError when it cannot be read."""
    path = Path(path)
    if not path.exists():  # follows symlinks: a dangling one is missing too
        raise AudioError(f"{path}: no such file")
    if not path.is_file():  # a folder, FIFO or device: opening a FIFO would block
        raise AudioError(f"{path}: not a regular file")
    try:
        with open(path, "rb"):  # permission problems surface here, as an OSError with a plain reason
            pass
        with _library_messages(), soundfile.SoundFile(str(path)) as file:  # blocks() reports what it says
            rate, channels = file.samplerate, file.channels
            file.read(frames=min(block_frames or BLOCK_FRAMES, 1 << 16), dtype="float32")  # undecodable data fails here
    except OSError as error:  # permission denied, I/O error: nothing to decode
        raise AudioError(f"{path}: cannot read ({error.strerror or error})") from None
    except SOUNDFILE_ERRORS as error:
        if _ffmpeg_available():
            rate, channels = _ffprobe(path)
            return PcmStream(path, rate, channels, use_ffmpeg=True, block_frames=block_frames)
        if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
            raise AudioError(f"{path}: cannot decode ({_soundfile_reason(error)})") from None
        raise AudioError(
            f"{path}: {path.suffix or 'this'} files need ffmpeg; install it "
            "(apt install ffmpeg, brew install ffmpeg, or conda install ffmpeg)"
        ) from None
    return PcmStream(path, int(rate), channels, use_ffmpeg=False, block_frames=block_frames)


@_one_file
def decode(path: str | Path) -> AudioSegment:
    """Read a whole file as one mono 16-bit AudioSegment at its own sample rate. Only silence
    stripping needs this (it looks at the whole track); everything else streams (iter_clip_batches)."""
    stream = open_stream(path)
    blocks = list(stream.blocks())
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, dtype="<i2")
    if len(pcm) == 0:
        raise AudioError(f"{path}: contains no audio samples")
    return AudioSegment(data=pcm.tobytes(), sample_width=SAMPLE_WIDTH, frame_rate=stream.rate, channels=1)


def prepare(segment: AudioSegment, config: AudioConfig) -> AudioSegment:
    """Peak-normalize and optionally strip silence, as the config asks."""
    if config.normalize == "peak":
        segment = effects.normalize(segment, headroom=-config.peak_dbfs)
    if config.strip_silence:
        # seek_step: scanning every millisecond (pydub's default) is needlessly slow for music.
        spans = silence.detect_nonsilent(
            segment, min_silence_len=config.min_silence_ms, silence_thresh=config.silence_dbfs, seek_step=10
        )
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
    return [segment[i * hop_ms : i * hop_ms + clip_ms] for i in range(count)]


def peak_gain_db(peak: int, peak_dbfs: float) -> float | None:
    """The gain pydub's effects.normalize(segment, headroom=-peak_dbfs) applies to a 16-bit segment
    whose largest |sample| is `peak` (None for silence, which it leaves alone). Applying this gain
    clip by clip equals normalizing the whole file first: pydub's apply_gain works sample by sample."""
    if peak == 0:
        return None
    target_peak = (2 ** (8 * SAMPLE_WIDTH)) / 2 * db_to_float(peak_dbfs)  # as effects.normalize computes it
    return ratio_to_db(target_peak / peak)


def iter_clip_batches(path: str | Path, config: AudioConfig, max_clips: int | None = None) -> Iterator[torch.Tensor]:
    """The whole audio stage for one file, in order and in bounded memory: float tensors
    [n <= max_clips, samples] of consecutive clips at config.sample_rate.

    The file is read in blocks, twice when config.normalize is "peak" (a first pass finds its
    peak, so each clip gets the gain that normalizing the whole file would give). Clips have the
    boundaries of cut_clips and are resampled one by one, so the result equals cutting the whole
    decoded file. With config.strip_silence (off by default) the whole file is decoded first:
    pydub's silence detection needs all of it, so only then does memory grow with the file.
    max_clips defaults to about BATCH_SAMPLES samples per batch at the file's own rate."""
    return _clip_batches(path, config, max_clips)


@_one_file_iter
def _clip_batches(path, config: AudioConfig, max_clips: int | None) -> Iterator[torch.Tensor]:
    if config.strip_silence:
        segment = decode(path)
        rate = _plausible_rate(path, segment.frame_rate)
        clips = (
            _fit(_samples(clip), round(config.clip_seconds * rate))
            for clip in cut_clips(prepare(segment, config), config.clip_seconds, config.hop_seconds)
        )
    else:
        stream = open_stream(path)
        rate = _plausible_rate(path, stream.rate)
        gain, blocks = None, stream.blocks
        if config.normalize == "peak":
            peak, blocks = stream.peak_and_replay()
            gain = peak_gain_db(peak, config.peak_dbfs)
        clips = _cut_stream(path, blocks(), rate, config.clip_seconds, config.hop_seconds, gain)
    length = round(config.clip_seconds * rate)
    max_clips = max_clips or max(1, BATCH_SAMPLES // max(1, length))
    target = round(config.clip_seconds * config.sample_rate)
    batch = []
    for clip in itertools.chain(clips, [None]):
        if clip is not None:
            batch.append(clip)
        if batch and (len(batch) == max_clips or clip is None):
            waves = torch.from_numpy(np.stack(batch))
            batch = []
            if rate != config.sample_rate:  # row by row, so batching changes nothing
                waves = torchaudio.functional.resample(waves, *resampling_rates(rate, config.sample_rate))
            yield torch.nn.functional.pad(waves, (0, max(0, target - waves.shape[1])))[:, :target]


def _plausible_rate(path, rate: int) -> int:
    if rate > MAX_SAMPLE_RATE:  # checked before padding a short track to a clip at that rate
        raise AudioError(f"{path}: implausible sample rate in its header ({rate} Hz)")
    return rate


def _cut_stream(
    path, blocks: Iterator[np.ndarray], rate: int, clip_seconds: float, hop_seconds: float, gain_db: float | None
) -> Iterator[np.ndarray]:
    """Float clips of round(clip_seconds * rate) samples cut from PCM blocks as they arrive, with
    exactly the boundaries of cut_clips (pydub slices in milliseconds: clip i spans frames
    int(i * hop_ms * rate / 1000) to int((i * hop_ms + clip_ms) * rate / 1000)); each clip becomes a
    pydub AudioSegment that applies the normalization gain. Only the frames from the next clip's
    start onwards are kept between blocks."""
    clip_ms, hop_ms = round(clip_seconds * 1000), round(hop_seconds * 1000)
    length = round(clip_seconds * rate)

    def frame(ms):  # pydub's AudioSegment._parse_position
        return int(ms * (rate / 1000.0))

    def length_ms(frames):  # pydub's len(segment)
        return round(1000 * (float(frames) / rate))

    def clip(pcm):
        segment = AudioSegment(data=pcm.tobytes(), sample_width=SAMPLE_WIDTH, frame_rate=rate, channels=1)
        if gain_db is not None:
            segment = segment.apply_gain(gain_db)
        return _fit(_samples(segment), length)

    kept, offset, total, i = np.zeros(0, dtype="<i2"), 0, 0, 0  # kept holds frames offset..total
    for block in blocks:
        kept, total = np.concatenate([kept, block]), total + len(block)
        known = length_ms(total)
        if known <= clip_ms:  # may still be a short track, padded to one clip at the end
            continue
        while (i * hop_ms + clip_ms <= known) and frame(i * hop_ms + clip_ms) <= total:
            yield clip(kept[frame(i * hop_ms) - offset : frame(i * hop_ms + clip_ms) - offset])
            i += 1
        drop = min(frame(i * hop_ms) - offset, len(kept))
        kept, offset = kept[drop:], offset + drop
    if total == 0:
        raise AudioError(f"{path}: contains no audio samples")
    known = length_ms(total)
    if known <= clip_ms:  # a short track: all of it, padded with silence
        yield clip(kept)
        return
    while i * hop_ms + clip_ms <= known:  # the last clips; frames past the end are silence, as in pydub
        yield clip(kept[frame(i * hop_ms) - offset : min(frame(i * hop_ms + clip_ms), total) - offset])
        i += 1


@_one_file
def load_clips(path: str | Path, config: AudioConfig) -> torch.Tensor:
    """Every clip of one file at once, a float tensor [clips, samples] at config.sample_rate; for a
    long file prefer iter_clip_batches, which holds only a batch at a time."""
    return torch.cat(list(iter_clip_batches(path, config)))


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


def _ffprobe(path: Path) -> tuple[int, int]:
    """Sample rate and channel count of a file's first audio stream, from ffprobe."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "json",
            f"file:{path}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    if result.returncode != 0:
        raise AudioError(f"{path}: cannot decode ({_last_line(Exception(result.stderr))})")
    streams = json.loads(result.stdout or "{}").get("streams") or []
    if not streams:
        raise AudioError(f"{path}: contains no audio stream")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def _ffmpeg_blocks(path: Path, channels: int, block_frames: int) -> Iterator[np.ndarray]:
    """Mono 16-bit PCM blocks of a file's first audio stream at its own rate, read from an ffmpeg
    pipe (32-bit float samples, downmixed here as for soundfile)."""
    command = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        f"file:{path}",
        "-map",
        "0:a:0",
        "-ac",
        str(channels),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]
    frame_bytes = 4 * channels
    with tempfile.TemporaryFile() as messages:  # a file, not a pipe: a chatty ffmpeg cannot block on it
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=messages)
        try:
            while data := process.stdout.read(block_frames * frame_bytes):
                whole = len(data) - len(data) % frame_bytes
                yield to_pcm16(np.frombuffer(data[:whole], dtype="<f4").reshape(-1, channels).mean(axis=1))
            if process.wait() != 0:
                messages.seek(0)
                reason = _last_line(Exception(messages.read().decode(errors="replace")))
                raise AudioError(f"{path}: cannot decode ({reason})")
        finally:
            process.stdout.close()
            if process.poll() is None:  # the reader stopped early
                process.kill()
            process.wait()


def _soundfile_reason(error: Exception) -> str:
    reason = _last_line(error)
    if "does not exist" in reason:  # libsndfile's words for data that looks like MPEG but is not
        reason = "unrecognised or damaged audio data"
    return reason


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
