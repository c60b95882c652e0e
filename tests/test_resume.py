"""Resuming training: after SIGKILL and after Ctrl-C a resumed run ends exactly where the
uninterrupted run ends (metrics, weights, evaluation), augmentation randomness included; a run is
deterministic for a given seed; checkpoints are atomic; --resume refuses what it cannot do.

Run A trains uninterrupted; B is killed with SIGKILL and resumed; C gets SIGINT and is resumed;
D repeats A on the warm feature cache.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet import training

EPOCHS = 4
AUGMENT = {"gain_db": 6.0, "freq_masks": 2, "freq_mask_width": 6, "time_masks": 2, "time_mask_width": 6,
           "crop_seconds": 0.4, "mixup_alpha": 0.4}


def config_for(work: Path, run: str) -> Path:
    raw = tiny_config_dict(work, work / "data", augment=AUGMENT, model={"dropout": 0.2},
                           train={"epochs": EPOCHS, "batch_size": 4, "lr": 0.005}, run={"dir": str(work / run)})
    return write_config(work / f"{run}.yaml", raw)


def train_cmd(*args) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), *map(str, args)]


def run_train(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(run: Path, reference: Path):
    got, expected = metrics(run), metrics(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected] == list(range(1, EPOCHS + 1))
    for mine, theirs in zip(got, expected):
        assert set(mine) == set(theirs)
        for key in set(mine) - {"seconds"}:
            assert mine[key] == pytest.approx(theirs[key], rel=0, abs=1e-6), (run.name, mine["epoch"], key)


def start_and_stop(work: Path, run: str, signum: int, timeout=120.0):
    """Start a run, wait for its first finished epoch (a metrics line and last.pt), then send signum.

    Returns (process, stdout, stderr, epochs logged when the signal was sent)."""
    cfg = config_for(work, run)
    process = subprocess.Popen(train_cmd("--config", cfg), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log, last = work / run / "metrics.jsonl", work / run / "last.pt"
    deadline = time.monotonic() + timeout
    # last.pt is written just after the epoch's metrics line: before it exists there is nothing to resume
    while not (log.exists() and log.read_text().count("\n") >= 1 and last.exists()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.005)
    logged = log.read_text().count("\n")
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=timeout)
    return process, stdout, stderr, logged


def temp_files(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    # 12 tracks of 4 s per class in 0.5 s clips: about 200 training clips, ~50 steps of 4 per epoch
    make_class_folder(work / "data", per_class=12, seconds=4.0)
    return work


@pytest.fixture(scope="module")
def run_a(work):
    """The uninterrupted reference run, trained on a cold feature cache."""
    assert not (work / "cache").exists()
    result = run_train("--config", config_for(work, "A"))
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "A"


@pytest.fixture(scope="module")
def killed_b(work, run_a):
    process, stdout, stderr, logged = start_and_stop(work, "B", signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    return work / "B", logged, time.time()


@pytest.fixture(scope="module")
def interrupted_c(work, run_a):
    process, stdout, stderr, logged = start_and_stop(work, "C", signal.SIGINT)
    state = torch.load(work / "C" / "last.pt", weights_only=True)["training_state"]
    shutil.copytree(work / "C", work / "E")  # for the temp-file test
    return work / "C", process.returncode, stdout, stderr, logged, state


def test_reference_run_trains_and_leaves_no_temp_files(run_a):
    rows = metrics(run_a)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert {"best.pt", "last.pt", "config.yaml", "metrics.jsonl"} <= {p.name for p in run_a.iterdir()}
    assert temp_files(run_a) == []
    state = torch.load(run_a / "last.pt", weights_only=True)
    assert state["training_state"]["finished"] is True and state["epoch"] == EPOCHS


def test_sigkill_mid_run_then_resume_matches_uninterrupted(work, run_a, killed_b):
    run_b, logged, killed_at = killed_b
    stopped = torch.load(run_b / "last.pt", weights_only=True)
    assert 1 <= stopped["epoch"] < EPOCHS and not stopped["training_state"]["finished"]
    result = run_train("--resume", run_b)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"resuming {run_b} at epoch {stopped['epoch'] + 1}" in result.stdout
    assert_same_metrics(run_b, run_a)
    # the weights are the same, and so is what evaluation makes of them
    a_state = torch.load(run_a / "best.pt", weights_only=True)
    b_state = torch.load(run_b / "best.pt", weights_only=True)
    assert a_state["epoch"] == b_state["epoch"]
    for name, tensor in a_state["model_state"].items():
        assert torch.allclose(tensor.float(), b_state["model_state"][name].float(), atol=1e-6), name
    from genrenet.evaluation import evaluate
    report_a, report_b = evaluate(run_a / "best.pt", "test"), evaluate(run_b / "best.pt", "test")
    for level in ("track", "clip"):
        assert report_b[level]["accuracy"] == report_a[level]["accuracy"]
        assert report_b[level]["confusion_matrix"] == report_a[level]["confusion_matrix"]
    # the resumed process leaves no temp files of its own (a kill that lands inside a save may leave one)
    assert [p for p in temp_files(run_b) if p.stat().st_mtime > killed_at] == []


def test_ctrl_c_saves_a_resumable_checkpoint(interrupted_c):
    run_c, returncode, stdout, stderr, logged, state = interrupted_c
    assert returncode == 130, stdout + stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    message = [line for line in stdout.splitlines() if "--resume" in line]
    assert message == [f"interrupted: saved a resumable checkpoint; continue with: python train.py --resume {run_c}"]
    assert (run_c / "last.pt").is_file()
    assert not state["finished"]
    assert state["epoch"] >= 2  # the epoch it stopped in (it had finished at least one)
    assert len(metrics(run_c)) == state["epoch"] - 1


def test_ctrl_c_then_resume_matches_uninterrupted(run_a, interrupted_c):
    run_c, returncode, _, _, _, state = interrupted_c
    assert returncode == 130
    result = run_train("--resume", run_c)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    at = f"resuming {run_c} at epoch {state['epoch']}"
    # a stop between two batches resumes inside the epoch, with the augmentation RNG state restored
    assert (at + (f", batch {state['batches_done'] + 1}" if state["batches_done"] else "")) in result.stdout
    assert_same_metrics(run_c, run_a)
    assert temp_files(run_c) == []


def test_same_seed_twice_gives_identical_metrics(work, run_a):
    """A on a cold cache, D on the warm cache A left: the very same training."""
    cache = work / "cache"
    entries = sorted(cache.rglob("*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in entries]
    result = run_train("--config", config_for(work, "D"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new)" not in result.stderr  # every feature came from the cache
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.pt"))] == mtimes
    assert_same_metrics(work / "D", run_a)
    assert temp_files(work / "D") == []


def test_resume_a_finished_run_does_nothing(run_a, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()}
    log = (run_a / "metrics.jsonl").read_text()
    assert training.main(["--resume", str(run_a)]) == 0
    out = capsys.readouterr().out
    assert f"{run_a} already finished its {EPOCHS} epochs; nothing to resume" in out
    assert (run_a / "metrics.jsonl").read_text() == log
    assert {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()} == before


def test_resume_without_last_pt_is_one_line_error(tmp_path):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    result = run_train("--resume", folder)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: checkpoint not found: {folder / 'last.pt'}"]
    assert list(folder.iterdir()) == []


def test_resume_with_set_is_refused(run_a, capsys):
    before = (run_a / "last.pt").stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_:
        training.main(["--resume", str(run_a), "--set", "train.epochs=8"])
    assert exit_.value.code == 2
    assert "--resume continues a run with its stored config; --set, --fold and --overwrite do not apply" \
        in capsys.readouterr().err
    assert (run_a / "last.pt").stat().st_mtime_ns == before


@pytest.mark.xfail(strict=True, reason="BUG: the temp file of a checkpoint save cut short by SIGKILL "
                   "(.last.pt.<random>.tmp, up to a whole checkpoint in size) stays in the run dir for good: "
                   "neither --resume nor the saves after it remove it")
def test_resume_clears_temp_file_of_a_save_killed_mid_write(interrupted_c):
    run = interrupted_c[0].parent / "E"  # a copy of C as Ctrl-C left it
    # what SIGKILL inside atomic_save leaves behind: a partly written temp file beside last.pt
    partial = (run / "last.pt").read_bytes()
    (run / ".last.pt.k1ll3d.tmp").write_bytes(partial[:len(partial) // 2])
    assert training.main(["--resume", str(run)]) == 0
    assert len(metrics(run)) == EPOCHS
    assert temp_files(run) == []
