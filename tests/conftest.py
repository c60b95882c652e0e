"""Shared helpers for the genrenet tests: tiny generated audio files, datasets and configs.

Everything is generated with numpy + soundfile inside pytest's tmp_path; nothing is downloaded.
"""

import os
import sys
import warnings
from pathlib import Path

# Under pytest-xdist (make test runs `pytest -n 2`) each worker is one of two processes sharing the
# cores: one thread each for torch and numpy, and for every process a test starts (they inherit this
# environment), or the thread pools oversubscribe the machine and every test slows down. Set before
# numpy and torch are imported, which read these once.
if "PYTEST_XDIST_WORKER" in os.environ:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)

# pydub warns at import time when ffmpeg is missing; that is expected in the test environment.
warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from genrenet.config import from_dict  # noqa: E402

SR = 8000  # sample rate of the generated files and of the tiny configs


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def write_audio(path, samples: np.ndarray, sr: int = SR, format: str | None = None, subtype: str | None = None) -> Path:
    """Write samples ([n] or [n, channels], floats in [-1, 1]) with soundfile; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(samples, dtype=np.float64), sr, format=format, subtype=subtype)
    return path


def write_tone(
    path,
    freq: float = 440.0,
    seconds: float = 1.0,
    sr: int = SR,
    amp: float = 0.5,
    channels: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    format: str | None = None,
    subtype: str | None = None,
) -> Path:
    """A sine (plus optional white noise) in every channel, in any format/subtype soundfile writes."""
    x = tone(freq, seconds, sr, amp)
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(len(x))
    x = np.clip(x, -1, 1)
    if channels > 1:
        x = np.repeat(x[:, None], channels, axis=1)
    return write_audio(path, x, sr, format, subtype)


def write_garbage(path, text: bytes = b"this is not audio at all\n" * 40) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return path


# --- an easily separable 3-class dataset ------------------------------------------------------
# The classes differ in texture (the CNN pools globally over frequency and time, so texture is
# what it sees best): a steady tone, broadband noise, and a train of short clicks.

CLASSES = ("clicks", "noise", "tone")


def class_signal(label: str, seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    background = 0.01 * rng.standard_normal(n)
    if label == "tone":
        x = tone(rng.uniform(500, 1500), seconds, sr, amp=0.5)
    elif label == "noise":
        x = 0.3 * rng.standard_normal(n)
    elif label == "clicks":
        x = np.zeros(n)
        period = int(sr / rng.uniform(6, 10))
        for start in range(int(rng.integers(0, period)), n, period):
            x[start : start + 40] = 0.8 * rng.standard_normal(len(x[start : start + 40]))
    else:
        raise ValueError(label)
    return np.clip(x + background, -1, 1)


def make_class_folder(
    root, per_class: int = 8, seconds: float = 2.0, ext: str = "wav", classes=CLASSES, seed: int = 0
) -> Path:
    """root/<class>/<class>_NN.<ext>, per_class tracks of each class."""
    root = Path(root)
    for c, label in enumerate(classes):
        for i in range(per_class):
            write_audio(
                root / label / f"{label}_{i:02d}.{ext}", class_signal(label, seconds, seed=seed * 1000 + c * 100 + i)
            )
    return root


def tiny_config_dict(tmp_path, data_path, **sections) -> dict:
    """A config dict small enough for CPU tests; cache and run dir inside tmp_path."""
    tmp_path = Path(tmp_path)
    raw = {
        "data": {"path": str(data_path), "cache_dir": str(tmp_path / "cache")},
        "audio": {"sample_rate": SR, "clip_seconds": 0.5, "hop_seconds": 0.5},
        "features": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        "model": {"width": 4, "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "device": "cpu", "seed": 0},
        "run": {"dir": str(tmp_path / "run")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_config(tmp_path, data_path, **sections):
    return from_dict(tiny_config_dict(tmp_path, data_path, **sections))


def write_config(path, raw: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def class_folder(tmp_path):
    """A tiny 3-class folder dataset (8 tracks of 2 s per class)."""
    return make_class_folder(tmp_path / "data")


def pytest_configure(config):
    # pydub imports the deprecated stdlib audioop; not genrenet's doing.
    config.addinivalue_line("filterwarnings", "ignore:'audioop' is deprecated:DeprecationWarning")


# make test runs the files on two pytest-xdist workers (--dist loadfile: a file's tests, and its
# module fixtures, stay on one worker), handing them out in collection order (--no-loadscope-reorder).
# The files that take longest go first, so that no long one starts last while the other worker
# idles. CPU seconds of each file on 2 cores, as measured; the others take under 10 s each.
LONGEST_FIRST = (
    "test_distributed.py",  # ~150 s: torchrun launches of 2 processes each
    "test_recipe.py",  # ~90 s
    "test_classic_cli.py",  # ~80 s
    "test_resume.py",  # ~65 s
    "test_end_to_end.py",  # ~50 s
    "test_install.py",  # ~50 s
    "test_bad_audio.py",  # ~45 s
    "test_run_safety.py",  # ~45 s
    "test_silent_results.py",  # ~40 s
    "test_concurrency.py",  # ~35 s
    "test_export.py",  # ~35 s
    "test_results.py",  # ~25 s
    "test_builtin_tagger.py",  # ~25 s
    "test_benches.py",  # ~20 s
    "test_bad_config.py",  # ~15 s
    "test_hostile_config.py",  # ~15 s
    "test_hostile_audio.py",  # ~10 s
)


def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return  # a plain run keeps the files in name order
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def scramble(path, count: int = 4096, seed: int = 0) -> Path:
    """Random bytes over `count` bytes in the middle of a file (a quarter of it at most), its size
    kept: damage that no size or header check sees."""
    path = Path(path)
    size = path.stat().st_size
    count = min(count, size // 4)
    with open(path, "r+b") as file:
        file.seek(size // 2 - count // 2)
        file.write(np.random.default_rng(seed).bytes(count))
    return path
