"""Several processes sharing one cache folder: saving the same file at once."""

import multiprocessing

import torch

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

