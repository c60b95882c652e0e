"""Feature store: the features of every clip on disk, in .npy shards read by memory mapping.

Layout under <cache_dir>/<preprocessing key>/ (the key hashes every audio and feature setting,
so changing any of them starts a fresh folder instead of reusing stale features):

    settings.json          the settings the key stands for, for people browsing the folder
    shards/<name>.npy      the clips of several tracks: one array [clips, *clip shape]
    shards/<name>.json     that shard's index: per track, its first row and number of clips; and
                           the CRC-32 of the whole .npy file

A track is known by its resolved path, modification time and content fingerprint (size and a hash
of its content, fileio.fingerprint, the one recorded splits use), so an edited file gets a new
entry even when its modification time was kept. Why .npy: NumPy's own documented format, readable
anywhere with numpy.load(mmap_mode="r"), no extra dependency, and a shard is written once and never
changed, so nothing needs HDF5's in-place updates (nor its troubles with several writers).

Filling is atomic per shard: the array, then its index, go to temp files that are renamed, and a
shard counts only once its index exists. A writer killed midway loses the tracks it had buffered
for its next shard, which the next run computes again. A shard whose array does not match its
index (truncated, overwritten), or whose bytes do not give its checksum (a full read, once per
process and shard, when a track of it is first asked for: never on the batch read path), is
removed with a warning and its tracks recomputed; in a store that cannot be written it is left out
and its tracks are computed in memory. Shards of an older index version (tracks keyed without a
fingerprint, no checksum) can never be matched: they are removed and their tracks computed again.
Several processes (runs sharing a cache, the ranks of a torchrun job) fill one store at once, each
into its own shards.
"""

import io
import itertools
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrenet.config import Config, preprocessing_key, to_dict
from genrenet.fileio import atomic_write, fingerprint, process_alive, safe_hostname
from genrenet.registry import features_of

SHARD_BYTES = 64 << 20  # features buffered before a shard is written; also bounds a writer's memory
INDEX_VERSION = 2  # 2: tracks keyed by content fingerprint, and a checksum of the array file
_WRITER = re.compile(r"\.?([A-Za-z0-9_-]+)\.(\d+)\.[0-9a-f]+\.(?:npy|json)(?:\..*\.tmp)?")  # host, pid


@dataclass(frozen=True)
class ShardSlice:
    """Where one track's clips lie: rows [row, row + count) of a shard's array."""

    shard: Path
    row: int
    count: int

    def __len__(self):
        return self.count

    def read(self) -> torch.Tensor:
        return torch.from_numpy(read_rows(self.shard, slice(self.row, self.row + self.count)))


def read_rows(shard: Path, rows) -> np.ndarray:
    """A copy of some rows of a shard (a slice, or sorted row numbers). The mapping is dropped at
    once: mapped pages count toward a process's memory until unmapped, so maps held open would grow
    a training process by the size of the dataset over one epoch."""
    mapped = np.load(shard, mmap_mode="r")
    rows_read = np.array(mapped[rows])
    del mapped
    return rows_read


class TrackFeatures(Sequence):
    """Each track's features: read from the store when asked, or held in memory (when the store
    could not be written). track_features[i] is a tensor [clips, ...]; `clips` reads any clips of
    any tracks with one mapping per shard."""

    def __init__(self, items: list):
        self.items = items
        self.counts = np.array([len(item) for item in items], dtype=np.int64)
        self.starts = np.cumsum(self.counts) - self.counts  # the number of each track's first clip

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        return item.read() if isinstance(item, ShardSlice) else item

    def subset(self, tracks: list[int]) -> "TrackFeatures":
        return TrackFeatures([self.items[t] for t in tracks])

    @property
    def clip_count(self) -> int:
        return int(self.counts.sum())

    def track_of_clips(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.items)), self.counts)

    def clips(self, numbers: np.ndarray) -> torch.Tensor:
        """The clips with these numbers (counted over all tracks in order), stacked in that order."""
        tracks = np.searchsorted(self.starts, numbers, side="right") - 1
        within = numbers - self.starts[tracks]
        groups: dict[Path | None, list[int]] = {}  # shard (None: memory) -> positions in the batch
        for position, track in enumerate(tracks):
            groups.setdefault(self._source(track), []).append(position)
        # Assembled in NumPy: a copy of rows, which torch would spread over its intra-op threads
        # (in the training process itself when data.num_workers is 0), each op then waiting for all
        # of them: 0.5-12 ms a batch on 2 busy cores, against 0.03 ms here.
        batch = None
        for source, positions in groups.items():
            if source is None:
                piece = torch.stack([self.items[tracks[p]][within[p]] for p in positions]).numpy()
            else:
                rows = np.array([self.items[tracks[p]].row + within[p] for p in positions])
                order = np.argsort(rows, kind="stable")  # ascending rows read a shard front to back
                positions = [positions[o] for o in order]
                piece = read_rows(source, rows[order])
            if batch is None:
                batch = np.empty((len(numbers), *piece.shape[1:]), dtype=piece.dtype)
            batch[positions] = piece
        return torch.from_numpy(batch)

    def _source(self, track: int) -> Path | None:
        item = self.items[track]
        return item.shard if isinstance(item, ShardSlice) else None


class FeatureStore:
    """The shards of one preprocessing setting, and an index from track to ShardSlice."""

    def __init__(self, config: Config):
        self.dir = Path(config.data.cache_dir) / preprocessing_key(config)
        self.shards = self.dir / "shards"
        kind = features_of(config)
        self.dims, self.width = (3 if kind.framed else 2), kind.width(config)
        self.writable = True
        try:
            self.shards.mkdir(parents=True, exist_ok=True)
            settings = self.dir / "settings.json"
            if not settings.exists():
                full = to_dict(config)
                settings.write_text(
                    json.dumps({"audio": full["audio"], "features": full["features"], "kind": kind.name}, indent=2)
                )
        except OSError as error:  # found before decoding: a read-only warm store still serves what it holds
            self.stop_writing(f"the feature store {self.dir} cannot be written ({error.strerror or error})")
        self.index: dict[str, ShardSlice] = {}
        self.checksums: dict[Path, str] = {}  # shard -> the checksum its index holds
        self.verified: set[Path] = set()  # shards whose bytes were checked (or written) here
        self.damaged: set[Path] = set()  # shards left out, even where they could not be removed
        self.refresh()

    def stop_writing(self, reason: str) -> None:
        if self.writable:
            self.writable = False
            print(f"warning: {reason}; features it lacks are computed but not kept", file=sys.stderr)

    def key(self, audio_path: Path) -> str:
        """Resolved path, modification time and content fingerprint (which holds the size)."""
        path = Path(audio_path)
        return f"{path.resolve()}|{path.stat().st_mtime_ns}|{fingerprint(path)}"

    def get(self, audio_path: Path) -> ShardSlice | None:
        """Where a file's features lie, or None when the store lacks them or their shard is damaged."""
        try:
            found = self.index.get(self.key(audio_path))
        except OSError:  # the file is gone: nothing stored can stand for it
            return None
        return found if found is None or self._intact(found.shard) else None

    def _intact(self, shard: Path) -> bool:
        """Whether a shard's bytes give the checksum in its index; a damaged shard is left out."""
        if shard in self.verified:
            return True
        if _checksum_matches(shard, self.checksums[shard]):
            self.verified.add(shard)
            return True
        lost = [key for key, item in self.index.items() if item.shard == shard]
        for key in lost:
            del self.index[key]
        print(
            f"warning: the feature store shard {shard} is damaged (its bytes do not match the checksum "
            f"in its index); the features of its {len(lost)} tracks are computed again",
            file=sys.stderr,
        )
        self._leave_out(shard)
        return False

    def _leave_out(self, shard: Path) -> None:
        self.damaged.add(shard)
        self._remove_shard(shard.with_suffix(".json"))

    def refresh(self) -> None:
        """Read every finished shard's index (other processes may have added shards); a damaged
        shard is left out, and removed when this store may write."""
        self.index = {}
        if not self.shards.is_dir():
            return
        self._remove_leftovers()
        outdated = 0
        for index_file in sorted(self.shards.glob("*.json")):
            shard = index_file.with_suffix(".npy")
            if shard in self.damaged:
                continue
            index = self._read_shard_index(index_file)
            if index is None:
                print(
                    f"warning: the feature store shard {shard} is damaged (it does not match its index); "
                    "its tracks are computed again",
                    file=sys.stderr,
                )
                self._leave_out(shard)
                continue
            if index["version"] < INDEX_VERSION:
                outdated += 1
                self._leave_out(shard)
            if index["version"] != INDEX_VERSION:  # a newer version's shards are left to it
                continue
            self.checksums[shard] = index["checksum"]
            for key, (row, count) in index["tracks"].items():
                self.index.setdefault(key, ShardSlice(shard, row, count))
        if outdated:
            print(
                f"note: {outdated} shards of the feature store {self.dir} were written by an older genrenet "
                "(tracks keyed without a content fingerprint, no checksum); their tracks are computed again",
                file=sys.stderr,
            )

    def _read_shard_index(self, index_file: Path) -> dict | None:
        """A shard's index, its tracks as {track key: (row, count)}; None when the shard is damaged
        (an index of another version is only checked for its version)."""
        try:
            index = json.loads(index_file.read_text())
            if index["version"] != INDEX_VERSION:
                return index if isinstance(index["version"], int) else None
            rows = index["shape"][0]
            index["tracks"] = {key: (int(row), int(count)) for key, (row, count) in index["tracks"].items()}
            tracks = index["tracks"]
            shape, dtype = _array_header(index_file.with_suffix(".npy"))
            healthy = (
                isinstance(index["checksum"], str)
                and list(shape) == index["shape"]
                and str(dtype) == index["dtype"]
                and len(shape) == self.dims
                and shape[1] == self.width
                and all(0 <= row and count > 0 and row + count <= rows for row, count in tracks.values())
            )
            return index if healthy else None
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    def _remove_shard(self, index_file: Path) -> None:
        if not self.writable:
            return
        try:
            index_file.with_suffix(".npy").unlink(missing_ok=True)
            index_file.unlink(missing_ok=True)
        except OSError as error:  # a read-only cache: the shard stays on disk, left out of the index
            self.stop_writing(
                f"the damaged shard {index_file.with_suffix('.npy').name} cannot be removed from the feature "
                f"store {self.dir} ({error.strerror or error})"
            )

    def _remove_leftovers(self) -> None:
        """Temp files, and arrays without an index, of writers killed on this host."""
        if not self.writable:
            return
        host = safe_hostname()
        for path in self.shards.iterdir():
            writer = _WRITER.fullmatch(path.name)
            unindexed = path.suffix == ".npy" and not path.with_suffix(".json").exists()
            unfinished = path.name.endswith(".tmp") or unindexed
            if unfinished and writer and writer[1] == host and not process_alive(int(writer[2])):
                try:
                    path.unlink(missing_ok=True)
                except OSError as error:  # a read-only cache
                    self.stop_writing(f"the feature store {self.dir} cannot be written ({error.strerror or error})")
                    return


def _array_header(path: Path) -> tuple[tuple, np.dtype]:
    """The shape and dtype in a .npy file's header, checked against the file's size."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
        expected = file.tell() + int(np.prod(shape)) * dtype.itemsize
        if fortran_order or os.fstat(file.fileno()).st_size != expected:
            raise ValueError(f"{path.name}: its size does not match its header")
    return shape, dtype


_CHECKED: dict[tuple, bool] = {}  # (shard, inode, size, mtime, checksum) -> whether they match


def _checksum_matches(shard: Path, checksum: str) -> bool:
    """Whether the shard's bytes give the checksum: a full read, done once per process and shard
    (until the file changes), since several stores of one process (splits, folds) share shards."""
    try:
        stat = shard.stat()
        seen = (str(shard), stat.st_ino, stat.st_size, stat.st_mtime_ns, checksum)
        if seen not in _CHECKED:
            _CHECKED[seen] = _crc32(shard) == checksum
        return _CHECKED[seen]
    except OSError:  # gone or unreadable: nothing of it can be trusted
        return False


def _crc32(path: Path) -> str:
    crc, buffer = 0, bytearray(4 << 20)
    with open(path, "rb", buffering=0) as file:
        while read := file.readinto(buffer):
            crc = zlib.crc32(memoryview(buffer)[:read], crc)
    return f"crc32:{crc:08x}"


class ShardWriter:
    """Adds tracks' features to a store, a shard at a time. Tracks it could not write (a store that
    cannot be written, a full disk) stay in `unstored`, so the run still has their features."""

    def __init__(self, store: FeatureStore):
        self.store, self.pending, self.unstored = store, [], {}

    def add(self, audio_path: Path, features: torch.Tensor) -> None:
        key = self.store.key(audio_path)
        if not self.store.writable:
            self.unstored[key] = features
            return
        self.pending.append((key, features))
        if sum(f.numel() * f.element_size() for _, f in self.pending) >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        arrays = [features.numpy() for _, features in pending]
        shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
        name = f"{safe_hostname()}.{os.getpid()}.{time.time_ns():x}"
        shard = self.store.shards / f"{name}.npy"
        rows = np.cumsum([0] + [len(a) for a in arrays])
        index = {
            "version": INDEX_VERSION,
            "shape": list(shape),
            "dtype": str(arrays[0].dtype),
            "tracks": {key: [int(rows[i]), len(arrays[i])] for i, (key, _) in enumerate(pending)},
        }
        try:
            atomic_write(shard, lambda file: index.update(checksum=_write_npy(file, arrays, shape)))
            atomic_write(shard.with_suffix(".json"), lambda file: file.write(json.dumps(index).encode()))
        except OSError as error:  # a full disk: go on without storing rather than lose the run
            self.store.stop_writing(f"stopped writing the feature store {self.store.dir} ({error.strerror or error})")
            self.unstored.update(pending)
            return
        self.store.checksums[shard] = index["checksum"]
        self.store.verified.add(shard)  # its bytes are those just hashed
        for key, (row, count) in index["tracks"].items():
            self.store.index.setdefault(key, ShardSlice(shard, row, count))


def _write_npy(file, arrays: list[np.ndarray], shape: tuple) -> str:
    """One .npy array of the arrays stacked along their first axis, written piece by piece;
    returns the checksum of the whole file, as _crc32 gives it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(arrays[0].dtype), "fortran_order": False, "shape": shape}
    )
    crc = 0
    for piece in itertools.chain([header.getvalue()], (np.ascontiguousarray(a).tobytes() for a in arrays)):
        file.write(piece)
        crc = zlib.crc32(piece, crc)
    return f"crc32:{crc:08x}"
