"""From scratch vs from the shipped musicnn tagger, side by side: ESC-10 (5-fold CV) and FSDD (official split).

    python bench/transfer.py                        # everything (about an hour on 2 CPU cores)
    python bench/transfer.py --datasets fsdd        # one dataset
    python bench/transfer.py --quick                # smoke test: 2 folds, 2 epochs

Three ways to a classifier, each the shipped config that the README's command runs:
    scratch     the residual CNN trained from scratch       configs/esc10.yaml, configs/fsdd.yaml
    frozen      musicnn frozen, a linear head on its stored  configs/esc10_musicnn.yaml, configs/fsdd_musicnn.yaml
                clip embeddings
    fine-tuned  musicnn's mid and back end fine-tuned        configs/esc10_musicnn_tuned.yaml, ..._tuned.yaml
                under a new head
Every run starts from an empty feature store of its own (<runs-dir>/cache-<dataset>-<way>), so the
times include decoding and features (for frozen: running the tagger once over every clip). Runs go
to --runs-dir (default runs/bench), never to the configs' run.dir. Run it from the repository root.
"""

import argparse
import sys
import time
from pathlib import Path

from cnn_vs_svm import fmt_acc, quick

from genrenet.config import load_config
from genrenet.crossval import cross_validate, fold_numbers
from genrenet.evaluation import evaluate
from genrenet.training import train
from table import report

WAYS = ("scratch", "frozen", "fine-tuned")
BENCHES = {
    "esc10": {
        "protocol": "5-fold CV",
        "scratch": "configs/esc10.yaml",
        "frozen": "configs/esc10_musicnn.yaml",
        "fine-tuned": "configs/esc10_musicnn_tuned.yaml",
    },
    "fsdd": {
        "protocol": "official split",
        "scratch": "configs/fsdd.yaml",
        "frozen": "configs/fsdd_musicnn.yaml",
        "fine-tuned": "configs/fsdd_musicnn_tuned.yaml",
    },
}


def run(config_path: str, run_dir: Path, cache: Path, cv: bool, is_quick: bool) -> dict:
    """Train (every fold with cv) and test one config; accuracy and wall time, store filled included."""
    config = load_config(config_path, [f"run.dir={run_dir}", f"data.cache_dir={cache}", "run.plots=false"])
    config = quick(config) if is_quick else config
    started = time.time()
    if cv:
        summary = cross_validate(config, overwrite=True, folds=fold_numbers(config)[:2] if is_quick else None)
        row = {
            "accuracy": summary["mean_track_accuracy"],
            "std": summary["std_track_accuracy"],
            "folds": [r["track_accuracy"] for r in summary["folds"]],
        }
    else:
        train(config, overwrite=True)
        track = evaluate(run_dir / "best.pt", "test")["track"]
        row = {"accuracy": track["accuracy"], "ci95": track["accuracy_ci95"], "n": track["n"]}
    return {**row, "model": config.model.name, "seconds": time.time() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(BENCHES), default=["esc10", "fsdd"])
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--runs-dir", default="runs/bench", help="where the bench's runs go (default runs/bench)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 folds, 2 epochs")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    results = []
    for name in args.datasets:
        bench = BENCHES[name]
        for way in args.ways:
            print(f"\n=== {name}: {way} ({bench[way]}) ===", flush=True)
            label = f"{name}_{way}"
            row = run(
                bench[way], runs_dir / label, runs_dir / f"cache-{label}", bench["protocol"].endswith("CV"), args.quick
            )
            row.update(dataset=name, protocol=bench["protocol"] + (" (quick)" if args.quick else ""), way=way)
            row["config"] = bench[way]
            results.append(row)
    header = ["dataset", "protocol", "way", "model", "accuracy", "wall time"]
    table = [
        [r["dataset"], r["protocol"], r["way"], r["model"], fmt_acc(r), f"{r['seconds'] / 60:.1f} min"] for r in results
    ]
    report(header, table, runs_dir / "transfer.json", {"quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
