"""Synthetic demo dataset: determinism, layout, sample range, skip-when-present, and that the
genres really sound different."""

import itertools
import json

import numpy as np
import pytest
import soundfile

from genrenet import demo_data
from genrenet.demo_data import GENRES, MARKER_NAME, generate_dataset, synthesize_track, track_seed

# Small enough to keep every test well under a second or two.
SETTINGS = dict(tracks_per_genre=2, seconds=1.0, sample_rate=8000, seed=0)
SMALL = dict(SETTINGS, progress=False)


def wav_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.wav"))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("demo") / "data", **SMALL)


def test_genres_are_many_and_distinct():
    assert len(GENRES) >= 6
    assert len(set(GENRES)) == len(GENRES)


def test_layout_and_counts(small_dataset):
    root = small_dataset
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(GENRES)
    for genre in GENRES:
        names = sorted(p.name for p in (root / genre).iterdir())
        assert names == [f"{genre}.{i:05d}.wav" for i in range(SMALL["tracks_per_genre"])]
    info = soundfile.info(root / "jazz" / "jazz.00001.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (8000, 1, 8000, "PCM_16")
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["tracks_per_genre"] == 2 and marker["seed"] == 0 and marker["genres"] == list(GENRES)


def test_same_arguments_give_identical_bytes(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", **SMALL)
    assert wav_files(again) == wav_files(small_dataset)
    for relative in wav_files(small_dataset):
        assert (again / relative).read_bytes() == (small_dataset / relative).read_bytes(), relative


def test_other_seed_gives_other_tracks(small_dataset, tmp_path):
    other = generate_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    for relative in wav_files(small_dataset)[:4]:
        assert (other / relative).read_bytes() != (small_dataset / relative).read_bytes()


def test_a_track_does_not_depend_on_which_other_genres_are_generated(small_dataset, tmp_path):
    subset = generate_dataset(tmp_path / "subset", **{**SMALL, "genres": ("reggae", "metal")})
    assert wav_files(subset) == [p for p in wav_files(small_dataset) if p.parts[0] in ("reggae", "metal")]
    for relative in wav_files(subset):
        assert (subset / relative).read_bytes() == (small_dataset / relative).read_bytes()


@pytest.mark.parametrize("genre", GENRES)
def test_samples_are_finite_in_range_and_not_silent(genre):
    x = synthesize_track(genre, 1.5, 8000, np.random.default_rng(track_seed(3, genre, 0)))
    assert x.dtype == np.float32 and x.shape == (12000,)
    assert np.isfinite(x).all()
    assert np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1e-3


def test_written_files_stay_in_range(small_dataset):
    for relative in wav_files(small_dataset):
        x, _ = soundfile.read(small_dataset / relative)
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.01


def test_existing_dataset_is_not_regenerated(tmp_path, monkeypatch):
    root = generate_dataset(tmp_path / "data", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated an up-to-date dataset")

    monkeypatch.setattr(demo_data, "synthesize_track", must_not_run)
    assert generate_dataset(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")} == before


def test_changed_arguments_regenerate_and_drop_stale_tracks(tmp_path):
    root = generate_dataset(tmp_path / "data", **SMALL)
    (root / "notes.txt").write_text("not ours, must survive")
    generate_dataset(root, **{**SMALL, "tracks_per_genre": 1, "genres": ("techno", "jazz")})
    assert [p.as_posix() for p in wav_files(root)] == ["jazz/jazz.00000.wav", "techno/techno.00000.wav"]
    assert (root / "notes.txt").exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["jazz", "techno"]
    assert json.loads((root / MARKER_NAME).read_text())["tracks_per_genre"] == 1


def test_missing_or_damaged_file_triggers_regeneration(tmp_path):
    root = generate_dataset(tmp_path / "data", **SMALL)
    original = (root / "metal" / "metal.00000.wav").read_bytes()
    (root / "metal" / "metal.00001.wav").unlink()
    (root / "metal" / "metal.00000.wav").write_bytes(original[:100])  # truncated
    assert not demo_data.is_up_to_date(root, **SETTINGS)
    generate_dataset(root, **SMALL)
    assert (root / "metal" / "metal.00000.wav").read_bytes() == original
    assert (root / "metal" / "metal.00001.wav").exists()


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="polka"):
        generate_dataset(tmp_path, **{**SMALL, "genres": ("jazz", "polka")})
    with pytest.raises(ValueError):
        synthesize_track("jazz", 1.0, 4000, np.random.default_rng(0))


def band_profile(genre: str, tracks: int = 3, sr: int = 8000, seconds: float = 1.5) -> np.ndarray:
    """Average share of power in 32 linear frequency bands, in dB."""
    profiles = []
    for i in range(tracks):
        x = synthesize_track(genre, seconds, sr, np.random.default_rng(track_seed(0, genre, i)))
        power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        bands = np.array([b.mean() for b in np.array_split(power[1:], 32)])
        profiles.append(10 * np.log10(bands / bands.sum()))
    return np.mean(profiles, axis=0)


def test_genres_sound_different():
    profiles = {genre: band_profile(genre) for genre in GENRES}
    for a, b in itertools.combinations(GENRES, 2):
        assert np.abs(profiles[a] - profiles[b]).max() > 2.0, (a, b)


def test_command_line(tmp_path, capsys):
    args = [
        str(tmp_path / "cli"),
        "--tracks-per-genre",
        "1",
        "--seconds",
        "0.5",
        "--sample-rate",
        "8000",
        "--seed",
        "7",
    ]
    demo_data.main(args)
    assert "wrote" in capsys.readouterr().out
    assert len(wav_files(tmp_path / "cli")) == len(GENRES)
    demo_data.main(args)
    assert "up to date" in capsys.readouterr().out


def test_interrupted_generation_is_redone(tmp_path):
    root = generate_dataset(tmp_path / "data", **SMALL)
    marker = json.loads((root / MARKER_NAME).read_text())
    (root / MARKER_NAME).write_text(json.dumps({**marker, "complete": False}))
    assert not demo_data.is_up_to_date(root, **SETTINGS)
    generate_dataset(root, **SMALL)
    assert json.loads((root / MARKER_NAME).read_text())["complete"] is True


def test_foreign_audio_is_never_overwritten(tmp_path):
    foreign = tmp_path / "gtzan" / "jazz" / "jazz.00000.wav"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"someone's real recording")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "gtzan", **SMALL)
    assert foreign.read_bytes() == b"someone's real recording"
    assert not (tmp_path / "gtzan" / MARKER_NAME).exists()
