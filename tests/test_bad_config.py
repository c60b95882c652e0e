"""Bad configs, bad data layouts and bad checkpoints through the command lines: each ends in one
`error:` line and exit code 2, with no traceback, before any long work (no run folder, no feature
cache, no metrics line, no report written).

The scripts run in-process (runpy executes train.py / evaluate.py / predict.py as `python X.py`
does, with sys.argv set) to keep ~35 invocations cheap; anything escaping them is recorded as the
traceback the interpreter would print. The malicious-pickle checks, where the interpreter's own
output matters, run as real subprocesses.
"""

import contextlib
import io
import os
import pickle
import runpy
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet.cli import train_main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(script: str, *args) -> Result:
    """Run REPO_ROOT/script as `python script args...` would, in this process."""
    saved_argv = sys.argv
    sys.argv = [str(REPO_ROOT / script), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # what the interpreter would print and exit 1 with
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    # a note (such as "the split is drawn from other data") may come before the error
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- datasets --------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    ab: Path  # two classes: clicks, noise
    ac: Path  # two classes: clicks, tone (one shared with ab, one new)
    one: Path  # a single class


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("bad_config")
    return Workspace(
        root,
        make_class_folder(root / "ab", per_class=4, seconds=1.0, classes=("clicks", "noise")),
        make_class_folder(root / "ac", per_class=4, seconds=1.0, classes=("clicks", "tone"), seed=1),
        make_class_folder(root / "one", per_class=4, seconds=1.0, classes=("tone",)),
    )


def manifest(path: Path, rows: list[tuple[Path, str, str]]) -> Path:
    path.write_text("path,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows))
    return path


def tracks(folder: Path, label: str) -> list[Path]:
    return sorted((folder / label).glob("*.wav"))


def no_valid_rows(ws: Workspace, path: Path) -> Path:
    """train and test rows only, so valid must come from data.valid_fraction."""
    rows = [
        (p, label, "train" if i < 3 else "test")
        for label in ("clicks", "noise")
        for i, p in enumerate(tracks(ws.ab, label))
    ]
    return manifest(path, rows)


def one_class_trains(ws: Workspace, path: Path) -> Path:
    """Every train row is clicks; noise appears only in valid."""
    rows = [(p, "clicks", "train") for p in tracks(ws.ab, "clicks")] + [
        (p, "noise", "valid") for p in tracks(ws.ab, "noise")
    ]
    return manifest(path, rows)


def no_train_rows(ws: Workspace, path: Path) -> Path:
    rows = [
        (p, label, "valid" if i < 2 else "test")
        for label in ("clicks", "noise")
        for i, p in enumerate(tracks(ws.ab, label))
    ]
    return manifest(path, rows)


# --- train.py --------------------------------------------------------------------------------


def set_(section, key, value):
    def change(raw, ws, tmp):
        raw.setdefault(section, {})[key] = value

    return change


def drop_data_path(raw, ws, tmp):
    del raw["data"]["path"]


def data_path(kind):
    def change(raw, ws, tmp):
        raw["data"]["path"] = str(
            {
                "missing": lambda: tmp / "no_such_folder",
                "one": lambda: ws.one,
                "empty": lambda: "",
                "no_valid": lambda: no_valid_rows(ws, tmp / "m.csv"),
                "one_class_trains": lambda: one_class_trains(ws, tmp / "m.csv"),
                "no_train": lambda: no_train_rows(ws, tmp / "m.csv"),
                "file": lambda: tracks(ws.ab, "clicks")[0],
            }[kind]()
        )

    return change


def unchanged(raw, ws, tmp):
    pass


# (id, change to the tiny config, --set overrides, fragments the error line must hold)
TRAIN_CASES = [
    (
        "unknown key",
        set_("audio", "sample_rte", 8000),
        [],
        ["unknown key 'audio.sample_rte'", "did you mean 'audio.sample_rate'?"],
    ),
    (
        "unknown key via --set",
        unchanged,
        ["train.epoch=2"],
        ["unknown key 'train.epoch'", "did you mean 'train.epochs'?"],
    ),
    ("unknown section", set_("optimiser", "lr", 0.1), [], ["unknown key 'optimiser'"]),
    ("wrong type", set_("train", "epochs", "three"), [], ["train.epochs: expected a whole number, got 'three'"]),
    ("boolean for a number", set_("train", "epochs", True), [], ["train.epochs: expected a whole number, got true"]),
    ("wrong type via --set", unchanged, ["train.batch_size=[4]"], ["train.batch_size", "valid integer"]),
    ("section is not a mapping", lambda raw, ws, tmp: raw.update(audio=5), [], ["audio", "(got 5)"]),
    (
        "negative clip_seconds",
        set_("audio", "clip_seconds", -1.0),
        [],
        ["audio.clip_seconds", "greater than 0", "(got -1.0)"],
    ),
    (
        "hop_seconds > clip_seconds",
        set_("audio", "hop_seconds", 1.0),
        [],
        ["audio.hop_seconds (1.0) is larger than audio.clip_seconds (0.5)"],
    ),
    (
        "n_mels > n_fft//2+1",
        set_("features", "n_mels", 200),
        [],
        ["features.n_mels (200) is more than the 129 frequency bins of features.n_fft=256"],
    ),
    ("missing data.path", drop_data_path, [], ["data.path is empty"]),
    ("empty data.path", data_path("empty"), [], ["data.path is empty"]),
    ("data.path does not exist", data_path("missing"), [], ["does not exist", "no_such_folder"]),
    ("data.path is an audio file", data_path("file"), [], ["is not a folder", "clicks_00.wav"]),
    ("one class", data_path("one"), [], ["only one class (tone)", "two or more"]),
    (
        "no valid rows, valid_fraction 0, early stopping",
        data_path("no_valid"),
        ["data.valid_fraction=0", "train.early_stopping=3"],
        ["train.early_stopping needs a validation split"],
    ),
    ("train rows all one class", data_path("one_class_trains"), [], ["class(es) with no training track: noise"]),
    ("no train rows", data_path("no_train"), [], ["the training split has no tracks"]),
    ("YAML syntax error", None, [], ["not valid YAML"]),
]


@pytest.mark.parametrize("change,overrides,fragments", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_config(ws, tmp_path, change, overrides, fragments):
    raw = tiny_config_dict(tmp_path, ws.ab)
    cfg = tmp_path / "cfg.yaml"
    if change is None:
        cfg.write_text(yaml.safe_dump(raw) + "train: [epochs: 3\n")
    else:
        change(raw, ws, tmp_path)
        write_config(cfg, raw)
    result = cli("train.py", "--config", cfg, *[arg for o in overrides for arg in ("--set", o)])
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""  # no data summary: it stopped before reading any audio
    # nothing was started: no run folder (so no metrics.jsonl) and no feature cache
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "cache").exists()


def test_train_missing_config_file(tmp_path):
    assert_one_line_error(cli("train.py", "--config", tmp_path / "nope.yaml"), "config file not found", "nope.yaml")


def test_manifest_without_valid_rows_uses_valid_fraction(ws, tmp_path):
    """The same manifest with the default valid_fraction: valid is carved from the train rows."""
    from genrenet.config import from_dict
    from genrenet.datasets import find_tracks, split_tracks

    raw = tiny_config_dict(tmp_path, no_valid_rows(ws, tmp_path / "m.csv"), data={"valid_fraction": 0.3})
    splits = split_tracks(find_tracks(from_dict(raw).data), from_dict(raw).data)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [4, 2, 2]
    assert {t.label for t in splits["valid"]} == {"clicks", "noise"}


# --- the bugs: settings accepted by the config that crash or waste the run later ---------------------


def test_infinite_clip_seconds_is_refused(ws, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, ws.ab, audio={"clip_seconds": float("inf")}))
    assert_one_line_error(cli("train.py", "--config", cfg), "audio.clip_seconds")


def test_infinite_learning_rate_is_refused(ws, tmp_path):
    from genrenet.config import from_dict
    from genrenet.errors import UserError

    with pytest.raises(UserError, match="train.lr"):
        from_dict(tiny_config_dict(tmp_path, ws.ab, train={"lr": float("inf")}))


def test_fft_longer_than_the_clip_is_refused(ws, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, ws.ab, features={"n_fft": 8192}))
    assert_one_line_error(cli("train.py", "--config", cfg), "features.n_fft")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "features", [{"f_min": 3000.0, "f_max": 1000.0}, {"f_min": 5000.0}], ids=["f_min>f_max", "f_min>nyquist"]
)
def test_f_min_above_f_max_is_refused(ws, tmp_path, features):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, ws.ab, features=features))
    assert_one_line_error(cli("train.py", "--config", cfg), "features.f_min")
    assert not (tmp_path / "cache").exists()


def test_unknown_model_name_is_refused_before_reading_audio(ws, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, ws.ab, model={"name": "small_cnnn"}))
    assert_one_line_error(cli("train.py", "--config", cfg), "model.name 'small_cnnn'", "small_cnn")
    assert not (tmp_path / "cache").exists()


# --- evaluate.py and predict.py ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(ws) -> Path:
    """best.pt of a 1-epoch model on the classes clicks and noise."""
    work = ws.root / "trained"
    cfg = write_config(ws.root / "trained.yaml", tiny_config_dict(work, ws.ab, train={"epochs": 1}))
    assert train_main(["--config", str(cfg)]) == 0
    return work / "run" / "best.pt"


def cache_entries(trained: Path) -> int:
    return len(list((trained.parent.parent / "cache").rglob("*.pt")))


def reports(trained: Path) -> list[str]:
    return sorted(p.name for p in trained.parent.glob("eval_*.json"))


def test_evaluate_with_labels_the_checkpoint_does_not_know(ws, trained):
    entries = cache_entries(trained)
    result = cli("evaluate.py", "--checkpoint", trained, "--data", ws.ac)
    assert_one_line_error(
        result, "labels the checkpoint was not trained on: tone", "(checkpoint labels: clicks, noise)"
    )
    assert cache_entries(trained) == entries  # no audio of the other dataset was read
    assert reports(trained) == []


def test_evaluate_refuses_preprocessing_override(ws, trained):
    result = cli("evaluate.py", "--checkpoint", trained, "--set", "audio.sample_rate=16000")
    assert_one_line_error(result, "--set audio.sample_rate", "only data.* and train.device can change")
    assert reports(trained) == []


def test_evaluate_with_bad_data_override(ws, trained):
    assert_one_line_error(
        cli("evaluate.py", "--checkpoint", trained, "--set", "data.valid_fraction=2"), "data.valid_fraction"
    )
    assert_one_line_error(
        cli("evaluate.py", "--checkpoint", trained, "--set", "data.sample_rate=16000"), "unknown key 'data.sample_rate'"
    )
    assert reports(trained) == []


def test_evaluate_split_without_tracks(ws, trained, tmp_path):
    data = manifest(
        tmp_path / "m.csv", [(p, label, "train") for label in ("clicks", "noise") for p in tracks(ws.ab, label)]
    )
    assert_one_line_error(cli("evaluate.py", "--checkpoint", trained, "--data", data), "the test split has no tracks")
    assert reports(trained) == []


def test_evaluate_missing_checkpoint(tmp_path):
    assert_one_line_error(
        cli("evaluate.py", "--checkpoint", tmp_path / "nope.pt"), f"checkpoint not found: {tmp_path / 'nope.pt'}"
    )


@pytest.mark.parametrize("kind", ["text", "tensor", "dict", "empty", "directory"])
def test_evaluate_non_checkpoint_file(tmp_path, kind):
    path = tmp_path / "fake.pt"
    if kind == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "dict":
        torch.save({"model_state": {}, "labels": ["a", "b"]}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    line = assert_one_line_error(cli("evaluate.py", "--checkpoint", path), str(path))
    assert "checkpoint" in line


# --- malicious pickles ------------------------------------------------------------------------


class Payload:
    """Unpickling this runs os.system: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def evil(ws):
    """(raw pickle, torch.save zip file, marker) with the payload at the place of the config."""
    folder = ws.root / "evil"
    folder.mkdir()
    marker = folder / "PAYLOAD_RAN"
    state = {
        "format": "genrenet-checkpoint",
        "version": 1,
        "config": Payload(marker),
        "labels": ["a", "b"],
        "model_state": {},
        "epoch": 1,
        "metrics": {},
    }
    raw = folder / "raw_pickle.pt"
    raw.write_bytes(pickle.dumps(state))
    zipped = folder / "torch_save.pt"
    torch.save(state, zipped)
    assert not marker.exists()
    return raw, zipped, marker


@pytest.fixture(scope="module")
def evil_subprocesses(evil, ws):
    """evaluate.py and predict.py on the raw pickle, as real processes side by side."""
    raw, _, _ = evil
    clip = tracks(ws.ab, "clicks")[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {"evaluate.py": ["--checkpoint", raw], "predict.py": ["--checkpoint", raw, clip]}
    running = {
        script: subprocess.Popen(
            [sys.executable, str(REPO_ROOT / script), *map(str, args)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for script, args in commands.items()
    }
    results = {}
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        results[script] = Result(process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_malicious_pickle_is_refused_and_never_runs(evil, evil_subprocesses, script, ws):
    raw, zipped, marker = evil
    clip = tracks(ws.ab, "clicks")[0]
    extra = [clip] if script == "predict.py" else []
    for result, path in ((evil_subprocesses[script], raw), (cli(script, "--checkpoint", zipped, *extra), zipped)):
        assert "Traceback" not in result.stdout + result.stderr
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(f"error: {path}: refused: it holds ")
        assert result.stdout == ""
    assert not marker.exists(), "the pickle's payload ran"


def test_malicious_pickle_refusal_does_not_advise_weights_only_false(evil):
    _, zipped, marker = evil
    line = assert_one_line_error(cli("evaluate.py", "--checkpoint", zipped))
    assert "weights_only` set to `False`" not in line and "system" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
def test_malicious_raw_pickle_error_is_the_only_stderr_output(evil_subprocesses, script):
    assert_one_line_error(evil_subprocesses[script])


@pytest.mark.parametrize("override", ["data.cache_dir=", "data.cache_dir= ", "run.dir="])
def test_an_empty_folder_setting_is_refused(ws, tmp_path, monkeypatch, override):
    """An empty folder is the current folder to pathlib: `--set data.cache_dir=` wrote the feature
    store into a hash-named folder in the folder the command ran in."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, ws.ab))
    key = override.split("=")[0]
    assert_one_line_error(cli("train.py", "--config", cfg, "--set", override), f"{key} is empty: name a folder")
    assert list(here.iterdir()) == [] and not (tmp_path / "run").exists()
