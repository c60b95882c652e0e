"""Never a silent wrong result: the recorded split, divergence, unreadable classes, lost output.

Each test here failed on the code before the fix it guards."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config, write_garbage
from genrenet.checkpoint import save_state
from genrenet.config import from_dict
from genrenet.errors import UserError
from genrenet.evaluation import evaluate
from genrenet.training import resume, train


def run(script: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def last_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    return lines[-1]


def evaluate_without(victim, checkpoint) -> dict:
    """The report of checkpoint while one data file is deleted (it is put back afterwards)."""
    saved = victim.read_bytes()
    victim.unlink()
    try:
        return evaluate(checkpoint)
    finally:
        victim.write_bytes(saved)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch small_cnn on 3 classes x 10 tracks, stratified split (15% test)."""
    root = tmp_path_factory.mktemp("split")
    data = make_class_folder(root / "data", per_class=10, seconds=1.0)
    config = from_dict(tiny_config_dict(root, data, train={"epochs": 2}))
    train(config)
    return root, data, config


def test_the_test_split_does_not_move_when_files_are_deleted(trained_run, tmp_path):
    root, data, config = trained_run
    recorded = json.loads((root / "run" / "split.json").read_text())
    recorded_test = sorted(r["id"] for r in recorded["tracks"]["test"])
    before = evaluate(root / "run" / "best.pt")
    assert sorted(str(p) for p in (t["path"] for t in before["tracks"])) == sorted(str(data / i) for i in recorded_test)

    victim = data / recorded["tracks"]["train"][0]["id"]  # deleting a training file used to redraw the split
    after = evaluate_without(victim, root / "run" / "best.pt")
    assert [t["path"] for t in after["tracks"]] == [t["path"] for t in before["tracks"]]
    assert after["split_source"] == "recorded at training"


def test_a_deleted_test_file_is_reported_and_left_out(trained_run, capsys):
    root, data, _ = trained_run
    recorded = json.loads((root / "run" / "split.json").read_text())
    victim = data / recorded["tracks"]["test"][0]["id"]
    report = evaluate_without(victim, root / "run" / "best.pt")
    assert str(victim) not in [t["path"] for t in report["tracks"]]
    assert len(report["tracks"]) == len(recorded["tracks"]["test"]) - 1
    assert "1 missing" in capsys.readouterr().err


def test_resume_refuses_when_recorded_training_files_are_gone(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    config = from_dict(tiny_config_dict(tmp_path, data, train={"epochs": 2}))
    train(config)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    last["training_state"]["finished"] = False  # as if killed after epoch 1
    last["training_state"]["epoch"] = 2
    save_state(last, tmp_path / "run" / "last.pt")
    recorded = json.loads((tmp_path / "run" / "split.json").read_text())
    (data / recorded["tracks"]["train"][0]["id"]).unlink()
    with pytest.raises(UserError, match="cannot continue the run on other data: of the .* train tracks recorded"):
        resume(tmp_path / "run")


def test_evaluating_other_data_says_so(trained_run, tmp_path, capsys):
    root, _, _ = trained_run
    other = make_class_folder(tmp_path / "other", per_class=4, seconds=1.0, seed=3)
    report = evaluate(root / "run" / "best.pt", "test", [f"data.path={other}"])
    assert "not the data this model was trained" in report["split_source"]
    assert "not the data this model was trained" in capsys.readouterr().err


def test_divergence_stops_the_run_with_one_line_and_leaves_valid_json(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    config = write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path, data, train={"epochs": 3, "lr": 1e20}))
    result = run("train.py", "--config", config)
    assert result.returncode == 2
    line = last_error_line(result)
    assert "diverged in epoch" in line and "train.lr" in line
    for text in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(text)  # bare NaN would not parse
    for name in ("best.pt", "last.pt"):  # what is kept is the last good epoch, never NaN weights
        if (tmp_path / "run" / name).exists():
            weights = torch.load(tmp_path / "run" / name, weights_only=True)["model_state"].values()
            assert all(torch.isfinite(w).all() for w in weights if torch.is_floating_point(w))


def test_a_checkpoint_with_nan_weights_is_refused(trained_run, tmp_path):
    root, data, _ = trained_run
    state = torch.load(root / "run" / "best.pt", weights_only=True)
    name = next(k for k, v in state["model_state"].items() if torch.is_floating_point(v))
    state["model_state"][name] = torch.full_like(state["model_state"][name], float("nan"))
    broken = tmp_path / "nan.pt"
    save_state(state, broken)
    for script, args in (
        ("evaluate.py", ["--checkpoint", broken]),
        ("predict.py", ["--checkpoint", broken, next(data.rglob("*.wav"))]),
    ):
        result = run(script, *args)
        assert result.returncode == 2
        assert "NaN or infinite" in last_error_line(result)


def test_a_class_whose_every_file_is_unreadable_is_an_error(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    for wav in (data / "tone").iterdir():
        write_garbage(wav)
    config = from_dict(tiny_config_dict(tmp_path, data))
    with pytest.raises(UserError, match="no readable training track: tone"):
        train(config)


def test_evaluate_prints_the_report_when_the_json_cannot_be_written(trained_run):
    root, _, _ = trained_run
    blocker = root / "run" / "eval_best_test.json"
    blocker.mkdir()  # writing the report there fails, even as root
    try:
        result = run("evaluate.py", "--checkpoint", root / "run" / "best.pt")
    finally:
        blocker.rmdir()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== track level" in result.stdout
    assert "warning: could not write the report" in result.stderr and "Traceback" not in result.stderr


def test_predict_with_stdout_closed_fails(trained_run):
    root, data, _ = trained_run
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "predict.py"),
            "--checkpoint",
            str(root / "run" / "best.pt"),
            str(next(data.rglob("*.wav"))),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        pass_fds=(),
        close_fds=True,
        preexec_fn=lambda: __import__("os").close(1),
    )
    assert result.returncode != 0
    assert "standard output is closed" in result.stderr
