"""Training throughput: genrenet's training epoch against a bare loop over in-memory tensors, in one run.

    python bench/train_speed.py                              # GTZAN-sized: 1,000 tracks x 30 s, 10 classes
    python bench/train_speed.py --tracks 100 --repeats 1     # a quicker look
    python bench/train_speed.py --device cuda --model resnet_cnn

Writes a GTZAN-sized dataset of generated tracks (class folders, 22,050 Hz mono WAV, one simple
signal per class: harmonics, a beat and noise) to a temp folder, fills the feature store through
the product (cache.cached_features over every track, data.num_workers=--fill-workers decoding),
then times, on the training split's clips of the default audio and feature config (3 s clips,
128 mels, stored float16), with the same model, batch size, AdamW lr and weight decay:
  product  training.build_learner + training.run_epoch: EpochBatches, the DataLoader over
           ClipDataset reading each batch from the store's shards (data.num_workers=--workers),
           take_step (augmentation all off, as in the default config, so both sides do the same
           work), the running totals synced every 25 steps; validation is not timed
  bare     the same model from registry.build_model, every training clip stacked once into one
           float32 tensor (on the device), a randperm per epoch, slices of it, cross-entropy,
           AdamW; nothing else (no scheduler, no augmentation module, no progress bar)
Both get --warmup steps first; then --repeats full epochs each, alternating (so a busy moment on a
shared machine hits both), and the medians and their ratio product/bare are printed, in training
clips per second. On CUDA also the epoch time and peak GPU memory (torch.cuda.max_memory_allocated)
of each, with AMP as the product's config has it (train.amp). Exits 1 when the ratio is below
--target (0.9) on the CPU. Everything generated is deleted unless --keep.

Measured on 2 CPU cores with nothing else running (`python bench/train_speed.py`, small_cnn):

    fill: 1000 files in 41.0 s (24.4 files/s, 2 workers); store 317 MiB for 10000 clips of (128, 130)
    product w=0:  45.1 clips/s  (median of 47.0, 44.6, 45.1)
    bare:         44.7 clips/s  (median of 44.7, 43.9, 44.9)
    ratio product / bare: 1.009  (target >= 0.9); whole bench 1054 s
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's genrenet first

from genrenet import training  # noqa: E402
from genrenet.cache import cached_features  # noqa: E402
from genrenet.config import from_dict, preprocessing_key  # noqa: E402
from genrenet.datasets import find_tracks  # noqa: E402
from genrenet.errors import cli_entry  # noqa: E402
from genrenet.registry import build_model  # noqa: E402
from genrenet.rundir import NoWriter  # noqa: E402

RATE = 22050
WORKERS = 0  # data.num_workers of training, as the product defaults; 0, 1 and 2 were within noise on 2 cores


def write_tracks(root: Path, tracks: int, seconds: float, classes: int, seed: int = 0) -> int:
    """`tracks` mono 16-bit WAV files in class folders, dealt round-robin over the classes: class k
    is a tone of 1 + k % 4 harmonics at 110 * 2**(k/3) Hz (+/- 3% per track) under a k/2 + 1 Hz
    beat, with noise. Returns the bytes written."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    written = 0
    for i in range(tracks):
        label = i % classes
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        f0 = 110 * 2 ** (label / 3) * rng.uniform(0.97, 1.03)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 2 + label % 4))
        beat = 0.6 + 0.4 * np.sin(2 * np.pi * (1 + label / 2) * t + rng.uniform(0, 2 * np.pi))
        wave = 0.25 * tone * beat + 0.05 * rng.standard_normal(len(t))
        path = folder / f"track{i:05d}.wav"
        soundfile.write(path, wave.astype(np.float32), RATE, subtype="PCM_16")
        written += path.stat().st_size
    return written


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` take on disk (as du counts them)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def make_config(folder: Path, args, workers: int):
    return from_dict(
        {
            "data": {
                "path": str(folder / "tracks"),
                "format": "folder",
                "cache_dir": str(folder / "cache"),
                "num_workers": workers,
            },
            "model": {"name": args.model},
            # augment: every piece off (the defaults), so both sides do the same work per step
            "train": {"device": args.device, "epochs": args.repeats + 1},
            "run": {"dir": str(folder / "run")},
        },
        source="bench",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Product:
    """genrenet's own training epoch over the feature store."""

    def __init__(self, config, data, device: torch.device):
        self.config, self.data, self.device = config, data, device
        self.learner = training.build_learner(config, data, device)
        self.epoch = 0

    def warm_up(self, steps: int) -> None:
        learner = self.learner
        learner.batches.set_epoch(0, skip=0)
        learner.model.train()
        for step, (x, y, _) in enumerate(learner.loader):  # also starts the persistent workers
            training.take_step(learner, self.config, len(self.data.labels), x, y)
            if step + 1 >= steps:
                break
        synchronize(self.device)

    def epoch_run(self) -> tuple[int, float]:
        """(clips trained, seconds) of one training epoch."""
        self.epoch += 1
        state = training.RunState(epoch=self.epoch)
        writer, stop = NoWriter(self.config.run.dir), training.StopRequest(enabled=False)
        synchronize(self.device)
        start = time.perf_counter()
        with stop:
            training.run_epoch(self.learner, self.config, self.data, state, writer, stop)
        synchronize(self.device)
        return state.seen, time.perf_counter() - start


class Bare:
    """The same model and optimizer over every training clip held in one tensor."""

    def __init__(self, config, data, device: torch.device, amp_dtype):
        torch.manual_seed(config.train.seed)
        self.device, self.amp_dtype, self.batch = device, amp_dtype, config.train.batch_size
        self.model = build_model(config, len(data.labels)).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        self.x = torch.cat(list(data.train.features)).unsqueeze(1).float().to(device)
        targets = np.repeat(data.train.targets, data.train.features.counts)
        self.y = torch.from_numpy(targets).long().to(device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(x)["logits"]
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def warm_up(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            self.step(self.x[: self.batch], self.y[: self.batch])
        synchronize(self.device)

    def epoch_run(self) -> tuple[int, float]:
        self.model.train()
        synchronize(self.device)
        start = time.perf_counter()
        order = torch.randperm(len(self.x), device=self.device)
        steps = max(1, len(self.x) // self.batch)  # the last partial batch dropped, as the product does
        for s in range(steps):
            batch = order[s * self.batch : (s + 1) * self.batch]
            self.step(self.x[batch], self.y[batch])
        synchronize(self.device)
        return min(steps * self.batch, len(self.x)), time.perf_counter() - start


def timed_run(side, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clips, seconds = side.epoch_run()
    run = {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds}
    if device.type == "cuda":
        run["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return run


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=1000, help="tracks to generate (default 1000, as GTZAN)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track (default 30)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[WORKERS],
        help=f"data.num_workers of training (default {WORKERS}); several values: one product run of each",
    )
    parser.add_argument("--fill-workers", type=int, default=2, help="data.num_workers while filling the store")
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet_cnn"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each, alternating (default 3)")
    parser.add_argument("--warmup", type=int, default=10, help="steps of each before timing (default 10)")
    parser.add_argument("--target", type=float, default=0.9, help="least product/bare ratio on the CPU")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a new folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tracks and store")
    return parser.parse_args(argv)


def fill_store(folder: Path, args) -> None:
    """Fills the feature store of the generated tracks and prints its speed and size on disk."""
    fill_config = make_config(folder, args, args.fill_workers)
    paths = [t.path for t in find_tracks(fill_config.data)]
    start = time.perf_counter()
    features, failures = cached_features(paths, fill_config, desc="fill")
    fill_seconds = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} generated files could not be read: {next(iter(failures.values()))}")
    store_dir = Path(fill_config.data.cache_dir) / preprocessing_key(fill_config)
    store_bytes = disk_usage(store_dir)
    print(
        f"fill: {len(paths)} files in {fill_seconds:.1f} s ({len(paths) / fill_seconds:.1f} files/s, "
        f"{args.fill_workers} workers); store {store_bytes / 2**20:.0f} MiB on disk for "
        f"{features.clip_count} clips of {tuple(features[0].shape[1:])} {features[0].dtype}",
        flush=True,
    )


def time_sides(sides: dict, repeats: int, device: torch.device) -> dict[str, list[dict]]:
    """Timed epochs of every side, alternating, so a busy moment on a shared machine hits all."""
    runs = {name: [] for name in sides}
    for repeat in range(repeats):
        for name, side in sides.items():
            run = timed_run(side, device)
            runs[name].append(run)
            print(
                f"  {repeat + 1}/{repeats} {name:12}: {run['clips']} clips in {run['seconds']:6.1f} s, "
                f"{run['clips_per_s']:6.1f} clips/s",
                flush=True,
            )
    return runs


def report(runs: dict[str, list[dict]], device: torch.device, target: float) -> dict[str, float]:
    """Prints each side's median clips/s (and epoch time and peak GPU memory on CUDA) and each
    product's ratio to the bare loop, which it returns."""
    medians = {name: statistics.median(r["clips_per_s"] for r in runs[name]) for name in runs}
    for name in runs:
        each = ", ".join(f"{r['clips_per_s']:.1f}" for r in runs[name])
        extra = ""
        if device.type == "cuda":
            seconds = statistics.median(r["seconds"] for r in runs[name])
            peak = max(r["peak_gpu_bytes"] for r in runs[name])
            extra = f"  epoch {seconds:.1f} s, peak GPU memory {peak / 2**20:.0f} MiB"
        print(f"{name + ':':14} {medians[name]:8.1f} clips/s  (median of {each}){extra}")
    ratios = {name: medians[name] / medians["bare"] for name in runs if name != "bare"}
    wanted = f"target >= {target}" if device.type == "cpu" else "the target applies on the CPU"
    for name, ratio in ratios.items():
        print(f"ratio {name} / bare: {ratio:6.3f}  ({wanted})")
    return ratios


def main(argv=None):
    args = parse_args(argv)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="train_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        wav_bytes = write_tracks(folder / "tracks", args.tracks, args.seconds, args.classes)
        print(
            f"generated {args.tracks} tracks x {args.seconds:g} s ({wav_bytes / 1e9:.2f} GB of WAV) "
            f"in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        fill_store(folder, args)

        device = torch.device(args.device)
        configs = {f"product w={w}": make_config(folder, args, w) for w in args.workers}
        first = next(iter(configs.values()))
        data = training.prepare_data(first)  # a warm store: reads the shards' indexes
        training.print_data_summary(data)
        sides = {name: Product(config, data, device) for name, config in configs.items()}
        amp_dtype = next(iter(sides.values())).learner.amp_dtype
        sides["bare"] = Bare(first, data, device, amp_dtype)
        for side in sides.values():
            side.warm_up(args.warmup)
        runs = time_sides(sides, args.repeats, device)

        amp = f", AMP {amp_dtype}" if amp_dtype else ""
        print(
            f"\n{args.model} on {device}{amp}, batch {first.train.batch_size}, {torch.get_num_threads()} threads; "
            f"product w=N: run_epoch with data.num_workers=N; load average {os.getloadavg()[0]:.2f} at the end"
        )
        ratios = report(runs, device, args.target)
        print(f"whole bench {time.perf_counter() - began:.0f} s")
        return 0 if min(ratios.values()) >= args.target or device.type != "cpu" else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli_entry(main)())
