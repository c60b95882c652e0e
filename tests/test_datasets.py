"""Data sources and splits: folder, CSV manifest (split or fold column), GTZAN layouts, and the
guarantee that no track is in two splits."""

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from torchaudio.datasets import gtzan

from conftest import SR
from genrenet.config import DataConfig, apply_overrides, from_dict
from genrenet.datasets import SPLITS, find_tracks, labels_of, split_tracks
from genrenet.errors import UserError

_TINY = {}


def tiny_bytes(fmt: str) -> bytes:
    """A 10 ms tone encoded once per format; the dataset tests never decode it."""
    if fmt not in _TINY:
        buffer = io.BytesIO()
        soundfile.write(buffer, 0.1 * np.sin(np.arange(SR // 100) / 3), SR, format=fmt, subtype="PCM_16")
        _TINY[fmt] = buffer.getvalue()
    return _TINY[fmt]


def touch_audio(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_bytes({".au": "AU"}.get(path.suffix, "WAV")))
    return path


def assert_partition(splits: dict, expected_paths) -> None:
    """train/valid/test are pairwise disjoint (by the real file) and together are exactly expected_paths."""
    resolved = {name: [Path(t.path).resolve() for t in splits[name]] for name in SPLITS}
    for name in SPLITS:
        assert len(resolved[name]) == len(set(resolved[name])), f"duplicate track inside {name}"
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not set(resolved[a]) & set(resolved[b]), f"{a} and {b} share tracks"
    union = set().union(*resolved.values())
    assert union == {Path(p).resolve() for p in expected_paths}


def data_config(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


# --- folder source ---------------------------------------------------------------------------------


def make_folder(root: Path, counts: dict) -> list[Path]:
    paths = []
    for label, n in counts.items():
        for i in range(n):
            paths.append(touch_audio(root / label / f"{label}_{i:02d}.wav"))
    return paths


def test_folder_source_labels_from_subfolders(tmp_path):
    paths = make_folder(tmp_path / "data", {"rock": 5, "jazz": 4, "pop": 3})
    touch_audio(tmp_path / "data" / "rock" / "live" / "nested.wav")  # nested files belong to the class
    (tmp_path / "data" / "jazz" / "notes.txt").write_text("not audio")
    touch_audio(tmp_path / "data" / "loose.wav")  # not inside a class folder
    touch_audio(tmp_path / "data" / ".hidden" / "x.wav")
    tracks = find_tracks(data_config(tmp_path / "data"))
    assert labels_of(tracks) == ["jazz", "pop", "rock"]
    assert Counter(t.label for t in tracks) == {"rock": 6, "jazz": 4, "pop": 3}
    assert {t.path for t in tracks} == set(paths) | {tmp_path / "data" / "rock" / "live" / "nested.wav"}
    assert all(t.split is None and t.fold is None for t in tracks)
    # a stable order
    assert tracks == find_tracks(data_config(tmp_path / "data"))


def test_folder_source_stratified_split_is_a_partition(tmp_path):
    paths = make_folder(tmp_path / "data", {"a": 20, "b": 20, "c": 20})
    cfg = data_config(tmp_path / "data", valid_fraction=0.15, test_fraction=0.2)
    splits = split_tracks(find_tracks(cfg), cfg)
    assert_partition(splits, paths)
    assert len(splits["test"]) == 12 and len(splits["valid"]) == 9 and len(splits["train"]) == 39
    for name in SPLITS:  # stratified: every class in proportion in every split
        counts = Counter(t.label for t in splits[name])
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 3
    # the same seed gives the same split, another seed another one
    assert split_tracks(find_tracks(cfg), cfg) == splits
    other = split_tracks(
        find_tracks(cfg), data_config(tmp_path / "data", valid_fraction=0.15, test_fraction=0.2, split_seed=1)
    )
    assert other["test"] != splits["test"]


def test_stratified_split_keeps_every_class_in_train(tmp_path):
    paths = make_folder(tmp_path / "data", {"a": 30, "b": 6, "c": 10})
    cfg = data_config(tmp_path / "data")
    for seed in range(5):
        cfg = data_config(tmp_path / "data", split_seed=seed)
        splits = split_tracks(find_tracks(cfg), cfg)
        assert_partition(splits, paths)
        assert {t.label for t in splits["train"]} == {"a", "b", "c"}


def test_small_classes_stay_in_train(tmp_path):
    paths = make_folder(tmp_path / "data", {"a": 4, "b": 4, "c": 4})
    cfg = data_config(tmp_path / "data", split_seed=3)
    splits = split_tracks(find_tracks(cfg), cfg)
    assert_partition(splits, paths)
    assert {t.label for t in splits["train"]} == {"a", "b", "c"}


def test_zero_fractions_put_everything_in_train(tmp_path):
    paths = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    cfg = data_config(tmp_path / "data", valid_fraction=0.0, test_fraction=0.0)
    splits = split_tracks(find_tracks(cfg), cfg)
    assert_partition(splits, paths)
    assert len(splits["train"]) == 6 and not splits["valid"] and not splits["test"]


def test_fractions_summing_to_one_are_a_user_error(tmp_path):
    make_folder(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    with pytest.raises(UserError):
        config = from_dict(
            apply_overrides(
                {"data": {"path": str(tmp_path / "data")}}, ["data.valid_fraction=0.5", "data.test_fraction=0.5"]
            )
        )
        split_tracks(find_tracks(config.data), config.data)


def test_one_class_is_an_error(tmp_path):
    make_folder(tmp_path / "data", {"only": 5})
    with pytest.raises(UserError, match="only one class"):
        find_tracks(data_config(tmp_path / "data"))


def test_empty_data_path_is_an_error():
    with pytest.raises(UserError, match="data.path is empty"):
        find_tracks(DataConfig(path=""))


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_tracks(data_config(tmp_path / "nowhere"))


def test_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="no audio files"):
        find_tracks(data_config(tmp_path / "data"))


def test_flat_folder_explains_the_expected_layout(tmp_path):
    for name in ("a.wav", "b.wav", "c.au"):
        touch_audio(tmp_path / "data" / name)
    with pytest.raises(UserError) as info:
        find_tracks(data_config(tmp_path / "data"))
    message = str(info.value)
    assert "holds 3 audio files but no class sub-folders" in message
    assert f"{tmp_path / 'data'}/<class>/" in message and "manifest" in message and "\n" not in message


def test_missing_relative_data_path_names_the_folder_it_was_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        find_tracks(data_config("data/gtzan"))
    message = str(info.value)
    assert "data.path 'data/gtzan' does not exist" in message
    assert "current" in message and str(tmp_path / "data" / "gtzan") in message


def test_tilde_in_data_path_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    paths = make_folder(tmp_path / "music", {"a": 2, "b": 2})
    tracks = find_tracks(data_config("~/music"))
    assert {t.path for t in tracks} == set(paths)


def test_pipes_and_devices_in_class_folders_are_not_listed(tmp_path):
    paths = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    os.mkfifo(tmp_path / "data" / "a" / "pipe.wav")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "data" / "a" / "linked_pipe.wav").symlink_to(tmp_path / "fifo")
    (tmp_path / "data" / "b" / "device.wav").symlink_to("/dev/zero")  # reading would never end
    (tmp_path / "data" / "b" / "broken.wav").symlink_to(tmp_path / "gone.wav")  # kept, so it gets reported
    tracks = find_tracks(data_config(tmp_path / "data"))
    assert {t.path for t in tracks} == set(paths) | {tmp_path / "data" / "b" / "broken.wav"}


def test_fold_without_fold_column_is_an_error(tmp_path):
    make_folder(tmp_path / "data", {"a": 3, "b": 3})
    cfg = data_config(tmp_path / "data", fold=1)
    with pytest.raises(UserError, match="no fold column"):
        split_tracks(find_tracks(cfg), cfg)


# --- CSV manifests ------------------------------------------------------------------------------------


def write_manifest(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_with_split_column(tmp_path):
    audio = tmp_path / "audio"
    rows, expected = [], {"train": set(), "valid": set(), "test": set()}
    for label in ("cat", "dog"):
        for i in range(6):
            path = touch_audio(audio / label / f"{i}.wav")
            split = ["train", "train", "train", "validation", "test", "TEST"][i]
            rows.append(f"../audio/{label}/{i}.wav,{label},{split}")
            expected[{"validation": "valid", "TEST": "test"}.get(split, split)].add(path.resolve())
    manifest = write_manifest(tmp_path / "meta" / "list.csv", "path,label,split", rows)
    cfg = data_config(manifest)
    tracks = find_tracks(cfg)
    assert all(t.path.is_file() for t in tracks)  # relative to the CSV's folder, not the cwd
    splits = split_tracks(tracks, cfg)
    for name in SPLITS:
        assert {t.path.resolve() for t in splits[name]} == expected[name]
    assert_partition(splits, set().union(*expected.values()))


def test_manifest_paths_resolve_from_csv_folder_not_cwd(tmp_path, monkeypatch):
    touch_audio(tmp_path / "set" / "a.wav")
    touch_audio(tmp_path / "set" / "b.wav")
    manifest = write_manifest(tmp_path / "set" / "m.csv", "path,label", ["a.wav,x", "b.wav,y"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracks = find_tracks(data_config(manifest))
    assert [t.path.resolve() for t in tracks] == [(tmp_path / "set" / n).resolve() for n in ("a.wav", "b.wav")]


def test_manifest_without_valid_rows_takes_valid_from_train(tmp_path):
    rows, paths = [], []
    for label in ("a", "b"):
        for i in range(10):
            paths.append(touch_audio(tmp_path / f"{label}{i}.wav"))
            rows.append(f"{label}{i}.wav,{label},{'test' if i < 2 else 'train'}")
    manifest = write_manifest(tmp_path / "m.csv", "path,label,split", rows)
    cfg = data_config(manifest, valid_fraction=0.25)
    splits = split_tracks(find_tracks(cfg), cfg)
    assert_partition(splits, paths)
    assert {t.path.name for t in splits["test"]} == {"a0.wav", "a1.wav", "b0.wav", "b1.wav"}
    assert len(splits["valid"]) == 4 and len(splits["train"]) == 12


def make_fold_manifest(tmp_path, folds=(1, 2, 3), per_fold=4) -> tuple[Path, dict]:
    rows, by_fold = [], {}
    for fold in folds:
        for i in range(per_fold):
            label = "ab"[i % 2]
            path = touch_audio(tmp_path / "clips" / f"f{fold}_{i}.wav")
            rows.append(f"clips/f{fold}_{i}.wav,{label},{fold}")
            by_fold.setdefault(fold, set()).add(path)
    return write_manifest(tmp_path / "folds.csv", "path,label,fold", rows), by_fold


def test_manifest_fold_selects_test_fold(tmp_path):
    manifest, by_fold = make_fold_manifest(tmp_path)
    every = set().union(*by_fold.values())
    for fold in (1, 2, 3):
        cfg = data_config(manifest, fold=fold, valid_fraction=0.25)
        splits = split_tracks(find_tracks(cfg), cfg)
        assert {t.path for t in splits["test"]} == by_fold[fold]
        assert all(t.fold != fold for t in splits["train"] + splits["valid"])
        assert len(splits["valid"]) == 2
        assert_partition(splits, every)


def test_manifest_fold_missing_choice_names_the_folds(tmp_path):
    manifest, _ = make_fold_manifest(tmp_path)
    cfg = data_config(manifest)
    with pytest.raises(UserError) as info:
        split_tracks(find_tracks(cfg), cfg)
    assert "[1, 2, 3]" in str(info.value) and "fold" in str(info.value)


def test_manifest_fold_not_present_is_an_error(tmp_path):
    manifest, _ = make_fold_manifest(tmp_path)
    cfg = data_config(manifest, fold=7)
    with pytest.raises(UserError, match=r"data.fold=7 is not one of the folds \[1, 2, 3\]"):
        split_tracks(find_tracks(cfg), cfg)


def test_manifest_missing_columns(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "file,genre", ["a.wav,x"])
    with pytest.raises(UserError, match="missing column"):
        find_tracks(data_config(manifest))


def test_manifest_unknown_split_value_names_line(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "path,label,split", ["a.wav,x,train", "b.wav,y,holdout"])
    with pytest.raises(UserError, match=r"m.csv:3: split 'holdout' is not train, valid or test"):
        find_tracks(data_config(manifest))


def test_manifest_blank_split_cell_is_an_error_not_a_silent_drop(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "path,label,split", ["a.wav,x,train", "c.wav,y,"])
    with pytest.raises(UserError, match=r"m.csv:3: split '' is not train, valid or test"):
        find_tracks(data_config(manifest))


def test_manifest_bad_fold_value(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", "path,label,fold", ["a.wav,x,1", "b.wav,y,two"])
    with pytest.raises(UserError, match="fold must be a whole number"):
        find_tracks(data_config(manifest))


def test_manifest_same_file_twice_in_different_splits_is_refused(tmp_path):
    touch_audio(tmp_path / "a.wav")
    touch_audio(tmp_path / "b.wav")
    manifest = write_manifest(
        tmp_path / "m.csv", "path,label,split", ["a.wav,x,train", "b.wav,y,train", "a.wav,x,test"]
    )
    with pytest.raises(
        UserError, match=r"m.csv:4: 'a.wav' is already listed on line 2 \(in both the train and the test split\)"
    ):
        find_tracks(data_config(manifest))


def test_manifest_same_file_spelled_differently_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a0", "a1", "a2", "b0", "b1", "b2"):
        touch_audio(tmp_path / "set" / f"{name}.wav")
    rows = [f"{n}.wav,{n[0]},train" for n in ("a0", "a1", "b0", "b1")]
    rows += [f"{tmp_path / 'set' / 'a0.wav'},a,test", "../set/b0.wav,b,test", "a2.wav,a,valid", "b2.wav,b,valid"]
    write_manifest(tmp_path / "set" / "m.csv", "path,label,split", rows)
    cfg = data_config("set/m.csv")  # a relative data.path, as in a config file
    with pytest.raises(
        UserError, match=r"m.csv:6: .* is already listed on line 2 \(in both the train and the test split\)"
    ):
        find_tracks(cfg)


# --- GTZAN -----------------------------------------------------------------------------------------------

GTZAN_GENRES = ("blues", "classical", "jazz")


def make_gtzan(root: Path, layout: str) -> dict[str, Path]:
    """A fake GTZAN tree with every track number 0-99 of three genres; names -> paths."""
    folder, ext = {
        "au": ("genres", ".au"),
        "wav": ("genres_original", ".wav"),
        "kaggle": ("Data/genres_original", ".wav"),
    }[layout]
    names = {}
    for genre in GTZAN_GENRES:
        for i in range(100):
            name = f"{genre}.{i:05d}"
            names[name] = touch_audio(root / folder / genre / f"{name}{ext}")
    touch_audio(root / folder / "blues" / "blues.00000 copy.wav")  # not a GTZAN name: ignored
    (root / folder / "blues" / "blues.00001.txt").write_text("x")  # not audio: ignored
    return names


@pytest.mark.parametrize("layout", ["au", "wav", "kaggle"])
def test_gtzan_default_split_follows_torchaudio_filtered_lists(tmp_path, layout):
    names = make_gtzan(tmp_path / "gtzan_copy", layout)
    cfg = data_config(tmp_path / "gtzan_copy")
    tracks = find_tracks(cfg)
    assert len(tracks) == 300
    assert labels_of(tracks) == list(GTZAN_GENRES)
    splits = split_tracks(tracks, cfg)
    expected = {"train": gtzan.filtered_train, "valid": gtzan.filtered_valid, "test": gtzan.filtered_test}
    for name in SPLITS:
        wanted = {n for n in expected[name] if n.split(".")[0] in GTZAN_GENRES}
        assert {t.path.stem for t in splits[name]} == wanted, name
    # the faulty tracks outside torchaudio's lists (classical.00042, jazz.00033-46 ...) are left out
    used = {t.path.stem for s in splits.values() for t in s}
    assert "classical.00042" not in used and "jazz.00040" not in used
    listed = set(gtzan.filtered_train) | set(gtzan.filtered_valid) | set(gtzan.filtered_test)
    assert_partition(splits, [p for n, p in names.items() if n in listed])


def test_gtzan_layout_detected_without_gtzan_in_name(tmp_path):
    make_gtzan(tmp_path / "music", "wav")
    tracks = find_tracks(data_config(tmp_path / "music"))
    assert len(tracks) == 300 and all(t.split for t in tracks)


def test_gtzan_stratified_split(tmp_path):
    names = make_gtzan(tmp_path / "gtzan", "au")
    cfg = data_config(tmp_path / "gtzan", split="stratified", valid_fraction=0.1, test_fraction=0.2)
    splits = split_tracks(find_tracks(cfg), cfg)
    assert_partition(splits, names.values())  # every track, the excluded ones too
    assert Counter(t.label for t in splits["test"]) == {g: 20 for g in GTZAN_GENRES}
    assert Counter(t.label for t in splits["valid"]) == {g: 10 for g in GTZAN_GENRES}
    assert Counter(t.label for t in splits["train"]) == {g: 70 for g in GTZAN_GENRES}
    # not torchaudio's lists
    assert {t.path.stem for t in splits["test"]} != {n for n in gtzan.filtered_test if n.split(".")[0] in GTZAN_GENRES}


def test_gtzan_missing_explains_how_to_get_it(tmp_path):
    (tmp_path / "gtzan").mkdir()
    with pytest.raises(UserError) as info:
        find_tracks(data_config(tmp_path / "gtzan", format="gtzan"))
    message = str(info.value)
    assert "GTZAN not found" in message and "download" in message and "genres_original" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="download"):
        find_tracks(data_config(tmp_path / "empty_folder", format="gtzan"))
