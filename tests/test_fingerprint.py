"""The fingerprint that tells an edited file, in recorded splits and in the feature store's keys:
an edit anywhere in a file is seen, not only in its first 64 KiB. Splits recorded with the older
fingerprint still apply."""

import hashlib
import os

import numpy as np

from conftest import tiny_config, write_tone
from genrenet.datasets import Track
from genrenet.recorded_split import fingerprint, record_split, recorded_tracks


def edit_keeping_size_and_mtime(path, start: int, count: int) -> None:
    stat = path.stat()
    with open(path, "r+b") as file:
        file.seek(start)
        file.write(np.random.default_rng(start + 1).bytes(count))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def tracks_of(tmp_path, seconds: float = 6.0) -> list[Track]:
    return [
        Track(write_tone(tmp_path / "data" / "tone" / f"t{i}.wav", freq=300 + 200 * i, seconds=seconds), "tone")
        for i in range(3)
    ]


def test_an_edit_past_the_first_64_kib_is_flagged_in_the_recorded_split(tmp_path, capsys):
    tracks = tracks_of(tmp_path)  # 96 KB each
    data = tiny_config(tmp_path, tmp_path / "data").data
    recorded = record_split({"train": [], "valid": [], "test": tracks}, data)
    edit_keeping_size_and_mtime(tracks[1].path, 80_000, 4096)
    kept = recorded_tracks(recorded, tracks, data, "test")
    assert [t.path for t in kept] == [tracks[0].path, tracks[2].path]  # the edited track was scored as if unchanged
    assert "1 changed (e.g. tone/t1.wav)" in capsys.readouterr().err


def test_the_fingerprint_of_a_large_file_sees_an_edit_anywhere(tmp_path):
    path = tmp_path / "large.bin"
    size = 8 << 20  # sampled, not hashed whole
    path.write_bytes(np.random.default_rng(0).bytes(size))
    original = fingerprint(path)
    count = size // 63 + 1  # a 63rd of the file: about 0.7 s of 44.1 kHz stereo WAV here
    for start in (0, 70_000, size // 3, size // 2 + 12_345, size - count):
        saved = path.read_bytes()
        edit_keeping_size_and_mtime(path, start, count)
        assert fingerprint(path) != original, start
        path.write_bytes(saved)
    assert fingerprint(path) == original


def test_splits_recorded_with_the_older_fingerprint_still_apply(tmp_path, capsys):
    tracks = tracks_of(tmp_path)
    data = tiny_config(tmp_path, tmp_path / "data").data
    recorded = record_split({"train": [], "valid": [], "test": tracks}, data)
    for entry, track in zip(recorded["tracks"]["test"], tracks):  # as genrenet wrote them before
        head = track.path.read_bytes()[: 1 << 16]
        entry["fingerprint"] = f"{track.path.stat().st_size}:{hashlib.sha1(head).hexdigest()[:16]}"
    assert recorded_tracks(recorded, tracks, data, "test") == tracks
    assert capsys.readouterr().err == ""
    edit_keeping_size_and_mtime(tracks[0].path, 1000, 4096)  # what the older fingerprint sees
    assert recorded_tracks(recorded, tracks, data, "test") == tracks[1:]
    assert "1 changed" in capsys.readouterr().err
