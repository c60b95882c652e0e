"""The shipped music taggers out of the box: load_model / Classifier.load("musicnn-msd"), their
predictions against musicnn's own, multi-label results (top tags, tags above a threshold), and
`genrenet predict` with no --checkpoint."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, SR, class_signal, tiny_config, write_audio
from genrenet import Classifier, cli
from genrenet.checkpoint import save_checkpoint
from genrenet.config import to_dict
from genrenet.errors import UserError
from genrenet.musicnn import MusicnnFrontEnd, patches, pretrained_weights, to_sample_rate
from genrenet.registry import build_model, features_of
from genrenet.trained import load_model

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "musicnn_reference.npz"
ORIGINAL = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}


def song(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Int16 music: a chord every 0.7 s (so 3 s clips cut at other places hear other chords), a
    bass line, kick, snare and hi-hat at 120 bpm."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    chords = np.array([(220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66)])
    freqs = chords[(t // 0.7).astype(int) % len(chords)]
    phases = 2 * np.pi * np.cumsum(freqs, axis=0) / rate
    pads = sum(np.sin(h * phases).sum(axis=1) / h for h in range(1, 5))
    bass = np.sin(phases[:, 0] / 2) * np.exp(-(t % 0.25) / 0.2)
    beat = t % 1.0
    kick = np.sin(2 * np.pi * (45 * beat + 12 * (1 - np.exp(-beat / 0.03)))) * np.exp(-beat / 0.15)
    snare = rng.standard_normal(t.size) * np.exp(-((t - 0.5) % 1.0) / 0.08) * (t >= 0.5)
    hats = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-(t % 0.25) / 0.02)
    mix = 0.08 * pads + 0.15 * bass + 0.5 * kick + 0.15 * snare + 0.05 * hats
    return np.round(mix / np.abs(mix).max() * 0.7 * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def tagger():
    return Classifier.load("musicnn-msd", device="cpu")


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("music")
    return {
        "short": write_audio(folder / "short.wav", song(22050, 4.0) / 32768, sr=22050, subtype="PCM_16"),
        "long": write_audio(folder / "long.flac", song(16000, 24.0, seed=1) / 32768, sr=16000, subtype="PCM_16"),
    }


def all_tags(result: dict, labels: list[str]) -> np.ndarray:
    """Every tag's probability, in the model's order, from a result with top_k = all tags."""
    found = {t["label"]: t["probability"] for t in result["top"]}
    return np.array([found[label] for label in labels])


def test_a_tagger_name_loads_the_shipped_tagger_whole():
    trained = load_model("musicnn-mtt")
    shipped = pretrained_weights("musicnn-mtt")
    assert trained.labels == shipped["tags"] and len(trained.labels) == 50
    state = trained.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in shipped["state_dict"].items())  # head included
    assert trained.multi_label and trained.thresholds is None and trained.tag_thresholds() == [0.5] * 50
    assert not trained.model.training
    config = trained.config
    assert (config.model.name, config.model.pretrained, features_of(config).name) == (
        "musicnn",
        "musicnn-mtt",
        "musicnn_mel",
    )
    audio = config.audio  # as musicnn's extractor reads audio: no normalization, no silence stripping
    assert (audio.sample_rate, audio.normalize, audio.strip_silence) == (16000, "off", False)
    assert audio.clip_seconds == audio.hop_seconds == 187 * 256 / 16000  # one patch, at musicnn's patch starts


def untrained_checkpoint(tmp_path, name: str = "best.pt"):
    """A single-label checkpoint of an untrained tiny CNN: what loading and refusing need, no training."""
    config = tiny_config(tmp_path, tmp_path / "data")
    path = tmp_path / name
    state = build_model(config, 3).state_dict()
    save_checkpoint(path, model_state=state, config=to_dict(config), labels=["a", "b", "c"], epoch=1, metrics={})
    return path


def test_a_file_named_like_a_tagger_is_a_checkpoint(tmp_path, monkeypatch):
    untrained_checkpoint(tmp_path, "musicnn-msd")
    monkeypatch.chdir(tmp_path)
    trained = load_model("musicnn-msd")
    assert trained.labels == ["a", "b", "c"] and not trained.multi_label


@pytest.mark.parametrize("name", ["musicnn-msd", "musicnn-mtt"])
@pytest.mark.parametrize("wave, tolerance", [("song16k", 0.01), ("song22k", 0.06)])
def test_whole_song_tags_are_close_to_musicnns_taggram(tmp_path, name, wave, tolerance):
    """musicnn's own taggram (recorded from the original code) of a song a little over one patch
    long, non-overlapping as its default: one patch, whose tag probabilities are the song's.
    Measured: 0.0054 (msd) and 0.0017 (mtt) at 16 kHz, where a clip's one extra frame is the
    difference; 0.045 and 0.015 at 22.05 kHz, where torchaudio resamples and musicnn soxr. Peak
    normalization (genrenet's default, not musicnn's) moves them by 0.057 and 0.098 (msd)."""
    with np.load(FIXTURE) as reference:
        path = write_audio(tmp_path / "song.wav", reference[f"{wave}/samples"] / 32768, int(reference[f"{wave}/rate"]))
        musicnn = reference[f"{wave}/{ORIGINAL[name]}/probabilities"][0]
    classifier = Classifier.load(name, device="cpu")
    ours = all_tags(classifier.predict(path, top_k=50), classifier.labels)
    assert np.abs(ours - musicnn).max() < tolerance


def test_clips_start_where_musicnns_patches_do(tagger, music):
    """A 24 s song: musicnn's taggram (its front end over the whole song, then non-overlapping
    187-frame patches, through the same network, which tests/test_musicnn.py checks against the
    original) against genrenet's clips, each decoded and turned into features on its own.
    Measured: clips within 0.0175 of their patches, the song within 0.0041. Clips of 2.976, 2.991
    or 3 s (drifting away from the patches) give 0.027, 0.044 and 0.025 per clip, 0.0097, 0.012
    and 0.013 per song."""
    samples = torch.from_numpy(song(16000, 24.0, seed=1) / 32768).float()
    with torch.no_grad():
        logits = tagger.trained.model(patches(MusicnnFrontEnd()(to_sample_rate(samples, 16000))))["logits"]
    musicnn = torch.sigmoid(logits).numpy()
    result = tagger.predict(music["long"], top_k=50, clips=True)
    assert len(result["clips"]) == len(musicnn) == 8
    assert np.abs(all_tags(result, tagger.labels) - musicnn.mean(axis=0)).max() < 0.006
    for clip, patch in zip(result["clips"], musicnn):
        assert clip["label"] == tagger.labels[patch.argmax()] and abs(clip["probability"] - patch.max()) < 0.022


def test_tags_at_or_above_a_threshold(tagger, music):
    everything = tagger.predict(music["short"], top_k=50)
    ranked = [t["probability"] for t in everything["top"]]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == 50
    assert 0 < sum(ranked) != pytest.approx(1.0)  # one sigmoid per tag, not a softmax over them
    for threshold in (None, 0.05, 0.2):
        result = tagger.predict(music["short"], threshold=threshold)
        cut = 0.5 if threshold is None else threshold  # the shipped taggers have no thresholds of their own
        assert result["top"] == everything["top"][:3]
        assert result["tags"] == [t for t in everything["top"] if t["probability"] >= cut]
    assert 0 < len(tagger.predict(music["short"], threshold=0.05)["tags"]) < 50


@pytest.mark.parametrize("threshold", [0, 1, -0.5, 2])
def test_a_threshold_outside_zero_and_one_is_refused(tagger, music, threshold):
    with pytest.raises(UserError, match="threshold must be between 0 and 1"):
        tagger.predict(music["short"], threshold=threshold)


def test_clips_and_sections_name_each_clips_most_probable_tag(tagger, music):
    result = tagger.predict(music["long"], clips=True, sections={"smooth": 1, "min_seconds": 0})
    assert [c["start"] for c in result["clips"]] == pytest.approx([i * 2.992 for i in range(8)])
    assert all(c["label"] in tagger.labels and 0 < c["probability"] < 1 for c in result["clips"])
    labels = [s["label"] for s in result["sections"]]
    clips = [c["label"] for c in result["clips"]]
    runs = [label for i, label in enumerate(clips) if i == 0 or label != clips[i - 1]]
    assert labels == runs and result["sections"][-1]["end"] == result["clips"][-1]["end"]


def test_predict_many_gives_tags_and_errors_in_order(tagger, music, tmp_path):
    bad = write_audio(tmp_path / "bad.wav", np.zeros(10))
    bad.write_bytes(b"not audio")
    results = list(tagger.predict_many([music["short"], bad, music["long"]], threshold=0.1, embeddings=True))
    assert [r["file"] for r in results] == [str(music["short"]), str(bad), str(music["long"])]
    assert "error" in results[1] and results[0]["embedding"].shape == (200,)
    single = tagger.predict(music["long"], threshold=0.1)
    assert results[2]["tags"] == single["tags"] and results[2]["top"] == single["top"]


# --- genrenet predict with no --checkpoint ---------------------------------------------------------


def predict(*args):
    return cli.main(["predict", *map(str, args)])


def test_predict_with_no_checkpoint_tags_music_and_says_so_once(music, capsys):
    assert predict(music["short"], music["long"], "--threshold", "0.05") == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "built-in tagger musicnn-msd" in notes[0] and "not genres or classes" in notes[0]
    blocks = captured.out.strip().split("\n" + str(music["long"]))
    short_block = blocks[0].splitlines()
    assert short_block[0] == str(music["short"]) and len(short_block) == 5  # file, three tags, the tags line
    expected = Classifier.load("musicnn-msd", device="cpu").predict(music["short"], threshold=0.05)
    assert short_block[1].split()[1] == expected["top"][0]["label"]
    assert short_block[4] == "  tags: " + ", ".join(t["label"] for t in expected["tags"])
    assert predict(music["short"], "--quiet") == 0
    quiet = capsys.readouterr()
    assert "note:" not in quiet.err and "tags: " in quiet.out


def test_model_picks_the_other_tagger(music, capsys):
    assert predict(music["short"], "--model", "musicnn-mtt", "--json", "--top-k", "50") == 0
    captured = capsys.readouterr()
    [result] = json.loads(captured.out)
    assert {t["label"] for t in result["top"]} == set(pretrained_weights("musicnn-mtt")["tags"])
    assert "built-in tagger musicnn-mtt" in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "musicnn-msd", "--checkpoint", "best.pt"], "not allowed with argument"),
        (["--model", "musicnn-big"], "invalid choice: 'musicnn-big'"),
        (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["--threshold", "0"], "--threshold must be between 0 and 1"),
    ],
)
def test_model_option_mistakes_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        predict("x.wav", *args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_threshold_for_a_single_label_checkpoint_is_one_line(tmp_path, music, capsys):
    checkpoint = untrained_checkpoint(tmp_path)
    assert predict("--checkpoint", checkpoint, music["short"], "--threshold", "0.3") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --threshold is for taggers (multi-label models); {checkpoint} gives one label per track"
    ]


def test_results_files_carry_the_tags(music, tmp_path, capsys):
    jsonl, table = tmp_path / "tags.jsonl", tmp_path / "tags.csv"
    assert predict(music["short"], "--threshold", "0.05", "--output", jsonl, "--quiet") == 0
    assert predict(music["short"], "--threshold", "0.05", "--output", table, "--quiet") == 0
    [row] = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert row["tags"] and all(t["probability"] >= 0.05 for t in row["tags"])
    with open(table, newline="") as file:
        [csv_row] = list(csv.DictReader(file))
    assert csv_row["tags"] == ";".join(t["label"] for t in row["tags"]) and csv_row["label"] == row["top"][0]["label"]


def test_resuming_a_csv_without_a_tags_column_is_refused_for_a_tagger(music, tmp_path, capsys):
    table = tmp_path / "old.csv"
    table.write_text("file,label,probability,top,seconds,error\nother.wav,rock,0.5,rock:0.5,3.0,\n")
    before = table.read_bytes()
    assert predict(music["short"], "--output", table, "--resume", "--quiet") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --resume: {table} has no tags column (written by an earlier genrenet); "
        "give a new --output file for a tagger's results"
    ]
    assert table.read_bytes() == before


def test_predict_py_uses_the_builtin_tagger(music, tmp_path):
    """The top-level entry point, as a user runs it from the repository."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), str(music["short"]), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(done.stdout)
    assert len(result["top"]) == 3 and "tags" in result
    assert done.stderr.count("note: using the built-in tagger musicnn-msd") == 1


def test_single_label_results_have_no_tags(tmp_path):
    classifier = Classifier.load(untrained_checkpoint(tmp_path), device="cpu")
    samples = class_signal("tone", 1.0, seed=1)
    assert set(classifier.predict(samples, sample_rate=SR)) == {"top", "seconds"}
    with pytest.raises(UserError, match="a threshold applies to multi-label models"):
        classifier.predict(samples, sample_rate=SR, threshold=0.5)


def test_a_builtin_tagger_is_evaluated_on_every_track_of_tagged_data(tmp_path, capsys):
    """The tagger trained on none of the user's files, so all of them are its test data; the report's
    macro ROC-AUC is sklearn's on the report's own track probabilities."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for i, (label, tags) in enumerate([("tone", "jazz"), ("noise", "rock;electronic"), ("clicks", "jazz;rock")] * 2):
        write_audio(tmp_path / f"{i}.wav", class_signal(label, 4.0, seed=i))
        rows.append(f"{i}.wav,{tags}")
    (tmp_path / "tags.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    output = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", "musicnn-msd", "--data", str(tmp_path / "tags.csv"), "--output", str(output)]
    assert cli.main([*args, "--no-plots"]) == 0
    assert (
        f"musicnn-msd (built-in tagger, musicnn) on every track of {tmp_path / 'tags.csv'}" in capsys.readouterr().out
    )
    report = json.loads(output.read_text())
    assert report["track"]["n"] == 6 and report["epoch"] is None
    present = ["rock", "electronic", "jazz"]
    truth = [[tag in track["labels"] for tag in present] for track in report["tracks"]]
    probs = [[track["probabilities"][tag] for tag in present] for track in report["tracks"]]
    assert report["track"]["macro_roc_auc"] == pytest.approx(roc_auc_score(truth, probs, average="macro"), abs=1e-4)
    assert "pop" in report["track"]["absent"]
