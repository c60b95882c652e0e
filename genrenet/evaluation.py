"""Evaluation: scikit-learn reports of a checkpoint on one split, at clip and at track level.

Accuracy comes with a 95% Wilson confidence interval: on a few hundred tracks it spans about
+/-5 points, which is the honest resolution of such a test set.

A multi-label checkpoint (tags) is reported per tag and as macro and micro means: ROC-AUC and
PR-AUC (average precision) of the tag probabilities, and precision, recall and F1 of the tags said
at the checkpoint's thresholds. A tag that none of the evaluated tracks has is reported as absent
and left out of the macro means (which would otherwise count it as 0).
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from genrenet.config import Config, apply_overrides, crop_frames, from_dict, to_dict
from genrenet.datasets import TAG_SEPARATOR, find_tracks, is_multi_label, load_split, split_tracks, tags_of
from genrenet.device import resolve_device
from genrenet.errors import UserError
from genrenet.plots import (
    draw_class_scores,
    draw_comparison,
    draw_confusion,
    draw_tag_comparison,
    draw_tag_curves,
    draw_tag_scores,
    write_plot,
)
from genrenet.recorded_split import recorded_tracks
from genrenet.scores import clip_log_probs, per_clip, tag_aucs, track_log_probs, track_probs
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


def tag_metrics(y_true, probs, labels: list[str], thresholds: list[float]) -> dict:
    """Multi-label metrics from sklearn: per tag ROC-AUC, PR-AUC (average precision), and
    precision, recall, F1 of the tags said at the thresholds, with support; their macro means over
    the tags present (None where no tag has a value) and micro means over every decision."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float)
    said = (probs >= np.asarray(thresholds)).astype(int)
    aucs = tag_aucs(y_true, probs)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, said, average=None, zero_division=0)
    present = [i for i in range(len(labels)) if support[i]]
    macro = precision_recall_fscore_support(y_true, said, labels=present, average="macro", zero_division=0)
    micro = precision_recall_fscore_support(y_true, said, average="micro", zero_division=0)
    positives = int(y_true.sum())
    per_tag = {}
    for i, label in enumerate(labels):
        values = (aucs["roc_auc"][i], aucs["pr_auc"][i], precision[i], recall[i], f1[i]) if support[i] else [None] * 5
        names = ("roc_auc", "pr_auc", "precision", "recall", "f1-score")
        per_tag[label] = {**dict(zip(names, values)), "threshold": thresholds[i], "support": int(support[i])}
        per_tag[label]["said"] = int(said[:, i].sum())  # of an absent tag: its false alarms
    micro_roc = roc_auc_score(y_true, probs, average="micro") if 0 < positives < y_true.size else None
    micro_pr = average_precision_score(y_true, probs, average="micro") if positives else None
    return {
        "n": len(y_true),
        "labels": labels,
        "macro_roc_auc": _number(aucs["macro_roc_auc"]),
        "macro_pr_auc": _number(aucs["macro_pr_auc"]),
        "micro_roc_auc": _number(micro_roc),
        "micro_pr_auc": _number(micro_pr),
        **{f"macro_{name}": float(v) if present else None for name, v in zip(("precision", "recall", "f1"), macro)},
        **{f"micro_{name}": float(v) for name, v in zip(("precision", "recall", "f1"), micro)},
        "absent": [labels[i] for i in range(len(labels)) if not support[i]],
        "per_tag": per_tag,
    }


def _number(value: float) -> float | None:
    """A float for JSON: NaN (undefined) as None."""
    return None if value is None or not np.isfinite(value) else float(value)


def evaluate(checkpoint: str | Path, split: str = "test", overrides: list[str] = ()) -> dict:
    """Score a checkpoint on one split of its data: the report (write_report saves it as JSON)."""
    checkpoint = Path(checkpoint)
    trained = load_model(checkpoint)
    labels, state = trained.labels, trained.checkpoint
    config = _with_overrides(trained.config, overrides)
    device = resolve_device(config.train.device)
    trained.model.to(device)

    if "tagger" in state:  # a built-in tagger was trained on none of the user's files: all of them are test data
        tracks, split_source = find_tracks(config.data, min_classes=1), f"every track (the built-in {state['tagger']})"
    else:
        tracks, split_source = tracks_to_evaluate(state.get("split"), config, split)
    if not tracks:
        raise UserError(f"the {split} split has no tracks")
    if is_multi_label(tracks) and not trained.multi_label:
        raise UserError(
            f"{checkpoint} gives one class per track, but the {split} data has several tags per track "
            "(a labels column); evaluate a model trained on such data"
        )
    unknown = sorted({tag for t in tracks for tag in tags_of(t)} - set(labels))
    if unknown:
        raise UserError(
            f"the {split} data has labels the checkpoint was not trained on: {', '.join(unknown)} "
            f"(checkpoint labels: {', '.join(labels)})"
        )
    data = load_split(tracks, labels, config, split, trained.multi_label)
    if not data.tracks:
        raise UserError(f"none of the {len(tracks)} {split} tracks could be read")
    header = {
        "checkpoint": str(checkpoint),
        "epoch": state.get("epoch"),  # None for a built-in tagger
        "split": split,
        "model": config.model.name,
        "data": config.data.path,
        "split_source": split_source,
    }
    scored = _tag_report if trained.multi_label else _class_report
    return {**header, **scored(trained, data, device, crop_frames(config))}


def _class_report(trained, data, device, window: int | None) -> dict:
    """A single-label model's clip and track metrics and per-track predictions."""
    labels = trained.labels
    clip_scores = clip_log_probs(trained.model, data.features, device, window=window)
    clip_true = per_clip(data.targets, clip_scores)
    clip_pred = torch.cat(clip_scores).argmax(dim=1).tolist()
    probabilities = track_log_probs(clip_scores).exp()
    track_pred = probabilities.argmax(dim=1).tolist()
    return {
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
            for t, p, probs in zip(data.tracks, track_pred, probabilities.tolist())
        ],
    }


def _tag_report(trained, data, device, window: int | None) -> dict:
    """A multi-label model's clip and track tag metrics (tag_metrics) at its thresholds, and per
    track its tags, the tags said and every tag's probability."""
    labels, thresholds = trained.labels, trained.tag_thresholds()
    clip_scores = clip_log_probs(trained.model, data.features, device, window=window, multi_label=True)
    probabilities = track_probs(clip_scores, multi_label=True)
    clip_true = per_clip(data.targets, clip_scores)
    return {
        "multi_label": True,
        "track_aggregation": "mean of clip tag probabilities",
        "thresholds": dict(zip(labels, thresholds)),
        "clip": tag_metrics(clip_true, torch.cat(clip_scores).exp().numpy(), labels, thresholds),
        "track": tag_metrics(data.targets, probabilities.numpy(), labels, thresholds),
        "tracks": [
            {
                "path": str(t.path),
                "labels": list(tags_of(t)),
                "predicted": [label for label, q, cut in zip(labels, probs, thresholds) if q >= cut],
                "probabilities": {label: round(q, 5) for label, q in zip(labels, probs)},
            }
            for t, probs in zip(data.tracks, probabilities.tolist())
        ],
    }


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
    track-level confusion matrix (<name>_confusion.png) and per-class scores (<name>_classes.png),
    or for a multi-label model the per-tag scores (<name>_tags.png) and each tag's precision-recall
    and ROC curves (<name>_curves.png).
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
    if plots and report.get("multi_label"):
        written += [
            write_plot(draw_tag_scores(report["track"]), path.with_name(f"{path.stem}_tags.png")),
            write_plot(draw_tag_curves(report), path.with_name(f"{path.stem}_curves.png")),
        ]
    elif plots:
        written += [
            write_plot(draw_confusion(report["track"]), path.with_name(f"{path.stem}_confusion.png")),
            write_plot(draw_class_scores(report["track"]), path.with_name(f"{path.stem}_classes.png")),
        ]
    return [p for p in written if p]


def write_predictions_csv(report: dict, path: Path) -> None:
    """One row per track: path, true label, predicted label and each class's probability (p_<class>);
    for a multi-label model its tags and the tags said, each joined by ';' (labels, predicted)."""
    labels = report["track"]["labels"]
    tagged = bool(report.get("multi_label"))
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "labels" if tagged else "label", "predicted"] + [f"p_{label}" for label in labels])
        for track in report["tracks"]:
            truth, said = (track["labels"], track["predicted"]) if tagged else ([track["label"]], [track["predicted"]])
            writer.writerow(
                [track["path"], TAG_SEPARATOR.join(truth), TAG_SEPARATOR.join(said)]
                + [track["probabilities"][label] for label in labels]
            )


def comparison(reports: list[dict]) -> dict:
    """What compare_reports prints, as data: per checkpoint, track accuracy (95% CI), macro F1,
    per-class F1; for multi-label models, macro ROC-AUC and PR-AUC, micro PR-AUC, per-tag PR-AUC."""
    if _multi_label(reports):
        return _tag_comparison(reports)
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


def _multi_label(reports: list[dict]) -> bool:
    """Whether the reports are of multi-label models; a mix cannot be compared."""
    kinds = {bool(r.get("multi_label")) for r in reports}
    if len(kinds) > 1:
        raise UserError("cannot compare a multi-label (tag) model with single-label ones: their metrics differ")
    return kinds.pop()


def _tag_comparison(reports: list[dict]) -> dict:
    return {
        "split": reports[0]["split"],
        "data": reports[0]["data"],
        "tracks": reports[0]["track"]["n"],
        "multi_label": True,
        "checkpoints": [
            {
                "key": key,
                "checkpoint": r["checkpoint"],
                "model": r["model"],
                **{name: r["track"][name] for name in ("macro_roc_auc", "macro_pr_auc", "micro_pr_auc", "macro_f1")},
                "clip_macro_pr_auc": r["clip"]["macro_pr_auc"],
                "per_tag_pr_auc": {label: r["track"]["per_tag"][label]["pr_auc"] for label in r["track"]["labels"]},
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
    draw = draw_tag_comparison if data.get("multi_label") else draw_comparison
    chart = write_plot(draw(data), path.with_suffix(".png")) if plots else None
    return [p for p in (path, chart) if p]


def default_report_path(checkpoint: str | Path, split: str) -> Path:
    return Path(checkpoint).parent / f"eval_{Path(checkpoint).stem}_{split}.json"


def format_report(report: dict) -> str:
    trained = "built-in tagger" if report["epoch"] is None else f"epoch {report['epoch']}"
    tracks = "every track" if report["epoch"] is None else f"the {report['split']} split"
    lines = [f"{report['checkpoint']} ({trained}, {report['model']}) on {tracks} of {report['data']}"]
    if report.get("multi_label"):
        return "\n".join(lines + _tag_lines(report))
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


def _tag_lines(report: dict) -> list[str]:
    """A multi-label report's lines: per level, macro and micro means, then one row per tag."""
    lines = []
    for level in ("track", "clip"):
        m = report[level]
        how = ", a tag's probability is the mean of its clips'" if level == "track" else ""
        lines += [
            "",
            f"== {level} level ({m['n']} {level}s{how}; tags said at the checkpoint's thresholds)",
            f"macro     ROC-AUC {_value(m['macro_roc_auc'])}  PR-AUC {_value(m['macro_pr_auc'])}  "
            f"precision {_value(m['macro_precision'])}  recall {_value(m['macro_recall'])}  F1 {_value(m['macro_f1'])}",
            f"micro     ROC-AUC {_value(m['micro_roc_auc'])}  PR-AUC {_value(m['micro_pr_auc'])}  "
            f"precision {_value(m['micro_precision'])}  recall {_value(m['micro_recall'])}  F1 {_value(m['micro_f1'])}",
            "",
            _tag_table(m),
        ]
        if m["absent"]:
            lines.append(f"absent from these {level}s (left out of the macro means): {', '.join(m['absent'])}")
    return lines


def _tag_table(m: dict) -> str:
    width = max(len(label) for label in m["labels"] + ["tag"])
    rows = [f"{'tag':<{width}}  ROC-AUC  PR-AUC  threshold  precision  recall     F1  support"]
    for label in m["labels"]:
        r = m["per_tag"][label]
        if not r["support"]:
            rows.append(f"{label:<{width}}  absent (said on {r['said']})")
            continue
        rows.append(
            f"{label:<{width}}  {_value(r['roc_auc']):>7}  {_value(r['pr_auc']):>6}  {r['threshold']:9.3f}  "
            f"{r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1-score']:5.3f}  {r['support']:7d}"
        )
    return "\n".join(rows)


def _value(value: float | None) -> str:
    """A metric to 3 decimals, or "-" where it is undefined (a tag on every track has no ROC-AUC)."""
    return "-" if value is None else f"{value:.3f}"


def compare_reports(reports: list[dict]) -> str:
    """Several checkpoints side by side on the same tracks: accuracy (95% CI), macro F1, per-class F1."""
    if _multi_label(reports):
        return _compare_tag_reports(reports)
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


def _compare_tag_reports(reports: list[dict]) -> str:
    """Multi-label checkpoints side by side: macro ROC-AUC and PR-AUC, micro PR-AUC, per-tag PR-AUC."""
    data = _tag_comparison(reports)
    width = max(len(e["checkpoint"]) for e in data["checkpoints"])
    lines = [
        f"{len(reports)} checkpoints on the same {data['split']} split of {data['data']} "
        f"({data['tracks']} tracks; track level unless marked)",
        "",
        f"   {'checkpoint':<{width}}  macro ROC-AUC  macro PR-AUC  micro PR-AUC  clip macro PR-AUC",
    ]
    for e in data["checkpoints"]:
        lines.append(
            f"{e['key']}  {e['checkpoint']:<{width}}  {_value(e['macro_roc_auc']):>13}  "
            f"{_value(e['macro_pr_auc']):>12}  {_value(e['micro_pr_auc']):>12}  {_value(e['clip_macro_pr_auc']):>17}"
        )
    labels = reports[0]["track"]["labels"]
    label_width = max(len(label) for label in labels + ["tag"])
    keys = [e["key"] for e in data["checkpoints"]]
    lines += ["", "per-tag PR-AUC", f"{'tag':<{label_width}}  " + "  ".join(f"{k:>5}" for k in keys)]
    for label in labels:
        values = [_value(e["per_tag_pr_auc"].get(label)) for e in data["checkpoints"]]
        lines.append(f"{label:<{label_width}}  " + "  ".join(f"{v:>5}" for v in values))
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
