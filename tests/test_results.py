"""What a user looks at after a run: plots drawn from the JSON beside them, logs in CSV and
TensorBoard, reusable evaluation outputs, and output that stays small when piped to a file."""

import csv
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, tone, write_config
from genrenet import plots
from genrenet.audio import decode
from genrenet.cli import run_evaluate, run_predict, run_train
from genrenet.errors import UserError
from genrenet.runlogs import check_logs


def png_size(path) -> tuple[int, int]:
    """Width and height of a valid PNG (signature and IHDR chunk checked)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(path):
    width, height = png_size(path)
    assert 300 <= width <= 5000 and 200 <= height <= 5000, (width, height)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run with every log format, and its evaluation written with --json."""
    tmp = tmp_path_factory.mktemp("results")
    data = make_class_folder(tmp / "data", per_class=4, seconds=1.0)
    config = write_config(
        tmp / "c.yaml",
        tiny_config_dict(tmp, data, train={"batch_size": 4}, run={"log": ["jsonl", "csv", "tensorboard"]}),
    )
    assert run_train(["--config", str(config), "--quiet"]) == 0
    return tmp


def test_learning_curves_csv_and_tensorboard_match_metrics_jsonl(trained):
    run = trained / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert_sensible_png(run / "learning_curves.png")
    lines = {line.get_label(): line.get_ydata() for ax in plots.draw_learning_curves(rows).axes for line in ax.lines}
    for key in ("train_loss", "valid_loss", "train_acc", "valid_track_acc", "lr"):
        assert np.allclose(lines[key], [row[key] for row in rows])
    with open(run / "metrics.csv") as file:
        table = list(csv.DictReader(file))
    assert [float(r["valid_track_acc"]) for r in table] == pytest.approx([r["valid_track_acc"] for r in rows])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx([r["train_loss"] for r in rows])
    assert len(events.Scalars("lr/step")) > len(rows)  # one per optimizer step
    assert "confusion_matrix/valid" in events.Tags()["images"]


def test_missing_tensorboard_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'genrenet\[tensorboard\]'"):
        check_logs(["jsonl", "tensorboard"])
    check_logs(["jsonl", "csv"])


def test_evaluation_json_csv_and_plots(trained, capsys):
    capsys.readouterr()
    assert run_evaluate(["--checkpoint", str(trained / "run" / "best.pt"), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = report["track"]["labels"]
    for track in report["tracks"]:
        assert sum(track["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert track["predicted"] == max(track["probabilities"], key=track["probabilities"].get)
    stem = trained / "run" / "eval_best_test"
    with open(stem.with_suffix(".csv")) as file:
        table = list(csv.DictReader(file))
    assert [(r["path"], r["label"], r["predicted"]) for r in table] == [
        (t["path"], t["label"], t["predicted"]) for t in report["tracks"]
    ]
    assert float(table[0][f"p_{labels[0]}"]) == report["tracks"][0]["probabilities"][labels[0]]
    for name in ("_confusion.png", "_classes.png"):
        assert_sensible_png(stem.with_name(stem.name + name))
    counts, fractions = plots.draw_confusion(report["track"]).axes[:2]
    assert np.array_equal(counts.images[0].get_array(), report["track"]["confusion_matrix"])
    bars = plots.draw_class_scores(report["track"]).axes[0].containers
    assert [b.get_width() for b in bars[2]] == [report["track"]["per_class"][label]["f1-score"] for label in labels]


def test_side_by_side_comparison_chart(trained, capsys):
    best = str(trained / "run" / "best.pt")
    assert (
        run_evaluate(["--checkpoint", best, "--checkpoint", str(trained / "run" / "last.pt"), "--no-plots", "--quiet"])
        == 0
    )
    assert not (trained / "run" / "compare_test.png").exists()
    assert run_evaluate(["--checkpoint", best, "--checkpoint", best, "--quiet"]) == 0
    comparison = json.loads((trained / "run" / "compare_test.json").read_text())
    assert_sensible_png(trained / "run" / "compare_test.png")
    accuracy = plots.draw_comparison(comparison).axes[0]
    assert [b.get_height() for b in accuracy.patches] == [c["accuracy"] for c in comparison["checkpoints"]]


def test_cross_validation_chart_and_many_class_confusion(tmp_path):
    summary = {
        "model": "svm",
        "folds": [{"fold": k, "track_accuracy": a} for k, a in ((1, 0.8), (2, 0.9), (3, 0.7))],
        "mean_track_accuracy": 0.8,
        "std_track_accuracy": 0.1,
    }
    figure = plots.draw_cross_validation(summary)
    assert [b.get_height() for b in figure.axes[0].patches[:3]] == [0.8, 0.9, 0.7]
    assert_sensible_png(plots.write_plot(figure, tmp_path / "cv.png"))
    labels = [f"class number {i}" for i in range(40)]  # 40 classes: readable without numbers in cells
    matrix = np.eye(40, dtype=int).tolist()
    assert_sensible_png(
        plots.write_plot(plots.draw_confusion({"labels": labels, "confusion_matrix": matrix}), tmp_path / "many.png")
    )


def test_timeline_draws_the_sections_it_is_given():
    sections = [
        {"start": 0.0, "end": 2.0, "label": "jazz", "probability": 0.8},
        {"start": 2.0, "end": 5.5, "label": "metal", "probability": 0.6},
    ]
    figure = plots.draw_timeline([{"file": "mix.wav", "sections": sections}])
    bars = figure.axes[0].collections[0].get_paths()
    assert [(b.get_extents().x0, b.get_extents().x1) for b in bars] == [(0.0, 2.0), (2.0, 5.5)]


def test_predict_plot_draws_a_timeline(trained, tmp_path, capsys):
    song = trained / "data" / "tone" / "tone_00.wav"
    assert (
        run_predict(
            [
                "--checkpoint",
                str(trained / "run" / "best.pt"),
                str(song),
                "--segments",
                "--plot",
                str(tmp_path / "timeline.png"),
                "--quiet",
            ]
        )
        == 0
    )
    assert_sensible_png(tmp_path / "timeline.png")


def test_piped_training_output_is_small_and_has_no_bar_refreshes(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=4, seconds=1.0)
    config = write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path, data, train={"epochs": 6}))
    command = [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config)]
    with open(tmp_path / "out.txt", "w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = (tmp_path / "out.txt").read_text()
    assert "\r" not in text and len(text.encode()) < 5000, text
    assert "features (" in text and "epoch   6" in text
    quiet = subprocess.run(
        command + ["--overwrite", "--quiet", "--no-plots"], capture_output=True, text=True, check=True, timeout=300
    )
    assert quiet.stdout + quiet.stderr == ""
    assert not (tmp_path / "run" / "learning_curves.png").exists()


def test_mpg123_messages_become_one_warning_line(tmp_path, capfd):
    good = tmp_path / "good.mp3"
    soundfile.write(good, tone(440, 3.0, 16000), 16000)
    damaged = bytearray(good.read_bytes())
    rng = np.random.default_rng(0)
    for i in range(2000, len(damaged), 97):  # flip bytes inside the frames, not the header
        damaged[i] = int(rng.integers(0, 256))
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(bytes(damaged))
    capfd.readouterr()
    decode(bad)
    err = capfd.readouterr().err
    assert "libmpg123" not in err and "Trying to resync" not in err
    assert err.count("\n") == 1 and err.startswith(f"warning: {bad}: damaged data skipped while decoding")
    decode(good)
    assert capfd.readouterr().err == ""
