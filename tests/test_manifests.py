"""CSV manifests: a row cannot smuggle in a label (empty cells, one file under two labels, a row
listed twice), and the encodings spreadsheets write are read or refused in one line."""

from pathlib import Path

import pytest
from test_datasets import touch_audio

from conftest import CLASSES, make_class_folder, tiny_config_dict
from genrenet.config import DataConfig, from_dict
from genrenet.datasets import find_tracks, split_tracks
from genrenet.errors import UserError
from genrenet.training import train


def manifest_of(tmp_path, *rows: str, header: str = "path,label") -> Path:
    for name in ("a.wav", "b.wav", "c.wav"):
        touch_audio(tmp_path / name)
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def error_of(manifest: Path) -> str:
    with pytest.raises(UserError) as info:
        find_tracks(DataConfig(path=str(manifest)))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "row, empty",
    [(",", "path and label"), (",y", "path"), ("c.wav,", "label"), ("c.wav", "label"), ("  ,  ", "path and label")],
)
def test_empty_cells_name_the_line_and_what_is_empty(tmp_path, row, empty):
    message = error_of(manifest_of(tmp_path, "a.wav,x", "b.wav,y", row))
    assert message.startswith(f"{tmp_path / 'm.csv'}:4: empty {empty}")


def test_one_file_under_two_labels_is_refused(tmp_path):
    message = error_of(manifest_of(tmp_path, "a.wav,x", "b.wav,y", "./a.wav,y"))
    assert "m.csv:4" in message and "line 2" in message and "'x'" in message and "'y'" in message


def test_one_file_spelled_absolute_and_relative_under_two_labels_is_refused(tmp_path):
    message = error_of(manifest_of(tmp_path, "a.wav,x", "b.wav,y", f"{tmp_path / 'a.wav'},y"))
    assert "m.csv:4" in message and "line 2" in message


def test_a_row_listed_twice_is_refused(tmp_path):
    message = error_of(manifest_of(tmp_path, "a.wav,x", "b.wav,y", "c.wav,y", "a.wav,x"))
    assert "m.csv:5" in message and "line 2" in message


def test_a_row_listed_twice_in_two_splits_names_the_splits(tmp_path):
    manifest = manifest_of(tmp_path, "a.wav,x,train", "b.wav,y,train", "a.wav,x,test", header="path,label,split")
    message = error_of(manifest)
    assert "m.csv:4" in message and "line 2" in message and "train" in message and "test" in message


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    message = error_of(manifest_of(tmp_path, "a.wav,x", "", "b.wav,y", "", ","))
    assert "m.csv:6:" in message


def test_utf8_bom_from_a_spreadsheet_is_read(tmp_path):
    manifest = manifest_of(tmp_path, "a.wav,x", "b.wav,y")
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    tracks = find_tracks(DataConfig(path=str(manifest)))
    assert [(t.path.name, t.label) for t in tracks] == [("a.wav", "x"), ("b.wav", "y")]


def test_manifest_that_is_not_utf8_is_one_line_error(tmp_path):
    manifest = manifest_of(tmp_path, "a.wav,x", "b.wav,y")
    manifest.write_bytes(manifest.read_bytes() + "c.wav,caf\u00e9\n".encode("latin-1"))
    message = error_of(manifest)
    assert "m.csv:4" in message and "UTF-8" in message


def test_a_row_naming_a_folder_is_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    message = error_of(manifest_of(tmp_path, "a.wav,x", "b.wav,y", "sub,y"))
    assert "m.csv:4" in message and "not a file" in message


def test_tilde_in_manifest_paths_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    touch_audio(tmp_path / "a.wav")
    touch_audio(tmp_path / "b.wav")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("path,label\n~/a.wav,x\n~/b.wav,y\n")
    tracks = find_tracks(DataConfig(path="~/lists/m.csv"))
    assert [t.path for t in tracks] == [tmp_path / "a.wav", tmp_path / "b.wav"]
    cfg = DataConfig(path="~/lists/m.csv", valid_fraction=0.0, test_fraction=0.0)
    assert len(split_tracks(tracks, cfg)["train"]) == 2


def test_a_manifest_whose_files_are_mostly_gone_stops_unless_asked_to_go_on(tmp_path, capsys):
    """5,000 missing rows and 20 present once trained on 12 tracks with exit 0. Here 30 training
    rows name files that are gone and 9 are there: past data.max_unreadable (half) of a split, one line."""
    data = make_class_folder(tmp_path / "data", per_class=4, seconds=1.0)
    present = [
        f"{wav},{wav.parent.name},{'valid' if wav.stem.endswith('3') else 'train'}" for wav in data.rglob("*.wav")
    ]
    gone = [f"gone/missing_{i:02d}.wav,{CLASSES[i % 3]},train" for i in range(30)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(["path,label,split", *present, *gone]) + "\n")
    raw = tiny_config_dict(tmp_path, manifest, train={"epochs": 1})
    config = from_dict(raw)
    train_tracks = split_tracks(find_tracks(config.data), config.data)["train"]
    missing = [t.path for t in train_tracks if not t.path.exists()]
    assert (len(missing), len(train_tracks)) == (30, 39)
    with pytest.raises(UserError) as stopped:
        train(config)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"{len(missing)} of {len(train_tracks)} train files could not")
    assert "more than data.max_unreadable=0.5" in message and "--set data.max_unreadable=1" in message
    assert str(missing[0]) in message and str(missing[2]) in message  # a few names
    assert not (tmp_path / "run" / "best.pt").exists()

    raw["data"]["max_unreadable"] = 1.0  # asked to go on: trains on what is there, with the warning
    train(from_dict(raw))
    assert f"warning: skipped {len(missing)} of {len(train_tracks)} train files" in capsys.readouterr().err
    assert (tmp_path / "run" / "best.pt").exists()
