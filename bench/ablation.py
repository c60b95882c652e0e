"""What each piece of the CNN recipe buys: 5-fold ESC-10 with one piece switched off at a time.

    python bench/ablation.py                          # every variant (about 23 min each on 2 cores)
    python bench/ablation.py --only full no_mixup     # some of them
    python bench/ablation.py --config my_esc10.yaml   # another base recipe (data with a fold column)

Each variant is `configs/esc10.yaml` (or --config) with the overrides below, cross-validated as
`python train.py --config configs/esc10.yaml --cv --set ...` would do it, into
<runs-dir>/<variant>. A variant whose folds already finished with the same config is kept, with
the times measured when it was trained, so variants can be run one at a time (or in separate
processes) and the table printed at the end. Prints the table and writes <runs-dir>/ablation.json.
Run it from the repository root: the configs' data and cache paths are relative to it.
"""

import argparse
import sys
from pathlib import Path

from genrenet.config import load_config
from genrenet.crossval import cross_validate
from table import report

# Variant name -> (what it changes, --set overrides). "full" is the config as it stands.
VARIANTS = {
    "full": ("the recipe as configured", []),
    "no_crop": ("whole clips instead of random crops (and whole-clip evaluation)", ["augment.crop_seconds=null"]),
    "no_gain": ("no random gain", ["augment.gain_db=0"]),
    "no_masks": ("no SpecAugment time and frequency masks", ["augment.freq_masks=0", "augment.time_masks=0"]),
    "no_mixup": ("no mixup", ["augment.mixup_alpha=0"]),
    "no_label_smoothing": ("no label smoothing", ["train.label_smoothing=0"]),
    "no_weight_decay": ("AdamW without weight decay", ["train.weight_decay=0"]),
    "constant_lr": (
        "constant learning rate, no warm-up or cosine decay",
        ["train.schedule=constant", "train.warmup_epochs=0"],
    ),
    "small_cnn": ("the original small_cnn in place of resnet_cnn", ["model.name=small_cnn"]),
    "no_augmentation": (
        "no crop, gain, masks or mixup at all",
        [
            "augment.crop_seconds=null",
            "augment.gain_db=0",
            "augment.freq_masks=0",
            "augment.time_masks=0",
            "augment.mixup_alpha=0",
        ],
    ),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/esc10.yaml")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    parser.add_argument("--runs-dir", default="runs/ablation")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs_dir)
    rows = []
    for name in args.only or list(VARIANTS):
        change, overrides = VARIANTS[name]
        print(f"\n=== {name}: {change} ===", flush=True)
        config = load_config(args.config, overrides + [f"run.dir={runs_dir / name}"])
        summary = cross_validate(config)
        rows.append(
            {
                "variant": name,
                "change": change,
                "overrides": overrides,
                "accuracy": summary["mean_track_accuracy"],
                "std": summary["std_track_accuracy"],
                "folds": [r["track_accuracy"] for r in summary["folds"]],
                "seconds": summary["seconds"],
            }
        )

    full = next((r["accuracy"] for r in rows if r["variant"] == "full"), None)
    header = ["variant", "5-fold accuracy", "vs full", "folds", "wall time", "change"]
    table = [
        [
            r["variant"],
            f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f}%",
            "-" if full is None or r["variant"] == "full" else f"{100 * (r['accuracy'] - full):+.1f}",
            " ".join(f"{100 * a:.1f}" for a in r["folds"]),
            _minutes(r["seconds"]),
            r["change"],
        ]
        for r in rows
    ]
    report(header, table, runs_dir / "ablation.json", {"config": args.config, "variants": rows})
    return 0


def _minutes(seconds: float | None) -> str:
    # None when some fold was resumed or kept from a run that did not record its time
    return "not timed" if seconds is None else f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    sys.exit(main())
