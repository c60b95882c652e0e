"""PNG plots of what the commands write as JSON, each drawn from that JSON's data alone.

Every `draw_*` function takes the plain data (metrics.jsonl rows, an evaluation report's
track-level metrics, cv.json, ...) and returns a matplotlib Figure; `write_plot` saves it. The
Agg backend renders without a display, so plots work on servers and in CI.
"""

import sys
from pathlib import Path

import numpy as np

MANY_CLASSES = 20  # above this, a confusion matrix shows colours without numbers in its cells


def write_plot(figure, path: Path) -> Path | None:
    """Save a figure as PNG; a folder that cannot be written is one warning, never a lost run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except OSError as error:
        print(f"warning: could not write the plot {path} ({error.strerror or error})", file=sys.stderr)
        return None
    return path


def _figure(width: float, height: float, columns: int = 1):
    # matplotlib is imported here, not at the top: it takes about a second, and only plots need it.
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def draw_learning_curves(rows: list[dict]):
    """Loss, accuracy (multi-label: tag accuracy and validation macro ROC-AUC and PR-AUC) and
    learning rate per epoch, from metrics.jsonl rows."""
    figure, (loss, accuracy, lr) = _figure(13, 3.8, columns=3)
    epochs = [row["epoch"] for row in rows]
    scores = ("train_acc", "valid_clip_acc", "valid_track_acc", "valid_roc_auc", "valid_pr_auc")
    for axes, keys in ((loss, ("train_loss", "valid_loss")), (accuracy, scores), (lr, ("lr",))):
        for key in keys:
            values = [np.nan if row.get(key) is None else row[key] for row in rows]
            if not all(np.isnan(values)):
                axes.plot(epochs, values, marker="o", label=key)
        axes.set_xlabel("epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend()
    loss.set_title("loss")
    accuracy.set_title("accuracy and AUC" if any("valid_pr_auc" in row for row in rows) else "accuracy")
    accuracy.set_ylim(0, 1.02)
    lr.set_title("learning rate (end of epoch)")
    return figure


def draw_confusion(metrics: dict):
    """The confusion matrix as counts and as row-normalised fractions (rows: true class)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    labels, counts = metrics["labels"], np.array(metrics["confusion_matrix"])
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = max(5.0, 0.32 * len(labels) + 2.5)
    figure, (left, right) = _figure(2 * side + 1, side, columns=2)
    many = len(labels) > MANY_CLASSES
    for axes, matrix, title, fmt in ((left, counts, "counts", "d"), (right, fractions, "row-normalised", ".2f")):
        ConfusionMatrixDisplay(matrix, display_labels=labels).plot(
            ax=axes,
            include_values=not many,
            values_format=fmt,
            xticks_rotation="vertical",
            colorbar=False,
            cmap="Blues",
        )
        axes.set_title(f"{title} ({int(counts.sum())} tracks)")
        if many:
            axes.tick_params(labelsize=7)
    return figure


def draw_class_scores(metrics: dict):
    """Precision, recall and F1 of each class as grouped horizontal bars."""
    labels = metrics["labels"]
    figure, (axes,) = _figure(8, max(3.5, 0.3 * len(labels) * 1.5 + 1.5))
    y = np.arange(len(labels))
    for i, key in enumerate(("precision", "recall", "f1-score")):
        axes.barh(y + (i - 1) * 0.27, [metrics["per_class"][label][key] for label in labels], height=0.27, label=key)
    axes.set_yticks(y, labels)
    axes.invert_yaxis()  # first class on top, as in the text report
    axes.set_xlim(0, 1)
    axes.set_xlabel("score")
    axes.set_title(f"per-class scores (accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f})")
    axes.legend(loc="lower right")
    return figure


def draw_tag_scores(metrics: dict):
    """ROC-AUC, PR-AUC and F1 of each tag as grouped horizontal bars; an absent tag has none."""
    labels = metrics["labels"]
    figure, (axes,) = _figure(8, max(3.5, 0.3 * len(labels) * 1.5 + 1.5))
    y = np.arange(len(labels))
    for i, key in enumerate(("roc_auc", "pr_auc", "f1-score")):
        values = [metrics["per_tag"][label][key] for label in labels]
        axes.barh(y + (i - 1) * 0.27, [np.nan if v is None else v for v in values], height=0.27, label=key)
    axes.set_yticks(y, [f"{label} (absent)" if label in metrics["absent"] else label for label in labels])
    axes.invert_yaxis()  # first tag on top, as in the text report
    axes.set_xlim(0, 1)
    axes.set_xlabel("score")
    macro = f"macro ROC-AUC {_text(metrics['macro_roc_auc'])}, PR-AUC {_text(metrics['macro_pr_auc'])}"
    axes.set_title(f"per-tag scores ({macro})")
    axes.legend(loc="lower right")
    return figure


def draw_tag_curves(report: dict):
    """Precision-recall and ROC curves of each tag the tracks have (sklearn's displays), from a
    multi-label evaluation report's per-track tags and probabilities."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    metrics, tracks = report["track"], report["tracks"]
    figure, (pr, roc) = _figure(13, 5, columns=2)
    for label in metrics["labels"]:
        truth = [label in track["labels"] for track in tracks]
        if not any(truth):
            continue  # absent: no curve
        scores = [track["probabilities"][label] for track in tracks]
        PrecisionRecallDisplay.from_predictions(truth, scores, name=label, ax=pr)
        if not all(truth):
            RocCurveDisplay.from_predictions(truth, scores, name=label, ax=roc)
    pr.set_title(f"precision-recall per tag ({metrics['n']} tracks)")
    roc.set_title("ROC per tag")
    return figure


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def draw_tag_comparison(comparison: dict):
    """Several multi-label checkpoints on the same tracks: macro ROC-AUC and PR-AUC, and per-tag PR-AUC."""
    entries = comparison["checkpoints"]
    labels = list(entries[0]["per_tag_pr_auc"])
    figure, (left, right) = _figure(13, max(4.0, 0.3 * len(labels) * len(entries) / 2 + 2), columns=2)
    keys = [f"{e['key']}: {e['model']}" for e in entries]
    x = np.arange(len(entries))
    for i, name in enumerate(("macro_roc_auc", "macro_pr_auc")):
        values = [np.nan if e[name] is None else e[name] for e in entries]
        left.bar(x + (i - 0.5) * 0.4, values, width=0.4, label=name)
    left.set_xticks(x, keys)
    left.set_ylim(0, 1.02)
    left.set_title("track level")
    left.legend(loc="lower right")
    rows = [[entry["per_tag_pr_auc"].get(label) for label in labels] for entry in entries]
    _grouped_bars(right, labels, keys, rows, "per-tag PR-AUC")
    return figure


def _grouped_bars(axes, labels: list[str], keys: list[str], rows: list[list], title: str) -> None:
    """One horizontal bar per label and key (rows[key][label], None left blank), grouped by label."""
    y, height = np.arange(len(labels)), 0.8 / len(keys)
    for i, (key, values) in enumerate(zip(keys, rows)):
        axes.barh(y + i * height, [np.nan if v is None else v for v in values], height=height, label=key)
    axes.set_yticks(y + height * (len(keys) - 1) / 2, labels)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_title(title)
    axes.legend(loc="lower right")


def draw_cross_validation(summary: dict):
    """Track accuracy (multi-label: macro PR-AUC) of each fold, with the mean and a band of one
    sample standard deviation."""
    figure, (axes,) = _figure(6, 4)
    key = "track_macro_pr_auc" if summary.get("multi_label") else "track_accuracy"
    folds = [str(row["fold"]) for row in summary["folds"]]
    values = [np.nan if row[key] is None else row[key] for row in summary["folds"]]
    axes.bar(folds, values, color="tab:blue", label="fold")
    mean, std = summary[f"mean_{key}"], summary[f"std_{key}"]
    if mean is not None:
        axes.axhline(mean, color="black", label=f"mean {mean:.3f} ± {_text(std)}")
        axes.axhspan(mean - (std or 0), mean + (std or 0), color="gray", alpha=0.25)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("test fold")
    axes.set_ylabel(key.replace("_", " "))
    axes.set_title(f"cross-validation of {summary['model']}")
    axes.legend(loc="lower right")
    return figure


def draw_comparison(comparison: dict):
    """Several checkpoints on the same tracks: accuracy with its 95% CI, and per-class F1."""
    entries = comparison["checkpoints"]
    labels = list(entries[0]["per_class_f1"])
    figure, (left, right) = _figure(13, max(4.0, 0.3 * len(labels) * len(entries) / 2 + 2), columns=2)
    keys = [f"{e['key']}: {e['model']}" for e in entries]
    accuracy = np.array([e["accuracy"] for e in entries])
    low, high = np.array([e["accuracy_ci95"] for e in entries]).T
    left.bar(keys, accuracy, yerr=[accuracy - low, high - accuracy], capsize=6, color="tab:blue")
    left.set_ylim(0, 1.02)
    left.set_title("track accuracy (95% CI)")
    rows = [[entry["per_class_f1"][label] for label in labels] for entry in entries]
    _grouped_bars(right, labels, keys, rows, "per-class F1")
    return figure


def draw_timeline(results: list[dict]):
    """One lane per file: its sections (genrenet.classifier finds them) coloured by label."""
    lanes = [(r["file"], r["sections"]) for r in results]
    names = sorted({s["label"] for _, parts in lanes for s in parts})
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    figure, (axes,) = _figure(12, max(2.5, 1.2 + 0.6 * len(lanes)))
    for lane, (_, parts) in enumerate(lanes):
        axes.broken_barh(
            [(s["start"], s["end"] - s["start"]) for s in parts],
            (lane - 0.4, 0.8),
            facecolors=[colours[s["label"]] for s in parts],
        )
    axes.set_yticks(range(len(lanes)), [Path(name).name for name, _ in lanes])
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("sections (consecutive clips of one label, after smoothing)")
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(color=colours[n], label=n) for n in names], loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure
