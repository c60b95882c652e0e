"""Resuming training: after SIGKILL and after Ctrl-C a resumed run ends exactly where the
uninterrupted run ends (metrics, weights, evaluation), augmentation randomness included; a run is
deterministic for a given seed; checkpoints are atomic; --resume refuses what it cannot do.

Runs (one module fixture, independent processes side by side to use both cores):
  A  uninterrupted reference, on a cold feature cache
  B  SIGKILL after its first finished epoch, then --resume
  C  SIGINT (Ctrl-C) after its first finished epoch, then --resume
  D  A again on the warm cache (determinism)
and before C is resumed, the temp file a checkpoint save killed mid-write leaves is put in C.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet import cli

EPOCHS = 4
AUGMENT = {
    "gain_db": 6.0,
    "freq_masks": 2,
    "freq_mask_width": 6,
    "time_masks": 2,
    "time_mask_width": 6,
    "crop_seconds": 0.4,
    "mixup_alpha": 0.4,
}
# One thread per process: the runs compare exactly with each other, two of them share the 2 cores,
# and a busy machine does not slow them down with oversubscribed thread pools.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PLANTED = ".last.pt.k1ll3d.tmp"


def config_for(work: Path, run: str) -> Path:
    raw = tiny_config_dict(
        work,
        work / "data",
        augment=AUGMENT,
        model={"dropout": 0.2},
        train={"epochs": EPOCHS, "batch_size": 4, "lr": 0.005},
        run={"dir": str(work / run)},
    )
    return write_config(work / f"{run}.yaml", raw)


@dataclass
class Proc:
    """A train.py process whose output goes to files (a full pipe would stall it)."""

    name: str
    popen: subprocess.Popen
    out: Path

    @classmethod
    def start(cls, work: Path, name: str, *args) -> "Proc":
        out = work / f"{name}.log"
        with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
            popen = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "train.py"), *map(str, args)],
                cwd=REPO_ROOT,
                stdout=stdout,
                stderr=stderr,
                env=ENV,
            )
        return cls(name, popen, out)

    def wait(self, timeout=300) -> "Proc":
        self.popen.wait(timeout=timeout)
        return self

    @property
    def returncode(self) -> int:
        return self.popen.returncode

    @property
    def stdout(self) -> str:
        return self.out.with_suffix(".out").read_text()

    @property
    def stderr(self) -> str:
        return self.out.with_suffix(".err").read_text()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(run: Path, reference: Path):
    got, expected = metrics(run), metrics(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected] == list(range(1, EPOCHS + 1))
    for mine, theirs in zip(got, expected):
        assert set(mine) == set(theirs)
        for key in set(mine) - {"seconds"}:
            assert mine[key] == pytest.approx(theirs[key], rel=0, abs=1e-6), (run.name, mine["epoch"], key)


def first_epoch_done(run: Path) -> bool:
    # last.pt of epoch 1 is written just after epoch 1's metrics line, so once epoch 2 is logged the
    # run is certainly past a completed epoch (last.pt also exists from the start, at epoch 0)
    log = run / "metrics.jsonl"
    return log.exists() and log.read_text().count("\n") >= 2


def temp_files(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name.endswith(".tmp"))


@dataclass
class Runs:
    work: Path
    a: Proc
    b_killed: Proc
    c_interrupted: Proc
    c_state: dict  # training_state of C's last.pt as Ctrl-C left it
    b_state: dict  # B's last.pt as SIGKILL left it
    signalled_in: dict  # run name -> the epoch running when the signal was sent
    c_logged: int  # metrics lines of C as Ctrl-C left it
    killed_at: float
    b: Proc
    c: Proc
    d: Proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    work = tmp_path_factory.mktemp("resume")
    # 12 tracks of 4 s per class in 0.5 s clips: about 200 training clips, ~50 steps of 4 per epoch
    make_class_folder(work / "data", per_class=12, seconds=4.0)
    assert not (work / "cache").exists()
    a = Proc.start(work, "A", "--config", config_for(work, "A")).wait()
    assert a.returncode == 0, a.stderr[-3000:]

    # B and C side by side; each gets its signal as soon as its first epoch is complete
    pending = {
        "B": (Proc.start(work, "B", "--config", config_for(work, "B")), signal.SIGKILL),
        "C": (Proc.start(work, "C", "--config", config_for(work, "C")), signal.SIGINT),
    }
    stopped, signalled_in, deadline = {}, {}, time.monotonic() + 300
    while pending:
        for name, (proc, signum) in list(pending.items()):
            assert proc.popen.poll() is None, (name, proc.stderr[-3000:])
            if first_epoch_done(work / name):
                signalled_in[name] = (work / name / "metrics.jsonl").read_text().count("\n") + 1
                proc.popen.send_signal(signum)
                stopped[name] = proc
                del pending[name]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.005)
    b_killed, c_interrupted = stopped["B"].wait(), stopped["C"].wait()
    killed_at = time.time()
    b_state = torch.load(work / "B" / "last.pt", weights_only=True)
    c_state = torch.load(work / "C" / "last.pt", weights_only=True)["training_state"]
    c_logged = len(metrics(work / "C"))

    # what SIGKILL inside atomic_save leaves behind: a partly written temp file beside last.pt
    partial = (work / "C" / "last.pt").read_bytes()
    (work / "C" / PLANTED).write_bytes(partial[: len(partial) // 2])

    later = [
        Proc.start(work, "B-resumed", "--resume", work / "B"),
        Proc.start(work, "C-resumed", "--resume", work / "C"),
        Proc.start(work, "D", "--config", config_for(work, "D")),
    ]
    b, c, d = (proc.wait() for proc in later)
    runs = Runs(work, a, b_killed, c_interrupted, c_state, b_state, signalled_in, c_logged, killed_at, b, c, d)
    print(
        f"\nsignals landed in epochs {signalled_in}; C stopped after batch {c_state['batches_done']} "
        f"of epoch {c_state['epoch']}"
    )
    return runs


def test_reference_run_trains_and_leaves_no_temp_files(runs):
    run_a = runs.work / "A"
    rows = metrics(run_a)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert {"best.pt", "last.pt", "config.yaml", "metrics.jsonl"} <= {p.name for p in run_a.iterdir()}
    assert temp_files(run_a) == []
    state = torch.load(run_a / "last.pt", weights_only=True)
    assert state["training_state"]["finished"] is True and state["epoch"] == EPOCHS
    assert state["training_state"]["batches_done"] == 0


def test_sigkill_then_resume_matches_uninterrupted(runs):
    run_a, run_b = runs.work / "A", runs.work / "B"
    assert runs.b_killed.returncode == -signal.SIGKILL
    stopped = runs.b_state
    assert 1 <= stopped["epoch"] < EPOCHS and not stopped["training_state"]["finished"]
    result = runs.b
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
    assert report_a["track"]["n"] >= 3
    for level in ("track", "clip"):
        assert report_b[level]["accuracy"] == report_a[level]["accuracy"]
        assert report_b[level]["confusion_matrix"] == report_a[level]["confusion_matrix"]
    # the resumed process leaves no temp files of its own (a kill that lands inside a save may leave one)
    assert [p for p in temp_files(run_b) if p.stat().st_mtime > runs.killed_at] == []


def test_ctrl_c_saves_a_resumable_checkpoint(runs):
    run_c, proc, state = runs.work / "C", runs.c_interrupted, runs.c_state
    assert proc.returncode == 130, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    message = [line for line in proc.stdout.splitlines() if "--resume" in line]
    assert message == [f"interrupted: saved a resumable checkpoint; continue with: python train.py --resume {run_c}"]
    assert (run_c / "last.pt").is_file()
    assert not state["finished"]
    # it stopped in the epoch it was in (or, had that epoch just ended, at the start of the next)
    assert state["epoch"] in (runs.signalled_in["C"], runs.signalled_in["C"] + 1)
    assert runs.c_logged == state["epoch"] - 1
    assert 0 <= state["batches_done"] < 60


def test_ctrl_c_then_resume_matches_uninterrupted(runs):
    run_c, state, result = runs.work / "C", runs.c_state, runs.c
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    at = f"resuming {run_c} at epoch {state['epoch']}"
    # a stop between two batches resumes inside the epoch, with the augmentation RNG state restored
    assert (at + (f", batch {state['batches_done'] + 1}" if state["batches_done"] else "")) in result.stdout
    assert_same_metrics(run_c, runs.work / "A")
    assert [p.name for p in temp_files(run_c) if p.name != PLANTED] == []


def test_same_seed_twice_gives_identical_metrics(runs):
    """A on a cold cache, D on the warm cache A left: the very same training."""
    assert "features (" in runs.a.stderr and "new)" in runs.a.stderr  # A computed its features
    result = runs.d
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new)" not in result.stderr  # D read every feature from the cache
    assert_same_metrics(runs.work / "D", runs.work / "A")
    a_best = torch.load(runs.work / "A" / "best.pt", weights_only=True)["model_state"]
    d_best = torch.load(runs.work / "D" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a_best[k], d_best[k]) for k in a_best)
    assert temp_files(runs.work / "D") == []


def test_resume_clears_temp_file_of_a_save_killed_mid_write(runs):
    run_c = runs.work / "C"  # C had a half-written .last.pt.*.tmp beside last.pt when it was resumed
    assert runs.c.returncode == 0, runs.c.stderr[-3000:]
    assert len(metrics(run_c)) == EPOCHS
    assert temp_files(run_c) == []


def test_resume_a_finished_run_does_nothing(runs, capsys):
    run_a = runs.work / "A"
    before = {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()}
    log = (run_a / "metrics.jsonl").read_text()
    assert cli.train_main(["--resume", str(run_a)]) == 0
    out = capsys.readouterr().out
    assert f"{run_a} already finished its {EPOCHS} epochs; nothing to resume" in out
    assert (run_a / "metrics.jsonl").read_text() == log
    assert {p.name: p.stat().st_mtime_ns for p in run_a.iterdir()} == before


def test_resume_without_last_pt_is_one_line_error(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert cli.train_main(["--resume", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: {folder} holds no last.pt: the run stopped before its first checkpoint; start it again with --config"
    ]
    assert list(folder.iterdir()) == []


def test_resume_with_set_is_refused(runs, capsys):
    run_a = runs.work / "A"
    before = (run_a / "last.pt").stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_:
        cli.train_main(["--resume", str(run_a), "--set", "train.epochs=8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: --resume continues a run with its stored config; --set" in err and "do not apply" in err
    assert (run_a / "last.pt").stat().st_mtime_ns == before
