"""Several labels per track: a manifest's labels column, multi-hot training with binary
cross-entropy, per-tag thresholds in the checkpoint, and tag reports checked against sklearn.

The generated tracks each sound 1 to 3 tones out of five tag frequencies (one track sounds none:
"no tag"); a CNN pooling over time only (it keeps the frequency rows apart) learns them in a few
epochs.
"""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from conftest import REPO_ROOT, tiny_config, tiny_config_dict, tone, write_audio, write_config
from genrenet.augment import mixup
from genrenet.checkpoint import load_checkpoint
from genrenet.config import crop_frames, from_dict
from genrenet.crossval import cross_validate
from genrenet.datasets import find_tracks, labels_of, load_split, split_tracks
from genrenet.errors import UserError
from genrenet.evaluation import compare_reports, evaluate, format_report, tag_metrics, write_comparison, write_report
from genrenet.recorded_split import recorded_tracks
from genrenet.scores import best_thresholds, clip_log_probs, track_probs
from genrenet.trained import load_model
from genrenet.training import resume, train, training_loss

TAGS = {"bass": 300.0, "hum": 700.0, "mid": 1300.0, "bright": 2100.0, "shrill": 3200.0}
SETTINGS = {
    "model": {"pooling": "time"},
    "train": {"epochs": 6, "batch_size": 8, "lr": 0.01, "label_smoothing": 0.05},
    "augment": {"mixup_alpha": 0.2},
    "run": {"log": ["jsonl", "csv"]},
}
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def make_tagged(root: Path, tracks: int = 45, seed: int = 0, column: str = "") -> Path:
    """root/tNN.wav, each 1-3 tag tones (track 0: none, a quiet hiss), and root/tags.csv with
    path,labels (and the fold column NN % 3 + 1 when column="fold")."""
    rng = np.random.default_rng(seed)
    header = "path,labels" + (",fold" if column == "fold" else "")
    rows = [header]
    for i in range(tracks):
        tags = [] if i == 0 else sorted(rng.choice(sorted(TAGS), size=1 + i % 3, replace=False))
        x = sum((tone(TAGS[t] * rng.uniform(0.98, 1.02), 2.0, amp=0.6 / len(tags)) for t in tags), np.zeros(16000))
        write_audio(root / f"t{i:02d}.wav", x + 0.02 * rng.standard_normal(len(x)))
        rows.append(f"t{i:02d}.wav,{';'.join(tags)}" + (f",{i % 3 + 1}" if column == "fold" else ""))
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root / "tags.csv"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_manifest(tmp_path: Path, text: str) -> Path:
    for name in ("a.wav", "b.wav", "c.wav"):
        write_audio(tmp_path / name, tone(440.0, 0.5))
    (tmp_path / "m.csv").write_text(text)
    return tmp_path / "m.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One multi-label run (6 epochs) on 45 tagged tracks; its config dict and run directory."""
    work = tmp_path_factory.mktemp("tags")
    raw = tiny_config_dict(work, make_tagged(work / "data"), **SETTINGS)
    started = time.time()
    with one_thread():  # as the train.py processes below run, so the resumed run compares exactly
        train(tiny_config(work, raw["data"]["path"], **SETTINGS), overwrite=True)
    print(f"\nmulti-label training: {time.time() - started:.1f} s")
    return raw, work / "run"


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- data -----------------------------------------------------------------------------------


def test_labels_column_gives_sorted_tags_and_their_union(tmp_path):
    manifest = write_manifest(tmp_path, "path,labels\na.wav, rock ; indie;\nb.wav,jazz\nc.wav,\n")
    tracks = find_tracks(tiny_config(tmp_path, manifest).data)
    assert [t.tags for t in tracks] == [("indie", "rock"), ("jazz",), ()]
    assert [t.label for t in tracks] == ["indie;rock", "jazz", ""]  # what the recorded split keeps
    assert labels_of(tracks) == ["indie", "jazz", "rock"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label,labels\na.wav,x,y\n", "both a label and a labels column"),
        ("path,labels\na.wav,rock;indie;rock\n", "m.csv:2: tag 'rock' is given twice"),
        ("path,labels\na.wav,rock\nb.wav,x\na.wav,indie\n", "m.csv:4: 'a.wav' is labelled 'indie' here but 'rock'"),
        ("path,labels\na.wav,rock\nb.wav,rock\n", "holds only one tag (rock)"),
        ("path\na.wav\n", "need path,label, or path,labels"),
    ],
)
def test_manifest_mistakes_are_one_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_tracks(tiny_config(tmp_path, write_manifest(tmp_path, text)).data)


def test_stratified_split_keeps_every_tag_in_training(tmp_path):
    config = tiny_config(tmp_path, make_tagged(tmp_path / "data"))
    splits = split_tracks(find_tracks(config.data), config.data)
    assert sum(len(s) for s in splits.values()) == 45
    every_tag = {tag for t in splits["train"] for tag in t.tags}
    assert every_tag == set(TAGS)
    assert {tag for t in splits["test"] for tag in t.tags} == set(TAGS)  # the rarest tag is spread too


def test_a_tag_with_no_training_track_is_refused(tmp_path):
    manifest = write_manifest(tmp_path, "path,labels,split\na.wav,x;y,train\nb.wav,x,valid\nc.wav,z,test\n")
    with pytest.raises(UserError, match="tag\\(s\\) with no training track: z$"):
        train(tiny_config(tmp_path, manifest))


def test_recorded_split_finds_multi_label_tracks_again(tmp_path):
    from genrenet.recorded_split import record_split

    config = tiny_config(tmp_path, make_tagged(tmp_path / "data", tracks=12))
    found = find_tracks(config.data)
    splits = split_tracks(found, config.data)
    record = json.loads(json.dumps(record_split(splits, config.data)))  # as split.json keeps it
    assert recorded_tracks(record, found, config.data, "test") == splits["test"]


def test_classic_models_refuse_tags_before_any_features(tmp_path):
    raw = tiny_config_dict(tmp_path, make_tagged(tmp_path / "data", tracks=6))
    raw["model"] = {"name": "svm"}
    config = from_dict(raw)
    with pytest.raises(UserError, match="svm takes one label per track"):
        train(config)
    assert not (tmp_path / "cache").exists()


# --- loss, mixup, thresholds ----------------------------------------------------------------


def test_mixup_mixes_multi_hot_targets():
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    x = torch.randn(4, 1, 4, 4)
    torch.manual_seed(0)
    _, targets = mixup(x, y, 3, alpha=1.0)
    torch.manual_seed(0)  # the same draws again: lam, then the partner of each example
    lam, perm = torch.distributions.Beta(1.0, 1.0).sample().item(), torch.randperm(4)
    assert torch.allclose(targets, lam * y.float() + (1 - lam) * y[perm].float())
    assert mixup(x, y, 3, alpha=0.0)[1].tolist() == y.tolist()


def test_multi_label_loss_is_binary_cross_entropy_with_smoothing():
    logits, target = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    loss = training_loss(logits, target, smoothing=0.1, multi_label=True)
    p = torch.sigmoid(logits)
    smoothed = torch.tensor([[0.95, 0.05]])
    expected = -(smoothed * p.log() + (1 - smoothed) * (1 - p).log()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_thresholds_maximize_f1_midway_and_default_where_uninformed():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    p = np.array([[0.9, 0.1, 0.5], [0.3, 0.2, 0.6], [0.7, 0.3, 0.7], [0.4, 0.1, 0.2]])
    assert best_thresholds(y, p) == pytest.approx([0.55, 0.5, 0.5])  # between 0.4 and 0.7; no positives; all


def test_tag_metrics_match_sklearn_and_report_an_absent_tag():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.4).astype(int)
    y[:, 2] = 0  # no track has tag c
    p = np.clip(y * 0.4 + rng.random((40, 4)) * 0.6, 0, 1)
    thresholds = [0.5, 0.4, 0.5, 0.6]
    m = tag_metrics(y, p, ["a", "b", "c", "d"], thresholds)
    kept = [0, 1, 3]
    said = (p >= thresholds).astype(int)
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y[:, kept], p[:, kept], average="macro"))
    assert m["macro_pr_auc"] == pytest.approx(average_precision_score(y[:, kept], p[:, kept], average="macro"))
    assert m["micro_roc_auc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert m["micro_pr_auc"] == pytest.approx(average_precision_score(y, p, average="micro"))
    macro = precision_recall_fscore_support(y, said, labels=kept, average="macro", zero_division=0)
    assert [m["macro_precision"], m["macro_recall"], m["macro_f1"]] == pytest.approx(list(macro[:3]))
    assert m["per_tag"]["d"]["roc_auc"] == pytest.approx(roc_auc_score(y[:, 3], p[:, 3]))
    assert m["absent"] == ["c"]
    assert m["per_tag"]["c"]["roc_auc"] is None and m["per_tag"]["c"]["f1-score"] is None
    assert m["per_tag"]["c"]["said"] == int(said[:, 2].sum()) > 0
    json.dumps(m, allow_nan=False)  # no NaN in the report


# --- a trained multi-label model --------------------------------------------------------------


def test_training_writes_multi_label_checkpoints_with_thresholds(trained):
    _, run = trained
    best = load_checkpoint(run / "best.pt")
    assert best["multi_label"] is True and best["labels"] == sorted(TAGS)
    assert len(best["thresholds"]) == 5 and all(0 < t < 1 for t in best["thresholds"])
    assert load_checkpoint(run / "last.pt")["multi_label"] is True
    rows = metrics(run)
    assert {"valid_loss", "valid_roc_auc", "valid_pr_auc"} <= set(rows[-1])
    # best.pt is the epoch of the highest validation macro PR-AUC (the first such, on a tie lower loss)
    best_row = max(rows, key=lambda r: (r["valid_pr_auc"], -r["valid_loss"]))
    assert best["epoch"] == best_row["epoch"]
    assert (run / "learning_curves.png").stat().st_size > 0
    with open(run / "metrics.csv") as file:
        table = list(csv.DictReader(file))
    assert [float(r["valid_pr_auc"]) for r in table] == pytest.approx([r["valid_pr_auc"] for r in rows])


def test_evaluation_is_well_above_chance_and_matches_sklearn(trained):
    raw, run = trained
    report = evaluate(run / "best.pt")
    track = report["track"]
    trained_model = load_model(run / "best.pt")
    config = trained_model.config
    tracks = recorded_tracks(trained_model.checkpoint["split"], find_tracks(config.data), config.data, "test")
    data = load_split(tracks, trained_model.labels, config, "test", multi_label=True)
    scores = clip_log_probs(trained_model.model, data.features, "cpu", window=crop_frames(config), multi_label=True)
    probs, y = track_probs(scores, multi_label=True).numpy(), np.asarray(data.targets)
    chance = y.mean()  # a random scorer's expected PR-AUC: the share of positive decisions
    print(f"\ntest macro PR-AUC {track['macro_pr_auc']:.3f} (chance {chance:.3f}), ROC-AUC {track['macro_roc_auc']}")
    assert track["macro_pr_auc"] > 0.9 > chance + 0.4
    assert track["macro_roc_auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert track["macro_pr_auc"] == pytest.approx(average_precision_score(y, probs, average="macro"))
    said = (probs >= np.asarray(trained_model.thresholds)).astype(int)
    f1 = precision_recall_fscore_support(y, said, average=None, zero_division=0)[2]
    assert [track["per_tag"][tag]["f1-score"] for tag in sorted(TAGS)] == pytest.approx(list(f1))
    assert report["tracks"][0]["predicted"] == [
        tag for tag, q, cut in zip(sorted(TAGS), probs[0], trained_model.thresholds) if q >= cut
    ]


def test_report_files_text_and_comparison(trained, tmp_path):
    _, run = trained
    report, other = evaluate(run / "best.pt"), evaluate(run / "last.pt")
    written = write_report(report, tmp_path / "eval.json")
    assert [p.name for p in written] == ["eval.json", "eval.csv", "eval_tags.png", "eval_curves.png"]
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "path,labels,predicted," + ",".join(f"p_{t}" for t in sorted(TAGS))
    assert len(rows) == 1 + report["track"]["n"]
    text = format_report(report)
    assert "macro     ROC-AUC" in text and "shrill" in text and "threshold" in text
    assert "2 checkpoints" in compare_reports([report, other])
    assert [p.name for p in write_comparison([report, other], tmp_path / "cmp.json")] == ["cmp.json", "cmp.png"]
    single = {**report, "multi_label": False}
    with pytest.raises(UserError, match="cannot compare a multi-label"):
        compare_reports([report, single])


def test_a_single_label_checkpoint_refuses_tagged_data(tmp_path, class_folder):
    train(tiny_config(tmp_path, class_folder, train={"epochs": 1}))
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "multi_label" not in best and "thresholds" not in best  # single-label checkpoints as before
    manifest = make_tagged(tmp_path / "tagged", tracks=20)
    with pytest.raises(UserError, match="gives one class per track, but the test data has several tags"):
        evaluate(tmp_path / "run" / "best.pt", overrides=[f"data.path={manifest}"])


def test_ctrl_c_then_resume_matches_the_uninterrupted_run(trained, tmp_path):
    raw, reference = trained
    config = write_config(tmp_path / "c.yaml", {**raw, "run": {"dir": str(tmp_path / "run")}})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config)], env=ENV)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # stopped by Ctrl-C, with a resumable last.pt
    assert not load_checkpoint(run / "last.pt")["training_state"]["finished"]
    with one_thread():
        resume(run)
    got, expected = metrics(run), metrics(reference)
    assert [r["epoch"] for r in got] == list(range(1, 7))
    for mine, theirs in zip(got, expected):
        for key in set(theirs) - {"seconds"}:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (mine["epoch"], key)
    assert load_checkpoint(run / "best.pt")["thresholds"] == pytest.approx(
        load_checkpoint(reference / "best.pt")["thresholds"], abs=1e-6
    )


def test_cross_validation_summarizes_macro_pr_and_roc_auc(tmp_path):
    manifest = make_tagged(tmp_path / "data", tracks=30, column="fold")
    config = tiny_config(tmp_path, manifest, **{**SETTINGS, "train": {**SETTINGS["train"], "epochs": 3}})
    summary = cross_validate(config)
    assert [row["fold"] for row in summary["folds"]] == [1, 2, 3]
    assert summary["mean_track_macro_pr_auc"] == pytest.approx(
        np.mean([row["track_macro_pr_auc"] for row in summary["folds"]])
    )
    assert summary["std_track_macro_roc_auc"] is not None
    saved = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert saved["multi_label"] is True and (tmp_path / "run" / "cv.png").exists()


def test_two_processes_gather_validation_scores(tmp_path):
    from test_distributed import torchrun

    raw = tiny_config_dict(tmp_path, make_tagged(tmp_path / "data", tracks=24), **SETTINGS)
    raw["train"]["epochs"] = 2
    config = write_config(tmp_path / "c.yaml", raw)
    done = subprocess.run(torchrun("--config", str(config)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("macro ROC-AUC") == 2  # one epoch line each, from rank 0 alone
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["multi_label"] is True and len(best["thresholds"]) == 5
    # every validation track was scored (by one rank or the other) and gathered before the AUCs
    rows = metrics(tmp_path / "run")
    assert all(0 <= row["valid_pr_auc"] <= 1 for row in rows)
