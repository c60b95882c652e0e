"""Library prediction speed: genrenet's predict path against a bare pipeline, in one run.

    python bench/predict_speed.py                              # 200 tracks x 30 s, 2 workers
    python bench/predict_speed.py --tracks 40 --workers 1      # a quicker look

Writes a library of generated tracks in mixed formats (wav, flac, ogg, mp3; 44.1 and 22.05 kHz,
mono and stereo) to --dir, makes a 10-class small_cnn checkpoint of the default config (untrained:
speed does not depend on the weights), then times, over the same files and worker count:
  product  Classifier.predict_many, as `genrenet predict --workers N` runs it (pydub clip work,
           resampling, log-mel in the workers; several files' clips per forward pass)
  bare     soundfile read, peak normalization, resampling, torchaudio log-mel in DataLoader
           workers, clips reshaped in numpy, the same batched forward pass; no pydub
--repeats times each, alternating, and prints the medians as times faster than real time (audio
seconds / wall seconds) and their ratio; exits 1 below 0.8.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's genrenet first

from genrenet import Classifier  # noqa: E402
from genrenet.checkpoint import save_checkpoint  # noqa: E402
from genrenet.config import from_dict, to_dict  # noqa: E402
from genrenet.features import MelFeatures  # noqa: E402
from genrenet.registry import build_model  # noqa: E402

FORMATS = [("wav", 44100, 2), ("flac", 44100, 1), ("ogg", 22050, 2), ("mp3", 44100, 2)]


def make_library(folder: Path, tracks: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(tracks):
        ext, rate, channels = FORMATS[i % len(FORMATS)]
        path = folder / f"track_{i:04d}.{ext}"
        paths.append(path)
        if path.exists():
            continue
        t = np.arange(int(seconds * rate)) / rate
        mono = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        soundfile.write(path, np.repeat(mono[:, None], channels, axis=1).astype(np.float32), rate)
    return paths


def make_checkpoint(path: Path):
    config = from_dict({"model": {"name": "small_cnn"}})
    model = build_model(config, 10)
    save_checkpoint(
        path,
        model_state=model.state_dict(),
        config=to_dict(config),
        labels=[f"genre{i}" for i in range(10)],
        epoch=0,
        metrics={},
    )
    return config


class BareFiles(torch.utils.data.Dataset):
    def __init__(self, paths, config):
        self.paths, self.audio, self.mel = paths, config.audio, MelFeatures(config.features, config.audio)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        samples, rate = soundfile.read(self.paths[i], dtype="float32", always_2d=True)
        mono = torch.from_numpy(samples.mean(axis=1))
        mono = mono * (10 ** (self.audio.peak_dbfs / 20) / mono.abs().max().clamp_min(1e-8))
        mono = torchaudio.functional.resample(mono, rate, self.audio.sample_rate)
        clip = round(self.audio.clip_seconds * self.audio.sample_rate)
        clips = mono[: len(mono) // clip * clip].reshape(-1, clip)  # hop == clip in the default config
        return self.mel(clips), len(samples) / rate


def bare(paths, config, model, workers: int) -> float:
    """Audio seconds predicted; the forward pass scores every batch of files' clips at once."""
    loader = torch.utils.data.DataLoader(
        BareFiles(paths, config),
        batch_size=16,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )
    seconds = 0.0
    with torch.no_grad():
        for batch in loader:
            flat = torch.cat([features for features, _ in batch]).unsqueeze(1)
            for start in range(0, len(flat), 256):
                torch.log_softmax(model(flat[start : start + 256])["logits"], dim=1)
            seconds += sum(s for _, s in batch)
    return seconds


def timed(function):
    start = time.perf_counter()
    seconds = function()
    return seconds / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default="runs/bench/predict_speed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating (default 3)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    (folder / "library").mkdir(parents=True, exist_ok=True)
    paths = make_library(folder / "library", args.tracks, args.seconds)
    config = make_checkpoint(folder / "model.pt")
    classifier = Classifier.load(folder / "model.pt", device="cpu")
    runs = {"product": [], "bare": []}
    for _ in range(args.repeats):  # alternating, so a busy moment on a shared machine hits both
        runs["product"].append(
            timed(lambda: sum(r["seconds"] for r in classifier.predict_many(paths, workers=args.workers)))
        )
        runs["bare"].append(timed(lambda: bare(paths, config, classifier.trained.model, args.workers)))
    product, bare_speed = statistics.median(runs["product"]), statistics.median(runs["bare"])
    print(
        f"{args.tracks} tracks x {args.seconds:g} s ({', '.join(f for f, _, _ in FORMATS)}), "
        f"{args.workers} workers, {torch.get_num_threads()} threads for the forward pass"
    )
    for name, title in (("product", "product (genrenet predict):"), ("bare", "bare pipeline (no pydub):  ")):
        each = ", ".join(f"{x:.1f}" for x in runs[name])
        print(f"{title}  {statistics.median(runs[name]):7.1f}x real time  (median of {each})")
    print(f"ratio product / bare:        {product / bare_speed:7.2f}  (target >= 0.8)")
    return 0 if product / bare_speed >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
