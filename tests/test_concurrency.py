"""Several processes sharing one cache folder: saving the same file at once, and whole trainings and
evaluations side by side (real subprocesses of the command lines) on one fresh cache."""

import multiprocessing
import os
import subprocess
import sys

import torch

from conftest import REPO_ROOT, make_class_folder, tiny_config_dict, write_config
from genrenet.fileio import atomic_save

WRITERS, SAVES = 3, 60


def _save_repeatedly(path, start, index):
    start.wait()
    for i in range(SAVES):
        atomic_save({"writer": index, "i": i, "data": torch.arange(1000)}, path)


def test_processes_saving_the_same_file_at_once_all_succeed(tmp_path):
    # fork starts the writers in milliseconds; spawn (where fork is missing) only starts them slower
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    target = tmp_path / "entry.pt"
    start = context.Event()
    writers = [context.Process(target=_save_repeatedly, args=(target, start, i)) for i in range(WRITERS)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * WRITERS  # a writer whose temp file was removed exits 1
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt"]  # every temp file was renamed or removed
    saved = torch.load(target, weights_only=True)
    assert saved["i"] == SAVES - 1 and torch.equal(saved["data"], torch.arange(1000))


def _start(script: str, *args, log) -> subprocess.Popen:
    # one thread each: four processes share the machine's cores
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_all(procs: dict, work) -> None:
    for proc in procs.values():
        proc.wait(timeout=120)
    failed = {name: (work / f"{name}.log").read_text()[-3000:] for name, p in procs.items() if p.returncode != 0}
    assert not failed, failed


def test_two_trainings_then_two_evaluations_share_one_fresh_cache(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=6, seconds=1.0)
    cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config_dict(tmp_path, data, train={"epochs": 1, "batch_size": 32}))
    assert not cache.exists()

    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("train1", "train2", "eval1", "eval2")}
    try:
        _wait_all(
            {
                name: _start("train.py", "--config", cfg, "--set", f"run.dir={tmp_path / name}", log=logs[name])
                for name in ("train1", "train2")
            },
            tmp_path,
        )
        _wait_all(
            {
                name: _start("evaluate.py", "--checkpoint", tmp_path / run / "best.pt", log=logs[name])
                for name, run in (("eval1", "train1"), ("eval2", "train1"))
            },
            tmp_path,
        )
    finally:
        for log in logs.values():
            log.close()
    assert not [p for p in cache.rglob("*.tmp")]
