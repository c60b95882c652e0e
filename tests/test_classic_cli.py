"""The classic baselines behind the same commands as the CNN: train, evaluate (side by side), predict."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_class_folder
from genrenet.checkpoint import load_checkpoint, save_state

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An SVM, a random forest and a CNN trained on the same tiny dataset."""
    root = tmp_path_factory.mktemp("classic")
    data = make_class_folder(root / "data")
    runs = {}
    for name, model in {
        "svm": {"type": "svm"},
        "random_forest": {"type": "random_forest", "rf_trees": 50},
        "cnn": {"type": "cnn", "width": 4},
    }.items():
        config = {
            "data": {
                "path": str(data),
                "cache_dir": str(root / "cache"),
                "test_fraction": 0.25,
                "valid_fraction": 0.25,
            },
            "audio": {"sample_rate": 8000, "clip_seconds": 0.5, "hop_seconds": 0.5},
            "features": {"n_fft": 256, "hop_length": 64, "n_mels": 32, "n_mfcc": 13},
            "model": model,
            "train": {"epochs": 3, "batch_size": 8, "device": "cpu"},
            "run": {"dir": str(root / "runs" / name)},
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = run("train.py", "--config", path)
        assert result.returncode == 0, result.stderr
        runs[name] = root / "runs" / name
    return data, runs


def test_classic_checkpoint_holds_a_skops_model_not_a_pickle(trained):
    _, runs = trained
    state = load_checkpoint(runs["svm"] / "best.pt")
    assert state["config"]["model"]["name"] == "svm"
    blob = state["model_state"]["sklearn"].numpy().tobytes()
    assert blob[:2] == b"PK"  # a skops zip archive


@pytest.mark.parametrize("name", ["svm", "random_forest"])
def test_classic_evaluate_reports_like_the_cnn(trained, name):
    _, runs = trained
    result = run("evaluate.py", "--checkpoint", runs[name] / "best.pt")
    assert result.returncode == 0, result.stderr
    report = json.loads((runs[name] / "eval_best_test.json").read_text())
    assert report["model"] == name
    assert report["track"]["accuracy"] >= 0.9
    assert sum(map(sum, report["track"]["confusion_matrix"])) == report["track"]["n"]
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout


def test_classic_predict_gives_top_k_and_clips(trained):
    data, runs = trained
    sample = sorted((data / "noise").glob("*.wav"))[0]
    result = run("predict.py", "--checkpoint", runs["random_forest"] / "best.pt", sample, "--json", "--clips")
    assert result.returncode == 0, result.stderr
    [prediction] = json.loads(result.stdout)
    assert prediction["top"][0]["label"] == "noise"
    assert len(prediction["top"]) == 3
    assert [s["start"] for s in prediction["clips"]] == [0.0, 0.5, 1.0, 1.5]  # 2 s in 0.5 s clips


def test_side_by_side_report_lists_every_model(trained):
    _, runs = trained
    result = run(
        "evaluate.py",
        *[arg for name in ("cnn", "svm", "random_forest") for arg in ("--checkpoint", runs[name] / "best.pt")],
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line[:3] in ("A  ", "B  ", "C  ")]
    assert [row.split()[2] for row in rows] == ["small_cnn", "svm", "random_forest"]
    for row, name in zip(rows, ("cnn", "svm", "random_forest")):
        report = json.loads((runs[name] / "eval_best_test.json").read_text())
        assert f"{report['track']['accuracy']:.3f}" in row
        assert f"{report['track']['macro_f1']:.3f}" in row
    assert "per-class F1" in result.stdout
    per_class = lines[lines.index("per-class F1") + 2 : lines.index("per-class F1") + 5]
    assert {line.split()[0] for line in per_class} == {"noise", "clicks", "tone"}


def test_side_by_side_refuses_different_tracks(trained, tmp_path):
    _, runs = trained
    # Another split seed for one model only means other test tracks: not comparable.
    state = load_checkpoint(runs["cnn"] / "best.pt")
    state["config"]["data"]["split_seed"] = 7
    save_state(state, tmp_path / "other_split.pt")
    result = run("evaluate.py", "--checkpoint", runs["svm"] / "best.pt", "--checkpoint", tmp_path / "other_split.pt")
    assert result.returncode == 2
    assert "different tracks" in result.stderr and "Traceback" not in result.stderr


def test_tampered_classic_model_is_refused(trained, tmp_path):
    """A checkpoint whose embedded model holds a disallowed type is refused before anything runs."""
    import os

    import skops.io
    import torch
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    _, runs = trained
    state = load_checkpoint(runs["svm"] / "best.pt")
    evil = skops.io.dumps(Pipeline([("scale", FunctionTransformer(func=os.system, kw_args={"command": "true"}))]))
    state["model_state"]["sklearn"] = torch.frombuffer(bytearray(evil), dtype=torch.uint8)
    path = tmp_path / "evil.pt"
    save_state(state, path)
    result = run("evaluate.py", "--checkpoint", path)
    assert result.returncode == 2
    assert "refusing to load classic model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "tracks, note",
    [
        (4, "svm: probability calibration with 3-fold cross-validation (the smallest class has 3 training clips)"),
        (2, "svm: probability calibration on the training clips themselves"),
    ],
)
def test_svm_fits_few_shot_data(tmp_path, capsys, tracks, note):
    """Few clips per class (few-shot subsets such as 48 ESC-50 classes) train, evaluate and predict;
    the SVM's 5-fold probability calibration used to refuse them."""
    from conftest import tiny_config_dict
    from genrenet.classifier import Classifier
    from genrenet.config import from_dict
    from genrenet.evaluation import evaluate
    from genrenet.training import train

    data = make_class_folder(tmp_path / "data", per_class=tracks, seconds=0.5)  # one 0.5 s clip per track
    raw = tiny_config_dict(tmp_path, data, data={"test_fraction": 0.25 if tracks == 4 else 0.5, "valid_fraction": 0.0})
    raw["model"] = {"name": "svm"}
    run_dir = train(from_dict(raw))
    assert note in capsys.readouterr().out
    report = evaluate(run_dir / "best.pt")
    assert report["track"]["n"] == 3
    classifier = Classifier.load(run_dir / "best.pt", device="cpu")
    for sample in sorted(data.glob("*/*.wav")):
        prediction = classifier.predict(sample)
        assert len(prediction["top"]) == 3
        assert sum(t["probability"] for t in prediction["top"]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_classic_model_is_one_clear_line(trained, tmp_path, damage):
    """Garbage in the stored scikit-learn model reads as damage, prefixed by the checkpoint path."""
    import torch

    from genrenet.errors import UserError
    from genrenet.trained import load_model

    _, runs = trained
    state = load_checkpoint(runs["svm"] / "best.pt")
    blob = state["model_state"]["sklearn"]
    state["model_state"]["sklearn"] = (
        torch.randint(0, 256, blob.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        if damage == "random"
        else blob[: len(blob) // 2].clone()
    )
    path = tmp_path / f"{damage}.pt"
    save_state(state, path)
    with pytest.raises(UserError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable classic model (its stored scikit-learn model is damaged: ")
    assert "\n" not in message
