"""Robustness against bad audio inputs: a corpus of broken, odd and huge files inside a dataset
that also holds enough good files to train.

For every input the audio stage (load_clips) and the feature cache (cached_features) either give
usable clips (finite, right shape) or one AudioError line naming the file; train.py skips the
unreadable ones with a warning (data.on_error=skip) or stops before any epoch (on_error=fail);
predict.py reports each bad file on its own `error:` line and predicts the good ones.

`pytest tests/test_bad_audio.py -s -k table` prints the input -> outcome table.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from conftest import (
    CLASSES,
    REPO_ROOT,
    SR,
    make_class_folder,
    tiny_config,
    tiny_config_dict,
    tone,
    write_audio,
    write_config,
    write_garbage,
    write_tone,
)
from genrenet.audio import load_clips
from genrenet.cache import cached_features
from genrenet.datasets import find_tracks
from genrenet.errors import AudioError, UserError


def _reads_chmod_000() -> bool:
    """Whether this process reads a file it has no permission for (root with CAP_DAC_OVERRIDE does)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return False
        return True


# The outcomes are those of a pip-only install (soundfile alone): where ffmpeg is installed, undecodable
# files would go on to ffmpeg, which salvages what it can from random bytes. Its folders are left off PATH.
FFMPEG_DIRS = {str(Path(found).parent) for found in map(shutil.which, ("ffmpeg", "ffprobe")) if found}
PATH_WITHOUT_FFMPEG = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d not in FFMPEG_DIRS)


@pytest.fixture(scope="module", autouse=True)
def without_ffmpeg():
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = PATH_WITHOUT_FFMPEG
    yield
    os.environ["PATH"] = saved


READS_UNREADABLE = _reads_chmod_000()
if os.geteuid() != 0:
    assert not READS_UNREADABLE  # only root bypasses file permissions
CLIP_SECONDS = 1.0
PEAK = 10 ** (-1.0 / 20)  # peak normalization to -1 dBFS (the AudioConfig default)
LONG_MINUTES = 30


# --- the corpus ---------------------------------------------------------------------------------


def _valid_wav_bytes(seconds: float) -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, tone(440, seconds), SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _nan_inf(path: Path) -> Path:
    x = tone(440, 1.0).astype(np.float32)
    x[100:200] = np.nan
    x[300], x[301] = np.inf, -np.inf
    soundfile.write(path, x, SR, format="WAV", subtype="FLOAT")
    return path


def _long(path: Path) -> Path:
    """LONG_MINUTES of 8 kHz mono PCM_16 written a minute at a time (about 29 MB)."""
    minute = 0.3 * np.sin(2 * np.pi * 440 * np.arange(60 * SR) / SR)
    with soundfile.SoundFile(path, "w", SR, 1, "PCM_16", format="WAV") as file:
        for _ in range(LONG_MINUTES):
            file.write(minute)
    return path


def _unreadable(path: Path) -> Path:
    write_tone(path)
    os.chmod(path, 0)
    return path


def _dangling(path: Path) -> Path:
    os.symlink(path.parent / "this target does not exist.wav", path)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


@dataclass
class Case:
    key: str
    filename: str
    label: str
    build: Callable[[Path], Path]
    clips: int | None  # expected clip count when usable; None: an AudioError
    error: str = ""  # expected part of the error message
    in_folder_scan: bool = True  # a folder dataset lists it as a track
    silent: bool = False  # usable, but every sample is 0


CASES = [
    Case("empty file", "empty.wav", "noise", lambda p: write_garbage(p, b""), None, "cannot decode"),
    Case(
        "random bytes .wav",
        "random.wav",
        "noise",
        lambda p: write_garbage(p, np.random.default_rng(1).bytes(4096)),
        None,
        "cannot decode",
    ),
    Case(
        "random bytes .mp3",
        "random.mp3",
        "tone",
        lambda p: write_garbage(p, np.random.default_rng(2).bytes(4096)),
        None,
        "cannot decode",
    ),
    Case(
        "random bytes .flac",
        "random.flac",
        "clicks",
        lambda p: write_garbage(p, np.random.default_rng(3).bytes(4096)),
        None,
        "cannot decode",
    ),
    Case(
        "truncated header (20 bytes)",
        "truncated_header.wav",
        "noise",
        lambda p: write_garbage(p, _valid_wav_bytes(1.0)[:20]),
        None,
        "cannot decode",
    ),
    # a 4 s WAV whose second half is cut off: the header promises 4 s, the file holds 2 s
    Case(
        "header promises more data",
        "cut_in_half.wav",
        "tone",
        lambda p: write_garbage(p, _valid_wav_bytes(4.0)[: len(_valid_wav_bytes(4.0)) // 2 + 22]),
        2,
    ),
    Case(
        "zero-length audio (0 frames)",
        "zero_frames.wav",
        "clicks",
        lambda p: write_audio(p, np.zeros(0)),
        None,
        "contains no audio samples",
    ),
    Case("single sample", "one_sample.wav", "noise", lambda p: write_audio(p, np.array([0.5])), 1),
    Case("pure silence", "silence.wav", "tone", lambda p: write_audio(p, np.zeros(2 * SR)), 2, silent=True),
    Case("float WAV with NaN/Inf", "nan_inf.wav", "clicks", _nan_inf, 1),
    Case("6 channels", "six_channels.wav", "noise", lambda p: write_tone(p, seconds=2.0, channels=6), 2),
    Case(
        "96 kHz 24-bit",
        "hires_96k_24bit.wav",
        "tone",
        lambda p: write_tone(p, seconds=2.0, sr=96000, subtype="PCM_24"),
        2,
    ),
    Case("8 kHz 8-bit (PCM_U8)", "pcm_u8.wav", "clicks", lambda p: write_tone(p, seconds=2.0, subtype="PCM_U8"), 2),
    Case("text with audio extension", "notes.ogg", "noise", lambda p: write_garbage(p), None, "cannot decode"),
    # root (as CI runs) reads a chmod-000 file anyway; everyone else gets "Permission denied"
    Case(
        "chmod 000 file",
        "no_permission.wav",
        "tone",
        _unreadable,
        1 if READS_UNREADABLE else None,
        "" if READS_UNREADABLE else "cannot read (Permission denied)",
    ),
    Case("dangling symlink", "x.wav", "clicks", _dangling, None, "no such file", in_folder_scan=False),
    Case("directory named .wav", "y.wav", "noise", _directory, None, "not a regular file", in_folder_scan=False),
    Case("non-ASCII name", "Café – Ñandú 音楽.wav", "tone", lambda p: write_tone(p, seconds=1.0), 1),
    Case(f"long file ({LONG_MINUTES} min)", "long_30min.wav", "tone", _long, LONG_MINUTES * 60),
]
BAD = [c for c in CASES if c.clips is None]
GOOD = [c for c in CASES if c.clips is not None]


def corpus_config(work: Path, data_path: Path, **sections) -> dict:
    base = dict(
        audio={"clip_seconds": CLIP_SECONDS, "hop_seconds": CLIP_SECONDS},
        data={"valid_fraction": 0.25, "test_fraction": 0.0, "on_error": "skip"},
        train={"epochs": 2, "batch_size": 64},
    )
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return tiny_config_dict(work, data_path, **base)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(work dir, data folder, {case key: path}): 6 good 2 s tracks per class plus every case."""
    work = tmp_path_factory.mktemp("bad_audio")
    data = make_class_folder(work / "data", per_class=6, seconds=2.0)
    paths = {}
    for case in CASES:
        paths[case.key] = case.build(data / case.label / case.filename)
    return work, data, paths


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_scripts(*commands: tuple, timeout=300) -> list[Result]:
    """Run (script, *args) commands side by side, one thread each (2 cores, no oversubscription)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": PATH_WITHOUT_FFMPEG}
    running = [
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / script), *map(str, args)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        for script, *args in commands
    ]
    outputs = [p.communicate(timeout=timeout) for p in running]
    return [Result(p.returncode, *output) for p, output in zip(running, outputs)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- the audio stage and the feature cache, in-process ----------------------------------------------


def describe_load(path: Path, config) -> tuple[torch.Tensor | None, str]:
    try:
        clips = load_clips(path, config.audio)
    except UserError as error:
        return None, f"{type(error).__name__}: {error}"
    return clips, f"{len(clips)} clip{'s' if len(clips) != 1 else ''}"


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_load_clips(corpus, case):
    work, data, paths = corpus
    config = tiny_config(work, data, audio={"clip_seconds": CLIP_SECONDS, "hop_seconds": CLIP_SECONDS})
    path = paths[case.key]
    if case.clips is None:
        with pytest.raises(AudioError) as caught:
            load_clips(path, config.audio)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: "), message
        assert case.error in message
        return
    clips = load_clips(path, config.audio)
    assert clips.dtype == torch.float32
    assert tuple(clips.shape) == (case.clips, round(CLIP_SECONDS * SR))
    assert torch.isfinite(clips).all()
    peak = clips.abs().max().item()
    if case.silent:
        assert peak == 0.0
    else:
        assert peak == pytest.approx(PEAK, abs=0.01)  # normalized to -1 dBFS


def test_cut_wav_keeps_only_the_audio_it_holds(corpus):
    """The cut WAV's header says 4 s; the 2 s really there are decoded, nothing is invented."""
    work, data, paths = corpus
    path = paths["header promises more data"]
    raw = path.read_bytes()
    assert raw[36:40] == b"data" and int.from_bytes(raw[40:44], "little") == 4 * SR * 2  # the header promises 4 s
    assert len(raw) - 44 == 2 * SR * 2  # the file holds 2 s
    config = tiny_config(work, data, audio={"clip_seconds": 0.25, "hop_seconds": 0.25})
    clips = load_clips(path, config.audio)
    assert len(clips) == 8  # 2 s in 0.25 s clips, not 16
    assert (clips.abs().amax(dim=1) > 0.5).all()  # every clip holds the tone, no zero padding


def test_nan_and_inf_samples_become_silence(corpus):
    work, data, paths = corpus
    config = tiny_config(work, data, audio={"clip_seconds": 1.0, "hop_seconds": 1.0})
    clip = load_clips(paths["float WAV with NaN/Inf"], config.audio)[0]
    assert torch.isfinite(clip).all()
    assert (clip[100:200] == 0).all() and clip[300] == 0 and clip[301] == 0
    # the rest is the tone, scaled to -1 dBFS
    expected = torch.from_numpy(tone(440, 1.0)).float() / 0.5 * PEAK
    keep = torch.ones(SR, dtype=torch.bool)
    keep[100:200] = keep[300:302] = False
    assert torch.allclose(clip[keep], expected[keep], atol=2e-3)


def test_long_file_clip_times(corpus):
    work, data, paths = corpus
    config = tiny_config(work, data, audio={"clip_seconds": 1.0, "hop_seconds": 0.5})
    clips = load_clips(paths[f"long file ({LONG_MINUTES} min)"], config.audio)
    assert len(clips) == 2 * LONG_MINUTES * 60 - 1  # 1 s clips every 0.5 s
    assert torch.isfinite(clips).all()


def test_cached_features_on_the_whole_corpus(corpus):
    work, data, paths = corpus
    config = tiny_config(
        work,
        data,
        audio={"clip_seconds": CLIP_SECONDS, "hop_seconds": CLIP_SECONDS},
        data={"cache_dir": str(work / "feature_cache")},
    )
    ordered = [paths[c.key] for c in CASES]
    frames = round(CLIP_SECONDS * SR) // config.features.hop_length + 1
    for attempt in ("cold", "warm"):
        features, failures = cached_features(ordered, config)
        assert set(failures) == {paths[c.key] for c in BAD}, attempt
        readable = iter(features)  # the features of the readable files, in order
        for case, path in zip(CASES, ordered):
            if case.clips is None:
                assert failures[path].startswith(f"{path}: ") and case.error in failures[path]
                assert "\n" not in failures[path]
            else:
                mel = next(readable)
                assert tuple(mel.shape) == (case.clips, config.features.n_mels, frames), (attempt, case.key)
                assert torch.isfinite(mel.float()).all()
        assert next(readable, None) is None
    # only the readable files are stored; failures are retried next time, never stored
    indexes = (work / "feature_cache").rglob("shards/*.json")
    assert sum(len(json.loads(p.read_text())["tracks"]) for p in indexes) == len(GOOD)


# --- train.py on the corpus -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_runs(corpus) -> tuple[Result, Result]:
    """train.py with data.on_error=skip and, side by side on its own cache, with --set data.on_error=fail."""
    work, data, _ = corpus
    cfg = write_config(work / "skip.yaml", corpus_config(work, data, run={"dir": str(work / "run_skip")}))
    fail = write_config(
        work / "fail.yaml",
        corpus_config(work, data, run={"dir": str(work / "run_fail")}, data={"cache_dir": str(work / "fail_cache")}),
    )
    return tuple(
        run_scripts(("train.py", "--config", cfg), ("train.py", "--config", fail, "--set", "data.on_error=fail"))
    )


@pytest.fixture(scope="module")
def skip_run(train_runs) -> Result:
    return train_runs[0]


def listed_tracks(corpus) -> set[Path]:
    work, data, _ = corpus
    return {t.path for t in find_tracks(tiny_config(work, data).data)}


def expected_skipped(corpus) -> list[Path]:
    """The corpus files the folder scan lists as tracks but that cannot be read."""
    _, _, paths = corpus
    listed = listed_tracks(corpus)
    return [paths[c.key] for c in BAD if paths[c.key] in listed]


def test_folder_scan_lists_every_file(corpus):
    _, _, paths = corpus
    listed = listed_tracks(corpus)
    assert {paths[c.key] for c in CASES if c.in_folder_scan} <= listed
    assert paths["directory named .wav"] not in listed  # a folder is not a track
    assert len(listed - {paths["dangling symlink"]}) == 3 * 6 + sum(c.in_folder_scan for c in CASES)


def test_dangling_symlink_in_dataset_is_reported(corpus):
    _, _, paths = corpus
    assert paths["dangling symlink"] in listed_tracks(corpus)


def test_train_skips_bad_files(corpus, skip_run):
    work, data, paths = corpus
    result = skip_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    listed = listed_tracks(corpus)

    warnings = re.findall(
        r"^warning: skipped (\d+) of (\d+) (train|valid) files that could not be read:$", result.stderr, flags=re.M
    )
    assert warnings, result.stderr[-3000:]
    skipped = sum(int(n) for n, _, _ in warnings)
    assert skipped == len(expected_skipped(corpus))
    assert sum(int(total) for _, total, _ in warnings) == len(listed)
    # the first few reasons are listed, each naming one of the bad files
    reasons = re.findall(r"^  - (.*)$", result.stderr, flags=re.M)
    assert len(reasons) >= min(skipped, 5)
    bad_names = {str(p) for p in expected_skipped(corpus)}
    for reason in reasons:
        assert reason.split(": ")[0] in bad_names, reason
    # it trained: 2 epochs logged, on the readable tracks only
    rows = [json.loads(line) for line in (work / "run_skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    match = re.search(r"train (\d+) tracks \((\d+) clips\), valid (\d+) tracks \((\d+) clips\)", result.stdout)
    assert match, result.stdout
    assert int(match[1]) + int(match[3]) == len(listed) - skipped
    good_clips = 3 * 6 * 2 + sum(c.clips for c in GOOD)
    assert int(match[2]) + int(match[4]) == good_clips
    assert (work / "run_skip" / "best.pt").is_file()


def test_train_on_error_fail_stops_before_any_epoch(corpus, train_runs):
    work, data, _ = corpus
    run = work / "run_fail"
    result = train_runs[1]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert "could not be read (data.on_error=fail" in errors[0]
    named = errors[0].split("first: ", 1)[1].split(": ")[0]
    assert named in {str(p) for p in expected_skipped(corpus)}
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    assert "epoch" not in result.stdout


# --- predict.py on the corpus ---------------------------------------------------------------------


def corpus_files(corpus) -> list[Path]:
    work, data, paths = corpus
    good = [p for label in CLASSES for p in sorted((data / label).glob(f"{label}_*.wav"))]
    return good + [paths[c.key] for c in CASES]


@pytest.fixture(scope="module")
def predict_runs(corpus, skip_run) -> tuple[Result, Result]:
    """predict.py on every corpus file, as text and as --json, side by side."""
    assert skip_run.returncode == 0, skip_run.stderr[-3000:]
    best = corpus[0] / "run_skip" / "best.pt"
    files = corpus_files(corpus)
    return tuple(
        run_scripts(
            ("predict.py", "--checkpoint", best, *files), ("predict.py", "--checkpoint", best, "--json", *files)
        )
    )


@pytest.fixture(scope="module")
def predict_json(predict_runs) -> Result:
    return predict_runs[1]


def test_predict_reports_each_bad_file(corpus, predict_runs):
    work, data, paths = corpus
    files = corpus_files(corpus)
    result = predict_runs[0]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = error_lines(result.stderr)
    # every bad file but the directory (a folder argument: its audio files, here none) gets one line
    reported = [c for c in BAD if c.key != "directory named .wav"]
    assert len(errors) == len(reported), result.stderr
    for case, line in zip(reported, errors):
        assert line.startswith(f"error: {paths[case.key]}: ") and case.error in line
    # one prediction block per readable file, in order, each with three ranked labels
    good = [p for p in files if p not in {paths[c.key] for c in BAD}]
    headers = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert headers == [str(p) for p in good]
    ranks = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert ranks == ["1.", "2.", "3."] * len(good)


def test_predict_json_has_an_error_entry_per_bad_file(corpus, predict_json):
    _, _, paths = corpus
    result = predict_json
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    items = json.loads(result.stdout)
    by_file = {item["file"]: item for item in items}
    assert len(by_file) == len(items) == len(corpus_files(corpus)) - 1  # the empty directory adds no item
    for case in CASES:
        path = str(paths[case.key])
        if case.key == "directory named .wav":
            assert path not in by_file
        elif case.clips is None:
            assert set(by_file[path]) == {"file", "error"}
            assert by_file[path]["error"].startswith(f"{path}: ") and case.error in by_file[path]["error"]
        else:
            top = by_file[path]["top"]
            assert [t["label"] for t in top] and {t["label"] for t in top} <= set(CLASSES)
            assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=2e-3)
    assert len(error_lines(result.stderr)) == len(BAD) - 1


# --- how the decode errors read ----------------------------------------------------------------------


def test_decode_error_names_the_file_once_without_python_reprs(corpus):
    work, data, paths = corpus
    config = tiny_config(work, data)
    path = paths["empty file"]
    with pytest.raises(AudioError) as caught:
        load_clips(path, config.audio)
    message = str(caught.value)
    assert "<_io." not in message and message.count(str(path)) == 1, message


def test_decode_error_does_not_call_an_existing_file_missing(corpus):
    work, data, paths = corpus
    path = paths["random bytes .wav"]
    assert path.is_file() and path.read_bytes()[:2] == b"\xff\xe4"
    with pytest.raises(AudioError) as caught:
        load_clips(path, tiny_config(work, data).audio)
    assert "does not exist" not in str(caught.value), str(caught.value)


# --- the input -> outcome table -------------------------------------------------------------------


def outcome_table(corpus, skip_run_result, predict_result) -> str:
    """input -> what load_clips, train.py (on_error=skip) and predict.py did with it."""
    work, data, paths = corpus
    config = tiny_config(work, data, audio={"clip_seconds": CLIP_SECONDS, "hop_seconds": CLIP_SECONDS})
    predicted = {item["file"]: item for item in json.loads(predict_result.stdout)}
    listed = listed_tracks(corpus)
    rows = [("input", "file", "load_clips / cached_features", "train.py (on_error=skip)", "predict.py")]
    for case in CASES:
        path = paths[case.key]
        clips, load = describe_load(path, config)
        load = load.replace(str(path), "<file>")  # the path is shown once, in the file column
        reason = load.split("<file>: ", 1)[-1] if clips is None else ""
        if path not in listed:
            train = "not listed as a track: ignored without a word"
        elif clips is None:
            train = f"skipped ({reason})"
        else:
            train = f"used ({load})"
        item = predicted.get(str(path))
        if item is None:
            predict = "no output (a folder argument with no audio files)"
        elif "error" in item:
            predict = "error: " + item["error"].replace(str(path), "<file>")
        else:
            predict = f"predicted {item['top'][0]['label']} ({item['top'][0]['probability']:.2f})"
        used = "used: " + load if clips is not None else load
        rows.append((case.key, case.filename, used, train, predict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def test_outcome_table(corpus, skip_run, predict_json):
    table = outcome_table(corpus, skip_run, predict_json)
    print("\n" + table)
    assert len(table.splitlines()) == len(CASES) + 2
