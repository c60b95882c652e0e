"""CNN recipe vs the classic SVM, on ESC-10 (5-fold cross-validation) and FSDD (official split).

    python bench/cnn_vs_svm.py                      # everything (about 27 min on 2 CPU cores)
    python bench/cnn_vs_svm.py --datasets fsdd      # one dataset
    python bench/cnn_vs_svm.py --quick              # smoke test: 2 folds, 2 epochs

It runs what the README commands run, with the configs in configs/:
    python train.py --config configs/esc10.yaml --cv           (and configs/esc10_svm.yaml --cv)
    python train.py --config configs/fsdd.yaml                 (and configs/fsdd_svm.yaml)
    python evaluate.py --checkpoint runs/fsdd/best.pt
through the same functions (genrenet.crossval.cross_validate, genrenet.training.train,
genrenet.evaluation.evaluate), times each, prints a table and writes <runs-dir>/cnn_vs_svm.json.
Every run is retrained (runs go to --runs-dir, default runs/bench, never to the configs' run.dir).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from table import report  # noqa: E402
from genrenet.config import apply_overrides, from_dict, load_config, to_dict  # noqa: E402
from genrenet.crossval import cross_validate, fold_numbers  # noqa: E402
from genrenet.evaluation import evaluate  # noqa: E402
from genrenet.training import train  # noqa: E402

# The targets for the CNN: ESC-10 5-fold mean >= 92% in <= 30 min on 2 cores; FSDD >= 99.5%.
BENCHES = {
    "esc10": {"protocol": "5-fold CV", "cnn": "configs/esc10.yaml", "svm": "configs/esc10_svm.yaml",
              "target_acc": 0.92, "target_seconds": 30 * 60},
    "fsdd": {"protocol": "official split", "cnn": "configs/fsdd.yaml", "svm": "configs/fsdd_svm.yaml",
             "target_acc": 0.995, "target_seconds": None},
}


def run_cv(config_path: str, run_dir: Path, quick: bool) -> dict:
    overrides = [f"run.dir={run_dir}"]
    config = load_config(ROOT / config_path, overrides)
    if quick:
        overrides += ["train.epochs=2", "train.warmup_epochs=0"] if config.model.type == "cnn" else []
        config = load_config(ROOT / config_path, overrides)
        return _quick_cv(config)
    started = time.time()
    summary = cross_validate(config, overwrite=True)
    seconds = time.time() - started
    return {"model": _title(config), "accuracy": summary["mean_track_accuracy"],
            "std": summary["std_track_accuracy"], "folds": [r["track_accuracy"] for r in summary["folds"]],
            "seconds": seconds}


def _quick_cv(config) -> dict:
    """Like cross_validate, on the first two folds only (a smoke test)."""
    started, accuracies = time.time(), []
    for fold in fold_numbers(config)[:2]:
        fold_config = from_dict(apply_overrides(to_dict(config), [f"data.fold={fold}",
                                                                  f"run.dir={Path(config.run.dir) / f'fold-{fold}'}"]))
        train(fold_config, overwrite=True)
        accuracies.append(evaluate(Path(fold_config.run.dir) / "best.pt", "test")["track"]["accuracy"])
    return {"model": _title(config), "accuracy": statistics.mean(accuracies), "std": statistics.stdev(accuracies),
            "folds": accuracies, "seconds": time.time() - started}


def run_split(config_path: str, run_dir: Path, quick: bool) -> dict:
    overrides = [f"run.dir={run_dir}"]
    config = load_config(ROOT / config_path, overrides)
    if quick and config.model.type == "cnn":
        config = load_config(ROOT / config_path, overrides + ["train.epochs=2", "train.warmup_epochs=0"])
    started = time.time()
    train(config, overwrite=True)
    report = evaluate(run_dir / "best.pt", "test")
    seconds = time.time() - started
    track = report["track"]
    return {"model": _title(config), "accuracy": track["accuracy"], "ci95": track["accuracy_ci95"],
            "n": track["n"], "seconds": seconds}


def _title(config) -> str:
    return f"{config.model.name} (cnn)" if config.model.type == "cnn" else config.model.type


def fmt_acc(row: dict) -> str:
    if "std" in row:
        return f"{100 * row['accuracy']:.1f} ± {100 * row['std']:.1f}%"
    low, high = row["ci95"]
    return f"{100 * row['accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(BENCHES), default=["esc10", "fsdd"])
    parser.add_argument("--runs-dir", default="runs/bench", help="where the bench's runs go (default runs/bench)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 folds, 2 CNN epochs")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_absolute():
        runs_dir = ROOT / runs_dir

    import os
    os.chdir(ROOT)  # the configs' data and cache paths are relative to the repository root
    results = []
    for name in args.datasets:
        bench = BENCHES[name]
        runner = run_cv if bench["protocol"].endswith("CV") else run_split
        pair = {}
        for kind in ("svm", "cnn"):
            print(f"\n=== {name}: {kind} ({bench[kind]}) ===", flush=True)
            row = runner(bench[kind], runs_dir / f"{name}_{kind}", args.quick)
            row.update(dataset=name, protocol=bench["protocol"] + (" (quick)" if args.quick else ""),
                       kind=kind, config=bench[kind])
            if kind == "cnn":
                row["target"] = (f">= {100 * bench['target_acc']:.1f}%" +
                                 (f", <= {bench['target_seconds'] // 60} min" if bench["target_seconds"] else ""))
                row["met"] = row["accuracy"] >= bench["target_acc"] and (
                    bench["target_seconds"] is None or row["seconds"] <= bench["target_seconds"])
            pair[kind] = row
            results.append(row)
        pair["cnn"]["cnn_above_svm"] = pair["cnn"]["accuracy"] > pair["svm"]["accuracy"]

    header = ["dataset", "protocol", "model", "accuracy", "wall time", "target", "met", "CNN above SVM"]
    table = [[r["dataset"], r["protocol"], r["model"], fmt_acc(r), f"{r['seconds'] / 60:.1f} min",
              r.get("target", "-"), ("yes" if r["met"] else "no") if "met" in r else "-",
              ("yes" if r["cnn_above_svm"] else "no") if "cnn_above_svm" in r else "-"] for r in results]
    report(header, table, runs_dir / "cnn_vs_svm.json", {"quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
