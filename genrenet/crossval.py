"""Cross-validation: train and evaluate every fold of a dataset's fold column in one command.

    python train.py --config configs/esc10.yaml --cv

Fold K trains into <run.dir>/fold-K with fold K held out as the test split; the summary (mean
and sample standard deviation of track accuracy over folds; with multi-label data, of track-level
macro PR-AUC and ROC-AUC) is printed and written to
<run.dir>/cv.json. A fold that already finished with the same config is kept (with the time
recorded in its folder when it was trained), and a fold that was interrupted is resumed, so a
crashed cross-validation continues where it stopped. A fold whose training was not timed in one
piece (resumed, or kept without a recorded time) has no time, and then neither has the total.
"""

import json
import statistics
import time
from pathlib import Path

from genrenet import distributed
from genrenet.checkpoint import load_checkpoint
from genrenet.config import Config, from_dict, to_dict, with_changes
from genrenet.datasets import find_tracks
from genrenet.errors import UserError
from genrenet.evaluation import default_report_path, evaluate, write_report
from genrenet.plots import draw_cross_validation, write_plot
from genrenet.training import resume, train

# Written into a fold's folder when the fold was trained in one piece: how long it took.
FOLD_TIME = "fold_time.json"


def fold_numbers(config: Config) -> list[int]:
    folds = sorted({t.fold for t in find_tracks(config.data) if t.fold is not None})
    if len(folds) < 2:
        raise UserError("--cv needs data with a fold column holding two or more folds")
    return folds


def cross_validate(config: Config, overwrite: bool = False, folds: list[int] | None = None) -> dict:
    """Train and test every fold (or the given ones) into <run.dir>/fold-K; the summary goes to cv.json."""
    run_dir = Path(config.run.dir)
    rows = []
    for fold in folds or fold_numbers(config):
        fold_config = with_changes(config, data={"fold": fold}, run={"dir": str(run_dir / f"fold-{fold}")})
        print(f"== fold {fold}: test on fold {fold}, train on the others ({fold_config.run.dir})")
        fold_dir = Path(fold_config.run.dir)
        started = time.time()
        outcome = _train_fold(fold_config, overwrite)
        # Under torchrun every rank evaluates (the feature store is filled by all of them); rank 0 writes.
        report = evaluate(fold_dir / "best.pt", "test")
        if distributed.is_main():
            write_report(report, default_report_path(fold_dir / "best.pt", "test"), plots=config.run.plots)
        if outcome == "trained":
            seconds = round(time.time() - started, 1)
            if distributed.is_main():
                (fold_dir / FOLD_TIME).write_text(json.dumps({"seconds": seconds}))
        elif outcome == "kept":  # the time measured when it was trained, if that was recorded
            seconds = _recorded_seconds(fold_dir)
        else:  # resumed: the part before the interruption was not timed
            seconds = None
        rows.append({"fold": fold, **fold_scores(report), "test_tracks": report["track"]["n"], "seconds": seconds})
        headline = HEADLINE[bool(report.get("multi_label"))]
        score = rows[-1][headline]
        shown = "-" if score is None else f"{score:.3f}"
        print(f"fold {fold}: {headline.replace('_', ' ')} {shown} on {rows[-1]['test_tracks']} tracks")

    summary = summarize(config, rows, multi_label=bool(report.get("multi_label")))
    if not distributed.is_main():
        return summary
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cv.json").write_text(json.dumps(summary, indent=2))
    chart = write_plot(draw_cross_validation(summary), run_dir / "cv.png") if config.run.plots else None
    print(format_summary(summary))
    print(f"written to {run_dir / 'cv.json'}" + (f" and {chart}" if chart else ""))
    return summary


# What each fold is summarized by: track accuracy, or for multi-label models macro PR-AUC.
HEADLINE = {False: "track_accuracy", True: "track_macro_pr_auc"}


def fold_scores(report: dict) -> dict:
    """A fold's test scores from its evaluation report."""
    track, clip = report["track"], report["clip"]
    if report.get("multi_label"):
        return {
            "track_macro_pr_auc": track["macro_pr_auc"],
            "track_macro_roc_auc": track["macro_roc_auc"],
            "clip_macro_pr_auc": clip["macro_pr_auc"],
            "track_macro_f1": track["macro_f1"],
        }
    return {
        "track_accuracy": track["accuracy"],
        "clip_accuracy": clip["accuracy"],
        "track_macro_f1": track["macro_f1"],
    }


def summarize(config: Config, rows: list[dict], multi_label: bool) -> dict:
    """Mean and sample standard deviation over folds of the headline scores (a multi-label fold
    whose test tracks leave a score undefined is left out of its mean)."""
    summary = {"model": config.model.name, "data": config.data.path, "folds": rows}
    if multi_label:
        summary["multi_label"] = True
        for name in ("track_macro_pr_auc", "track_macro_roc_auc"):
            values = [row[name] for row in rows if row[name] is not None]
            summary[f"mean_{name}"] = statistics.mean(values) if values else None
            summary[f"std_{name}"] = statistics.stdev(values) if len(values) > 1 else None
    else:
        accuracies = [row["track_accuracy"] for row in rows]
        summary["mean_track_accuracy"] = statistics.mean(accuracies)
        summary["std_track_accuracy"] = statistics.stdev(accuracies)  # sample standard deviation over folds
        summary["mean_clip_accuracy"] = statistics.mean(row["clip_accuracy"] for row in rows)
    summary["seconds"] = _total_seconds(rows)
    return summary


def format_summary(summary: dict) -> str:
    if summary.get("multi_label"):
        return _format_tag_summary(summary)
    lines = [
        "",
        f"cross-validation of {summary['model']} on {summary['data']}",
        "fold  track acc  clip acc  macro F1  tracks  seconds",
    ]
    lines += [
        f"{r['fold']:>4}  {r['track_accuracy']:9.3f}  {r['clip_accuracy']:8.3f}  {r['track_macro_f1']:8.3f}  "
        f"{r['test_tracks']:6d}  {_seconds_text(r['seconds']):>7}"
        for r in summary["folds"]
    ]
    lines.append(
        f"mean track accuracy {summary['mean_track_accuracy']:.3f} +/- {summary['std_track_accuracy']:.3f} "
        f"(sample std over {len(summary['folds'])} folds); {_total_text(summary)}"
    )
    return "\n".join(lines)


def _total_text(summary: dict) -> str:
    if summary["seconds"] is not None:
        return f"{summary['seconds']:.0f} s in all"
    return "no total time: some folds were resumed or kept without a recorded time"


def _format_tag_summary(summary: dict) -> str:
    lines = [
        "",
        f"cross-validation of {summary['model']} on {summary['data']} (several tags per track)",
        "fold  macro PR-AUC  macro ROC-AUC  clip PR-AUC  tracks  seconds",
    ]
    lines += [
        f"{r['fold']:>4}  {_score(r['track_macro_pr_auc']):>12}  {_score(r['track_macro_roc_auc']):>13}  "
        f"{_score(r['clip_macro_pr_auc']):>11}  {r['test_tracks']:6d}  {_seconds_text(r['seconds']):>7}"
        for r in summary["folds"]
    ]
    for name in ("pr", "roc"):
        mean, std = summary[f"mean_track_macro_{name}_auc"], summary[f"std_track_macro_{name}_auc"]
        lines.append(
            f"mean track macro {name.upper()}-AUC {_score(mean)} +/- {_score(std)} "
            f"(sample std over {len(summary['folds'])} folds)"
        )
    lines.append(_total_text(summary))
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _train_fold(config: Config, overwrite: bool) -> str:
    """Train the fold, or keep / resume what an earlier invocation left there: "trained", "kept" or "resumed"."""
    run_dir = Path(config.run.dir)
    last = run_dir / "last.pt"
    state = None if overwrite or not last.exists() else load_checkpoint(last)
    if state is not None:
        # compared as validated configs: keys added since (with their defaults) are no difference
        if to_dict(from_dict(state["config"], source=str(last))) != to_dict(config):
            raise UserError(f"{config.run.dir} holds a run with another config; pass --overwrite to retrain it")
        if state.get("training_state", {}).get("finished", True):
            print(f"fold already trained; keeping {config.run.dir}")
            return "kept"
    if distributed.is_main():
        (run_dir / FOLD_TIME).unlink(missing_ok=True)  # the fold trains now: an older recorded time no longer holds
    if state is None:
        train(config, overwrite=True)
        return "trained"
    resume(config.run.dir)
    return "resumed"


def _recorded_seconds(fold_dir: Path) -> float | None:
    """The training and test time recorded in a fold's folder when it was trained, if any."""
    try:
        return float(json.loads((fold_dir / FOLD_TIME).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _total_seconds(rows: list[dict]) -> float | None:
    times = [row["seconds"] for row in rows]
    return None if None in times else round(sum(times), 1)


def _seconds_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"
