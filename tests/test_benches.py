"""The benches that print the figures of the README run end to end on a small generated dataset."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_train_speed(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "bench/train_speed.py", "--seconds", "6", "--repeats", "1", "--warmup", "1"]
    command += ["--dir", str(tmp_path / "bench"), *options]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_train_speed_prints_product_and_bare_throughput_and_removes_its_data(tmp_path):
    result = run_train_speed(tmp_path, "--tracks", "40", "--workers", "0", "1", "--target", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("fill: 40 files in") for line in lines)
    ratios = [line for line in lines if line.startswith("ratio product w=")]
    assert [line.split(" / ")[0] for line in ratios] == ["ratio product w=0", "ratio product w=1"]
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in ratios)
    assert any(line.startswith("bare:") and "clips/s" in line for line in lines)
    assert not (tmp_path / "bench").exists()  # the generated tracks and store are deleted without --keep


def test_train_speed_on_too_few_tracks_says_so_in_one_line(tmp_path):
    result = run_train_speed(tmp_path, "--tracks", "20")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # after the fill's bar
    assert errors == [
        "error: the valid split has no tracks: raise data.valid_fraction or add valid rows to the manifest"
    ]


def test_predict_memory_prints_each_config_and_length_and_removes_its_files(tmp_path):
    command = [sys.executable, "bench/predict_memory.py", "--configs", "demo", "--lengths", "10s", "40s"]
    command += ["--limit", "1.5", "--dir", str(tmp_path / "bench")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if "peak RSS" in line]
    assert [row[:2] for row in rows] == [["demo", "10s:"], ["demo", "40s:"]]
    assert all(float(row[4]) > 100 for row in rows) and float(rows[0][7]) == 1.0  # MiB; the base's ratio
    assert not (tmp_path / "bench").exists()
