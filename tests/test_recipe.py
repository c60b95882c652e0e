"""The training recipe's schedule and the cross-validation driver (train.py --cv)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import CLASSES, REPO_ROOT, class_signal, tiny_config, tiny_config_dict, write_audio, write_config
from genrenet.training import build_scheduler


def lrs(config, steps_per_epoch=10):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.train.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(config.train.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_then_cosine(tmp_path):
    config = tiny_config(tmp_path, tmp_path, train={"epochs": 10, "lr": 0.01, "warmup_epochs": 2,
                                                    "schedule": "cosine"})
    rates = lrs(config)
    assert rates[0] == pytest.approx(0.01 / 20)  # warm-up: 20 steps, linear
    assert rates[19] == pytest.approx(0.01)  # peak at the end of warm-up
    assert all(a < b for a, b in zip(rates[:20], rates[1:20]))
    assert all(a >= b for a, b in zip(rates[20:], rates[21:]))  # then it only decays
    assert rates[60] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert rates[-1] < 0.01 * 0.001


def test_constant_and_onecycle(tmp_path):
    constant = lrs(tiny_config(tmp_path, tmp_path, train={"epochs": 4, "lr": 0.02, "schedule": "constant"}))
    assert set(constant) == {0.02}
    onecycle = lrs(tiny_config(tmp_path, tmp_path, train={"epochs": 4, "lr": 0.02, "schedule": "onecycle",
                                                          "warmup_epochs": 1}))
    peak = onecycle.index(max(onecycle))
    assert max(onecycle) == pytest.approx(0.02) and 8 <= peak <= 11  # peak after about one epoch
    assert onecycle[0] < 0.002 and onecycle[-1] < 0.0002


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory):
    """A manifest with a fold column: 3 classes x 9 tracks, spread over 3 folds."""
    root = tmp_path_factory.mktemp("folds")
    rows = ["path,label,fold"]
    for c, label in enumerate(CLASSES):
        for i in range(9):
            write_audio(root / label / f"{i}.wav", class_signal(label, 1.0, seed=c * 100 + i))
            rows.append(f"{label}/{i}.wav,{label},{i % 3 + 1}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def run_cv(config_path, *extra):
    return subprocess.run([sys.executable, "train.py", "--config", str(config_path), "--cv", *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_cross_validation_trains_every_fold_and_summarizes(fold_data, tmp_path):
    raw = tiny_config_dict(tmp_path, fold_data / "index.csv", train={"epochs": 2}, data={"valid_fraction": 0.2})
    config_path = write_config(tmp_path / "cv.yaml", raw)
    result = run_cv(config_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert [row["fold"] for row in summary["folds"]] == [1, 2, 3]
    accuracies = [row["track_accuracy"] for row in summary["folds"]]
    assert summary["mean_track_accuracy"] == pytest.approx(sum(accuracies) / 3)
    assert summary["std_track_accuracy"] == pytest.approx(torch.tensor(accuracies).std().item(), abs=1e-6)
    assert all(row["test_tracks"] == 9 for row in summary["folds"])
    for fold in (1, 2, 3):  # each fold held out its own tracks
        report = json.loads((tmp_path / "run" / f"fold-{fold}" / "eval_best_test.json").read_text())
        assert {t["path"].split("/")[-1] for t in report["tracks"]} == {f"{i}.wav" for i in range(9) if i % 3 + 1 == fold}
    assert "mean track accuracy" in result.stdout

    again = run_cv(config_path)  # finished folds with the same config are kept, not retrained
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("fold already trained") == 3

    changed = run_cv(config_path, "--set", "train.epochs=3")
    assert changed.returncode == 2 and "another config" in changed.stderr and "Traceback" not in changed.stderr


def test_cross_validation_needs_folds(tmp_path, class_folder):
    config_path = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, class_folder))
    result = run_cv(config_path)
    assert result.returncode == 2
    assert "fold column" in result.stderr and "Traceback" not in result.stderr
