"""End to end: train.py, evaluate.py and predict.py as a user runs them, on a tiny 3-class dataset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    CLASSES,
    REPO_ROOT,
    class_signal,
    make_class_folder,
    tiny_config_dict,
    write_audio,
    write_config,
    write_garbage,
)
from genrenet import cli
from genrenet.config import from_dict, load_config
from genrenet.errors import UserError
from genrenet.models import count_parameters
from genrenet.registry import build_model

EPOCHS = 3


def run_script(script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once for the whole module: (workdir, config path, config dict, completed train.py process)."""
    work = tmp_path_factory.mktemp("e2e")
    data = make_class_folder(work / "data", per_class=8, seconds=2.0)
    raw = tiny_config_dict(work, data, train={"epochs": EPOCHS})
    cfg = write_config(work / "cfg.yaml", raw)
    result = run_script("train.py", "--config", cfg)
    return work, cfg, raw, result


def test_train_writes_run_directory(trained):
    work, cfg, raw, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    run = work / "run"
    assert {"config.yaml", "metrics.jsonl", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # the resolved config is written, and it loads back to the very same config
    assert load_config(run / "config.yaml") == from_dict(raw)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        assert row["train_loss"] >= 0 and 0 <= row["valid_track_acc"] <= 1
        assert {"train_acc", "valid_loss", "valid_clip_acc", "lr"} <= set(row)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_train_prints_parameter_count(trained):
    _, _, raw, result = trained
    config = from_dict(raw)
    count = count_parameters(build_model(config, len(CLASSES)))
    assert f"model: small_cnn, {count:,} parameters" in result.stdout
    assert "data: 3 classes" in result.stdout


def test_evaluate_reports_accuracy(trained):
    work, _, _, _ = trained
    result = run_script("evaluate.py", "--checkpoint", work / "run" / "best.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    report = json.loads((work / "run" / "eval_best_test.json").read_text())
    assert report["split"] == "test"
    test_tracks = report["track"]["n"]
    assert test_tracks == len(report["tracks"]) >= 3
    clips_per_track = 4  # 2 s tracks in 0.5 s clips
    for level, total in (("track", test_tracks), ("clip", test_tracks * clips_per_track)):
        section = report[level]
        assert isinstance(section["accuracy"], float) and 0.0 <= section["accuracy"] <= 1.0
        assert section["n"] == total
        assert sum(map(sum, section["confusion_matrix"])) == total
        assert section["labels"] == list(CLASSES)
        low, high = section["accuracy_ci95"]
        assert 0 <= low <= section["accuracy"] <= high <= 1
    assert report["track"]["accuracy"] >= 0.9
    assert f"accuracy  {report['track']['accuracy']:.3f}" in result.stdout
    # the test tracks are exactly the tracks the training split held out
    assert all(Path(t["path"]).parent.name == t["label"] for t in report["tracks"])


@pytest.fixture(scope="module")
def fresh_files(trained):
    """New, unseen examples of each class."""
    work = trained[0]
    return {
        label: write_audio(work / "new" / f"unseen_{label}.wav", class_signal(label, 2.0, seed=777 + i))
        for i, label in enumerate(CLASSES)
    }


def test_predict_json_with_clips(trained, fresh_files):
    work = trained[0]
    result = run_script(
        "predict.py", "--checkpoint", work / "run" / "best.pt", work / "new", "--json", "--clips", "--top-k", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout)
    assert sorted(r["file"] for r in results) == sorted(str(p) for p in fresh_files.values())
    for item in results:
        label = Path(item["file"]).stem.removeprefix("unseen_")
        top = item["top"]
        assert len(top) == 2
        assert top[0]["label"] == label
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-3
        assert top[0]["probability"] > 0.5
        segments = item["clips"]
        assert [(s["start"], s["end"]) for s in segments] == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0)]
        assert all(s["label"] in CLASSES and 0 < s["probability"] <= 1 for s in segments)
        assert sum(s["label"] == label for s in segments) >= 3


def test_predict_bad_file_does_not_stop_the_good_one(trained, fresh_files):
    work = trained[0]
    bad = write_garbage(work / "new_bad" / "broken.wav")
    good = fresh_files["tone"]
    result = run_script("predict.py", "--checkpoint", work / "run" / "best.pt", bad, good, "--clips")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "broken.wav" in lines[0]
    out = result.stdout.splitlines()
    assert out[0] == str(good)
    assert out[1].split()[:2] == ["1.", "tone"]
    assert "clips (seconds, label, probability):" in result.stdout
    assert sum(1 for line in out if " - " in line) == 4  # one row per clip


def test_predict_piped_into_a_reader_that_stops_early(trained, fresh_files):
    work = trained[0]
    command = (
        f"{sys.executable} predict.py --checkpoint {work / 'run' / 'best.pt'} {work / 'new'} --segments "
        f"| head -n 1; exit ${{PIPESTATUS[0]}}"
    )
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == ""  # no BrokenPipeError traceback
    assert result.stdout.strip().endswith(".wav")


def test_unknown_config_key_is_one_line_error(trained):
    work, _, raw, _ = trained
    bad = dict(raw, train=dict(raw["train"], epoch=2), run={"dir": str(work / "never")})
    cfg = write_config(work / "bad.yaml", bad)
    result = run_script("train.py", "--config", cfg)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "unknown key 'train.epoch'" in lines[0]
    assert "did you mean 'train.epochs'" in lines[0]
    assert not (work / "never").exists()


def test_training_twice_into_same_run_dir_is_refused(trained):
    work, cfg, _, _ = trained
    best = work / "run" / "best.pt"
    before = best.stat().st_mtime_ns
    result = run_script("train.py", "--config", cfg, "--set", "train.epochs=1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "already holds a trained model" in lines[0] and "--overwrite" in lines[0]
    assert best.stat().st_mtime_ns == before
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == EPOCHS


# --- in-process checks of the same entry points (cheaper than a subprocess each) ----------------------


def test_overwrite_replaces_the_model(trained, capsys):
    work, cfg, _, _ = trained
    other = work / "run_overwrite"
    args = ["--config", str(cfg), "--set", f"run.dir={other}", "--set", "train.epochs=1"]
    assert cli.train_main(args) == 0
    assert cli.train_main(args) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert cli.train_main(args[:-1] + ["train.epochs=2", "--overwrite"]) == 0
    assert len((other / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_refuses_preprocessing_overrides(trained, capsys):
    work = trained[0]
    code = cli.evaluate_main(["--checkpoint", str(work / "run" / "best.pt"), "--set", "audio.sample_rate=16000"])
    assert code == 2
    assert "only data.* and train.device can change" in capsys.readouterr().err


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    assert cli.evaluate_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_evaluate_with_only_unreadable_test_tracks_is_a_user_error(trained):
    from genrenet.evaluation import evaluate

    work, _, raw, _ = trained
    rows = []
    for label in CLASSES:
        for path in sorted((work / "data" / label).glob("*.wav"))[:3]:
            rows.append(f"{path},{label},train")
        rows.append(f"{write_garbage(work / 'broken' / f'{label}.wav')},{label},test")
    manifest = work / "broken_manifest.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError):
        evaluate(work / "run" / "best.pt", "test", [f"data.path={manifest}"])


def test_evaluate_valid_split_matches_training_metrics(trained):
    # evaluation recomputes the split from the stored config: it must be the very split training validated on
    import torch

    from genrenet.evaluation import evaluate

    work = trained[0]
    best = work / "run" / "best.pt"
    stored = torch.load(best, weights_only=True)["metrics"]
    report = evaluate(best, "valid")
    assert report["track"]["accuracy"] == pytest.approx(stored["valid_track_acc"])
    assert report["clip"]["accuracy"] == pytest.approx(stored["valid_clip_acc"])
    assert report["split_source"] == "recorded at training"
    train_report = evaluate(best, "train")
    assert not {t["path"] for t in train_report["tracks"]} & {t["path"] for t in report["tracks"]}
