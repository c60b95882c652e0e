"""Training: read a config, build the splits and their cached features, fit a model, keep the best.

A model trained by gradient steps (the CNNs) runs the loop below: one epoch of steps, then the
end of the epoch (validate, log, keep the best, stop early). A fitted model (the classic SVM and
random forest) is fitted once on every training clip. Both write their run directory through one
RunWriter: config.yaml, metrics.jsonl, best.pt and last.pt (`train.py --resume RUN_DIR`).

Every epoch draws its shuffling and augmentation randomness from (seed, epoch) alone, so a run
continued from last.pt takes exactly the steps the uninterrupted run would have taken.
"""

import contextlib
import itertools
import math
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from genrenet import distributed
from genrenet.augment import SpectrogramAugment, mixup
from genrenet.checkpoint import load_checkpoint
from genrenet.config import Config, crop_frames, from_dict
from genrenet.datasets import (
    SPLITS,
    ClipDataset,
    SplitData,
    Track,
    find_tracks,
    is_multi_label,
    labels_of,
    load_split,
    split_tracks,
    tags_of,
)
from genrenet.device import resolve_device
from genrenet.errors import UserError, error_line
from genrenet.models import count_parameters
from genrenet.progress import progress
from genrenet.recorded_split import record_split, recorded_tracks
from genrenet.registry import build_model, features_of, frames_per_second, model_entry, parameter_groups
from genrenet.rundir import NoWriter, RunWriter
from genrenet.runlock import RunLock
from genrenet.runlogs import check_logs
from genrenet.scores import DEFAULT_THRESHOLD, clip_log_probs, score_clips, score_tags, split_scores, track_predictions

RANK_SEED_STEP = 7919  # under torchrun each rank draws its own augmentation from (seed, epoch, rank)
SYNC_STEPS = 25  # steps between reading the running loss back from the device (a GPU waits for it)


class Interrupted(Exception):
    """Ctrl-C arrived; a resumable checkpoint has been written."""


class StopRequest:
    """Turns the first Ctrl-C into a flag the loop checks between steps, so the checkpoint it
    writes is consistent; a second Ctrl-C stops at once. Not under torchrun (enabled=False): the
    ranks could stop at different steps, so a stopped job continues from its last whole epoch."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested = enabled, False

    def __enter__(self):
        self.requested = False
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


@dataclass
class TrainingData:
    labels: list[str]
    train: SplitData
    valid: SplitData | None  # None: no validation split, best.pt is the final epoch
    test_tracks: list[Track]
    split_record: dict  # every track of every split, for the run directory and checkpoints
    multi_label: bool = False  # tags, any number per track: sigmoid outputs and binary cross-entropy


@dataclass
class RunState:
    """Where a run stands; saved in last.pt, so a resumed run continues with the same steps."""

    epoch: int = 1  # the epoch to run next
    batches_done: int = 0  # batches of that epoch already taken (Ctrl-C stopped it midway)
    seen: int = 0  # clips, loss sum and correct predictions of those batches
    loss_sum: float = 0.0
    correct: int = 0
    best_score: tuple = (-1.0, math.inf)  # (selection score, valid loss) of best.pt: see selection_score
    best_epoch: int = 0
    finished: bool = False

    def to_checkpoint(self) -> dict:  # the keys of format-1 last.pt files, so they resume too
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "running": [self.seen, self.loss_sum, self.correct],
            "best": list(self.best_score),
            "best_epoch": self.best_epoch,
            "finished": self.finished,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "RunState":
        seen, loss_sum, correct = saved["running"]
        return cls(
            saved["epoch"],
            saved["batches_done"],
            seen,
            loss_sum,
            correct,
            tuple(saved["best"]),
            saved["best_epoch"],
            saved["finished"],
        )


class EpochBatches(torch.utils.data.Sampler):
    """This process's batches of clip numbers in one epoch. DistributedSampler draws the epoch's
    order from (seed, epoch) and deals it out over the ranks, so step s of rank r takes its share
    of the clips one process would take at step s; with one process it is that whole batch. A run
    resumed midway skips the batches it already took."""

    def __init__(self, dataset: ClipDataset, config: Config, world: int | None = None, rank: int | None = None):
        world = distributed.world_size() if world is None else world
        rank = distributed.rank() if rank is None else rank
        if config.train.batch_size % world:
            raise UserError(
                f"train.batch_size ({config.train.batch_size}) must be a multiple of the number of "
                f"processes ({world}): it is the batch of all of them together"
            )
        self.dataset = dataset
        # DistributedSampler seeds with seed + epoch: with this seed, that is epoch_seed.
        self.order = DistributedSampler(dataset, world, rank, shuffle=True, seed=epoch_seed(config, 0), drop_last=False)
        local_batch = config.train.batch_size // world
        # Drop the last partial batch (BatchNorm needs more than one clip) unless it is the only one.
        self.batches = BatchSampler(self.order, local_batch, drop_last=len(self.order) >= local_batch)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int) -> None:
        self.order.set_epoch(epoch)
        self.skip = skip

    def steps(self) -> int:
        return len(self.batches)

    def __len__(self):
        return len(self.batches) - self.skip

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)


@dataclass
class Learner:
    """The model and everything that updates it."""

    model: torch.nn.Module
    stepper: torch.nn.Module  # what training steps call: the model, wrapped by DDP and torch.compile as asked
    augment: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    batches: EpochBatches
    loader: DataLoader  # batches of (features, labels, tracks) read from the feature store
    steps_per_epoch: int
    resumed_rng: dict | None = field(default=None)  # RNG state of a run stopped mid-epoch


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The learning rate at an optimizer step, as a fraction of train.lr: linear warm-up, then
    cosine decay to zero or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def build_scheduler(optimizer, config: Config, steps_per_epoch: int):
    """Per-step learning-rate schedule: learning_rate_factor, or PyTorch's one-cycle."""
    train = config.train
    total = train.epochs * steps_per_epoch
    if train.schedule == "onecycle":
        warm_share = train.warmup_epochs / train.epochs if train.warmup_epochs else 0.3
        peaks = [group["lr"] for group in optimizer.param_groups]  # each group's own rate (see parameter_groups)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=warm_share)
    factor = partial(
        learning_rate_factor,
        warmup_steps=round(train.warmup_epochs * steps_per_epoch),
        total_steps=total,
        schedule=train.schedule,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_augment(config: Config) -> torch.nn.Module:
    """Training-time augmentation of spectrogram batches; features without a time axis get none."""
    if not features_of(config).framed:
        return torch.nn.Identity()
    aug = config.augment
    frame_rate = frames_per_second(config)
    return SpectrogramAugment(
        crop_frames=crop_frames(config),
        gain_db=aug.gain_db,
        freq_masks=aug.freq_masks,
        freq_mask_width=aug.freq_mask_width,
        time_masks=aug.time_masks,
        time_mask_width=aug.time_mask_width,
        shift_frames=round(aug.time_shift_seconds * frame_rate),
    )


def draw_splits(config: Config, recorded: dict | None) -> dict[str, list[Track]]:
    """The splits of a new run, or, when resuming, the recorded splits of the run as they are on disk."""
    found = find_tracks(config.data)
    if recorded is None:
        return split_tracks(found, config.data)
    splits = {name: recorded_tracks(recorded, found, config.data, name, strict=True) for name in SPLITS}
    if any(tracks is None for tracks in splits.values()):
        raise UserError(f"cannot continue the run: none of its recorded tracks are at data.path '{config.data.path}'")
    return splits


def prepare_data(config: Config, recorded: dict | None = None) -> TrainingData:
    """Labels and the features of each split, with every check done before long work."""
    splits = draw_splits(config, recorded)
    # data.valid_fraction: 0 trains on every non-test track, with no validation: best.pt is then the final epoch.
    validating = bool(splits["valid"]) or config.data.valid_fraction > 0
    if not splits["valid"] and validating:
        raise UserError("the valid split has no tracks: raise data.valid_fraction or add valid rows to the manifest")
    if not validating and config.train.early_stopping:
        raise UserError("train.early_stopping needs a validation split, but data.valid_fraction is 0")
    every = splits["train"] + splits["valid"] + splits["test"]
    labels, multi_label = labels_of(every), is_multi_label(every)
    kind = "tag(s)" if multi_label else "class(es)"
    untrained = sorted(set(labels) - {tag for t in splits["train"] for tag in tags_of(t)})
    if untrained:
        raise UserError(f"{kind} with no training track: {', '.join(untrained)}")
    train_data = load_split(splits["train"], labels, config, "train", multi_label)
    valid_data = load_split(splits["valid"], labels, config, "valid", multi_label) if validating else None
    if not train_data.tracks or (valid_data is not None and not valid_data.tracks):
        raise UserError(f"no {'training' if not train_data.tracks else 'validation'} track could be read")
    unreadable = sorted(set(labels) - {tag for t in train_data.tracks for tag in tags_of(t)})
    if unreadable:  # every training file of these classes failed to decode and was skipped
        raise UserError(
            f"{kind} with no readable training track: {', '.join(unreadable)} "
            "(all of their training files were skipped as unreadable)"
        )
    record = record_split(splits, config.data)
    return TrainingData(labels, train_data, valid_data, splits["test"], record, multi_label)


def print_data_summary(data: TrainingData) -> None:
    valid = (
        f"valid {len(data.valid.tracks)} tracks ({data.valid.clip_count} clips)"
        if data.valid is not None
        else "no validation split (best.pt will be the final epoch)"
    )
    kind = "tags (several per track)" if data.multi_label else "classes"
    print(
        f"data: {len(data.labels)} {kind}; train {len(data.train.tracks)} tracks ({data.train.clip_count} clips), "
        f"{valid}, test {len(data.test_tracks)} tracks"
    )


def train(config: Config, overwrite: bool = False) -> Path:
    """Train as the config says and return the run directory."""
    run_dir = Path(config.run.dir)
    check_logs(config.run.log)
    fitted = model_entry(config.model.name).fitted
    if fitted and distributed.launched():
        raise UserError(f"{config.model.name} is fitted once in one process: run it without torchrun")
    join_processes(config)
    with run_lock(run_dir):  # one run directory, one writer; also finds an unwritable run.dir before long work
        if (run_dir / "best.pt").exists() and not overwrite:
            raise UserError(
                f"{run_dir} already holds a trained model; pass --overwrite to replace it, "
                f"--resume {run_dir} to continue it, or choose another folder with --set run.dir=PATH"
            )
        if fitted:
            return fit_once(config, run_dir)
        return fit_by_steps(config, run_dir, resume_state=None)


def resume(run_dir: str | Path) -> Path:
    """Continue a run from its last.pt (after a crash, a kill or Ctrl-C) to its planned end."""
    run_dir, last = Path(run_dir), Path(run_dir) / "last.pt"
    if run_dir.is_dir() and not last.exists():
        raise UserError(
            f"{run_dir} holds no last.pt: the run stopped before its first checkpoint; start it again with --config"
        )
    state = load_checkpoint(last)
    training_state = state.get("training_state")
    if not isinstance(training_state, dict) or "finished" not in training_state:
        raise UserError(f"{last} holds no training state to resume from")
    config = from_dict(state["config"], source=f"{last} (stored config)")
    check_logs(config.run.log)
    if training_state["finished"]:
        print(f"{run_dir} already finished its {state['epoch']} epochs; nothing to resume")
        return run_dir
    join_processes(config)
    with run_lock(run_dir):
        return fit_by_steps(config, run_dir, resume_state=state)


def join_processes(config: Config) -> torch.device:
    """The device this process trains on; under torchrun, after joining the other processes."""
    device = distributed.local_device(resolve_device(config.train.device))
    distributed.start(device)
    return device


def run_lock(run_dir: Path):
    """The run directory's lock, held by the process that writes it (rank 0 under torchrun)."""
    return RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext()


def fit_by_steps(config: Config, run_dir: Path, resume_state: dict | None) -> Path:
    """The training loop of models trained by gradient steps."""
    device = join_processes(config)
    data = prepare_data(config, recorded=resume_state.get("split") if resume_state else None)
    print_data_summary(data)
    learner = build_learner(config, data, device)
    writer = (
        RunWriter(run_dir, config, data.labels, data.split_record, data.multi_label)
        if distributed.is_main()
        else NoWriter(run_dir)
    )
    if resume_state is None:
        state = RunState()
        writer.start(keep_previous=True)
        save_last(writer, learner, state, epoch=0, metrics={})  # resumable even if killed in the first epoch
    else:
        state = restore(learner, resume_state)
        writer.keep_epochs(completed=state.epoch - 1)
        print(
            f"resuming {run_dir} at epoch {state.epoch}"
            + (f", batch {state.batches_done + 1}" if state.batches_done else "")
        )

    try:
        with StopRequest(enabled=not distributed.active()) as stop:
            while state.epoch <= config.train.epochs:
                started = time.time()
                run_epoch(learner, config, data, state, writer, stop)
                end_epoch(learner, config, data, state, writer, started)
                if stop.requested and not state.finished:
                    raise Interrupted(run_dir)
                if state.finished:
                    break
        writer.finish(confusion=best_confusion(learner, config, data, writer))
    finally:
        writer.close()  # an interrupted run's logs are complete up to where it stopped
    distributed.barrier()  # rank 0's last files are written before any rank goes on (--cv evaluates next)
    chosen = (
        f"best validation {'macro PR-AUC' if data.multi_label else 'track accuracy'} {state.best_score[0]:.3f}"
        if data.valid is not None
        else "the final epoch: no validation split"
    )
    print(f"saved {run_dir / 'best.pt'} (epoch {state.best_epoch}, {chosen}) and {run_dir / 'last.pt'}")
    return run_dir


def build_learner(config: Config, data: TrainingData, device: torch.device) -> Learner:
    # Seed after the data is ready: filling the store draws from the global RNG, reading it does not.
    torch.manual_seed(config.train.seed)
    model = build_model(config, len(data.labels)).to(device)
    groups = parameter_groups(config, model)
    trained = sum(p.numel() for group in groups for p in group["params"])
    frozen = f" ({trained:,} trained, the rest frozen)" if trained < count_parameters(model) else ""
    print(f"model: {config.model.name}, {count_parameters(model):,} parameters{frozen}; device: {device}{processes()}")
    stepper = model
    if distributed.active():  # gradients are averaged over the ranks after every backward pass
        stepper = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.train.compile:
        stepper = torch.compile(stepper)
    augment = build_augment(config).to(device)
    batches = EpochBatches(ClipDataset(data.train.features, data.train.targets), config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.train.weight_decay)
    scheduler = build_scheduler(optimizer, config, batches.steps())
    use_amp = device.type == "cuda" and config.train.amp
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loader = batch_loader(batches, config, device)
    steps = batches.steps()
    return Learner(model, stepper, augment, optimizer, scheduler, scaler, device, amp_dtype, batches, loader, steps)


def batch_loader(batches: EpochBatches, config: Config, device: torch.device) -> DataLoader:
    """Batches read by data.num_workers processes (0: this one), kept for every epoch, into pinned
    memory on CUDA so the copy to the GPU overlaps the step."""
    workers = config.data.num_workers
    return DataLoader(
        batches.dataset,
        sampler=batches,
        batch_size=None,  # the sampler gives whole batches, which the dataset reads in one go
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),  # its seed draw leaves the global RNG (augmentation's) untouched
    )


def processes() -> str:
    world = distributed.world_size()
    return f"; {world} processes (torchrun)" if world > 1 else ""


def restore(learner: Learner, saved: dict) -> RunState:
    """Weights, optimizer, schedule and progress of a run from its last.pt."""
    training_state = saved["training_state"]
    try:
        learner.model.load_state_dict(saved["model_state"])
        learner.optimizer.load_state_dict(training_state["optimizer"])
        learner.scheduler.load_state_dict(training_state["scheduler"])
        learner.scaler.load_state_dict(training_state["scaler"])
        learner.resumed_rng = {"cpu": training_state["rng"], "cuda": training_state.get("cuda_rng")}
        return RunState.from_checkpoint(training_state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise UserError(
            f"last.pt of this run holds a damaged training state ({type(error).__name__}: "
            f"{error_line(error)}); start the run again with --config (best.pt is unaffected)"
        ) from None


def save_last(
    writer: RunWriter, learner: Learner, state: RunState, epoch: int, metrics: dict, thresholds: list | None = None
) -> None:
    cuda = learner.device.type == "cuda"
    writer.save(
        "last.pt",
        learner.model,
        epoch,
        metrics,
        thresholds=thresholds,
        training_state={
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": learner.scheduler.state_dict(),
            "scaler": learner.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(learner.device) if cuda else None,
            **state.to_checkpoint(),
        },
    )


def seed_epoch(learner: Learner, config: Config, state: RunState) -> None:
    """Augmentation, mixup and dropout draw from (seed, epoch), or, when a run stopped midway
    through this epoch, from the RNG state it stopped with."""
    rng, learner.resumed_rng = learner.resumed_rng, None
    if state.batches_done and rng is not None:
        torch.set_rng_state(rng["cpu"])
        if learner.device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], learner.device)
    else:
        torch.manual_seed(epoch_seed(config, state.epoch) + RANK_SEED_STEP * distributed.rank())


def run_epoch(
    learner: Learner, config: Config, data: TrainingData, state: RunState, writer: RunWriter, stop: StopRequest
) -> None:
    """One epoch of optimizer steps (the rest of it, when resumed midway); Ctrl-C saves and stops."""
    epoch, steps = state.epoch, learner.steps_per_epoch
    learner.batches.set_epoch(epoch, skip=state.batches_done)
    seed_epoch(learner, config, state)
    learner.model.train()
    learner.augment.train()
    if not state.batches_done:
        state.seen, state.loss_sum, state.correct = 0, 0.0, 0
    bar = progress(
        learner.loader,
        desc=f"epoch {epoch}/{config.train.epochs}",
        unit="batch",
        leave=False,
        initial=state.batches_done,
        total=steps,
    )
    unsynced = torch.zeros(3, dtype=torch.float64, device=learner.device)  # clips, loss sum, correct
    for step, (x, y, _) in enumerate(bar, start=state.batches_done):
        unsynced += take_step(learner, config, len(data.labels), x, y, data.multi_label)
        writer.log_step((epoch - 1) * steps + step + 1, learner.scheduler.get_last_lr()[0])
        if (step + 1) % SYNC_STEPS == 0 or step + 1 == steps or stop.requested:
            add_running_totals(state, unsynced, config)
            bar.set_postfix(loss=f"{state.loss_sum / state.seen:.3f}", acc=f"{state.correct / state.seen:.3f}")
        if stop.requested and step + 1 < steps:
            state.batches_done = step + 1
            save_last(writer, learner, state, epoch=epoch - 1, metrics={})
            raise Interrupted(writer.dir)
    bar.close()


def take_step(
    learner: Learner, config: Config, n_classes: int, x: torch.Tensor, y: torch.Tensor, multi_label: bool = False
) -> torch.Tensor:
    """One optimizer step on a batch; returns [clips, loss sum, correct] on the device, so the step
    never waits for the GPU to report them. y: label indices, or multi-hot rows (multi_label)."""
    x = learner.augment(x.to(learner.device, non_blocking=True).float())  # stored float16, sent as such
    y = y.to(learner.device, non_blocking=True)
    x, target = mixup(x, y, n_classes, config.augment.mixup_alpha)
    with torch.autocast(learner.device.type, dtype=learner.amp_dtype, enabled=learner.amp_dtype is not None):
        logits = learner.stepper(x)["logits"]
    loss = training_loss(logits.float(), target, config.train.label_smoothing, multi_label)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.scheduler.step()
    clips = torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)
    if multi_label:  # a clip's share of tags decided right at probability 0.5 (logit 0)
        correct = ((logits > 0) == (y > 0)).double().mean(dim=1).sum()
    else:
        correct = (logits.argmax(dim=1) == y).sum().double()
    return torch.stack([clips, loss.detach().double() * len(y), correct])


def training_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float, multi_label: bool) -> torch.Tensor:
    """Cross-entropy over the classes, or with multi_label binary cross-entropy of each tag, whose
    (soft) targets label smoothing pulls toward 1/2 as cross_entropy pulls its targets toward 1/classes."""
    if not multi_label:
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=smoothing)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target * (1 - smoothing) + smoothing / 2)


def add_running_totals(state: RunState, unsynced: torch.Tensor, config: Config) -> None:
    """Move the steps' totals into the run state; a loss that is not finite stops the run."""
    seen, loss_sum, correct = unsynced.tolist()
    unsynced.zero_()
    if not math.isfinite(loss_sum):
        raise diverged(config, state, f"the loss became {loss_sum}")
    state.seen += int(seen)
    state.loss_sum += loss_sum
    state.correct += correct  # multi-label: fractional (the share of a clip's tags decided right)


def diverged(config: Config, state: RunState, what: str) -> UserError:
    kept = (
        "best.pt and last.pt keep the last good epoch"
        if state.best_epoch  # the first finished epoch always saves best.pt
        else "no epoch had finished, so no best.pt was saved"
    )
    return UserError(
        f"training diverged in epoch {state.epoch}: {what}; the likely cause is a learning rate too high for "
        f"this data (train.lr={config.train.lr:g}): lower it and start again; {kept}"
    )


def end_epoch(
    learner: Learner, config: Config, data: TrainingData, state: RunState, writer: RunWriter, started: float
) -> None:
    """Validate, log, keep the best model, decide on early stopping, and save last.pt."""
    epoch = state.epoch
    if not all(torch.isfinite(p).all() for p in learner.model.parameters()):  # the last step's update overflowed
        raise diverged(config, state, "the weights hold NaN or infinite values")
    seen, loss_sum, correct = distributed.sum_over_ranks(state.seen, state.loss_sum, state.correct)
    row = {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": learner.scheduler.get_last_lr()[0],
    }
    thresholds = [DEFAULT_THRESHOLD] * len(data.labels) if data.multi_label else None
    if data.valid is not None:
        scores = validation_scores(learner, config, data.valid, data.multi_label)
        thresholds = scores.pop("thresholds", thresholds)
        row.update({f"valid_{k}": v for k, v in scores.items()})
    row["seconds"] = round(time.time() - started, 2)
    writer.log(row)

    # no validation: the latest epoch is the best
    improved = data.valid is None or is_better(row, state, data.multi_label)
    if improved:
        state.best_score = selection_score(row, data.multi_label) if data.valid is not None else (-1.0, math.inf)
        state.best_epoch = epoch
        writer.save("best.pt", learner.model, epoch, row, thresholds=thresholds)
    patience = config.train.early_stopping
    stopping = bool(patience) and epoch - state.best_epoch >= patience
    state.epoch, state.batches_done = epoch + 1, 0
    state.seen, state.loss_sum, state.correct = 0, 0.0, 0
    state.finished = epoch == config.train.epochs or stopping
    save_last(writer, learner, state, epoch=epoch, metrics=row, thresholds=thresholds)
    print(epoch_line(row, marked=improved and data.valid is not None), flush=True)
    if stopping:
        print(f"early stopping: no better validation score for {patience} epochs")


def validation_scores(learner: Learner, config: Config, valid: SplitData, multi_label: bool = False) -> dict:
    """Loss and accuracies on the validation split, or with multi_label loss, macro ROC-AUC and
    PR-AUC and each tag's best threshold; under torchrun each rank scores its share of the tracks
    and every rank gets the clip scores of the whole split, so the AUCs are those of one process."""
    mine = distributed.share(list(range(len(valid.features))))
    window = crop_frames(config)
    scores = clip_log_probs(
        learner.model, valid.features.subset(mine), learner.device, window=window, multi_label=multi_label
    )
    clip_scores = [None] * len(valid.features)
    for tracks, track_scores in distributed.gather_objects((mine, scores)):
        for track, clip_score in zip(tracks, track_scores):
            clip_scores[track] = clip_score
    return score_tags(clip_scores, valid.targets) if multi_label else score_clips(clip_scores, valid.targets)


def best_confusion(learner: Learner, config: Config, data: TrainingData, writer: RunWriter) -> dict | None:
    """For TensorBoard: best.pt's track-level confusion matrix on the validation split (None when
    nothing would show it). Loads best.pt's weights into the model: training is over."""
    if data.valid is None or data.multi_label or "tensorboard" not in config.run.log or not distributed.is_main():
        return None
    learner.model.load_state_dict(load_checkpoint(writer.dir / "best.pt")["model_state"])
    predicted = track_predictions(learner.model, data.valid.features, learner.device, crop_frames(config))
    classes = list(range(len(data.labels)))
    return {
        "labels": data.labels,
        "confusion_matrix": confusion_matrix(data.valid.targets, predicted, labels=classes).tolist(),
    }


def selection_score(row: dict, multi_label: bool = False) -> tuple:
    """(score, loss) of an epoch for choosing best.pt: validation track accuracy, or with
    multi_label macro PR-AUC (-1 when no tag could be scored), and the validation loss."""
    score = row["valid_pr_auc"] if multi_label else row["valid_track_acc"]
    return (score if math.isfinite(score) else -1.0, row["valid_loss"])


def is_better(row: dict, state: RunState, multi_label: bool = False) -> bool:
    """A higher selection score wins; on a tie, lower validation loss."""
    score, loss = selection_score(row, multi_label)
    best_score, best_loss = state.best_score
    return score > best_score or (score == best_score and loss < best_loss)


def epoch_line(row: dict, marked: bool) -> str:
    if "valid_pr_auc" in row:  # multi-label: * marks the best macro PR-AUC
        valid = (
            f"| valid loss {row['valid_loss']:.3f} macro ROC-AUC {row['valid_roc_auc']:.3f} "
            f"PR-AUC {row['valid_pr_auc']:.3f} "
        )
    elif "valid_loss" in row:
        valid = (
            f"| valid loss {row['valid_loss']:.3f} clip acc {row['valid_clip_acc']:.3f} "
            f"track acc {row['valid_track_acc']:.3f} "
        )
    else:
        valid = ""
    accuracy = "tag acc" if "valid_pr_auc" in row else "acc"
    return (
        f"epoch {row['epoch']:3d} | train loss {row['train_loss']:.3f} {accuracy} {row['train_acc']:.3f} "
        f"{valid}| {row['seconds']:.1f}s{' *' if marked else ''}"
    )


def fit_once(config: Config, run_dir: Path) -> Path:
    """Models fitted in one call (the classic SVM and random forest) on every training clip."""
    if is_multi_label(find_tracks(config.data)):  # said before any feature is computed
        raise UserError(
            f"{config.model.name} takes one label per track; for data with a labels column (several tags "
            "per track) choose a model trained by gradient steps, such as small_cnn or musicnn_probe"
        )
    data = prepare_data(config)
    print_data_summary(data)
    model = build_model(config, len(data.labels))
    features = torch.cat(list(data.train.features)).unsqueeze(1)  # clip statistics: small enough to hold
    clips_per_track = torch.from_numpy(data.train.features.counts)
    targets = torch.repeat_interleave(torch.tensor(data.train.targets, dtype=torch.long), clips_per_track)
    kind = features_of(config)
    print(
        f"model: {config.model.name} on {kind.width(config)} {kind.name} features per clip, "
        f"fitting {len(features)} clips"
    )
    started = time.time()
    model.fit(features, targets, seed=config.train.seed)
    train_scores = split_scores(model, data.train.features, data.train.targets, "cpu")
    row = {
        "epoch": 1,
        "train_loss": train_scores["loss"],
        "train_acc": train_scores["clip_acc"],
        "seconds": round(time.time() - started, 2),
    }
    if data.valid is not None:
        row.update(
            {f"valid_{k}": v for k, v in split_scores(model, data.valid.features, data.valid.targets, "cpu").items()}
        )
    writer = RunWriter(run_dir, config, data.labels, data.split_record)
    writer.start(keep_previous=False)  # written only now, with the model already fitted
    writer.log(row)
    writer.save("best.pt", model, 1, row)
    writer.save("last.pt", model, 1, row, training_state={"finished": True})
    writer.finish()
    valid = (
        f" | valid clip acc {row['valid_clip_acc']:.3f} track acc {row['valid_track_acc']:.3f}"
        if data.valid is not None
        else ""
    )
    print(f"fitted in {row['seconds']:.1f}s | train clip acc {row['train_acc']:.3f}{valid}")
    print(f"saved {run_dir / 'best.pt'} and {run_dir / 'last.pt'}")
    return run_dir


def epoch_seed(config: Config, epoch: int) -> int:
    return config.train.seed * 1_000_003 + epoch
