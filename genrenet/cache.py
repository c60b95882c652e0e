"""Features of audio files: computed batch by batch from the audio stage, and kept in the feature
store (genrenet.store) so that each file is decoded once per preprocessing setting.
"""

import contextlib
import ctypes
from pathlib import Path

import torch

from genrenet import distributed
from genrenet.audio import iter_clip_batches
from genrenet.config import Config
from genrenet.errors import UserError
from genrenet.progress import progress
from genrenet.registry import features_of
from genrenet.store import FeatureStore, ShardWriter, TrackFeatures

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in glibc's malloc.h


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
    """Features for each path, computing (with a progress bar) only what the store lacks.

    Returns (features, failures): failures maps each file that could not be read to the reason,
    so one bad file never stops the whole dataset, and features (a TrackFeatures) holds the others'
    features in the order of `paths`. Under torchrun the ranks share the missing files out, each
    filling its own shards, and all of them then read the whole store.
    """
    store = FeatureStore(config)
    # Every rank shares out one list, rank 0's, taken before any rank writes: a rank that looked
    # later would see the others' new shards and share out a shorter list, leaving tracks to nobody.
    missing = distributed.broadcast_object([p for p in paths if store.get(p) is None])
    writer = ShardWriter(store)
    failures = _fill(writer, distributed.share(missing), config, desc, shown_total=len(missing))
    writer.flush()
    if distributed.active():
        failures = {path: reason for part in distributed.gather_objects(failures) for path, reason in part.items()}
        distributed.barrier()  # every rank's shards are written
        store.refresh()
    items = [store.get(p) or writer.unstored.get(_key_or_none(store, p)) for p in paths if p not in failures]
    lost = sum(item is None for item in items)
    if lost:  # under torchrun, features reach the other ranks through the store alone
        raise UserError(
            f"features of {lost} files are not in {store.dir} after being computed: a file changed while "
            "it was read, or, under torchrun, the store could not be written or data.cache_dir is not a "
            "folder all nodes share"
        )
    return TrackFeatures(items), failures


def _key_or_none(store: FeatureStore, path: Path) -> str | None:
    try:
        return store.key(path)
    except OSError:
        return None


def _fill(writer: ShardWriter, paths: list[Path], config: Config, desc: str, shown_total: int) -> dict:
    """Compute and store the features of `paths` (DataLoader workers decode them in parallel)."""
    failures = {}
    if not paths:
        return failures
    loader = torch.utils.data.DataLoader(
        _Extraction(paths, config),
        batch_size=None,
        num_workers=config.data.num_workers,
        worker_init_fn=_fill_worker_init,
    )
    in_this_process = large_frees_returned() if not config.data.num_workers else contextlib.nullcontext()
    # The progress report is zip's first iterable, so it sees its own end (and reports it).
    with in_this_process:
        for (features, problem), path in zip(
            progress(loader, total=len(paths), desc=f"{desc} ({shown_total} new)", unit="file"), paths
        ):
            if problem:
                failures[path] = problem
            else:
                writer.add(path, features)
    return failures


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


def one_thread(_worker_id):
    """worker_init_fn of DataLoader workers that decode audio."""
    torch.set_num_threads(1)  # workers already run in parallel; more threads only contend


def _fill_worker_init(worker_id):
    # Only the fill's workers give freed buffers back: they decode a whole dataset, where heap
    # growth adds up. Predicting a library with it ran 7-26% slower (bench/predict_speed.py, 60 tracks).
    one_thread(worker_id)
    return_large_frees()


def return_large_frees() -> None:
    """Buffers of 128 KB and more (a decoded block, a file's clips) get their own mapping, given back
    to the system when freed. glibc otherwise raises that threshold after the first such free and
    keeps later ones on its heap, where the pieces of files of every length add up: a worker filling
    the store grew from 626 to 793 MB peak going from 40 to 160 files, and stays at 489 with this."""
    _mallopt(M_MMAP_THRESHOLD, 128 * 1024)


@contextlib.contextmanager
def large_frees_returned():
    """return_large_frees while this process decodes; then the largest thresholds glibc's sliding
    ones reach (32 MB mapped, 64 MB trimmed), because training with every tensor of 128 KB mapped
    and unmapped anew ran 20% slower (36 against 46 clips/s, twice the system time)."""
    return_large_frees()
    try:
        yield
    finally:
        _mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        _mallopt(M_TRIM_THRESHOLD, 64 * 2**20)


def _mallopt(parameter: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(parameter, value)
    except (OSError, AttributeError):  # not glibc: its own allocator, nothing to set
        pass
