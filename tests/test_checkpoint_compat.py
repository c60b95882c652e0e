"""Checkpoints written by earlier versions keep working.

tests/fixtures/v1_*.pt were written by genrenet's format-1 code (model.type picked CNN or a classic
model, and the model section held every model's keys), trained on make_class_folder(per_class=8,
seconds=1.0); v1_expected.json holds the predictions that code made for
make_class_folder(per_class=1, seconds=1.0, seed=7).
"""

import json
from pathlib import Path

import pytest

from conftest import make_class_folder
from genrenet.checkpoint import VERSION, load_checkpoint
from genrenet.classifier import Classifier
from genrenet.evaluation import evaluate

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "v1_expected.json").read_text())


@pytest.mark.parametrize("kind,name", [("cnn", "small_cnn"), ("svm", "svm")])
def test_format_1_checkpoint_is_upgraded_on_load(kind, name):
    state = load_checkpoint(FIXTURES / f"v1_{kind}.pt")
    assert state["version"] == VERSION
    assert state["config"]["model"]["name"] == name and "type" not in state["config"]["model"]


@pytest.mark.parametrize("kind", ["cnn", "svm"])
def test_format_1_checkpoint_predicts_as_it_did(tmp_path, kind):
    unseen = make_class_folder(tmp_path / "unseen", per_class=1, seconds=1.0, seed=7)
    classifier = Classifier.load(FIXTURES / f"v1_{kind}.pt", device="cpu")
    for file, expected in EXPECTED[kind].items():
        top = classifier.predict(unseen / file)["top"]
        assert [t["label"] for t in top] == [t["label"] for t in expected], file
        for got, want in zip(top, expected):
            assert got["probability"] == pytest.approx(want["probability"], abs=1.5e-4), file


@pytest.mark.parametrize("kind", ["cnn", "svm"])
def test_format_1_checkpoint_evaluates(tmp_path, kind):
    data = make_class_folder(tmp_path / "data", per_class=8, seconds=1.0)
    report = evaluate(FIXTURES / f"v1_{kind}.pt", "test", [f"data.path={data}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert report["track"]["n"] == 4  # the stored split: 15% of 24 tracks
    assert report["model"] == ("small_cnn" if kind == "cnn" else "svm")
    assert report["track"]["accuracy"] >= 0.75
