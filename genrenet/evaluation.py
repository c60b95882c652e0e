"""Evaluation: scikit-learn reports of a checkpoint on one split, at clip and at track level.

Accuracy comes with a 95% Wilson confidence interval: on a few hundred tracks it spans about
+/-5 points, which is the honest resolution of such a test set.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support

from genrenet.config import Config, apply_overrides, crop_frames, from_dict, to_dict
from genrenet.datasets import find_tracks, load_split, split_tracks
from genrenet.device import resolve_device
from genrenet.errors import UserError
from genrenet.plots import draw_class_scores, draw_comparison, draw_confusion, write_plot
from genrenet.recorded_split import recorded_tracks
from genrenet.scores import clip_log_probs, per_clip, track_log_probs
from genrenet.trained import load_model


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy (with 95% CI), macro precision/recall/F1, per-class rows and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = list(range(len(labels)))
    correct, total = int((y_true == y_pred).sum()), len(y_true)
    interval = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average="macro", zero_division=0
    )
    per_class = classification_report(
        y_true, y_pred, labels=classes, target_names=labels, output_dict=True, zero_division=0
    )
    return {
        "n": total,
        "accuracy": accuracy_score(y_true, y_pred),
        "accuracy_ci95": [interval.low, interval.high],
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
        "per_class": {
            label: {k: per_class[label][k] for k in ("precision", "recall", "f1-score", "support")} for label in labels
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "labels": labels,
    }


def evaluate(checkpoint: str | Path, split: str = "test", overrides: list[str] = ()) -> dict:
    """Score a checkpoint on one split of its data: the report (write_report saves it as JSON)."""
    checkpoint = Path(checkpoint)
    trained = load_model(checkpoint)
    model, labels, state = trained.model, trained.labels, trained.checkpoint
    config = _with_overrides(trained.config, overrides)
    device = resolve_device(config.train.device)
    model.to(device)

    tracks, split_source = tracks_to_evaluate(state.get("split"), config, split)
    if not tracks:
        raise UserError(f"the {split} split has no tracks")
    unknown = sorted({t.label for t in tracks} - set(labels))
    if unknown:
        raise UserError(
            f"the {split} data has labels the checkpoint was not trained on: {', '.join(unknown)} "
            f"(checkpoint labels: {', '.join(labels)})"
        )
    data = load_split(tracks, labels, config, split)
    if not data.tracks:
        raise UserError(f"none of the {len(tracks)} {split} tracks could be read")

    clip_scores = clip_log_probs(model, data.features, device, window=crop_frames(config))
    clip_true = per_clip(data.targets, clip_scores)
    clip_pred = torch.cat(clip_scores).argmax(dim=1).tolist()
    track_probs = track_log_probs(clip_scores).exp()
    track_pred = track_probs.argmax(dim=1).tolist()
    report = {
        "checkpoint": str(checkpoint),
        "epoch": state["epoch"],
        "split": split,
        "model": config.model.name,
        "data": config.data.path,
        "split_source": split_source,
        "track_aggregation": "mean of clip log-probabilities",
        "clip": classification_metrics(clip_true, clip_pred, labels),
        "track": classification_metrics(data.targets, track_pred, labels),
        "tracks": [
            {
                "path": str(t.path),
                "label": t.label,
                "predicted": labels[p],
                "probabilities": {label: round(q, 5) for label, q in zip(labels, probs)},
            }
            for t, p, probs in zip(data.tracks, track_pred, track_probs.tolist())
        ],
    }
    return report


def tracks_to_evaluate(recorded: dict | None, config: Config, split: str) -> tuple[list, str]:
    """The split's tracks and where they come from: the split recorded at training whenever it
    applies, so files added or deleted since then never move a track between splits."""
    found = find_tracks(config.data, min_classes=1)
    if recorded is None:
        note = "drawn again from the files on disk (the checkpoint records no split)"
        print(f"note: the {split} split is {note}", file=sys.stderr)
        return split_tracks(found, config.data)[split], note
    tracks = recorded_tracks(recorded, found, config.data, split)
    if tracks is not None:
        return tracks, "recorded at training"
    note = f"drawn from {config.data.path}, which is not the data this model was trained and tested on"
    print(f"note: the {split} split is {note} (or other split settings were given)", file=sys.stderr)
    return split_tracks(found, config.data)[split], note


def write_report(report: dict, path: Path, plots: bool = True) -> list[Path]:
    """The report as JSON, its per-track predictions as CSV (same name, .csv) and, with plots, the
    track-level confusion matrix (<name>_confusion.png) and per-class scores (<name>_classes.png).
    A folder that cannot be written is one warning, never a lost report. Returns what was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        write_predictions_csv(report, path.with_suffix(".csv"))
    except OSError as error:
        print(
            f"warning: could not write the report to {path} ({error.strerror or error}); "
            "pass --output FILE to write it elsewhere",
            file=sys.stderr,
        )
        return []
    written = [path, path.with_suffix(".csv")]
    if plots:
        written += [
            write_plot(draw_confusion(report["track"]), path.with_name(f"{path.stem}_confusion.png")),
            write_plot(draw_class_scores(report["track"]), path.with_name(f"{path.stem}_classes.png")),
        ]
    return [p for p in written if p]


def write_predictions_csv(report: dict, path: Path) -> None:
    """One row per track: path, true label, predicted label and each class's probability (p_<class>)."""
    labels = report["track"]["labels"]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label", "predicted"] + [f"p_{label}" for label in labels])
        for track in report["tracks"]:
            writer.writerow(
                [track["path"], track["label"], track["predicted"]]
                + [track["probabilities"][label] for label in labels]
            )


def comparison(reports: list[dict]) -> dict:
    """What compare_reports prints, as data: per checkpoint, track accuracy (95% CI), macro F1, per-class F1."""
    return {
        "split": reports[0]["split"],
        "data": reports[0]["data"],
        "tracks": reports[0]["track"]["n"],
        "checkpoints": [
            {
                "key": key,
                "checkpoint": r["checkpoint"],
                "model": r["model"],
                "accuracy": r["track"]["accuracy"],
                "accuracy_ci95": r["track"]["accuracy_ci95"],
                "macro_f1": r["track"]["macro_f1"],
                "clip_accuracy": r["clip"]["accuracy"],
                "per_class_f1": {label: r["track"]["per_class"][label]["f1-score"] for label in r["track"]["labels"]},
            }
            for key, r in zip(_keys(reports), reports)
        ],
    }


def write_comparison(reports: list[dict], path: Path, plots: bool = True) -> list[Path]:
    """comparison() as JSON and, with plots, as one chart beside it (same name, .png)."""
    data = comparison(reports)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
    except OSError as error:
        print(f"warning: could not write the comparison to {path} ({error.strerror or error})", file=sys.stderr)
        return []
    chart = write_plot(draw_comparison(data), path.with_suffix(".png")) if plots else None
    return [p for p in (path, chart) if p]


def default_report_path(checkpoint: str | Path, split: str) -> Path:
    return Path(checkpoint).parent / f"eval_{Path(checkpoint).stem}_{split}.json"


def format_report(report: dict) -> str:
    lines = [
        f"{report['checkpoint']} (epoch {report['epoch']}, {report['model']}) on the {report['split']} split "
        f"of {report['data']}"
    ]
    for level in ("track", "clip"):
        m = report[level]
        low, high = m["accuracy_ci95"]
        lines += [
            "",
            f"== {level} level ({m['n']} {level}s"
            + (", decided by the mean of clip log-probabilities)" if level == "track" else ")"),
            f"accuracy  {m['accuracy']:.3f}  (95% CI {low:.3f}-{high:.3f})",
            f"macro     precision {m['macro_precision']:.3f}  recall {m['macro_recall']:.3f}  F1 {m['macro_f1']:.3f}",
            "",
            _class_table(m),
            "",
            "confusion matrix (rows: true, columns: predicted)",
            _confusion_table(m),
        ]
    return "\n".join(lines)


def compare_reports(reports: list[dict]) -> str:
    """Several checkpoints side by side on the same tracks: accuracy (95% CI), macro F1, per-class F1."""
    first = reports[0]
    lines = [
        f"{len(reports)} checkpoints on the same {first['split']} split of {first['data']} "
        f"({first['track']['n']} tracks; track level unless marked)",
        "",
    ]
    width = max(len(r["checkpoint"]) for r in reports)
    model_width = max(len(r["model"]) for r in reports + [{"model": "model"}])
    lines.append(
        f"   {'checkpoint':<{width}}  {'model':<{model_width}}  accuracy (95% CI)      macro F1  clip accuracy"
    )
    for key, r in zip(_keys(reports), reports):
        t = r["track"]
        lines.append(
            f"{key}  {r['checkpoint']:<{width}}  {r['model']:<{model_width}}  {t['accuracy']:.3f} "
            f"({t['accuracy_ci95'][0]:.3f}-{t['accuracy_ci95'][1]:.3f})  {t['macro_f1']:8.3f}  "
            f"{r['clip']['accuracy']:13.3f}"
        )
    labels = first["track"]["labels"]
    label_width = max(len(label) for label in labels + ["class"])
    lines += ["", "per-class F1", f"{'class':<{label_width}}  " + "  ".join(f"{k:>5}" for k in _keys(reports))]
    for label in labels:
        lines.append(
            f"{label:<{label_width}}  "
            + "  ".join(f"{r['track']['per_class'][label]['f1-score']:5.3f}" for r in reports)
        )
    return "\n".join(lines)


def _keys(reports: list[dict]) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(reports))]


def _class_table(m: dict) -> str:
    width = max(len(label) for label in m["labels"] + ["class"])
    rows = [f"{'class':<{width}}  precision  recall     F1  support"]
    for label in m["labels"]:
        r = m["per_class"][label]
        rows.append(
            f"{label:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1-score']:5.3f}  {int(r['support']):7d}"
        )
    return "\n".join(rows)


def _confusion_table(m: dict) -> str:
    labels, matrix = m["labels"], m["confusion_matrix"]
    width = max(len(label) for label in labels)
    short = [label[:10] for label in labels]
    cell = max(4, max(len(s) for s in short), len(str(max(max(row) for row in matrix))))
    rows = [" " * width + "  " + " ".join(f"{s:>{cell}}" for s in short)]
    rows += [f"{label:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row) for label, row in zip(labels, matrix)]
    return "\n".join(rows)


def _with_overrides(stored: Config, overrides: list[str]) -> Config:
    """Evaluation may point at another copy of the data or device, never change preprocessing."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not (key.startswith("data.") or key == "train.device"):
            raise UserError(
                f"--set {key}: only data.* and train.device can change at evaluation "
                "(the model was trained with the stored preprocessing)"
            )
    return from_dict(apply_overrides(to_dict(stored), overrides), source="checkpoint config with --set")
