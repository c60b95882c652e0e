"""Training: read a config, build the splits and their cached features, fit a model, keep the best.

A run directory receives the resolved config (config.yaml), one JSON line of metrics per epoch
(metrics.jsonl), best.pt (highest validation track accuracy) and last.pt.
"""

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from genrenet.cache import cached_features
from genrenet.checkpoint import save_checkpoint
from genrenet.config import Config, load_config, to_dict
from genrenet.datasets import ClipDataset, Track, find_tracks, labels_of, split_tracks
from genrenet.errors import UserError, cli_entry
from genrenet.models import build_model, count_parameters
from genrenet.scores import clip_log_probs, track_log_probs


@dataclass
class SplitData:
    """The tracks of one split that could be read, with their features and label indices."""
    tracks: list[Track]
    features: list[torch.Tensor]
    targets: list[int]

    @property
    def clip_count(self) -> int:
        return sum(len(f) for f in self.features)


def load_split(tracks: list[Track], labels: list[str], config: Config, name: str) -> SplitData:
    """Features of a split's tracks from the cache (computed where missing); unreadable files are
    skipped and summarized, so one bad file never stops a run."""
    features, failures = cached_features([t.path for t in tracks], config, desc=f"{name} features")
    if failures:
        shown = "; ".join(list(failures.values())[:3])
        print(f"warning: skipped {len(failures)} of {len(tracks)} {name} files that could not be read: {shown}"
              + (" ..." if len(failures) > 3 else ""))
    index = {label: i for i, label in enumerate(labels)}
    kept = [i for i, f in enumerate(features) if f is not None]
    return SplitData([tracks[i] for i in kept], [features[i] for i in kept], [index[tracks[i].label] for i in kept])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda, but no CUDA GPU is visible to PyTorch (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def evaluate_split(model, data: SplitData, device) -> dict:
    """Loss and accuracy at clip and track level, for validation during training."""
    clip_scores = clip_log_probs(model, data.features, device)
    clip_targets = torch.cat([torch.full((len(s),), t) for s, t in zip(clip_scores, data.targets)])
    all_clips = torch.cat(clip_scores)
    track_decision = track_log_probs(clip_scores).argmax(dim=1)
    return {"loss": torch.nn.functional.nll_loss(all_clips, clip_targets).item(),
            "clip_acc": (all_clips.argmax(dim=1) == clip_targets).float().mean().item(),
            "track_acc": (track_decision == torch.tensor(data.targets)).float().mean().item()}


def train(config: Config, overwrite: bool = False) -> Path:
    """Train as the config says and return the run directory."""
    run_dir = Path(config.run.dir)
    if (run_dir / "best.pt").exists() and not overwrite:
        raise UserError(f"{run_dir} already holds a trained model; pass --overwrite to replace it "
                        f"or choose another folder with --set run.dir=PATH")
    device = resolve_device(config.train.device)
    generator = seed_everything(config.train.seed)

    splits = split_tracks(find_tracks(config.data), config.data)
    labels = labels_of(splits["train"] + splits["valid"] + splits["test"])
    train_data = load_split(splits["train"], labels, config, "train")
    valid_data = load_split(splits["valid"], labels, config, "valid")
    if not train_data.tracks:
        raise UserError("no training track could be read")
    print(f"data: {len(labels)} classes; train {len(train_data.tracks)} tracks ({train_data.clip_count} clips), "
          f"valid {len(valid_data.tracks)} tracks ({valid_data.clip_count} clips), test {len(splits['test'])} tracks")

    model = build_model(config.model, len(labels), config.features.n_mels).to(device)
    print(f"model: {config.model.name}, {count_parameters(model):,} parameters; device: {device}")

    loader = torch.utils.data.DataLoader(ClipDataset(train_data.features, train_data.targets),
                                         batch_size=config.train.batch_size, shuffle=True, generator=generator,
                                         drop_last=train_data.clip_count > config.train.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.train.epochs * len(loader))
    use_amp = device.type == "cuda" and config.train.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    metrics_log = run_dir / "metrics.jsonl"
    metrics_log.write_text("")
    best = (-1.0, math.inf)
    for epoch in range(1, config.train.epochs + 1):
        started = time.time()
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.train.epochs}", unit="batch", leave=False)
        for x, y, _ in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)["logits"]
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(dim=1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")

        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "lr": scheduler.get_last_lr()[0]}
        if valid_data.tracks:
            row.update({f"valid_{k}": v for k, v in evaluate_split(model, valid_data, device).items()})
        row["seconds"] = round(time.time() - started, 2)
        with open(metrics_log, "a") as log:
            log.write(json.dumps(row) + "\n")

        state = {"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "config": to_dict(config), "labels": labels, "epoch": epoch, "metrics": row}
        save_checkpoint(run_dir / "last.pt", **state)
        score = (row.get("valid_track_acc", row["train_acc"]), row.get("valid_loss", row["train_loss"]))
        improved = score[0] > best[0] or (score[0] == best[0] and score[1] < best[1])
        if improved:
            best = score
            save_checkpoint(run_dir / "best.pt", **state)
        valid_text = (f" | valid loss {row['valid_loss']:.3f} clip acc {row['valid_clip_acc']:.3f} "
                      f"track acc {row['valid_track_acc']:.3f}" if valid_data.tracks else "")
        print(f"epoch {epoch:3d} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}{valid_text} "
              f"| {row['seconds']:.1f}s{' *' if improved else ''}", flush=True)
    print(f"saved {run_dir / 'best.pt'} (epoch with the best validation track accuracy) and {run_dir / 'last.pt'}")
    return run_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train an audio classifier from a YAML config.")
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--fold", type=int, help="test fold of a dataset with a fold column (same as data.fold)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in run.dir")
    return parser.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    overrides = args.overrides + ([f"data.fold={args.fold}"] if args.fold is not None else [])
    train(load_config(args.config, overrides), overwrite=args.overwrite)
    return 0
