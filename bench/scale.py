"""Peak memory of training does not grow with the dataset: `train.py` on N and on 4N tracks, whose
4N feature store on disk is 4 GiB or more (--gib).

    python bench/scale.py                    # N chosen so the 4N store is >= 4 GiB (N = 300: 1.1 + 4.4 GB)
    python bench/scale.py --gib 0.5          # a quicker look (N = 40)
    python bench/scale.py --tracks 100       # a given N

Generates two datasets of 30 s tracks (class folders of 22,050 Hz mono WAV, one simple signal per
class, as bench/train_speed.py writes them), each with a bench config that stores many feature
bytes per second of audio, so a few GB of store come from a tractable amount of audio: 3 s clips
every 0.5 s (55 overlapping clips per track) of 256 mel bands, stored float16 (66,560 bytes a clip,
3.7 MB a track); the model is a tiny small_cnn (width 4), so its weights and activations are small
beside the store and what would grow with N is easy to see. For each dataset, first fills its
store in a separate process (cache.cached_features over every track, --fill-workers decoding; time,
files/s and the key folder's size on disk), then runs the real command on the warm store:

    python train.py --config <bench config> --overwrite       # train.epochs=1, data.num_workers=0

a full epoch over every training clip and a validation pass, in its own process, whose peak RSS is
read with os.wait4 (as bench/predict_memory.py does). data.num_workers is 0 (--train-workers), so
that one process is all of training's memory; with workers, the sum of the main process's and its
children's RSS, sampled every 0.2 s, is used instead. The samples also split the main process's
peak into anonymous memory and mapped file pages (RssAnon, RssFile), which would show shards left
mapped. Prints the sizes, the fill and both peaks; exits 1 when the 4N/N ratio is above --limit
(1.15) or the 4N peak is 2 GiB or more. Everything generated is deleted unless --keep.

Measured on 2 CPU cores with nothing else running (`python bench/scale.py`):

    N:   300 tracks   16500 clips, store 1.02 GiB, fill  55 s (5.49 files/s), train.py  48 s, peak RSS  998 MiB
    4N: 1200 tracks   66000 clips, store 4.09 GiB, fill 216 s (5.56 files/s), train.py 175 s, peak RSS 1022 MiB
    ratio 4N/N 1.024 (limit 1.15), 4N peak 1.00 GiB (limit 2 GiB); whole bench 9.9 min
    fill processes' peak RSS: 729 and 728 MiB

Most of either peak is torch itself (importing it and a forward/backward: about 690 MiB). Two
growths this bench found are fixed: the fill's decoding workers grew with the number of files
(peaks 746 and 2090 MiB; cache.return_large_frees), and validation kept a small output tensor per
batch that pinned freed buffers in the heap (ratio 1.140 before, 1.024 after; scores.per_file).
"""

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's genrenet first

from train_speed import disk_usage, write_tracks  # noqa: E402

from genrenet.config import from_dict, preprocessing_key  # noqa: E402

CLASSES = 10
SAMPLE_RATE, CLIP_SECONDS, HOP_SECONDS = 22050, 3.0, 0.5
N_FFT, HOP_LENGTH, N_MELS = 1024, 512, 256
CROP_SECONDS = 0.5
PEAK_LIMIT = 2 * 2**30

# Fills a store in its own process: every track of the config's data.path, with N workers decoding.
FILL = """
import sys
from genrenet.cache import cached_features
from genrenet.config import load_config, with_changes
from genrenet.datasets import find_tracks
config = with_changes(load_config(sys.argv[1]), data={"num_workers": int(sys.argv[2])})
paths = [t.path for t in find_tracks(config.data)]
features, failures = cached_features(paths, config, desc="fill")
print(len(paths), len(failures), features.clip_count)
"""


def clip_bytes() -> tuple[int, int]:
    """(frames, stored bytes) of one clip: frames of a centered STFT, float16 values."""
    frames = 1 + round(CLIP_SECONDS * SAMPLE_RATE) // HOP_LENGTH
    return frames, N_MELS * frames * 2


def clips_per_track(seconds: float) -> int:
    """Clips the audio stage cuts from a track of `seconds` (audio.cut_clips)."""
    clip_ms, hop_ms = round(CLIP_SECONDS * 1000), round(HOP_SECONDS * 1000)
    return 1 + (round(seconds * 1000) - clip_ms) // hop_ms


def bench_config(folder: Path, train_workers: int) -> dict:
    return {
        "data": {
            "path": str(folder / "tracks"),
            "format": "folder",
            "cache_dir": str(folder / "cache"),
            "num_workers": train_workers,
        },
        "audio": {"sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS, "hop_seconds": HOP_SECONDS},
        "features": {"n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS},
        "model": {"name": "small_cnn", "width": 4, "dropout": 0.0},
        # Steps on random 0.5 s crops of each clip read whole from the store: a sixth of the compute
        # of whole clips, so an epoch over 4 GiB takes minutes, not half an hour, on 2 cores.
        "augment": {"crop_seconds": CROP_SECONDS},
        "train": {"epochs": 1, "device": "cpu"},
        "run": {"dir": str(folder / "run")},
    }


class RssSampler(threading.Thread):
    """The largest RSS seen, every `every` seconds, of a process (anonymous and file-backed parts)
    and of it plus its children (DataLoader workers) together."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.done = pid, every, threading.Event()
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "tree": 0}

    def run(self):
        while not self.done.wait(self.every):
            main = _status(self.pid)
            if "VmRSS" not in main:
                continue
            if main["VmRSS"] > self.peak["VmRSS"]:  # anon and file as they were at the main process's peak
                self.peak.update(main)
            tree = main["VmRSS"] + sum(_status(child).get("VmRSS", 0) for child in _children(self.pid))
            self.peak["tree"] = max(self.peak["tree"], tree)

    def stop(self):
        self.done.set()
        self.join()


def _status(pid: int) -> dict:
    """VmRSS, RssAnon and RssFile of a process in bytes ({} once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(kib) * 1024 for key, kib in re.findall(r"^(VmRSS|RssAnon|RssFile):\s+(\d+) kB", text, re.M)}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []


def run_measured(command: list[str], log: Path) -> dict:
    """Run a command from the repository root, its output to `log`; its peak RSS by os.wait4 and
    by sampling, and its seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
        sampler = RssSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        sampler.stop()
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed ({process.returncode}):\n{output[-3000:]}")
    # ru_maxrss is in KiB on Linux: the process's own peak (or a reaped child's, if larger)
    return {"seconds": seconds, "maxrss": usage.ru_maxrss * 1024, "sampled": sampler.peak, "output": output}


def dataset(folder: Path, tracks: int, args) -> dict:
    """Generate, fill and train one dataset; its figures."""
    began = time.perf_counter()
    wav = write_tracks(folder / "tracks", tracks, args.seconds, CLASSES)
    generated = time.perf_counter() - began
    config_path = folder / "bench.yaml"
    raw = bench_config(folder, args.train_workers)
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    key_dir = folder / "cache" / preprocessing_key(from_dict(raw, source="bench"))
    print(f"{tracks} tracks: generated {wav / 1e9:.2f} GB of WAV in {generated:.0f} s", flush=True)

    fill = run_measured([sys.executable, "-c", FILL, str(config_path), str(args.fill_workers)], folder / "fill.log")
    files, failed, clips = (int(x) for x in fill["output"].split()[-3:])
    if failed:
        raise SystemExit(f"{failed} generated files could not be read; see {folder / 'fill.log'}")
    store = disk_usage(key_dir)
    print(
        f"  fill: {files} files, {clips} clips in {fill['seconds']:.0f} s ({files / fill['seconds']:.2f} files/s, "
        f"{args.fill_workers} workers; peak RSS {fill['maxrss'] / 2**20:.0f} MiB), "
        f"store {store / 2**30:.2f} GiB on disk",
        flush=True,
    )

    run = run_measured([sys.executable, "train.py", "--config", str(config_path), "--overwrite"], folder / "train.log")
    summary = next((line for line in run["output"].splitlines() if line.startswith("data:")), "")
    epoch = next((line for line in run["output"].splitlines() if re.match(r"epoch +\d+ \|", line)), "")
    peak = run["maxrss"] if args.train_workers == 0 else run["sampled"]["tree"]
    mib = {key: f"{value / 2**20:.0f}" for key, value in run["sampled"].items()}
    print(
        f"  train.py: {run['seconds']:.0f} s, peak RSS {peak / 2**20:.0f} MiB (sampled: main {mib['VmRSS']} MiB = "
        f"anon {mib['RssAnon']} + file {mib['RssFile']}; with workers {mib['tree']})\n  {summary}\n  {epoch.strip()}",
        flush=True,
    )
    return {"tracks": tracks, "clips": clips, "store": store, "fill": fill, "files": files, "train": run, "peak": peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.0, help="least size of the 4N store on disk (default 4 GiB)")
    parser.add_argument("--tracks", type=int, default=None, help="N (default: the least for --gib, a multiple of 10)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track (default 30)")
    parser.add_argument("--fill-workers", type=int, default=2, help="data.num_workers while filling (default 2)")
    parser.add_argument("--train-workers", type=int, default=0, help="data.num_workers of training (default 0)")
    parser.add_argument("--limit", type=float, default=1.15, help="largest allowed 4N/N peak RSS ratio")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a new folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tracks, stores and runs")
    args = parser.parse_args(argv)

    frames, per_clip = clip_bytes()
    per_track = clips_per_track(args.seconds) * per_clip
    n = args.tracks or CLASSES * math.ceil(args.gib * 2**30 / (4 * per_track * CLASSES))
    print(
        f"{args.seconds:g} s tracks: {clips_per_track(args.seconds)} clips of {CLIP_SECONDS:g} s "
        f"every {HOP_SECONDS:g} s, "
        f"{N_MELS} mels x {frames} frames float16 = {per_clip:,} bytes a clip, {per_track / 1e6:.2f} MB a track; "
        f"N = {n} tracks ({n * per_track / 2**30:.2f} GiB), 4N = {4 * n} ({4 * n * per_track / 2**30:.2f} GiB)",
        flush=True,
    )
    folder = Path(args.dir or tempfile.mkdtemp(prefix="scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        rows = [dataset(folder / name, tracks, args) for name, tracks in (("N", n), ("4N", 4 * n))]
        ratio = rows[1]["peak"] / rows[0]["peak"]
        print()
        for name, row in zip(("N", "4N"), rows):
            fill = row["fill"]["seconds"]
            print(
                f"{name:>3}: {row['tracks']:5d} tracks {row['clips']:7d} clips, store {row['store'] / 2**30:5.2f} GiB, "
                f"fill {fill:5.0f} s ({row['files'] / fill:5.2f} files/s), train.py {row['train']['seconds']:5.0f} s, "
                f"peak RSS {row['peak'] / 2**20:6.0f} MiB"
            )
        ok = ratio <= args.limit and rows[1]["peak"] < PEAK_LIMIT
        print(
            f"ratio 4N/N {ratio:.3f} (limit {args.limit}), 4N peak {rows[1]['peak'] / 2**30:.2f} GiB (limit 2 GiB); "
            f"training data.num_workers={args.train_workers}; whole bench {(time.perf_counter() - began) / 60:.1f} min"
        )
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
