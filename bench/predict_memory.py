"""Peak memory of predict.py on short and long files with the shipped configs: a file of any length
is decoded and scored a batch of clips at a time, so a long file must not need more than `--limit`
(1.2) times a short file's peak RSS.

    python bench/predict_memory.py                          # demo and gtzan: 3 min, 3 h and 10 h
    python bench/predict_memory.py --lengths 3m 1h          # a quicker look
    python bench/predict_memory.py --repeats 3              # the README's figures: medians of 3

For each config (a name of the shipped configs, or a YAML file) it saves an untrained model of
that config (its audio, feature and model settings: memory does not depend on what the weights
learned) and runs `python predict.py --checkpoint CONFIG.pt FILE` on generated 44.1 kHz 16-bit
stereo WAV files of each length, each run a fresh process whose peak RSS is read with os.wait4.
Prints the median peak of --repeats runs per file, each long file's ratio to the shortest one, and
exits 1 when a ratio is above --limit.

The files are written lazily: each minute opens with a few seconds of a tone with noise and the rest
is silence left as a hole in a sparse file, so a 10-hour file (6.4 GB, an RF64 WAV past 4 GiB)
takes about 0.5 GB of disk and a minute to write. Its decoder reads every sample all the same.
Everything generated is deleted unless --keep. Run it from the repository root.
"""

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from genrenet.checkpoint import save_checkpoint  # noqa: E402
from genrenet.config import load_config, to_dict, with_changes  # noqa: E402
from genrenet.registry import build_model  # noqa: E402

RATE, CHANNELS, SAMPLE_BYTES = 44100, 2, 2
SOUND_SECONDS = 5  # of every minute; the rest is a hole in the file
CLASSES = {"demo": 7, "gtzan": 10}  # label counts of the shipped data sets; other configs get 10
UNITS = {"s": 1, "m": 60, "h": 3600}


def seconds_of(length: str) -> float:
    """'3m', '3h', '90s' or a bare number of seconds."""
    unit = length[-1] if length[-1] in UNITS else "s"
    return float(length.rstrip("smh")) * UNITS[unit]


def wav_header(frames: int) -> bytes:
    """A 16-bit PCM WAV header for `frames` frames; RF64 (WAV's 64-bit form) past RIFF's 4 GiB."""
    data = frames * CHANNELS * SAMPLE_BYTES
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, CHANNELS, RATE, RATE * CHANNELS * SAMPLE_BYTES, 4, 16)
    if data + 36 < 2**32:
        return struct.pack("<4sI4s", b"RIFF", 36 + data, b"WAVE") + fmt + struct.pack("<4sI", b"data", data)
    ds64 = struct.pack("<4sIQQQI", b"ds64", 28, 72 + data, data, frames, 0)
    return struct.pack("<4sI4s", b"RF64", 0xFFFFFFFF, b"WAVE") + ds64 + fmt + struct.pack("<4sI", b"data", 0xFFFFFFFF)


def write_music(path: Path, seconds: float, seed: int = 0) -> Path:
    """A sparse 44.1 kHz stereo WAV: SOUND_SECONDS of a tone with noise opening each minute (a new
    pitch each minute), silence between them written as holes."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * RATE)
    header = wav_header(frames)
    with open(path, "wb") as out:
        out.write(header)
        for minute, start in enumerate(range(0, frames, 60 * RATE)):
            n = min(SOUND_SECONDS * RATE, frames - start)
            t = np.arange(n) / RATE
            mono = 0.3 * np.sin(2 * np.pi * (220 + 20 * (minute % 40)) * t)
            block = mono[:, None] + 0.05 * rng.standard_normal((n, CHANNELS))
            out.seek(len(header) + start * CHANNELS * SAMPLE_BYTES)
            out.write((np.clip(block, -1, 1) * 32767).astype("<i2").tobytes())
        out.truncate(len(header) + frames * CHANNELS * SAMPLE_BYTES)
    return path


def untrained_checkpoint(name: str, folder: Path) -> Path:
    """An untrained model of a config, saved as a checkpoint predict.py loads."""
    config = load_config(name)
    config = with_changes(config, data={"path": str(folder)}, train={"device": "cpu"}, run={"dir": str(folder)})
    labels = [f"class{i}" for i in range(CLASSES.get(Path(name).stem, 10))]
    model = build_model(config, len(labels))
    path = folder / f"{Path(name).stem}.pt"
    save_checkpoint(path, model_state=model.state_dict(), config=to_dict(config), labels=labels, epoch=0, metrics={})
    return path


def predict_peak_rss(checkpoint: Path, audio: Path, workers: int) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of one `python predict.py` run, in a process of its own."""
    start = time.perf_counter()
    command = [sys.executable, "predict.py", "--checkpoint", str(checkpoint), str(audio), "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()  # small: warnings and errors only
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict.py failed on {audio}: {stderr.strip()[-2000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def measure(configs: list[str], files: dict, folder: Path, args) -> bool:
    """Prints one row per config and file length; False when a long file's ratio is above the limit."""
    within = True
    for name in configs:
        checkpoint = untrained_checkpoint(name, folder)
        peaks = {}
        for length, path in files.items():
            runs = [predict_peak_rss(checkpoint, path, args.workers) for _ in range(args.repeats)]
            peaks[length] = statistics.median(peak for peak, _ in runs)
            ratio = peaks[length] / peaks[args.lengths[0]]
            within &= ratio <= args.limit
            print(
                f"{Path(name).stem:>8} {length:>5}: peak RSS {peaks[length] / 2**20:7.1f} MiB  ratio {ratio:5.3f}   "
                f"predict.py {statistics.median(seconds for _, seconds in runs):6.1f} s",
                flush=True,
            )
    return within


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "gtzan"], help="shipped config names or YAML files")
    parser.add_argument("--lengths", nargs="+", default=["3m", "3h", "10h"], help="file lengths; the first is the base")
    parser.add_argument("--repeats", type=int, default=1, help="runs per file and config; medians are printed")
    parser.add_argument("--workers", type=int, default=0, help="predict.py --workers (default 0)")
    parser.add_argument("--limit", type=float, default=1.2, help="largest allowed ratio of a long file's peak RSS")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a new folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="predict_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        files = {n: write_music(folder / f"{n}.wav", seconds_of(n), seed=i) for i, n in enumerate(args.lengths)}
        print(f"wrote {len(files)} files in {time.perf_counter() - began:.0f} s ({RATE} Hz stereo WAV)", flush=True)
        within = measure(args.configs, files, folder, args)
        print(f"limit {args.limit}; whole bench {time.perf_counter() - began:.0f} s")
        return 0 if within else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
