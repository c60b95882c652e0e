"""Feature cache: computed once per file and preprocessing setting, reused, never stale."""

import os
from pathlib import Path

import pytest
import torch

from conftest import SR, tiny_config, write_garbage, write_tone
from genrenet.cache import FeatureCache, cached_features, compute_features
from genrenet.config import preprocessing_key
from genrenet.fileio import atomic_save


@pytest.fixture
def files(tmp_path):
    return [
        write_tone(tmp_path / "audio" / f"t{i}.wav", freq=300 + 400 * i, seconds=1.0 + 0.5 * i, noise=0.01, seed=i)
        for i in range(3)
    ]


def config_for(tmp_path, **sections):
    return tiny_config(tmp_path, tmp_path / "audio", **sections)


def entries(cache_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*.pt")}


def test_first_call_computes_into_preprocessing_key_folder(tmp_path, files):
    config = config_for(tmp_path)
    features, failures = cached_features(files, config)
    assert failures == {}
    key_dir = tmp_path / "cache" / preprocessing_key(config)
    assert (key_dir / "settings.json").is_file()
    stored = entries(key_dir)
    assert len(stored) == 3
    assert {p.parent.parent for p in stored} == {key_dir}
    # shapes: 1 s, 1.5 s, 2 s tracks in 0.5 s clips at 8 kHz, hop 128 -> 32 frames
    assert [tuple(f.shape) for f in features] == [(2, 32, 32), (3, 32, 32), (4, 32, 32)]
    for path, mel in zip(files, features):
        torch.testing.assert_close(mel, compute_features(path, config))


def test_second_call_reuses_the_cache(tmp_path, files):
    config = config_for(tmp_path)
    first, _ = cached_features(files, config)
    key_dir = tmp_path / "cache" / preprocessing_key(config)
    before = entries(key_dir)
    second, failures = cached_features(files, config)
    assert failures == {}
    assert entries(key_dir) == before  # nothing rewritten
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cached_values_are_what_gets_returned(tmp_path, files):
    config = config_for(tmp_path)
    first, _ = cached_features(files, config)
    cache = FeatureCache(config)
    marker = torch.full_like(first[0], 7.0)
    atomic_save({"features": marker}, cache.entry(files[0]))
    again, _ = cached_features(files, config)
    assert torch.equal(again[0], marker)  # read from the cache, not recomputed


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
    assert len(entries(tmp_path / "cache" / preprocessing_key(new))) == 3
    assert len(entries(tmp_path / "cache" / preprocessing_key(old))) == 3  # the old folder is untouched
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


def test_touched_audio_file_gets_new_entry(tmp_path, files):
    config = config_for(tmp_path)
    cached_features(files, config)
    cache = FeatureCache(config)
    old_entry = cache.entry(files[0])
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.entry(files[0]) != old_entry
    cached_features(files, config)
    assert cache.entry(files[0]).is_file()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "wrong_content"])
def test_corrupted_cache_entry_is_recomputed(tmp_path, files, damage):
    config = config_for(tmp_path)
    first, _ = cached_features(files, config)
    entry = FeatureCache(config).entry(files[0])
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "garbage":
        entry.write_bytes(b"\x00not a torch file" * 10)
    else:
        torch.save({"features": torch.zeros(3, 5)}, entry)  # loadable but not features
    second, failures = cached_features(files, config)
    assert failures == {}
    assert torch.equal(second[0], first[0])
    # and the entry is healthy again
    assert torch.equal(torch.load(entry, weights_only=True)["features"], first[0])


def test_unreadable_audio_is_reported_and_others_still_come_back(tmp_path, files):
    bad = write_garbage(tmp_path / "audio" / "bad.wav")
    missing = tmp_path / "audio" / "gone.wav"
    config = config_for(tmp_path)
    paths = [files[0], bad, files[1], missing, files[2]]
    features, failures = cached_features(paths, config)
    assert set(failures) == {bad, missing}
    assert "bad.wav" in failures[bad] and "gone.wav" in failures[missing]
    assert features[1] is None and features[3] is None
    for i, path in ((0, files[0]), (2, files[1]), (4, files[2])):
        torch.testing.assert_close(features[i], compute_features(path, config))
    # failures are not cached: the bad file is tried again (and fails again) next time
    _, failures_again = cached_features(paths, config)
    assert set(failures_again) == {bad, missing}
    assert len(entries(tmp_path / "cache" / preprocessing_key(config))) == 3


def test_worker_processes_give_the_same_features(tmp_path, files):
    serial, _ = cached_features(files, config_for(tmp_path))
    bad = write_garbage(tmp_path / "audio" / "bad.wav")
    parallel, failures = cached_features(files + [bad], config_for(tmp_path / "other", data={"num_workers": 2}))
    assert set(failures) == {bad}
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


def test_features_are_float16_and_finite(tmp_path, files):
    features, _ = cached_features(files, config_for(tmp_path))
    assert all(f.dtype == torch.float16 and torch.isfinite(f).all() for f in features)


def test_settings_json_describes_the_key(tmp_path, files):
    import json

    config = config_for(tmp_path)
    cached_features(files, config)
    settings = json.loads((tmp_path / "cache" / preprocessing_key(config) / "settings.json").read_text())
    assert settings["audio"]["sample_rate"] == SR and settings["features"]["n_mels"] == 32
