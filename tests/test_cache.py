"""Feature store: computed once per file and preprocessing setting, kept in memory-mapped .npy
shards, reused, never stale, never half written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import genrenet.store
from conftest import REPO_ROOT, SR, scramble, tiny_config, write_garbage, write_tone
from genrenet.cache import cached_features, compute_features
from genrenet.config import preprocessing_key
from genrenet.store import FeatureStore


@pytest.fixture
def files(tmp_path):
    return [
        write_tone(tmp_path / "audio" / f"t{i}.wav", freq=300 + 400 * i, seconds=1.0 + 0.5 * i, noise=0.01, seed=i)
        for i in range(3)
    ]


def config_for(tmp_path, **sections):
    return tiny_config(tmp_path, tmp_path / "audio", **sections)


def shard_files(key_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (key_dir / "shards").iterdir()}


def shards_of(key_dir: Path) -> list[Path]:
    return sorted((key_dir / "shards").glob("*.npy"))


def stored_tracks(key_dir: Path) -> int:
    return sum(len(json.loads(p.with_suffix(".json").read_text())["tracks"]) for p in shards_of(key_dir))


def test_first_call_computes_into_preprocessing_key_folder(tmp_path, files):
    config = config_for(tmp_path)
    features, failures = cached_features(files, config)
    assert failures == {}
    key_dir = tmp_path / "cache" / preprocessing_key(config)
    assert (key_dir / "settings.json").is_file()
    [shard] = shards_of(key_dir)  # three small tracks share one shard
    index = json.loads(shard.with_suffix(".json").read_text())
    assert index["shape"] == [9, 32, 32] and index["dtype"] == "float16" and len(index["tracks"]) == 3
    assert np.load(shard, mmap_mode="r").shape == (9, 32, 32)  # plain NumPy reads it
    # shapes: 1 s, 1.5 s, 2 s tracks in 0.5 s clips at 8 kHz, hop 128 -> 32 frames
    assert [tuple(f.shape) for f in features] == [(2, 32, 32), (3, 32, 32), (4, 32, 32)]
    for path, mel in zip(files, features):
        torch.testing.assert_close(mel, compute_features(path, config))


def test_second_call_reuses_the_store(tmp_path, files):
    config = config_for(tmp_path)
    first, _ = cached_features(files, config)
    key_dir = tmp_path / "cache" / preprocessing_key(config)
    before = shard_files(key_dir)
    second, failures = cached_features(files, config)
    assert failures == {}
    assert shard_files(key_dir) == before  # nothing rewritten
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_stored_values_are_what_gets_returned(tmp_path, files):
    config = config_for(tmp_path)
    cached_features(files, config)
    [shard] = shards_of(tmp_path / "cache" / preprocessing_key(config))
    stored = np.load(shard, mmap_mode="r+")
    stored[:] = 7.0
    stored.flush()
    del stored
    index = json.loads(shard.with_suffix(".json").read_text())
    index["checksum"] = genrenet.store._crc32(shard)  # as a writer of these values would have written it
    shard.with_suffix(".json").write_text(json.dumps(index))
    again, _ = cached_features(files, config)
    assert all(torch.equal(track, torch.full_like(track, 7.0)) for track in again)  # read, not recomputed


def test_new_files_are_added_without_touching_stored_shards(tmp_path, files):
    config = config_for(tmp_path)
    cached_features(files[:2], config)
    key_dir = tmp_path / "cache" / preprocessing_key(config)
    before = shard_files(key_dir)
    features, _ = cached_features(files, config)
    after = shard_files(key_dir)
    assert all(after[p] == mtime for p, mtime in before.items())
    [added] = set(shards_of(key_dir)) - set(before)
    assert list(json.loads(added.with_suffix(".json").read_text())["tracks"]) == [FeatureStore(config).key(files[2])]
    torch.testing.assert_close(features[2], compute_features(files[2], config))


def test_clips_of_many_tracks_come_back_in_the_order_asked(tmp_path, files, monkeypatch):
    monkeypatch.setattr("genrenet.store.SHARD_BYTES", 1)  # a shard per track
    config = config_for(tmp_path)
    features, _ = cached_features(files, config)
    assert len(shards_of(tmp_path / "cache" / preprocessing_key(config))) == 3
    every_clip = torch.cat([features[i] for i in range(3)])
    asked = np.array([8, 0, 5, 2, 2, 7, 1])
    assert torch.equal(features.clips(asked), every_clip[asked])


def test_reading_leaves_no_shard_mapped(tmp_path, files):
    """Mapped pages count toward the process's memory: a map left open per shard would grow a
    training process by the size of the dataset over one epoch."""
    config = config_for(tmp_path)
    features, _ = cached_features(files, config)
    features.clips(np.arange(features.clip_count))
    [features[i] for i in range(len(features))]
    shard_dir = str(tmp_path / "cache" / preprocessing_key(config) / "shards")
    assert shard_dir not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize(
    "override,shape",
    [
        ({"features": {"n_mels": 16}}, (2, 16, 32)),
        ({"audio": {"sample_rate": 4000}}, (2, 32, 16)),
        ({"audio": {"clip_seconds": 1.0, "hop_seconds": 1.0}}, (1, 32, 63)),
        ({"features": {"hop_length": 64}}, (2, 32, 63)),
    ],
)
def test_changed_preprocessing_setting_uses_new_key_and_new_shapes(tmp_path, files, override, shape):
    old = config_for(tmp_path)
    old_features, _ = cached_features(files, old)
    new = config_for(tmp_path, **override)
    assert preprocessing_key(new) != preprocessing_key(old)
    new_features, failures = cached_features(files, new)
    assert failures == {}
    assert tuple(new_features[0].shape) == shape
    assert (tmp_path / "cache" / preprocessing_key(new)).is_dir()
    assert stored_tracks(tmp_path / "cache" / preprocessing_key(new)) == 3
    assert stored_tracks(tmp_path / "cache" / preprocessing_key(old)) == 3  # the old folder is untouched
    for path, mel in zip(files, new_features):
        torch.testing.assert_close(mel, compute_features(path, new))


def test_same_shape_setting_change_is_not_stale(tmp_path, files):
    # peak level changes values but not shapes: a stale cache would go unnoticed by shape checks
    quiet = config_for(tmp_path, audio={"peak_dbfs": -30.0})
    loud = config_for(tmp_path, audio={"peak_dbfs": -1.0})
    quiet_features, _ = cached_features(files, quiet)
    loud_features, _ = cached_features(files, loud)
    assert quiet_features[0].shape == loud_features[0].shape
    assert (loud_features[0].float().max() - quiet_features[0].float().max()).item() == pytest.approx(29, abs=1)


def test_modified_audio_file_is_recomputed(tmp_path, files):
    config = config_for(tmp_path)
    first, _ = cached_features(files, config)
    write_tone(files[1], freq=3000, seconds=1.5, noise=0.01, seed=9)  # new content, same size
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second, failures = cached_features(files, config)
    assert failures == {}
    assert torch.equal(second[0], first[0]) and torch.equal(second[2], first[2])
    assert not torch.equal(second[1], first[1])
    torch.testing.assert_close(second[1], compute_features(files[1], config))
    # the new band: 3 kHz is far above the old 700 Hz tone
    assert second[1].float().mean(dim=(0, 2)).argmax() > first[1].float().mean(dim=(0, 2)).argmax()


def test_an_edit_past_the_first_64_kib_that_keeps_size_and_mtime_is_recomputed(tmp_path):
    long = write_tone(tmp_path / "audio" / "long.wav", freq=500, seconds=6.0, noise=0.01)  # 96 KB
    other = write_tone(tmp_path / "other.wav", freq=2500, seconds=6.0, noise=0.01)
    config = config_for(tmp_path)
    [first], _ = cached_features([long], config)
    stat, data = long.stat(), bytearray(long.read_bytes())
    data[80_000:90_000] = other.read_bytes()[80_000:90_000]  # seconds 5.0-5.6 now hold the other tone
    long.write_bytes(bytes(data))
    os.utime(long, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as a copy that keeps times would
    [second], _ = cached_features([long], config)
    assert not torch.equal(second, first)  # were the stale features of the file before the edit
    torch.testing.assert_close(second, compute_features(long, config))


def test_a_shard_is_hashed_once_per_process_and_never_when_batches_are_read(tmp_path, files, monkeypatch):
    hashed = []
    real_crc32 = genrenet.store._crc32
    monkeypatch.setattr("genrenet.store._crc32", lambda path: hashed.append(path) or real_crc32(path))
    config = config_for(tmp_path)
    features, _ = cached_features(files, config)
    assert hashed == []  # just written: its checksum was taken from the bytes in memory
    for _ in range(2):  # e.g. the splits of a run, or the folds of --cv
        features, _ = cached_features(files, config)
    assert len(hashed) == 1  # one shard, read once
    features.clips(np.arange(features.clip_count))
    [features[i] for i in range(len(features))]
    assert len(hashed) == 1


def test_touched_audio_file_gets_a_new_entry(tmp_path, files):
    config = config_for(tmp_path)
    cached_features(files, config)
    old_key = FeatureStore(config).key(files[0])
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert FeatureStore(config).get(files[0]) is None
    cached_features(files, config)
    store = FeatureStore(config)
    assert store.get(files[0]) is not None and store.key(files[0]) != old_key


@pytest.mark.parametrize(
    "damage", ["truncate", "empty", "garbage", "other_shape", "index_garbage", "index_rows", "bytes_inside"]
)
def test_damaged_shard_is_removed_and_its_tracks_recomputed(tmp_path, files, damage, monkeypatch):
    monkeypatch.setattr("genrenet.store.SHARD_BYTES", 1)  # a shard per track
    config = config_for(tmp_path)
    first = list(cached_features(files, config)[0])  # read now: the damaged shard will be gone
    key = FeatureStore(config).key(files[1])
    shard = FeatureStore(config).get(files[1]).shard
    index = shard.with_suffix(".json")
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) - 100])
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "garbage":
        shard.write_bytes(b"\x93NUMPY garbage" * 50)
    elif damage == "other_shape":
        np.save(shard, np.zeros((3, 16, 32), dtype=np.float16))
    elif damage == "index_garbage":
        index.write_text("{not json")
    elif damage == "bytes_inside":  # size and header intact: found by the checksum
        scramble(shard)
    else:
        stored = json.loads(index.read_text())
        stored["tracks"][key] = [2, 5]  # rows past the end of the array
        index.write_text(json.dumps(stored))
    second, failures = cached_features(files, config)
    assert failures == {}
    assert not shard.exists() and not index.exists()  # removed, and its track stored anew
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert FeatureStore(config).get(files[1]).shard != shard


FILL = """
import sys
import genrenet.store
from genrenet.cache import cached_features
from genrenet.config import load_config
genrenet.store.SHARD_BYTES = 1  # a shard per file: many commits to be killed between
paths = sorted(__import__("pathlib").Path(sys.argv[2]).glob("*.wav"))
cached_features(paths, load_config(sys.argv[1]))
"""


def test_a_fill_killed_at_any_moment_leaves_only_whole_shards_and_the_next_run_completes_it(tmp_path):
    audio = [
        write_tone(tmp_path / "audio" / f"t{i:02d}.wav", freq=200 + 150 * i, seconds=1.0, noise=0.01, seed=i)
        for i in range(40)
    ]
    config = config_for(tmp_path)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        json.dumps(
            {
                "data": {"path": str(tmp_path / "audio"), "cache_dir": str(tmp_path / "cache")},
                "audio": {"sample_rate": SR, "clip_seconds": 0.5, "hop_seconds": 0.5},
                "features": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
            }
        )
    )
    shards = tmp_path / "cache" / preprocessing_key(config) / "shards"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for kill_after in (0.05, 0.3, 0.7):  # seconds after the first shard: a different moment each time
        fill = subprocess.Popen([sys.executable, "-c", FILL, str(config_file), str(tmp_path / "audio")], env=env)
        while fill.poll() is None and not (shards.exists() and list(shards.glob("*.json"))):
            time.sleep(0.01)
        time.sleep(kill_after)
        fill.send_signal(signal.SIGKILL)
        fill.wait()
        store = FeatureStore(config)  # opening it clears the killed writer's leftovers
        assert not [p for p in shards.iterdir() if p.name.endswith(".tmp")]
        for path in audio:  # every track the store claims is whole and right
            stored = store.get(path)
            if stored is not None:
                torch.testing.assert_close(stored.read(), compute_features(path, config))
    held = sum(FeatureStore(config).get(p) is not None for p in audio)
    assert 0 < held < len(audio)
    features, failures = cached_features(audio, config)
    assert failures == {} and len(features) == len(audio)
    assert all(FeatureStore(config).get(p) is not None for p in audio)


def test_unreadable_audio_is_reported_and_others_still_come_back(tmp_path, files):
    bad = write_garbage(tmp_path / "audio" / "bad.wav")
    missing = tmp_path / "audio" / "gone.wav"
    config = config_for(tmp_path)
    paths = [files[0], bad, files[1], missing, files[2]]
    features, failures = cached_features(paths, config)
    assert set(failures) == {bad, missing}
    assert "bad.wav" in failures[bad] and "gone.wav" in failures[missing]
    assert len(features) == 3  # the readable files, in order
    for i, path in enumerate(files):
        torch.testing.assert_close(features[i], compute_features(path, config))
    # failures are not stored: the bad file is tried again (and fails again) next time
    _, failures_again = cached_features(paths, config)
    assert set(failures_again) == {bad, missing}
    assert stored_tracks(tmp_path / "cache" / preprocessing_key(config)) == 3


def test_worker_processes_give_the_same_features(tmp_path, files):
    serial, _ = cached_features(files, config_for(tmp_path))
    bad = write_garbage(tmp_path / "audio" / "bad.wav")
    parallel, failures = cached_features(files + [bad], config_for(tmp_path / "other", data={"num_workers": 2}))
    assert set(failures) == {bad}
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


# Buffers of 1 to 3.5 MB (a decoded file's pieces), each followed by a smaller block that outlives
# it, all freed after glibc's first large free has raised its threshold: RSS kept after the frees.
HEAP_GROWTH = """
import ctypes, os, sys
from genrenet.cache import return_large_frees
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "returned":
    return_large_frees()
big = libc.malloc(8 << 20)
libc.memset(big, 1, 8 << 20)
libc.free(big)
before = rss()
blocks, pins = [], []
for i in range(40):
    size = (1 << 20) + i * (64 << 10)
    blocks.append(libc.malloc(size))
    libc.memset(blocks[-1], 1, size)
    pins.append(libc.malloc(32 << 10))
for block in blocks:
    libc.free(block)
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_decoding_process_gives_freed_buffers_back_to_the_system():
    def growth(mode):
        run = subprocess.run([sys.executable, "-c", HEAP_GROWTH, mode], cwd=REPO_ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout) / 2**20

    assert growth("default") > 30  # by default the freed buffers stay in the heap (about 88 MiB)
    assert growth("returned") < 4  # once return_large_frees is set, as in the fill's processes, they go back


AFTER_FILL = """
import ctypes, sys
from pathlib import Path
from genrenet.cache import cached_features
from genrenet.config import load_config
cached_features(sorted(Path(sys.argv[2]).glob("*.wav")), load_config(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(1 << 20)
heap = next(line for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
low, high = (int(end, 16) for end in heap.split()[0].split("-"))
print("heap" if low <= block < high else "mapped")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_fill_in_the_training_process_leaves_its_allocator_as_fast_as_before(tmp_path, files):
    """With data.num_workers 0 the process that fills the store goes on to train; mapping every
    buffer of 128 KB anew made its training 20% slower, so after the fill 1 MB comes from the heap."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        json.dumps({"data": {"path": str(tmp_path / "audio"), "cache_dir": str(tmp_path / "cache"), "num_workers": 0}})
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", AFTER_FILL, str(config_file), str(tmp_path / "audio")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["heap"]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the fill did happen, in this process


def test_features_are_float16_and_finite(tmp_path, files):
    features, _ = cached_features(files, config_for(tmp_path))
    assert all(f.dtype == torch.float16 and torch.isfinite(f).all() for f in features)


def test_settings_json_describes_the_key(tmp_path, files):
    config = config_for(tmp_path)
    cached_features(files, config)
    settings = json.loads((tmp_path / "cache" / preprocessing_key(config) / "settings.json").read_text())
    assert settings["audio"]["sample_rate"] == SR and settings["features"]["n_mels"] == 32
