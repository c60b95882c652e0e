"""Feature cache: decode and compute features once per file and preprocessing setting.

Features live under <cache_dir>/<preprocessing key>/, where the key hashes every audio and
feature setting, so changing any of them starts a fresh folder instead of reusing stale
features. Within it, a file's entry is keyed by its resolved path, size and modification time,
so an edited audio file is recomputed too.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from genrenet.audio import iter_clip_batches
from genrenet.config import Config, preprocessing_key, to_dict
from genrenet.errors import UserError
from genrenet.fileio import atomic_save
from genrenet.progress import progress
from genrenet.registry import features_of


class FeatureCache:
    def __init__(self, config: Config):
        self.config = config
        self.dir = Path(config.data.cache_dir) / preprocessing_key(config)
        self.kind = features_of(config)
        self.width = self.kind.width(config)
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            settings = self.dir / "settings.json"
            if not settings.exists():  # for people browsing the cache folder
                full = to_dict(config)
                settings.write_text(
                    json.dumps({"audio": full["audio"], "features": full["features"], "kind": self.kind.name}, indent=2)
                )
        except OSError as error:  # found before decoding: a read-only warm cache still serves what it holds
            self.writable = False
            print(
                f"warning: the feature cache {self.dir} cannot be written ({error.strerror or error}); "
                "features it lacks are computed but not kept",
                file=sys.stderr,
            )

    def entry(self, audio_path: Path) -> Path:
        stat = Path(audio_path).stat()
        identity = f"{Path(audio_path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.dir / key[:2] / f"{key}.pt"

    def load(self, audio_path: Path):
        """Cached features, or None when absent or unreadable (a damaged entry is recomputed)."""
        try:
            stored = torch.load(self.entry(audio_path), map_location="cpu", weights_only=True)
            features = stored["features"]
            dims = 3 if self.kind.framed else 2
            if isinstance(features, torch.Tensor) and features.dim() == dims and features.shape[1] == self.width:
                return features
        except Exception:
            pass
        return None

    def store(self, audio_path: Path, features: torch.Tensor) -> None:
        if not self.writable:
            return
        try:
            atomic_save({"features": features}, self.entry(audio_path))
        except OSError as error:  # a full disk: go on without caching rather than lose the run
            self.writable = False
            print(f"warning: stopped writing the feature cache {self.dir} ({error.strerror or error})", file=sys.stderr)


def feature_extractor(config: Config):
    """Waveforms [clips, samples] -> features per clip, for the kind of features the config's model reads."""
    return features_of(config).extractor(config)


def iter_feature_batches(path: Path, config: Config, extractor=None, max_clips: int | None = None):
    """Features of one file's consecutive clips, a batch at a time (see audio.iter_clip_batches):
    a long file's waveform is never held whole, only its features."""
    extractor = extractor or feature_extractor(config)
    for waves in iter_clip_batches(path, config.audio, max_clips):
        yield extractor(waves)


def compute_features(path: Path, config: Config, extractor=None) -> torch.Tensor:
    """Features of every clip of one file (see feature_extractor), computed batch by batch."""
    return torch.cat(list(iter_feature_batches(path, config, extractor)))


def cached_features(paths: list[Path], config: Config, desc: str = "features"):
    """Features for each path, computing (with a progress bar) only what the cache lacks.

    Returns (features, failures): features[i] is None for a file that could not be read, and
    failures maps such paths to the reason, so one bad file never stops the whole dataset.
    """
    cache = FeatureCache(config)
    results = [cache.load(p) for p in paths]
    missing = [i for i, r in enumerate(results) if r is None]
    failures = {}
    if missing:
        loader = torch.utils.data.DataLoader(
            _Extraction([paths[i] for i in missing], config),
            batch_size=None,
            num_workers=config.data.num_workers,
            worker_init_fn=_one_thread,
        )
        # The progress report is zip's first iterable, so it sees its own end (and reports it).
        for (features, problem), i in zip(
            progress(loader, total=len(missing), desc=f"{desc} ({len(missing)} new)", unit="file"), missing
        ):
            if problem:
                failures[paths[i]] = problem
            else:
                cache.store(paths[i], features)
                results[i] = features
    return results, failures


class _Extraction(torch.utils.data.Dataset):
    """Files to decode; a Dataset so a DataLoader can spread them over worker processes."""

    def __init__(self, paths: list[Path], config: Config):
        self.paths, self.config = paths, config
        self.extractor = feature_extractor(config)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return compute_features(self.paths[i], self.config, self.extractor), None
        except UserError as error:
            return None, str(error)
        except MemoryError:  # a file too large to compute features for is one skipped file, not a crashed run
            return None, f"{self.paths[i]}: not enough memory to compute its features"


def _one_thread(_worker_id):
    torch.set_num_threads(1)  # workers already run in parallel; more threads only contend
