"""`genrenet predict` over a library: workers, results files (.jsonl/.csv) with --resume, error rows,
--files-from, --embeddings, and --segments splitting a long recording where its genre changes."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, class_signal, make_class_folder, tiny_config_dict, write_audio
from genrenet import Classifier, cli
from genrenet.classifier import describe
from genrenet.config import from_dict
from genrenet.prediction import PredictOptions, predict_library
from genrenet.training import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("library")
    data = make_class_folder(tmp / "data", per_class=6)
    return str(train(from_dict(tiny_config_dict(tmp, data, train={"epochs": 4}))) / "best.pt")


@pytest.fixture
def library(tmp_path):
    """Two folders of mixed formats and one file that is not audio."""
    files = [
        write_audio(tmp_path / "lib" / folder / f"{label}.{ext}", class_signal(label, 1.5, seed=i))
        for i, (folder, label, ext) in enumerate(
            [("a", "tone", "wav"), ("a", "noise", "flac"), ("b", "clicks", "ogg"), ("b", "tone", "mp3")]
        )
    ]
    bad = tmp_path / "lib" / "b" / "broken.wav"
    bad.write_bytes(b"not audio at all")
    return tmp_path / "lib", sorted([*files, bad])


def predict(*args):
    return cli.main(["predict", *map(str, args)])


def test_three_genres_back_to_back_are_split_where_they_change(checkpoint, tmp_path, capsys):
    pieces = [class_signal(label, 3.0, seed=40 + i) for i, label in enumerate(["tone", "noise", "clicks"])]
    mix = np.concatenate([0.9 * p / np.abs(p).max() for p in pieces])  # each piece mastered to the same peak
    path = write_audio(tmp_path / "mix.wav", mix)
    assert predict("--checkpoint", checkpoint, path, "--segments", "--json") == 0
    [result] = json.loads(capsys.readouterr().out)
    sections = result["sections"]
    assert [s["label"] for s in sections] == ["tone", "noise", "clicks"]
    for found, true in zip([s["start"] for s in sections[1:]], [3.0, 6.0]):
        assert abs(found - true) <= 0.5  # within one clip
    assert sections[0]["start"] == 0.0 and sections[-1]["end"] == 9.0
    assert all(0.5 < s["probability"] <= 1.0 for s in sections) and "clips" not in result


def test_clips_keeps_the_raw_rows(checkpoint, library, capsys):
    _, files = library
    assert predict("--checkpoint", checkpoint, files[0], "--clips") == 0
    out = capsys.readouterr().out
    assert "clips (seconds, label, probability):" in out and len([row for row in out.splitlines() if " - " in row]) == 3


def test_results_file_with_workers_error_rows_and_resume(checkpoint, library, tmp_path, capsys):
    folder, files = library
    output = tmp_path / "results.jsonl"
    assert predict("--checkpoint", checkpoint, folder, "--output", output, "--workers", "2") == 1  # one bad file
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    broken = next(r for r in rows if r["file"].endswith("broken.wav"))
    assert set(broken) == {"file", "error"} and broken["error"].startswith(broken["file"] + ": ")
    assert all(r["top"][0]["label"] in r["file"] for r in rows if "top" in r)
    assert "5 files predicted (1 failed" in capsys.readouterr().out

    assert predict("--checkpoint", checkpoint, folder, "--output", output) == 2  # never overwritten silently
    assert "--resume" in capsys.readouterr().err

    # a crash mid-line: the cut line is dropped and its file runs again, the others are skipped
    text = output.read_text().splitlines(keepends=True)
    output.write_text("".join(text[:3]) + text[3][:10])  # the error row stays done
    extra = write_audio(folder / "c" / "noise.wav", class_signal("noise", 1.0, seed=9))
    assert predict("--checkpoint", checkpoint, folder, "--output", output, "--resume") == 0
    assert "3 files predicted (0 failed, 3 already done" in capsys.readouterr().out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(map(str, [*files, extra]))


def test_csv_rows_and_files_from(checkpoint, library, tmp_path):
    _, files = library
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    output = tmp_path / "results.csv"
    assert predict("--checkpoint", checkpoint, "--files-from", listing, "--output", output, "--top-k", "2") == 1
    with open(output, newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["file", "label", "probability", "top", "tags", "seconds", "error"]
    assert all(not r["tags"] for r in rows)  # a single-label model says no tags
    assert [r["file"] for r in rows] == [str(f) for f in files]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4 and all(r["label"] in r["file"] and r["top"].count(":") == 2 for r in good)
    assert float(good[0]["seconds"]) == 1.5


def test_resume_continues_a_csv_written_before_the_tags_column(checkpoint, library, tmp_path):
    _, files = library
    output = tmp_path / "results.csv"
    old = ["file", "label", "probability", "top", "seconds", "error"]
    assert predict("--checkpoint", checkpoint, files[0], "--output", output, "--quiet") == 0
    with open(output, newline="") as file:
        [row] = list(csv.DictReader(file))
    with open(output, "w", newline="") as file:  # as an earlier genrenet wrote it
        writer = csv.DictWriter(file, old)
        writer.writeheader()
        writer.writerow({key: row[key] for key in old})
    assert predict("--checkpoint", checkpoint, files[0], files[1], "--output", output, "--resume", "--quiet") == 0
    with open(output, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == old and [r["file"] for r in rows] == [str(files[0]), str(files[1])]
    assert all(None not in r and r["label"] in r["file"] for r in rows)  # no row wider than the header


def test_embeddings_with_an_index(checkpoint, library, tmp_path):
    folder, files = library
    out = tmp_path / "emb.npy"
    assert predict("--checkpoint", checkpoint, folder, "--embeddings", out) == 1
    vectors, index = np.load(out), json.loads((tmp_path / "emb.json").read_text())
    assert index["files"] == [str(f) for f in files if f.name != "broken.wav"]
    assert vectors.shape[0] == 4 and vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_embeddings_and_scores_come_from_one_forward_pass(checkpoint, library, tmp_path):
    """--embeddings ran the model twice over every clip, once for the scores and once for the
    embeddings; one forward pass gives both, equal to what the two passes gave."""
    _, files = library
    classifier = Classifier.load(checkpoint, device="cpu")
    model, calls = classifier.trained.model, []
    hook = model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])) and None)
    try:
        options = PredictOptions(embeddings=tmp_path / "emb.npy", json=True, progress=False)
        results = [r for r in predict_library(classifier, files, options) if "error" not in r]
    finally:
        hook.remove()
    assert calls == [12]  # the 4 readable files' 3 clips each, all in one pass (twice before)
    vectors = np.load(tmp_path / "emb.npy")
    assert len(results) == len(vectors) == 4
    for result, vector in zip(results, vectors):
        features = classifier.features(result["file"]).float().unsqueeze(1)
        with torch.no_grad():  # the two passes of before, each over the file's clips
            log_probs = torch.log_softmax(model(features)["logits"], dim=1)
            embedding = model(features)["embedding"].mean(dim=0)
        assert result["top"] == describe(log_probs, classifier.labels, classifier.config.audio, 3)["top"]
        np.testing.assert_allclose(vector, embedding.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume"], "--resume continues an --output file"),
        (["--output", "r.csv", "--segments"], "use a .jsonl output"),
        ([], "give audio files or folders"),
    ],
)
def test_option_mistakes_are_usage_errors(checkpoint, args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", "--checkpoint", checkpoint, *args] + (["x.wav"] if args else []))
    assert stop.value.code == 2 and message in capsys.readouterr().err


HOLD_OUTPUTS = """
import sys, time
from genrenet.prediction import EmbeddingsFile, ResultsFile
held = ResultsFile(sys.argv[1], True), EmbeddingsFile(sys.argv[2], True)  # what a predict run holds while it writes
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_predict_on_one_output_is_refused_while_the_first_runs(checkpoint, library, tmp_path, capsys):
    folder, files = library
    output, embeddings = tmp_path / "results.jsonl", tmp_path / "emb.npy"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUTPUTS, output, embeddings], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        for args, taken in (
            (["--output", output, "--resume", "--embeddings", tmp_path / "other.npy"], output),
            (["--output", tmp_path / "other.jsonl", "--embeddings", embeddings], embeddings),
        ):
            assert predict("--checkpoint", checkpoint, folder, *args) == 2
            [line] = capsys.readouterr().err.splitlines()
            assert f"{taken} is in use by another genrenet predict (pid {holder.pid} " in line
        assert output.read_bytes() == b"" and not embeddings.exists()  # the refused runs wrote nothing
        assert not (tmp_path / "other.jsonl").exists()  # nor made the output they could open
    finally:
        holder.kill()  # killed, not ended: its locks stay behind, as after kill -9
        holder.wait()
    both = ["--output", output, "--resume", "--embeddings", embeddings]
    assert predict("--checkpoint", checkpoint, folder, *both) == 1  # the one broken file
    err = capsys.readouterr().err
    for taken in (output, embeddings):
        assert f"taking over {taken}: its previous genrenet predict (pid {holder.pid} " in err
    assert predict("--checkpoint", checkpoint, folder, "--output", output, "--resume") == 0  # nothing runs twice
    assert sorted(json.loads(line)["file"] for line in output.read_text().splitlines()) == sorted(map(str, files))
    assert json.loads((tmp_path / "emb.json").read_text())["files"] == [str(f) for f in files if f.name != "broken.wav"]
    assert not list(tmp_path.glob(".*.lock"))
