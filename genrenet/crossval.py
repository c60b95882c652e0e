"""Cross-validation: train and evaluate every fold of a dataset's fold column in one command.

    python train.py --config configs/esc10.yaml --cv

Fold K trains into <run.dir>/fold-K with fold K held out as the test split; the summary (mean
and sample standard deviation of track accuracy over folds) is printed and written to
<run.dir>/cv.json. A fold that already finished with the same config is kept (with the time
recorded when it was trained), and a fold that was interrupted is resumed, so a crashed
cross-validation continues where it stopped.
"""

import json
import statistics
import time
from pathlib import Path

from genrenet.checkpoint import load_checkpoint
from genrenet.config import Config, apply_overrides, from_dict, model_title, to_dict
from genrenet.datasets import find_tracks
from genrenet.errors import UserError
from genrenet.evaluation import evaluate
from genrenet.training import resume, train


def fold_numbers(config: Config) -> list[int]:
    folds = sorted({t.fold for t in find_tracks(config.data) if t.fold is not None})
    if len(folds) < 2:
        raise UserError("--cv needs data with a fold column holding two or more folds")
    return folds


def cross_validate(config: Config, overwrite: bool = False) -> dict:
    run_dir = Path(config.run.dir)
    earlier = _earlier_seconds(run_dir / "cv.json")
    rows = []
    for fold in fold_numbers(config):
        fold_config = from_dict(apply_overrides(to_dict(config), [f"data.fold={fold}", f"run.dir={run_dir / f'fold-{fold}'}"]))
        print(f"== fold {fold}: test on fold {fold}, train on the others ({fold_config.run.dir})")
        started = time.time()
        kept = _train_fold(fold_config, overwrite)
        report = evaluate(Path(fold_config.run.dir) / "best.pt", "test")
        seconds = round(time.time() - started, 1)
        if kept and fold in earlier:  # a kept fold's time is the one measured when it was trained
            seconds = earlier[fold]
        rows.append({"fold": fold, "track_accuracy": report["track"]["accuracy"],
                     "clip_accuracy": report["clip"]["accuracy"], "track_macro_f1": report["track"]["macro_f1"],
                     "test_tracks": report["track"]["n"], "seconds": seconds})
        print(f"fold {fold}: track accuracy {rows[-1]['track_accuracy']:.3f} on {rows[-1]['test_tracks']} tracks")

    accuracies = [row["track_accuracy"] for row in rows]
    summary = {"model": model_title(config), "data": config.data.path, "folds": rows,
               "mean_track_accuracy": statistics.mean(accuracies),
               "std_track_accuracy": statistics.stdev(accuracies),  # sample standard deviation over folds
               "mean_clip_accuracy": statistics.mean(row["clip_accuracy"] for row in rows),
               "seconds": round(sum(row["seconds"] for row in rows), 1)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cv.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"written to {run_dir / 'cv.json'}")
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", f"cross-validation of {summary['model']} on {summary['data']}",
             "fold  track acc  clip acc  macro F1  tracks  seconds"]
    lines += [f"{r['fold']:>4}  {r['track_accuracy']:9.3f}  {r['clip_accuracy']:8.3f}  {r['track_macro_f1']:8.3f}  "
              f"{r['test_tracks']:6d}  {r['seconds']:7.1f}" for r in summary["folds"]]
    lines.append(f"mean track accuracy {summary['mean_track_accuracy']:.3f} +/- {summary['std_track_accuracy']:.3f} "
                 f"(sample std over {len(summary['folds'])} folds); {summary['seconds']:.0f} s in all")
    return "\n".join(lines)


def _train_fold(config: Config, overwrite: bool) -> bool:
    """Train the fold, or keep / resume what an earlier invocation left there; True when kept as it was."""
    last = Path(config.run.dir) / "last.pt"
    if overwrite or not last.exists():
        train(config, overwrite=True)
        return False
    state = load_checkpoint(last)
    if state["config"] != to_dict(config):
        raise UserError(f"{config.run.dir} holds a run with another config; pass --overwrite to retrain it")
    if state.get("training_state", {}).get("finished", True):
        print(f"fold already trained; keeping {config.run.dir}")
        return True
    resume(config.run.dir)
    return False


def _earlier_seconds(summary_path: Path) -> dict[int, float]:
    """Per fold, the seconds an earlier cross-validation into the same folder recorded."""
    try:
        return {row["fold"]: row["seconds"] for row in json.loads(summary_path.read_text())["folds"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
