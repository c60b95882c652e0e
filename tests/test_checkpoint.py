"""Checkpoints: round trip, atomic writes, and refusal of files that would run code when loaded."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, tiny_config, write_tone
from genrenet import cli
from genrenet.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from genrenet.config import from_dict, to_dict
from genrenet.errors import UserError
from genrenet.fileio import atomic_save, safe_hostname
from genrenet.registry import build_model
from genrenet.trained import load_model

LABELS = ["clicks", "noise", "tone"]


def trained_like_model(config, seed=0):
    torch.manual_seed(seed)
    model = build_model(config, len(LABELS))
    # make batch-norm statistics non-trivial so a lost buffer would show
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, config.features.n_mels, 20) * 5 + 2)
    return model.eval()


def test_round_trip(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "data")
    model = trained_like_model(config)
    path = tmp_path / "run" / "best.pt"
    metrics = {"epoch": 3, "valid_track_acc": 0.9}
    save_checkpoint(
        path, model_state=model.state_dict(), config=to_dict(config), labels=LABELS, epoch=3, metrics=metrics
    )
    trained = load_model(path)
    loaded, loaded_config, labels, state = trained.model, trained.config, trained.labels, trained.checkpoint
    assert loaded_config == config
    assert labels == LABELS
    assert state["epoch"] == 3 and state["metrics"] == metrics and state["format"] == FORMAT
    assert not loaded.training
    original = model.state_dict()
    assert original.keys() == loaded.state_dict().keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    x = torch.randn(4, 1, config.features.n_mels, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], rtol=0, atol=0)
    # a different model would not give the same outputs: the comparison above can fail
    with torch.no_grad():
        assert not torch.allclose(trained_like_model(config, seed=1)(x)["logits"], model(x)["logits"])


def test_atomic_save_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "folder" / "x.pt"
    atomic_save({"a": torch.arange(5)}, target)
    atomic_save({"a": torch.arange(6)}, target)  # replacing works too
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(6))


def test_atomic_save_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.pt"
    atomic_save({"a": torch.arange(3)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"a": Unpicklable()}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.arange(3))


def test_atomic_save_removes_only_temp_files_whose_writer_is_gone(tmp_path):
    """A save clears what killed writers left, never a temp file another process is still writing."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = safe_hostname()
    target = tmp_path / "x.pt"
    dead = tmp_path / f".x.pt.{host}.{finished.pid}.ab12cd34.tmp"
    older_naming = tmp_path / ".x.pt.k1ll3d.tmp"  # named before temp names carried their writer
    live = tmp_path / f".x.pt.{host}.{os.getppid()}.ab12cd34.tmp"
    elsewhere = tmp_path / f".x.pt.other-host.{finished.pid}.ab12cd34.tmp"  # cannot be checked from here
    other_file = tmp_path / ".y.pt.k1ll3d.tmp"
    for temp in (dead, older_naming, live, elsewhere, other_file):
        temp.write_bytes(b"half a file")
    atomic_save({"a": torch.arange(3)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.pt", live.name, elsewhere.name, other_file.name])


class Payload:
    """Unpickling this runs a shell command (as a malicious checkpoint would)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "data")
    marker = tmp_path / "SENTINEL"
    evil = tmp_path / "evil.pt"
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "model_state": {},
            "config": to_dict(config),
            "labels": LABELS,
            "epoch": 1,
            "metrics": {},
            "extra": Payload(marker),
        },
        evil,
    )
    for loader in (load_checkpoint, load_model):
        with pytest.raises(UserError) as info:
            loader(evil)
        assert "evil.pt" in str(info.value) and "\n" not in str(info.value)
        assert not marker.exists()
    # the payload is real: an unsafe load (in a throwaway process) does run it
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert marker.exists()


def test_non_checkpoint_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a genrenet checkpoint"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(UserError, match="not a genrenet checkpoint"):
        load_checkpoint(plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(UserError, match="not a genrenet checkpoint"):
        load_model(tensor)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "v9.pt"
    torch.save({"format": FORMAT, "version": VERSION + 7}, path)
    with pytest.raises(UserError, match=f"version {VERSION + 7} is not supported"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_model(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "data")
    model = trained_like_model(config)
    path = tmp_path / "wide.pt"
    narrow = to_dict(config)
    narrow["model"]["width"] = 8  # stored config says width 8, weights are width 4
    save_checkpoint(path, model_state=model.state_dict(), config=narrow, labels=LABELS, epoch=1, metrics={})
    with pytest.raises(UserError, match="weights do not fit model 'small_cnn'"):
        load_model(path)


def test_stored_config_is_validated(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "data")
    raw = to_dict(config)
    raw["train"]["epochz"] = 3
    path = tmp_path / "odd.pt"
    save_checkpoint(
        path, model_state=trained_like_model(config).state_dict(), config=raw, labels=LABELS, epoch=1, metrics={}
    )
    with pytest.raises(UserError, match="unknown key 'train.epochz'"):
        load_model(path)
    assert from_dict(to_dict(config)) == config


def saved_model(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "data")
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(
        path,
        model_state=trained_like_model(config).state_dict(),
        config=to_dict(config),
        labels=LABELS,
        epoch=3,
        metrics={},
    )
    return path


def damaged_copies(path, step=1024, size=4096):
    """Copies of `path` with `size` bytes of zeros, or of random bytes, written at every `step`."""
    data, rng = path.read_bytes(), np.random.default_rng(0)
    for kind in ("zeros", "random"):
        for start in range(0, len(data) - size, step):
            patch = bytes(size) if kind == "zeros" else rng.bytes(size)
            copy = path.with_name(f"{kind}_{start}.pt")
            copy.write_bytes(data[:start] + patch + data[start + size :])
            yield copy


def test_damage_anywhere_in_a_checkpoint_is_named_as_damage(tmp_path):
    """4 KB of zeros inside best.pt loaded without notice, and random bytes were blamed on a
    diverged run (NaN weights) or on pickled objects; each is damage now, wherever it lands."""
    path = saved_model(tmp_path)
    copies = list(damaged_copies(path))
    assert len(copies) > 50  # the file is about 40 KB
    for copy in copies:
        with pytest.raises(UserError) as refused:
            load_model(copy)
        message = str(refused.value)
        assert message.startswith(f"{copy}: damaged: the file changed after it was written"), message
        assert message.endswith("use the run's other checkpoint (best.pt or last.pt) or train again")
        assert "\n" not in message
    load_model(path)  # the undamaged file loads


def test_damaged_checkpoint_is_one_line_from_predict(tmp_path, capsys):
    path = saved_model(tmp_path)
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(4096) + data[middle + 4096 :])
    song = write_tone(tmp_path / "song.wav")
    assert cli.main(["predict", "--checkpoint", str(path), str(song)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {path}: damaged: the file changed after it was written (a disk, transfer or copy fault) "
        "(its contents no longer match the checksum written with it); use the run's other checkpoint "
        "(best.pt or last.pt) or train again"
    ]


def test_checkpoints_written_before_checksums_still_load(tmp_path):
    path = saved_model(tmp_path)
    state = torch.load(path, weights_only=True)
    assert len(state.pop("sha256")) == 64
    torch.save(state, tmp_path / "old.pt")  # what this version wrote before checksums
    old = load_model(tmp_path / "old.pt")
    for name, tensor in load_model(path).model.state_dict().items():
        assert torch.equal(old.model.state_dict()[name], tensor)
    assert "sha256" not in load_checkpoint(path)  # the checksum is the file's, not the caller's
