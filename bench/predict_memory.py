"""Peak memory of predict.py on a 3-minute and a 3-hour file: a file of any length is decoded in
blocks, so the long one must not need more than `--limit` (1.2) times the short one's peak RSS.

    python bench/predict_memory.py                 # 3 min vs 3 h of 44.1 kHz stereo (1.9 GB of WAV in /tmp)
    python bench/predict_memory.py --hours 0.5     # a quicker look

Both files are generated here (the long one written a minute at a time, so generating it is bounded
too), scored by an untrained tiny CNN (memory does not depend on what the weights learned; a small
model with 16 mel bands keeps 3 hours of CNN work to a few minutes on 2 cores), each by its own
`python predict.py --checkpoint tiny.pt FILE`, whose peak RSS is read with os.wait4. Prints both
peaks and their ratio; exits 1 when the ratio is above --limit. Everything generated is deleted
unless --keep. Run it from the repository root.

Measured on 2 CPU cores (nothing else running): 3 min 836 MiB, 3 h 836 MiB, ratio 1.00 (most of
either is importing torch: about 680 MiB); predict.py took 8 s and 49 s, the whole bench 1.8
minutes (51 s of it writing the 1.9 GB file). Before decoding in blocks, 10 minutes of audio took
1.46 GB.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from genrenet.checkpoint import save_checkpoint  # noqa: E402
from genrenet.config import from_dict, to_dict  # noqa: E402
from genrenet.registry import build_model  # noqa: E402

RATE, CHANNELS = 44100, 2
LABELS = ["blues", "metal", "reggae"]


def write_music(path: Path, seconds: float, seed: int = 0) -> Path:
    """A tone with noise, 16-bit stereo WAV, written a minute at a time."""
    rng = np.random.default_rng(seed)
    with soundfile.SoundFile(path, "w", samplerate=RATE, channels=CHANNELS, subtype="PCM_16") as out:
        written, total = 0, round(seconds * RATE)
        while written < total:
            n = min(60 * RATE, total - written)
            t = (written + np.arange(n)) / RATE
            mono = 0.3 * np.sin(2 * np.pi * (220 + 20 * (written // (60 * RATE))) * t)
            block = mono[:, None] + 0.05 * rng.standard_normal((n, CHANNELS))
            out.write(block.astype(np.float32))
            written += n
    return path


def tiny_checkpoint(folder: Path) -> Path:
    config = from_dict(
        {
            "data": {"path": str(folder)},
            "audio": {"sample_rate": 8000, "clip_seconds": 3.0, "hop_seconds": 3.0},
            "features": {"n_fft": 512, "hop_length": 256, "n_mels": 16},
            "model": {"width": 4, "dropout": 0.0},
            "train": {"device": "cpu"},
            "run": {"dir": str(folder / "run")},
        },
        source="bench",
    )
    model = build_model(config, len(LABELS))
    path = folder / "tiny.pt"
    save_checkpoint(path, model_state=model.state_dict(), config=to_dict(config), labels=LABELS, epoch=0, metrics={})
    return path


def predict_peak_rss(checkpoint: Path, audio: Path) -> tuple[int, float, str]:
    """(peak RSS in bytes, seconds, stdout) of one `python predict.py` run."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "predict.py", "--checkpoint", str(checkpoint), str(audio)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.stdout.read(), process.stderr.read()  # small: top-k lines only
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"predict.py failed on {audio} ({process.returncode}): {stderr.strip()[-2000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start, stdout  # ru_maxrss is in KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short-minutes", type=float, default=3.0)
    parser.add_argument("--hours", type=float, default=3.0, help="length of the long file (default 3)")
    parser.add_argument("--limit", type=float, default=1.2, help="largest allowed long/short peak RSS ratio")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a new folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="predict_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        checkpoint = tiny_checkpoint(folder)
        short = write_music(folder / "short.wav", args.short_minutes * 60)
        long = write_music(folder / "long.wav", args.hours * 3600, seed=1)
        print(
            f"generated {short.stat().st_size / 1e6:.0f} MB and {long.stat().st_size / 1e9:.2f} GB of "
            f"{RATE} Hz stereo WAV in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        rows = []
        for name, path in [(f"{args.short_minutes:g} min", short), (f"{args.hours:g} h", long)]:
            peak, seconds, stdout = predict_peak_rss(checkpoint, path)
            rows.append(peak)
            top = stdout.splitlines()[1].strip() if len(stdout.splitlines()) > 1 else "?"
            print(
                f"{name:>8}: peak RSS {peak / 2**20:7.1f} MiB   predict.py took {seconds:6.1f} s   (top: {top})",
                flush=True,
            )
        ratio = rows[1] / rows[0]
        print(f"ratio {ratio:.3f} (limit {args.limit}); whole bench {time.perf_counter() - began:.0f} s")
        return 0 if ratio <= args.limit else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
