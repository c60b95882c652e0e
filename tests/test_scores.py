"""Scoring many files: clips of several files share batches, come back split per file, and a
larger split costs time, not memory."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from genrenet.scores import per_file
from genrenet.store import TrackFeatures


def test_files_share_batches_and_come_back_split_per_file():
    generator = torch.Generator().manual_seed(0)
    files = [torch.randn(clips, 4, 6, generator=generator) for clips in (3, 0, 7, 1, 5)]
    batches = []

    def run(batch):
        batches.append(len(batch))
        return batch.flatten(1).sum(dim=1, keepdim=True) * 2

    for features in (files, TrackFeatures(files)):
        batches.clear()
        scored = per_file(features, 4, run)
        assert batches == [4, 4, 4, 4]  # 16 clips in batches of 4, across file boundaries
        assert [len(s) for s in scored] == [3, 0, 7, 1, 5]
        for clips, scores in zip(files, scored):
            torch.testing.assert_close(scores, clips.flatten(1).sum(dim=1, keepdim=True) * 2)
    assert per_file([], 4, run) == []


# Scores tracks read one at a time, as from the store, in windows (as a model trained on crops is
# scored), so that large buffers come and go every batch; prints the process's peak RSS in MiB.
PEAK_OF_SCORING = """
import sys
import numpy as np, torch
from genrenet.config import from_dict
from genrenet.registry import build_model
from genrenet.scores import clip_log_probs
from genrenet.store import TrackFeatures
tracks = int(sys.argv[1])
config = from_dict({"features": {"n_mels": 128}, "model": {"name": "small_cnn", "width": 4}})
model = build_model(config, 10)
class Stored(TrackFeatures):
    def __init__(self):
        self.counts = np.full(tracks, 55)
    def __iter__(self):
        generator = torch.Generator().manual_seed(1)
        return (torch.randn(55, 128, 130, generator=generator).half() for _ in range(tracks))
clip_log_probs(model, Stored(), torch.device("cpu"), window=22)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_scoring_four_times_the_tracks_does_not_raise_peak_memory():
    def peak_mib(tracks):
        run = subprocess.run(
            [sys.executable, "-c", PEAK_OF_SCORING, str(tracks)], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    # A small output tensor kept per batch used to pin freed buffers in the heap: 725 -> 832 MiB.
    assert peak_mib(80) - peak_mib(20) < 40


def test_clips_fewer_than_counted_are_an_error_not_uninitialized_scores():
    class Shrunk(TrackFeatures):  # its index says 4 clips, 3 are read
        def __iter__(self):
            return iter([torch.zeros(3, 2)])

    shrunk = Shrunk([torch.zeros(4, 2)])
    with pytest.raises(RuntimeError, match="3 clips were scored where the files' counts add up to 4"):
        per_file(shrunk, 2, lambda batch: batch.flatten(1))
