"""Training: read a config, build the splits and their cached features, fit a model, keep the best.

A run directory receives the resolved config (config.yaml), one JSON line of metrics per epoch
(metrics.jsonl), best.pt (highest validation track accuracy) and last.pt, which also holds
everything needed to continue the run (`train.py --resume RUN_DIR`).

Every epoch draws its shuffling and augmentation randomness from (seed, epoch) alone, so a run
continued from last.pt takes exactly the steps the uninterrupted run would have taken.
"""

import argparse
import json
import math
import signal
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from genrenet.augment import SpectrogramAugment, mixup
from genrenet.checkpoint import load_checkpoint, save_checkpoint
from genrenet.config import Config, crop_frames, from_dict, load_config, to_dict
from genrenet.datasets import ClipDataset, SplitData, find_tracks, labels_of, load_split, split_tracks
from genrenet.errors import UserError, cli_entry
from genrenet.models import build_model, check_model_name, count_parameters
from genrenet.scores import clip_log_probs, track_log_probs


class Interrupted(Exception):
    """Ctrl-C arrived; a resumable checkpoint has been written."""


class _StopRequest:
    """Turns the first Ctrl-C into a flag the loop checks between steps, so the checkpoint it
    writes is consistent; a second Ctrl-C stops at once."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda, but no CUDA GPU is visible to PyTorch (use auto or cpu)")
    return torch.device(name)


def evaluate_split(model, data: SplitData, device, window: int | None = None) -> dict:
    """Loss and accuracy at clip and track level, for validation during training."""
    clip_scores = clip_log_probs(model, data.features, device, window=window)
    clip_targets = torch.cat([torch.full((len(s),), t) for s, t in zip(clip_scores, data.targets)])
    all_clips = torch.cat(clip_scores)
    track_decision = track_log_probs(clip_scores).argmax(dim=1)
    return {"loss": torch.nn.functional.nll_loss(all_clips, clip_targets).item(),
            "clip_acc": (all_clips.argmax(dim=1) == clip_targets).float().mean().item(),
            "track_acc": (track_decision == torch.tensor(data.targets)).float().mean().item()}


def build_scheduler(optimizer, config: Config, steps_per_epoch: int):
    """Per-step learning-rate schedule: linear warm-up, then cosine decay, one-cycle or constant."""
    train = config.train
    total = train.epochs * steps_per_epoch
    if train.schedule == "onecycle":
        warm_share = train.warmup_epochs / train.epochs if train.warmup_epochs else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.lr, total_steps=total,
                                                   pct_start=warm_share)
    warmup = round(train.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_augment(config: Config) -> SpectrogramAugment:
    aug = config.augment
    frames_per_second = config.audio.sample_rate / config.features.hop_length
    return SpectrogramAugment(crop_frames=crop_frames(config), gain_db=aug.gain_db, freq_masks=aug.freq_masks,
                              freq_mask_width=aug.freq_mask_width, time_masks=aug.time_masks,
                              time_mask_width=aug.time_mask_width,
                              shift_frames=round(aug.time_shift_seconds * frames_per_second))


def prepare_data(config: Config):
    """(labels, train data, valid data or None, test tracks), with every check done before long work."""
    splits = split_tracks(find_tracks(config.data), config.data)
    # data.valid_fraction: 0 trains on every non-test track, with no validation: best.pt is then the final epoch.
    validating = bool(splits["valid"]) or config.data.valid_fraction > 0
    if not splits["valid"] and validating:
        raise UserError("the valid split has no tracks: raise data.valid_fraction or add valid rows to the manifest")
    if not validating and config.train.early_stopping:
        raise UserError("train.early_stopping needs a validation split, but data.valid_fraction is 0")
    labels = labels_of(splits["train"] + splits["valid"] + splits["test"])
    untrained = sorted(set(labels) - {t.label for t in splits["train"]})
    if untrained:
        raise UserError(f"class(es) with no training track: {', '.join(untrained)}")
    train_data = load_split(splits["train"], labels, config, "train")
    valid_data = load_split(splits["valid"], labels, config, "valid") if validating else None
    if not train_data.tracks or (valid_data is not None and not valid_data.tracks):
        raise UserError(f"no {'training' if not train_data.tracks else 'validation'} track could be read")
    return labels, train_data, valid_data, splits["test"]


def print_data_summary(labels, train_data: SplitData, valid_data: SplitData | None, test_tracks) -> None:
    valid = (f"valid {len(valid_data.tracks)} tracks ({valid_data.clip_count} clips)" if valid_data is not None
             else "no validation split (best.pt will be the final epoch)")
    print(f"data: {len(labels)} classes; train {len(train_data.tracks)} tracks ({train_data.clip_count} clips), "
          f"{valid}, test {len(test_tracks)} tracks")


def train(config: Config, overwrite: bool = False) -> Path:
    """Train as the config says and return the run directory."""
    run_dir = Path(config.run.dir)
    if (run_dir / "best.pt").exists() and not overwrite:
        raise UserError(f"{run_dir} already holds a trained model; pass --overwrite to replace it, "
                        f"--resume {run_dir} to continue it, or choose another folder with --set run.dir=PATH")
    check_model_name(config.model)  # before minutes of decoding, not after
    if config.model.type != "cnn":
        return _fit_classic(config, run_dir)
    return _fit(config, run_dir, resume_state=None)


def resume(run_dir: str | Path) -> Path:
    """Continue a run from its last.pt (after a crash, a kill or Ctrl-C) to its planned end."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    if "training_state" not in state:
        raise UserError(f"{run_dir / 'last.pt'} holds no training state to resume from")
    config = from_dict(state["config"], source=f"{run_dir / 'last.pt'} (stored config)")
    if state["training_state"]["finished"]:
        print(f"{run_dir} already finished its {state['epoch']} epochs; nothing to resume")
        return run_dir
    return _fit(config, run_dir, resume_state=state)


def _fit(config: Config, run_dir: Path, resume_state: dict | None) -> Path:
    device = resolve_device(config.train.device)
    labels, train_data, valid_data, test_tracks = prepare_data(config)
    print_data_summary(labels, train_data, valid_data, test_tracks)

    # Seed after the data is ready: filling the cache draws from the global RNG, reading it does not.
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, len(labels), config.features.n_mels).to(device)
    print(f"model: {config.model.name}, {count_parameters(model):,} parameters; device: {device}")
    augment = build_augment(config).to(device)
    dataset = ClipDataset(train_data.features, train_data.targets)
    batch_size = config.train.batch_size
    steps_per_epoch = max(1, len(dataset) // batch_size)  # drop the last partial batch: BatchNorm needs > 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    use_amp = device.type == "cuda" and config.train.amp
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # Where the run stands; saved in last.pt. running = [clips seen, loss sum, correct] of a part-done epoch.
    progress = {"epoch": 1, "batches_done": 0, "running": [0, 0.0, 0], "best": [-1.0, math.inf], "best_epoch": 0,
                "finished": False}
    metrics_log = run_dir / "metrics.jsonl"
    if resume_state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        metrics_log.write_text("")
    else:
        training_state = resume_state["training_state"]
        model.load_state_dict(resume_state["model_state"])
        optimizer.load_state_dict(training_state["optimizer"])
        scheduler.load_state_dict(training_state["scheduler"])
        scaler.load_state_dict(training_state["scaler"])
        progress.update({k: training_state[k] for k in ("epoch", "batches_done", "running", "best", "best_epoch")})
        _keep_logged_epochs(metrics_log, completed=progress["epoch"] - 1)
        print(f"resuming {run_dir} at epoch {progress['epoch']}"
              + (f", batch {progress['batches_done'] + 1}" if progress["batches_done"] else ""))

    def checkpoint(path, epoch, metrics, with_training_state):
        state = {"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "config": to_dict(config), "labels": labels, "epoch": epoch, "metrics": metrics}
        if with_training_state:
            state["training_state"] = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                **progress}
        save_checkpoint(path, **state)

    if resume_state is None:  # resumable from the start, even if killed before the first epoch ends
        checkpoint(run_dir / "last.pt", 0, {}, with_training_state=True)
    with _StopRequest() as stop:
        while progress["epoch"] <= config.train.epochs:
            epoch, skip = progress["epoch"], progress["batches_done"]
            started = time.time()
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(_epoch_seed(config, epoch)))
            if skip and resume_state is not None:  # continue mid-epoch exactly where Ctrl-C stopped
                torch.set_rng_state(resume_state["training_state"]["rng"])
                if device.type == "cuda" and resume_state["training_state"].get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(resume_state["training_state"]["cuda_rng"], device)
            else:
                torch.manual_seed(_epoch_seed(config, epoch))  # augmentation, mixup and dropout
            model.train()
            augment.train()
            seen, loss_sum, correct = progress["running"] if skip else (0, 0.0, 0)
            bar = tqdm(range(skip, steps_per_epoch), desc=f"epoch {epoch}/{config.train.epochs}", unit="batch",
                       leave=False, initial=skip, total=steps_per_epoch)
            for step in bar:
                index = order[step * batch_size:(step + 1) * batch_size]
                x, y, _ = torch.utils.data.default_collate([dataset[i] for i in index.tolist()])
                x, y = augment(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
                x, target = mixup(x, y, len(labels), config.augment.mixup_alpha)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(x)["logits"]
                loss = torch.nn.functional.cross_entropy(logits.float(), target,
                                                         label_smoothing=config.train.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(dim=1) == y).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if stop.requested and step + 1 < steps_per_epoch:
                    progress.update(batches_done=step + 1, running=[seen, loss_sum, correct])
                    checkpoint(run_dir / "last.pt", epoch - 1, {}, with_training_state=True)
                    raise Interrupted(run_dir)
            bar.close()

            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "lr": scheduler.get_last_lr()[0]}
            if valid_data is not None:
                row.update({f"valid_{k}": v for k, v in evaluate_split(model, valid_data, device, crop_frames(config)).items()})
            row["seconds"] = round(time.time() - started, 2)
            with open(metrics_log, "a") as log:
                log.write(json.dumps(row) + "\n")

            if valid_data is not None:
                score = [row["valid_track_acc"], row["valid_loss"]]
                improved = score[0] > progress["best"][0] or (score[0] == progress["best"][0] and score[1] < progress["best"][1])
            else:  # nothing to choose by: the latest epoch is the model
                score, improved = [-1.0, math.inf], True
            if improved:
                progress.update(best=score, best_epoch=epoch)
                checkpoint(run_dir / "best.pt", epoch, row, with_training_state=False)
            patience = config.train.early_stopping
            stopping = bool(patience) and epoch - progress["best_epoch"] >= patience
            progress.update(epoch=epoch + 1, batches_done=0, running=[0, 0.0, 0],
                            finished=epoch == config.train.epochs or stopping)
            checkpoint(run_dir / "last.pt", epoch, row, with_training_state=True)
            valid = (f"| valid loss {row['valid_loss']:.3f} clip acc {row['valid_clip_acc']:.3f} "
                     f"track acc {row['valid_track_acc']:.3f} " if valid_data is not None else "")
            print(f"epoch {epoch:3d} | train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                  f"{valid}| {row['seconds']:.1f}s{' *' if improved and valid_data is not None else ''}", flush=True)
            if stopping:
                print(f"early stopping: no better validation score for {patience} epochs")
                break
            if stop.requested:
                raise Interrupted(run_dir)
    chosen = (f"best validation track accuracy {progress['best'][0]:.3f}" if valid_data is not None
              else "the final epoch: no validation split")
    print(f"saved {run_dir / 'best.pt'} (epoch {progress['best_epoch']}, {chosen}) and {run_dir / 'last.pt'}")
    return run_dir


def _fit_classic(config: Config, run_dir: Path) -> Path:
    """The classic recipe: an SVM or random forest fitted once on handcrafted clip features."""
    from genrenet.classic import ClassicModel, build_classifier, to_bytes  # scikit-learn and librosa: only here

    labels, train_data, valid_data, test_tracks = prepare_data(config)
    print_data_summary(labels, train_data, valid_data, test_tracks)
    m = config.model
    pipeline = build_classifier(m.type, svm_c=m.svm_c, svm_kernel=m.svm_kernel, svm_gamma=m.svm_gamma,
                                rf_trees=m.rf_trees, rf_max_depth=m.rf_max_depth, standardize=m.standardize,
                                seed=config.train.seed)
    features = torch.cat(train_data.features).double().numpy()
    targets = [t for f, t in zip(train_data.features, train_data.targets) for _ in range(len(f))]
    print(f"model: {m.type} on {features.shape[1]} handcrafted features per clip, fitting {len(features)} clips")
    started = time.time()
    try:
        pipeline.fit(features, targets)
    except ValueError as error:  # e.g. too few clips of a class for the SVM's probability calibration
        raise UserError(f"cannot fit {m.type}: {str(error).splitlines()[0]}") from None
    model = ClassicModel(pipeline, len(labels))
    train_scores = evaluate_split(model, train_data, "cpu")
    row = {"epoch": 1, "train_loss": train_scores["loss"], "train_acc": train_scores["clip_acc"],
           "seconds": round(time.time() - started, 2)}
    if valid_data is not None:
        row.update({f"valid_{k}": v for k, v in evaluate_split(model, valid_data, "cpu").items()})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    state = {"model_state": {"sklearn": torch.frombuffer(bytearray(to_bytes(pipeline)), dtype=torch.uint8)},
             "config": to_dict(config), "labels": labels, "epoch": 1, "metrics": row}
    save_checkpoint(run_dir / "best.pt", **state)
    save_checkpoint(run_dir / "last.pt", **state, training_state={"finished": True})
    valid = (f" | valid clip acc {row['valid_clip_acc']:.3f} track acc {row['valid_track_acc']:.3f}"
             if valid_data is not None else "")
    print(f"fitted in {row['seconds']:.1f}s | train clip acc {row['train_acc']:.3f}{valid}")
    print(f"saved {run_dir / 'best.pt'} and {run_dir / 'last.pt'}")
    return run_dir


def _epoch_seed(config: Config, epoch: int) -> int:
    return config.train.seed * 1_000_003 + epoch


def _keep_logged_epochs(metrics_log: Path, completed: int) -> None:
    """Drop metric lines of epochs the checkpoint does not include (and a half-written last line)."""
    rows = []
    for line in metrics_log.read_text().splitlines() if metrics_log.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch", math.inf) <= completed:
            rows.append(line)
    metrics_log.write_text("".join(line + "\n" for line in rows))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train an audio classifier from a YAML config.")
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--fold", type=int, help="test fold of a dataset with a fold column (same as data.fold)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in run.dir")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    parser.add_argument("--cv", action="store_true",
                        help="cross-validate: train and evaluate every fold of the data's fold column")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config FILE (a new run) or --resume RUN_DIR (continue a run)")
    if args.resume and (args.overrides or args.fold is not None or args.overwrite or args.cv):
        parser.error("--resume continues a run with its stored config; --set, --fold, --overwrite and --cv do not apply")
    if args.cv and args.fold is not None:
        parser.error("--cv trains every fold; --fold picks one")
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    try:
        if args.resume:
            resume(args.resume)
        elif args.cv:
            from genrenet.crossval import cross_validate  # it builds on evaluation, which imports this module

            cross_validate(load_config(args.config, args.overrides), overwrite=args.overwrite)
        else:
            overrides = args.overrides + ([f"data.fold={args.fold}"] if args.fold is not None else [])
            train(load_config(args.config, overrides), overwrite=args.overwrite)
    except Interrupted as stopped:
        print(f"\ninterrupted: saved a resumable checkpoint; continue with: python train.py --resume {stopped}")
        return 130
    return 0
