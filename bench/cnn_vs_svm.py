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
Run it from the repository root: the configs' data and cache paths are relative to it.
"""

import argparse
import sys
import time
from pathlib import Path

from genrenet.config import load_config, with_changes
from genrenet.crossval import cross_validate, fold_numbers
from genrenet.evaluation import evaluate
from genrenet.registry import model_entry
from genrenet.training import train
from table import report

# The targets for the CNN: ESC-10 5-fold mean >= 92% in <= 30 min on 2 cores; FSDD >= 99.5%.
BENCHES = {
    "esc10": {
        "protocol": "5-fold CV",
        "cnn": "configs/esc10.yaml",
        "svm": "configs/esc10_svm.yaml",
        "target_acc": 0.92,
        "target_seconds": 30 * 60,
    },
    "fsdd": {
        "protocol": "official split",
        "cnn": "configs/fsdd.yaml",
        "svm": "configs/fsdd_svm.yaml",
        "target_acc": 0.995,
        "target_seconds": None,
    },
}


def quick(config):
    """Smoke-test settings: 2 epochs without warm-up for a model trained by steps."""
    return (
        config
        if model_entry(config.model.name).fitted
        else with_changes(config, train={"epochs": 2, "warmup_epochs": 0})
    )


def run_cv(config_path: str, run_dir: Path, is_quick: bool) -> dict:
    config = load_config(config_path, [f"run.dir={run_dir}"])
    if is_quick:
        config = quick(config)
    started = time.time()
    summary = cross_validate(config, overwrite=True, folds=fold_numbers(config)[:2] if is_quick else None)
    seconds = time.time() - started
    return {
        "model": _title(config),
        "accuracy": summary["mean_track_accuracy"],
        "std": summary["std_track_accuracy"],
        "folds": [r["track_accuracy"] for r in summary["folds"]],
        "seconds": seconds,
    }


def run_split(config_path: str, run_dir: Path, is_quick: bool) -> dict:
    config = load_config(config_path, [f"run.dir={run_dir}"])
    if is_quick:
        config = quick(config)
    started = time.time()
    train(config, overwrite=True)
    report = evaluate(run_dir / "best.pt", "test")
    seconds = time.time() - started
    track = report["track"]
    return {
        "model": _title(config),
        "accuracy": track["accuracy"],
        "ci95": track["accuracy_ci95"],
        "n": track["n"],
        "seconds": seconds,
    }


def _title(config) -> str:
    return config.model.name


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
    results = []
    for name in args.datasets:
        bench = BENCHES[name]
        runner = run_cv if bench["protocol"].endswith("CV") else run_split
        pair = {}
        for kind in ("svm", "cnn"):
            print(f"\n=== {name}: {kind} ({bench[kind]}) ===", flush=True)
            row = runner(bench[kind], runs_dir / f"{name}_{kind}", args.quick)
            row.update(
                dataset=name,
                protocol=bench["protocol"] + (" (quick)" if args.quick else ""),
                kind=kind,
                config=bench[kind],
            )
            if kind == "cnn":
                row["target"] = f">= {100 * bench['target_acc']:.1f}%" + (
                    f", <= {bench['target_seconds'] // 60} min" if bench["target_seconds"] else ""
                )
                row["met"] = row["accuracy"] >= bench["target_acc"] and (
                    bench["target_seconds"] is None or row["seconds"] <= bench["target_seconds"]
                )
            pair[kind] = row
            results.append(row)
        pair["cnn"]["cnn_above_svm"] = pair["cnn"]["accuracy"] > pair["svm"]["accuracy"]

    header = ["dataset", "protocol", "model", "accuracy", "wall time", "target", "met", "CNN above SVM"]
    table = [
        [
            r["dataset"],
            r["protocol"],
            r["model"],
            fmt_acc(r),
            f"{r['seconds'] / 60:.1f} min",
            r.get("target", "-"),
            ("yes" if r["met"] else "no") if "met" in r else "-",
            ("yes" if r["cnn_above_svm"] else "no") if "cnn_above_svm" in r else "-",
        ]
        for r in results
    ]
    report(header, table, runs_dir / "cnn_vs_svm.json", {"quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
