"""Training with several processes (torchrun, DistributedDataParallel), on CPU with the gloo
backend over 127.0.0.1: the ranks share out the data and the feature store, rank 0 alone writes
the run, and the results match one process with the same global batch.

Tolerance: each rank normalizes its BatchNorm layers over its own half of the batch (SyncBatchNorm
needs a GPU), so 2 processes do not take bit-for-bit the steps of 1; their per-epoch training
and validation losses stay within TOLERANCE of one process's, with the same validation accuracy.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config, tiny_config_dict, write_config
from genrenet.cache import cached_features, compute_features
from genrenet.config import from_dict
from genrenet.datasets import ClipDataset
from genrenet.errors import UserError
from genrenet.store import FeatureStore
from genrenet.training import EpochBatches, train

TOLERANCE = 0.06  # measured: at most 0.037 apart over 40 epochs
EPOCHS = 40  # long enough (about 0.1 s each) to kill a rank midway
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nodes: str = "--standalone", nproc: int = 2) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    return launch + nodes.split() + [str(REPO_ROOT / "train.py"), *args]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_class_folder(root / "data", per_class=8)
    raw = tiny_config_dict(root, data, train={"epochs": EPOCHS, "batch_size": 16, "lr": 0.003})
    return root, write_config(root / "config.yaml", raw)


@pytest.fixture(scope="module")
def two_process_run(setup):
    """A 2-process run that also fills its own fresh feature store."""
    root, config = setup
    run = root / "two"
    cache = root / "cache-two"
    done = subprocess.run(
        torchrun("--config", str(config), "--set", f"run.dir={run}", "--set", f"data.cache_dir={cache}"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run, cache, done


def test_each_rank_takes_its_share_of_the_one_process_batch(tmp_path):
    config = tiny_config(tmp_path, tmp_path, train={"batch_size": 8})
    features = type("F", (), {"track_of_clips": lambda self: np.zeros(37, dtype=np.int64)})()
    dataset = ClipDataset(features, targets=[0])
    one = EpochBatches(dataset, config, world=1, rank=0)
    ranks = [EpochBatches(dataset, config, world=2, rank=r) for r in (0, 1)]
    for epoch in (1, 2):
        for batches in [one, *ranks]:
            batches.set_epoch(epoch, skip=0)
        whole = list(one)
        shares = [list(r) for r in ranks]
        assert len(whole) == len(shares[0]) == len(shares[1]) == 4  # 37 clips, batches of 8 (4 per rank)
        for step, batch in enumerate(whole):
            assert sorted(shares[0][step] + shares[1][step]) == sorted(batch)
    assert list(one) != (one.set_epoch(1, skip=0) or list(one))  # reshuffled every epoch
    one.set_epoch(2, skip=3)
    assert list(one) == whole[3:]  # a resumed epoch skips the batches it took


def test_batch_size_must_split_evenly_over_the_processes(tmp_path):
    config = tiny_config(tmp_path, tmp_path, train={"batch_size": 15})
    features = type("F", (), {"track_of_clips": lambda self: np.zeros(30, dtype=np.int64)})()
    with pytest.raises(UserError, match=r"train.batch_size \(15\) must be a multiple of the number of processes"):
        EpochBatches(ClipDataset(features, targets=[0]), config, world=2, rank=0)


def test_two_processes_match_one_with_the_same_global_batch(setup, two_process_run):
    root, config = setup
    run, _, done = two_process_run
    one = root / "one"
    single = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config), "--set", f"run.dir={one}"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two_rows, one_rows = metrics(run), metrics(one)
    assert [r["epoch"] for r in two_rows] == [r["epoch"] for r in one_rows] == list(range(1, EPOCHS + 1))
    for two, one in zip(two_rows, one_rows):
        assert abs(two["train_loss"] - one["train_loss"]) < TOLERANCE, (two, one)
        assert abs(two["valid_loss"] - one["valid_loss"]) < TOLERANCE, (two, one)
        assert two["lr"] == pytest.approx(one["lr"])  # the same number of steps per epoch
    assert two_rows[-1]["valid_track_acc"] == one_rows[-1]["valid_track_acc"] == 1.0
    # one report, from rank 0: one line per epoch and one summary
    assert done.stdout.count("epoch   2 |") == 1 and done.stdout.count("saved ") == 1
    assert "2 processes (torchrun)" in done.stdout


def test_two_ranks_fill_one_store_at_once(setup, two_process_run):
    root, config = setup
    _, cache, _ = two_process_run
    [key_dir] = cache.iterdir()
    indexes = [json.loads(p.read_text()) for p in (key_dir / "shards").glob("*.json")]
    writers = {p.name.split(".")[1] for p in (key_dir / "shards").glob("*.json")}
    assert len(writers) == 2  # each rank wrote the shards of its own share
    keys = [key for index in indexes for key in index["tracks"]]
    assert len(keys) == len(set(keys)) == 20  # train and valid tracks, each stored once
    tracks = sorted((root / "data").rglob("*.wav"))
    store_config = tiny_config(root, root / "data", data={"cache_dir": str(cache)})
    store = FeatureStore(store_config)
    stored = [p for p in tracks if store.get(p) is not None]
    assert len(stored) == 20
    for path in stored[:5]:
        torch.testing.assert_close(store.get(path).read(), compute_features(path, store_config))
    features, failures = cached_features(stored, store_config)  # a later run finds them all
    assert failures == {} and len(features) == 20


# Rank 1 opens the store late, when rank 0 has already filled its share and committed a shard.
LATE_RANK = """
import sys, time
from pathlib import Path
import torch
import genrenet.cache
from genrenet import distributed
from genrenet.config import load_config
from genrenet.store import FeatureStore

class LateStore(FeatureStore):
    def __init__(self, config):
        if distributed.rank() == 1:
            time.sleep(3)
        super().__init__(config)

genrenet.cache.FeatureStore = LateStore
distributed.start(torch.device("cpu"))
paths = sorted(Path(sys.argv[2]).rglob("*.wav"))
features, failures = genrenet.cache.cached_features(paths, load_config(sys.argv[1]))
assert failures == {} and len(features) == len(paths)
distributed.stop()
"""


def test_a_rank_that_opens_the_store_late_still_fills_the_same_share_out(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=2, seconds=1.0)
    config = write_config(tmp_path / "config.yaml", tiny_config_dict(tmp_path, data))
    script = tmp_path / "late_rank.py"
    script.write_text(LATE_RANK)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    done = subprocess.run(
        [*launch, str(script), str(config), str(data)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]  # no track left to nobody, as "not in the store"
    store = FeatureStore(from_dict(tiny_config_dict(tmp_path, data)))
    assert all(store.get(path) is not None for path in data.rglob("*.wav"))


def test_two_nodes_on_one_machine_train_as_two_local_processes(setup, two_process_run):
    root, config = setup
    run = root / "nodes"
    port = free_port()
    nodes = [
        subprocess.Popen(
            torchrun(
                "--config",
                str(config),
                "--set",
                f"run.dir={run}",
                nodes=f"--nnodes=2 --node-rank={rank} --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:{port}",
                nproc=1,
            ),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    reference = metrics(two_process_run[0])
    for row, expected in zip(metrics(run), reference, strict=True):
        for key in ("train_loss", "train_acc", "valid_loss", "valid_track_acc"):
            assert row[key] == pytest.approx(expected[key], abs=1e-5)


def test_a_job_with_a_killed_rank_resumes_to_the_same_end(setup, two_process_run):
    root, config = setup
    run = root / "killed"
    job = subprocess.Popen(
        torchrun("--config", str(config), "--set", f"run.dir={run}"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
            assert job.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(rank_pid(job.pid, rank=1), signal.SIGKILL)
        assert job.wait(timeout=120) != 0
    finally:
        os.killpg(job.pid, signal.SIGKILL) if job.poll() is None else None
    stopped_at = len(metrics(run))
    assert 3 <= stopped_at < EPOCHS
    done = subprocess.run(torchrun("--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout
    rows, reference = metrics(run), metrics(two_process_run[0])
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for row, expected in zip(rows, reference):
        for key in ("train_loss", "valid_loss", "valid_track_acc"):
            assert row[key] == pytest.approx(expected[key], abs=1e-5)


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of the worker process torchrun started with RANK=rank."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(line for line in status.read_text().splitlines() if line.startswith("PPid:")).split()[1])
            if ppid != launcher:
                continue
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    raise AssertionError(f"no rank {rank} under process {launcher}")


def test_torchrun_refuses_a_model_fitted_in_one_process(tmp_path, class_folder, monkeypatch):
    raw = {**tiny_config_dict(tmp_path, class_folder), "model": {"name": "svm"}}
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    with pytest.raises(UserError, match="svm is fitted once in one process: run it without torchrun"):
        train(from_dict(raw))
    assert not (tmp_path / "run").exists()


def test_cross_validation_under_torchrun(setup):
    root, config = setup
    tracks = sorted((root / "data").rglob("*.wav"))
    manifest = root / "folds.csv"
    manifest.write_text(
        "path,label,fold\n" + "".join(f"{p},{p.parent.name},{i % 3 + 1}\n" for i, p in enumerate(tracks))
    )
    run = root / "cv"
    args = ["--config", str(config), "--cv", "--set", f"data.path={manifest}", "--set", "train.epochs=2"]
    done = subprocess.run(
        torchrun(*args, "--set", f"run.dir={run}"), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "cv.json").read_text())
    assert [row["fold"] for row in summary["folds"]] == [1, 2, 3]
    assert all(row["test_tracks"] == 8 for row in summary["folds"])
    for fold in (1, 2, 3):
        assert (run / f"fold-{fold}" / "eval_best_test.json").is_file()
        assert len(metrics(run / f"fold-{fold}")) == 2
    assert done.stdout.count("cross-validation of small_cnn") == 1  # rank 0 alone reports
