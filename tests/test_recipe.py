"""The training recipe's schedule and the cross-validation driver (train.py --cv)."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import CLASSES, REPO_ROOT, class_signal, tiny_config, tiny_config_dict, write_audio, write_config
from genrenet.checkpoint import load_checkpoint, save_state
from genrenet.config import crop_frames, from_dict
from genrenet.scores import clip_log_probs, window_starts
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
    config = tiny_config(tmp_path, tmp_path, train={"epochs": 10, "lr": 0.01, "warmup_epochs": 2, "schedule": "cosine"})
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
    onecycle = lrs(
        tiny_config(tmp_path, tmp_path, train={"epochs": 4, "lr": 0.02, "schedule": "onecycle", "warmup_epochs": 1})
    )
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
    return subprocess.run(
        [sys.executable, "train.py", "--config", str(config_path), "--cv", *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
        assert {t["path"].split("/")[-1] for t in report["tracks"]} == {
            f"{i}.wav" for i in range(9) if i % 3 + 1 == fold
        }
    assert "mean track accuracy" in result.stdout

    again = run_cv(config_path)  # finished folds with the same config are kept, not retrained
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("fold already trained") == 3
    kept = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert all(r["seconds"] > 0 for r in summary["folds"])
    assert [r["seconds"] for r in kept["folds"]] == [r["seconds"] for r in summary["folds"]]  # training time kept

    (tmp_path / "run" / "fold-2" / "fold_time.json").unlink()  # kept without a recorded time: no time, no total
    untimed = run_cv(config_path)
    assert untimed.returncode == 0, untimed.stderr
    summary_untimed = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert [r["seconds"] is None for r in summary_untimed["folds"]] == [False, True, False]
    assert summary_untimed["seconds"] is None and "no total time" in untimed.stdout

    changed = run_cv(config_path, "--set", "train.epochs=3")
    assert changed.returncode == 2 and "another config" in changed.stderr and "Traceback" not in changed.stderr


def test_cross_validation_needs_folds(tmp_path, class_folder):
    config_path = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, class_folder))
    result = run_cv(config_path)
    assert result.returncode == 2
    assert "fold column" in result.stderr and "Traceback" not in result.stderr


# --- crops at training, windows of the crop's length at evaluation ---------------------------------


def test_window_starts_cover_the_clip_every_half_window():
    assert window_starts(216, 109) == [0, 54, 107]  # the last window ends at the clip's end
    assert window_starts(200, 100) == [0, 50, 100]
    assert window_starts(80, 100) == [0] and window_starts(100, 100) == [0]


class LengthRecorder(torch.nn.Module):
    """Logits that depend on the input's content, and a record of every input length it saw."""

    def __init__(self):
        super().__init__()
        self.lengths = []
        self.weights = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        self.lengths.append(x.shape[-1])
        return {"logits": x.mean(dim=(1, 3)) @ self.weights}


def test_windowed_clip_scores_average_the_windows_log_probabilities():
    model = LengthRecorder()
    clips = [torch.randn(3, 2, 40), torch.randn(1, 2, 40)]  # two tracks, [clips, mels, frames]
    scores = clip_log_probs(model, clips, torch.device("cpu"), window=16)
    assert set(model.lengths) == {16}  # the model never saw a whole clip
    clip = clips[0][1]
    expected = torch.stack(
        [torch.log_softmax(model(clip[None, None, :, s : s + 16])["logits"][0], dim=0) for s in (0, 8, 16, 24)]
    ).mean(dim=0)
    assert torch.allclose(scores[0][1], torch.log_softmax(expected, dim=0), atol=1e-5)
    assert [len(s) for s in scores] == [3, 1]
    assert torch.allclose(scores[1].exp().sum(dim=1), torch.ones(1))

    model.lengths.clear()
    whole = clip_log_probs(model, clips, torch.device("cpu"))
    assert set(model.lengths) == {40} and not torch.allclose(whole[0], scores[0])


def test_crop_config_scores_on_windows_of_the_crop(tmp_path):
    config = tiny_config(tmp_path, tmp_path, augment={"crop_seconds": 0.25})
    assert crop_frames(config) == round(0.25 * 8000 / 128) + 1
    assert crop_frames(tiny_config(tmp_path, tmp_path)) is None
    svm = tiny_config_dict(tmp_path, tmp_path, augment={"crop_seconds": 0.25})
    svm["model"] = {"name": "svm"}  # clip statistics have no time axis to crop
    assert crop_frames(from_dict(svm)) is None


# --- training on every non-test track, without a validation split ----------------------------------


def test_no_validation_split_keeps_the_final_epoch(class_folder, tmp_path):
    raw = tiny_config_dict(tmp_path, class_folder, data={"valid_fraction": 0.0}, train={"epochs": 3})
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(write_config(tmp_path / "c.yaml", raw))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "no validation split" in result.stdout
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and not any("valid_loss" in row for row in rows)
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == last["epoch"] == 3
    assert all(torch.equal(best["model_state"][k], last["model_state"][k]) for k in best["model_state"])
    train_tracks = sum(1 for t in (class_folder).rglob("*.wav")) - round(0.15 * 24)
    assert f"train {train_tracks} tracks" in result.stdout  # every non-test track trains


def test_early_stopping_without_validation_is_a_config_error(class_folder, tmp_path):
    raw = tiny_config_dict(tmp_path, class_folder, data={"valid_fraction": 0.0}, train={"early_stopping": 3})
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(write_config(tmp_path / "c.yaml", raw))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: train.early_stopping needs a validation split, but data.valid_fraction is 0"
    ]
    assert not (tmp_path / "run").exists()


def test_ablation_bench_switches_one_piece_off_per_variant(fold_data, tmp_path):
    raw = tiny_config_dict(
        tmp_path,
        fold_data / "index.csv",
        train={"epochs": 2, "label_smoothing": 0.1},
        data={"valid_fraction": 0.0},
        augment={"mixup_alpha": 0.2, "crop_seconds": 0.25},
    )
    config_path = write_config(tmp_path / "recipe.yaml", raw)
    result = subprocess.run(
        [
            sys.executable,
            "bench/ablation.py",
            "--config",
            str(config_path),
            "--runs-dir",
            str(tmp_path / "ablation"),
            "--only",
            "full",
            "no_mixup",
            "no_crop",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["full", "no_mixup", "no_crop"]
    assert all(len(v["folds"]) == 3 for v in report["variants"])
    configs = {
        v["variant"]: yaml.safe_load((tmp_path / "ablation" / v["variant"] / "fold-1" / "config.yaml").read_text())
        for v in report["variants"]
    }
    assert configs["full"]["augment"]["mixup_alpha"] == 0.2 and configs["no_mixup"]["augment"]["mixup_alpha"] == 0.0
    assert configs["no_crop"]["augment"]["crop_seconds"] is None and configs["no_crop"]["augment"]["mixup_alpha"] == 0.2
    full = report["variants"][0]["accuracy"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("no_mixup"))
    assert f"{100 * (report['variants'][1]['accuracy'] - full):+.1f}" in line


def test_a_fold_trained_before_new_config_keys_existed_is_kept(fold_data, tmp_path):
    """A fold whose stored config lacks keys added since (run.log, run.plots) has the same config
    once validated: cross-validation keeps it instead of asking for --overwrite."""
    from genrenet.crossval import cross_validate

    raw = tiny_config_dict(tmp_path, fold_data / "index.csv", train={"epochs": 1})
    cross_validate(from_dict(raw), folds=[1, 2])
    last = tmp_path / "run" / "fold-1" / "last.pt"
    state = torch.load(last, weights_only=True)
    for key in ("log", "plots"):
        state["config"]["run"].pop(key)
    save_state(state, last)
    summary = cross_validate(from_dict(raw), folds=[1, 2])
    assert [row["fold"] for row in summary["folds"]] == [1, 2]
