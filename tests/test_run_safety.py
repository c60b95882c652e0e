"""Run directories: one writer at a time, --overwrite that never mixes two runs, problems found
before the long work, damaged checkpoints in one line, and the small things around them.

Each test here failed on the code before the fix it guards."""

import errno
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet import cli, rundir
from genrenet.checkpoint import load_checkpoint, save_state
from genrenet.config import from_dict
from genrenet.errors import UserError
from genrenet.training import resume, train


def start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def slow_config(tmp_path):
    """A run whose epochs take a few seconds: 3 classes x 12 tracks of 4 s in 0.5 s clips, batch 4."""
    data = make_class_folder(tmp_path / "data", per_class=12, seconds=4.0)
    raw = tiny_config_dict(tmp_path, data, train={"epochs": 50, "batch_size": 4})
    return write_config(tmp_path / "slow.yaml", raw), raw


def test_a_second_run_on_the_same_folder_is_refused(slow_config, tmp_path):
    config_file, _ = slow_config
    first = start("train.py", "--config", config_file)
    try:
        wait_for(lambda: (tmp_path / "run" / "last.pt").exists())
        second = subprocess.run(
            [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config_file), "--overwrite"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert "is in use by another run" in second.stderr and "Traceback" not in second.stderr


def test_overwrite_killed_in_its_first_epoch_keeps_the_old_run_whole(slow_config, tmp_path):
    config_file, raw = slow_config
    raw["train"]["epochs"] = 1
    train(from_dict(raw))
    old_config = (tmp_path / "run" / "config.yaml").read_text()
    new_file = write_config(tmp_path / "new.yaml", {**raw, "train": {**raw["train"], "epochs": 50, "seed": 7}})
    second = start("train.py", "--config", new_file, "--overwrite")
    try:
        wait_for(lambda: (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "previous").exists())
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
    run = tmp_path / "run"
    assert not (run / "best.pt").exists()  # no old best.pt beside the new config
    assert (run / "previous" / "best.pt").exists() and (run / "previous" / "config.yaml").read_text() == old_config


def test_overwrite_drops_the_previous_run_once_the_new_one_has_a_model(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    raw = tiny_config_dict(tmp_path, data, train={"epochs": 1})
    train(from_dict(raw))
    train(from_dict(raw), overwrite=True)
    assert not (tmp_path / "run" / "previous").exists() and (tmp_path / "run" / "best.pt").exists()


def test_a_run_dir_that_is_a_file_is_found_before_decoding(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    (tmp_path / "taken").write_text("a file, not a folder")
    raw = tiny_config_dict(tmp_path, data, run={"dir": str(tmp_path / "taken")})
    with pytest.raises(UserError, match="cannot be written"):
        train(from_dict(raw))
    assert not (tmp_path / "cache").exists()  # nothing was decoded


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    (tmp_path / "cachefile").write_text("not a folder")
    raw = tiny_config_dict(tmp_path, data, data={"cache_dir": str(tmp_path / "cachefile")}, train={"epochs": 1})
    train(from_dict(raw))
    assert "cannot be written" in capsys.readouterr().err
    assert (tmp_path / "run" / "best.pt").exists()


def test_a_full_disk_is_one_line_that_says_how_to_resume(tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    raw = tiny_config_dict(tmp_path, data, train={"epochs": 3})
    real_save, calls = rundir.save_checkpoint, []

    def save_until_full(path, **state):
        calls.append(path)
        if len(calls) > 3:  # last.pt at start, then best.pt and last.pt of epoch 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, **state)

    monkeypatch.setattr(rundir, "save_checkpoint", save_until_full)
    with pytest.raises(UserError) as error:
        train(from_dict(raw))
    message = str(error.value)
    assert "No space left on device" in message and f"--resume {tmp_path / 'run'}" in message
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # the last good checkpoint is kept


def test_a_file_size_limit_hit_by_torch_save_is_one_line_that_says_how_to_resume(tmp_path, capsys):
    """A real failed write, not a stand-in: a file size limit that best.pt (39 KB) and the feature
    shards fit under and last.pt with its optimizer state (109 KB) does not. torch.save hit it as a
    full disk and reported RuntimeError 'unexpected pos', a traceback."""
    resource = pytest.importorskip("resource")
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    config_file = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, data, train={"epochs": 2}))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (80_000, hard))  # Python ignores SIGXFSZ: the write fails, EFBIG
    try:
        code = cli.main(["train", "--config", str(config_file), "--quiet"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    run = tmp_path / "run"
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2 and line.startswith("error: could not write ") and "(File too large)" in line
    assert f"free space in {run}, then continue with: python train.py --resume {run}" in line
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    resume(run)  # with room again, the run goes on as the line said
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_damaged_checkpoints_are_one_line(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    raw = tiny_config_dict(tmp_path, data, train={"epochs": 2})
    train(from_dict(raw))
    good = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    for key in ("config", "labels", "model_state"):
        broken = {k: v for k, v in good.items() if k != key}
        save_state(broken, tmp_path / f"no_{key}.pt")
        with pytest.raises(UserError, match=f"damaged checkpoint: '{key}' is missing"):
            load_checkpoint(tmp_path / f"no_{key}.pt")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    last["training_state"].update(finished=False, optimizer={"state": "garbage"})
    save_state(last, tmp_path / "run" / "last.pt")
    with pytest.raises(UserError, match="damaged training state"):
        resume(tmp_path / "run")


def test_resume_of_a_run_stopped_before_its_first_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data: {}\n")
    with pytest.raises(UserError, match="stopped before its first checkpoint; start it again with --config"):
        resume(tmp_path / "run")


def test_saved_files_follow_the_umask(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    previous = os.umask(0o022)
    try:
        train(from_dict(tiny_config_dict(tmp_path, data, train={"epochs": 1})))
    finally:
        os.umask(previous)
    for name in ("best.pt", "last.pt"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    train(from_dict(tiny_config_dict(tmp_path, data, train={"epochs": 1})))
    odd = tmp_path / "two\nlines.wav"
    odd.write_bytes(next((data / "tone").iterdir()).read_bytes())
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), "--checkpoint", str(tmp_path / "run" / "best.pt"), str(odd)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first.endswith("two\\nlines.wav")
    assert result.stdout.splitlines()[1].lstrip().startswith("1. ")


def test_ctrl_c_while_starting_up_prints_no_traceback(tmp_path):
    process = start("train.py", "--config", tmp_path / "whatever.yaml")
    time.sleep(0.3)  # still importing PyTorch
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert process.returncode in (130, 2)
