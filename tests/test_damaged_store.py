"""A damaged feature store is found and repaired, never read: bytes changed inside a shard (its
size and header intact), a shard that cannot be removed (a read-only cache), a store of an older
version. Each test here failed on the code before the fix it guards."""

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, scramble, tiny_config_dict, write_config, write_tone
from genrenet.cache import cached_features, compute_features
from genrenet.config import from_dict
from genrenet.errors import UserError
from genrenet.evaluation import evaluate
from genrenet.store import FeatureStore
from genrenet.training import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch small_cnn on 3 classes x 10 tracks, its features in the store."""
    root = tmp_path_factory.mktemp("damaged")
    data = make_class_folder(root / "data", per_class=10, seconds=1.0)
    config = from_dict(tiny_config_dict(root, data, train={"epochs": 2}))
    train(config)
    return root, config


def split_paths(root: Path, split: str) -> list[Path]:
    recorded = json.loads((root / "run" / "split.json").read_text())
    return [root / "data" / r["id"] for r in recorded["tracks"][split]]


def shard_of(config, path: Path) -> Path:
    return FeatureStore(config).get(path).shard


def test_bytes_damaged_inside_a_test_shard_are_recomputed_not_scored(trained_run, capsys):
    root, config = trained_run
    before = evaluate(root / "run" / "best.pt")
    shard = scramble(shard_of(config, split_paths(root, "test")[0]))
    capsys.readouterr()
    after = evaluate(root / "run" / "best.pt")
    assert "is damaged" in capsys.readouterr().err
    assert not shard.exists()  # removed, its tracks stored anew
    assert after["track"]["accuracy"] == before["track"]["accuracy"]
    for old, new in zip(before["tracks"], after["tracks"]):
        assert all(math.isfinite(p) for p in new["probabilities"].values())  # were NaN, "predicted" class 0
        assert new["probabilities"] == old["probabilities"] and new["predicted"] == old["predicted"]


def test_bytes_damaged_inside_a_training_shard_are_recomputed_not_blamed_on_the_learning_rate(trained_run, capsys):
    root, config = trained_run
    scramble(shard_of(config, split_paths(root, "train")[0]))
    again = from_dict(tiny_config_dict(root, root / "data", train={"epochs": 2}, run={"dir": str(root / "again")}))
    train(again)  # stopped with "training diverged ... lower train.lr" on the damaged inputs
    assert "is damaged" in capsys.readouterr().err
    first, second = ((root / name / "metrics.jsonl").read_text().splitlines() for name in ("run", "again"))
    drop_time = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in first + second]
    assert drop_time[:2] == drop_time[2:]  # the same run as on the intact store


def test_divergence_in_the_first_epoch_does_not_claim_a_saved_model(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    config = from_dict(tiny_config_dict(tmp_path, data, train={"epochs": 3, "lr": 1e20, "batch_size": 4}))
    with pytest.raises(UserError, match="diverged in epoch 1") as error:
        train(config)
    assert not (tmp_path / "run" / "best.pt").exists()
    assert "keep the last good epoch" not in str(error.value) and "no best.pt was saved" in str(error.value)


READ = """
import json, sys
from pathlib import Path
from genrenet.cache import cached_features
from genrenet.config import load_config
features, failures = cached_features([Path(p) for p in sys.argv[2:]], load_config(sys.argv[1]))
print(json.dumps({"failures": len(failures), "features": [f.float().tolist() for f in features]}))
"""


def _read_only_mount_works() -> bool:
    """Whether a folder can be made read-only for one command (a mount namespace of its own), which
    holds even for root, whom file modes do not stop."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            probe = subprocess.run(
                ["unshare", "-rm", "sh", "-c", f'{READ_ONLY_MOUNT} && ! touch "$0/x" 2>/dev/null', folder],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return probe.returncode == 0


READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'


def run_on_read_only(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """argv run while `folder` is read-only: a read-only bind mount, or (not root) write permission off."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if _read_only_mount_works():
        command = ["unshare", "-rm", "sh", "-c", f'{READ_ONLY_MOUNT} && shift && exec "$@"', str(folder), "_", *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if os.geteuid() == 0:
        pytest.skip("no way to make a folder read-only for root here (unshare with mounts)")
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for path in folders:
        path.chmod(0o555)
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    finally:
        for path in folders:
            path.chmod(0o755)


def test_damaged_shards_in_a_read_only_cache_are_a_warning_and_computed_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("genrenet.store.SHARD_BYTES", 1)  # a shard per track
    files = [write_tone(tmp_path / "audio" / f"t{i}.wav", freq=300 + 400 * i, seconds=1.5, seed=i) for i in range(3)]
    raw = tiny_config_dict(tmp_path, tmp_path / "audio")
    config = from_dict(raw)
    cached_features(files, config)
    scrambled, truncated = shard_of(config, files[0]), shard_of(config, files[1])
    scramble(scrambled)  # found by its checksum
    truncated.write_bytes(truncated.read_bytes()[:-100])  # found by its size
    argv = [sys.executable, "-c", READ, str(write_config(tmp_path / "config.yaml", raw)), *map(str, files)]
    result = run_on_read_only(tmp_path / "cache", argv)
    assert result.returncode == 0, result.stderr[-3000:]  # was OSError: Read-only file system / PermissionError
    assert "Traceback" not in result.stderr
    assert result.stderr.count("is damaged") == 2 and "cannot be removed" in result.stderr
    assert scrambled.exists() and truncated.exists()  # nothing could be removed
    out = json.loads(result.stdout)
    assert out["failures"] == 0
    for path, got in zip(files, out["features"]):
        torch.testing.assert_close(torch.tensor(got), compute_features(path, config).float())


def test_a_store_of_the_older_version_is_recomputed(tmp_path, capsys):
    files = [write_tone(tmp_path / "audio" / f"t{i}.wav", freq=300 + 400 * i, seconds=1.5, seed=i) for i in range(2)]
    config = from_dict(tiny_config_dict(tmp_path, tmp_path / "audio"))
    cached_features(files, config)
    [index_file] = (FeatureStore(config).dir / "shards").glob("*.json")
    index = json.loads(index_file.read_text())
    old_keys = {
        f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}": row
        for p, row in zip(files, index["tracks"].values())
    }
    index_file.write_text(
        json.dumps({"version": 1, "shape": index["shape"], "dtype": index["dtype"], "tracks": old_keys})
    )
    np.save(index_file.with_suffix(".npy"), np.zeros(index["shape"], dtype=np.float16))  # would be wrong if read
    capsys.readouterr()
    features, failures = cached_features(files, config)
    assert failures == {} and "older genrenet" in capsys.readouterr().err
    assert not index_file.exists()  # removed: its keys can never match
    for path, got in zip(files, features):
        torch.testing.assert_close(got, compute_features(path, config))
