"""A trained model as a Python object: `Classifier.load(checkpoint).predict("song.mp3")`, or a
shipped music tagger by name: `Classifier.load("musicnn-msd")`.

The command line's prediction is built on this class, so a notebook and `genrenet predict` give
the same numbers. Files are decoded by the audio stage (genrenet.cache.iter_feature_batches); an
array goes through the very same decode, by way of a temporary WAV file, so peak normalization,
clip cutting and resampling cannot drift apart between the two.

Many files: predict_many decodes and computes features in DataLoader worker processes, a batch of
clips at a time, and scores the clips of several files in one forward pass, which gives both the
scores and the embeddings. No file's features are held whole, so a file of any length is scored
in bounded memory.
"""

import contextlib
import functools
import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch

from genrenet.cache import compute_features, feature_extractor, iter_feature_batches, one_thread
from genrenet.config import crop_frames
from genrenet.device import resolve_device
from genrenet.errors import UserError
from genrenet.scores import ClipStream, clip_outputs, track_probs
from genrenet.trained import load_model

# Clips scored in one forward pass: several files' worth for ordinary tracks. On the CPU a pass over
# 256 demo-config clips held about 250 MB of activations more than one over 64, for the same clips/s.
CLIPS_PER_FORWARD = {"cpu": 64, "cuda": 256}
PIECES_AHEAD = 8  # batches of clips each decoding worker may have ready ahead of the forward passes


class Classifier:
    """A checkpoint's model with its preprocessing: audio in, labels with probabilities out. A
    multi-label model (a tagger) also says which tags are at or above their thresholds."""

    def __init__(self, trained, device: torch.device, clips_per_forward: int | None = None):
        self.trained, self.device = trained, device
        self.clips_per_forward = clips_per_forward or CLIPS_PER_FORWARD.get(device.type, CLIPS_PER_FORWARD["cuda"])
        self.extractor = feature_extractor(trained.config)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "auto") -> "Classifier":
        """checkpoint: a checkpoint file, or a shipped tagger's name (musicnn-msd, musicnn-mtt).
        device: auto (CUDA when PyTorch sees a GPU), cpu, cuda or a torch.device."""
        if not isinstance(device, torch.device):
            device = resolve_device(str(device), setting="device")
        return cls(load_model(checkpoint, device), device)

    @property
    def labels(self) -> list[str]:
        return self.trained.labels

    @property
    def config(self):
        return self.trained.config

    @property
    def sample_rate(self) -> int:
        return self.config.audio.sample_rate

    @property
    def multi_label(self) -> bool:
        """True for a model of tags (one sigmoid per tag), False for one class per track."""
        return self.trained.multi_label

    def thresholds(self, threshold: float | None = None) -> list[float] | None:
        """Each tag's threshold (the model's own, or `threshold` for all tags); None for a
        single-label model, for which a threshold is an error."""
        if not self.multi_label:
            if threshold is not None:
                raise UserError("a threshold applies to multi-label models (tags); this one gives one label per track")
            return None
        if threshold is None:
            return self.trained.tag_thresholds()
        if not 0 < threshold < 1:
            raise UserError(f"threshold must be between 0 and 1 (it is {threshold})")
        return [float(threshold)] * len(self.labels)

    def features(self, item, sample_rate: int | None = None) -> torch.Tensor:
        """The model's features of every clip of a file path, or of an array [samples] or
        [samples, channels] of floats in [-1, 1] at sample_rate."""
        with self._as_file(item, sample_rate) as path:
            return compute_features(path, self.config, self.extractor)

    @contextlib.contextmanager
    def _as_file(self, item, sample_rate: int | None) -> Iterator[Path]:
        """A path as it is; an array written to a temporary WAV file, so that it goes through the
        file path's decode byte for byte."""
        if isinstance(item, (str, Path)):
            if sample_rate is not None:
                raise UserError("sample_rate is for arrays; a file's rate is read from the file")
            yield Path(item)
            return
        if sample_rate is None:
            raise UserError("an array needs its sample_rate, e.g. predict(samples, sample_rate=44100)")
        samples = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if samples.ndim not in (1, 2) or samples.size == 0:
            raise UserError(f"expected audio samples [samples] or [samples, channels], got shape {samples.shape}")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "array.wav"
            soundfile.write(path, samples, int(sample_rate), subtype="FLOAT")
            yield path

    def predict(
        self,
        item,
        sample_rate: int | None = None,
        top_k: int = 3,
        clips: bool = False,
        sections: dict | None = None,
        threshold: float | None = None,
    ) -> dict:
        """{"top": [{"label", "probability"}, ...], "seconds": ...} for one path or array; clips=True
        adds every clip's decision, sections={"smooth": 3, "min_seconds": 0} the merged sections.
        A multi-label model's result adds "tags": every tag at or above its threshold (see thresholds)."""
        thresholds = self.thresholds(threshold)
        scores = self._one_file(item, sample_rate, embeddings=False)
        result = describe(scores.log_probs(), self.labels, self.config.audio, top_k, clips, sections, thresholds)
        return {"file": str(item), **result} if isinstance(item, (str, Path)) else result

    def predict_many(
        self,
        paths: Iterable,
        top_k: int = 3,
        workers: int = 0,
        clips: bool = False,
        sections: dict | None = None,
        embeddings: bool = False,
        threshold: float | None = None,
    ) -> Iterator[dict]:
        """One result per path, in order, as predict gives them, plus {"embedding": numpy} when asked
        (from the same forward passes as the scores). A file that cannot be read yields
        {"file", "error"} and the others go on."""
        thresholds = self.thresholds(threshold)
        for path, scores, error in self._scored([Path(p) for p in paths], workers, embeddings):
            if error is not None:
                yield {"file": str(path), "error": str(error)}
                continue
            result = {
                "file": str(path),
                **describe(scores.log_probs(), self.labels, self.config.audio, top_k, clips, sections, thresholds),
            }
            if embeddings:
                result["embedding"] = scores.mean_embedding()
            yield result

    def embed(self, item, sample_rate: int | None = None, per_clip: bool = False):
        """The model's embedding of a path or array: the mean over its clips, a numpy vector; with
        per_clip=True, (that vector, [clips, dim] array)."""
        scores = self._one_file(item, sample_rate, embeddings="per_clip" if per_clip else True)
        track = scores.mean_embedding()
        return (track, scores.clip_embeddings()) if per_clip else track

    def _one_file(self, item, sample_rate: int | None, embeddings) -> "_FileScores":
        with self._as_file(item, sample_rate) as path:
            [(_, scores, error)] = self._scored([path], 0, embeddings)
        if error is not None:
            raise error
        return scores

    def _scored(self, paths: list[Path], workers: int, embeddings) -> Iterator[tuple]:
        """(path, _FileScores, None) or (path, None, the error) for each path, in order. Files are
        decoded a batch of clips at a time and scored as the batches come, several files sharing a
        forward pass, so no file's features are ever held whole (a 3-hour mix took 700 MB more
        than a song when they were). embeddings: False, True (their sum) or "per_clip" (all kept)."""
        stream = ClipStream(self.clips_per_forward, functools.partial(self._forward, embeddings=bool(embeddings)))
        files, finished, turn = {}, {}, 0
        for number, value in stream.scored(self._pieces(paths, workers)):
            if isinstance(value, tuple):
                files.setdefault(number, _FileScores(embeddings == "per_clip")).add(*value)
                continue
            scores = files.pop(number, None)  # value: None at a file's end, or why it failed
            finished[number] = (None, value) if value is not None else (scores, None)
            while turn in finished:  # in order: a file done before those ahead of it waits
                yield paths[turn], *finished.pop(turn)
                turn += 1

    def _forward(self, batch: torch.Tensor, embeddings: bool) -> tuple:
        log_probs, vectors = clip_outputs(
            self.trained.model,
            batch,
            self.device,
            window=crop_frames(self.config),
            embedding=embeddings,
            multi_label=self.multi_label,
        )
        if embeddings and vectors is None:
            raise UserError(f"model '{self.config.model.name}' has no embedding (only the CNNs have one)")
        return log_probs, vectors

    def _pieces(self, paths: list[Path], workers: int) -> Iterator[tuple]:
        loader = torch.utils.data.DataLoader(
            _Pieces(paths, self.config, self.extractor),
            batch_size=None,
            num_workers=workers,
            worker_init_fn=one_thread,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=PIECES_AHEAD if workers else None,
            persistent_workers=False,
        )
        yield from loader


class _Pieces(torch.utils.data.IterableDataset):
    """Files decoded into features a batch of clips at a time: (file number, features [n, ...]) for
    each batch, then (file number, None) at its end, or (file number, error) when it cannot be
    read. With DataLoader workers, worker w of W decodes files w, w + W, w + 2W, ..."""

    def __init__(self, paths: list[Path], config, extractor):
        self.paths, self.config, self.extractor = paths, config, extractor

    def __iter__(self) -> Iterator[tuple]:
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for number in range(first, len(self.paths), step):
            path = self.paths[number]
            try:
                for features in iter_feature_batches(path, self.config, self.extractor):
                    yield number, features
            except UserError as error:  # one bad file is one error row, never a stopped library
                yield number, error
                continue
            except MemoryError:
                yield number, UserError(f"{path}: not enough memory to compute its features")
                continue
            yield number, None


class _FileScores:
    """One file's clip outputs as they come: its log-probabilities [clips, classes] (a small table
    that sections and clips need whole), the sum of its embeddings, and with keep_clips each clip's
    embedding. Rows go into buffers that double when full: one small tensor kept per batch would
    sit between large freed buffers in the allocator's heap (see scores.per_file)."""

    def __init__(self, keep_clips: bool = False):
        self.scores, self.clips = _Rows(), _Rows() if keep_clips else None
        self.embedding_sum: torch.Tensor | None = None

    def add(self, log_probs: torch.Tensor, vectors: torch.Tensor | None) -> None:
        self.scores.add(log_probs)
        if vectors is not None:
            total = vectors.double().sum(dim=0)
            self.embedding_sum = total if self.embedding_sum is None else self.embedding_sum + total
            if self.clips is not None:
                self.clips.add(vectors)

    def log_probs(self) -> torch.Tensor:
        return self.scores.all()

    def mean_embedding(self) -> np.ndarray:
        return (self.embedding_sum / len(self.scores.all())).float().numpy()

    def clip_embeddings(self) -> np.ndarray:
        return self.clips.all().numpy()


class _Rows:
    """Rows [n, ...] appended batch by batch into one tensor that doubles its length when full."""

    def __init__(self):
        self.buffer, self.count = None, 0

    def add(self, rows: torch.Tensor) -> None:
        if self.buffer is None or self.count + len(rows) > len(self.buffer):
            grown = rows.new_empty(max(2 * self.count, self.count + len(rows), 16), *rows.shape[1:])
            if self.buffer is not None:
                grown[: self.count] = self.buffer[: self.count]
            self.buffer = grown
        self.buffer[self.count : self.count + len(rows)] = rows
        self.count += len(rows)

    def all(self) -> torch.Tensor:
        return self.buffer[: self.count]


def describe(
    scores: torch.Tensor,
    labels: list[str],
    audio,
    top_k: int,
    clips: bool = False,
    sections: dict | None = None,
    thresholds: list[float] | None = None,
) -> dict:
    """One file's result from its [clips, classes] log-probabilities: the top-k labels of the track
    decision, its length, and clips or sections on request (a clip's or a section's label is its
    most probable one). thresholds: None for a single-label model (the track decision is the mean
    clip log-probability, renormalized); for a multi-label model, each tag's threshold (the scores
    are then each tag's own log-probability, the track's the mean clip probability), and "tags"
    lists every tag at or above its threshold, most probable first."""
    track = track_probs([scores], multi_label=thresholds is not None)[0]
    result = {"top": _ranked(track, labels, top_k)}
    if thresholds is not None:
        result["tags"] = _ranked(track, labels, len(labels), keep=track >= torch.tensor(thresholds))
    result["seconds"] = round(clip_end(len(scores) - 1, audio), 3)
    probs = scores.exp()
    if clips:
        best, which = probs.max(dim=1)
        result["clips"] = [
            {
                "start": round(i * audio.hop_seconds, 3),
                "end": round(clip_end(i, audio), 3),
                "label": labels[c],
                "probability": round(p, 4),
            }
            for i, (p, c) in enumerate(zip(best.tolist(), which.tolist()))
        ]
    if sections is not None:
        result["sections"] = [{**s, "label": labels[s["label"]]} for s in find_sections(probs, audio, **sections)]
    return result


def _ranked(probs: torch.Tensor, labels: list[str], k: int, keep: torch.Tensor | None = None) -> list[dict]:
    """The k most probable labels (of those where keep is True), as {"label", "probability"}."""
    order = torch.topk(probs, min(k, len(labels))).indices.tolist()
    return [{"label": labels[i], "probability": round(probs[i].item(), 4)} for i in order if keep is None or keep[i]]


def clip_end(index: int, audio) -> float:
    return index * audio.hop_seconds + audio.clip_seconds


def find_sections(probs: torch.Tensor, audio, smooth: int = 3, min_seconds: float = 0.0) -> list[dict]:
    """Consecutive clips of one label merged into sections {start, end, label, probability}.

    Clip probabilities are first averaged over `smooth` clips centred on each clip (so one stray
    clip does not split a section); then a section shorter than min_seconds joins its longer
    neighbour. A section ends where the next one starts; probability is the mean, over its clips,
    of its label's smoothed probability."""
    smoothed = _moving_average(probs, max(1, smooth))
    runs = _runs(smoothed.argmax(dim=1).tolist())
    min_clips = math.ceil(min_seconds / audio.hop_seconds - 1e-9) if min_seconds > 0 else 0
    while len(runs) > 1 and min(r[2] - r[1] for r in runs) < min_clips:
        short = min(range(len(runs)), key=lambda i: runs[i][2] - runs[i][1])
        neighbours = [i for i in (short - 1, short + 1) if 0 <= i < len(runs)]
        into = max(neighbours, key=lambda i: runs[i][2] - runs[i][1])
        label = runs[into][0]
        start, end = min(runs[short][1], runs[into][1]), max(runs[short][2], runs[into][2])
        runs[min(short, into) : max(short, into) + 1] = [(label, start, end)]
        runs = _runs([label for label, first, last in runs for _ in range(first, last)])
    return [
        {
            "start": round(first * audio.hop_seconds, 3),
            "end": round(runs[n + 1][1] * audio.hop_seconds if n + 1 < len(runs) else clip_end(last - 1, audio), 3),
            "label": label,
            "probability": round(smoothed[first:last, label].mean().item(), 4),
        }
        for n, (label, first, last) in enumerate(runs)
    ]


def _moving_average(probs: torch.Tensor, width: int) -> torch.Tensor:
    """Centred moving average over clips [clips, classes]; the ends average what they have."""
    kernel = torch.ones(1, 1, width, dtype=probs.dtype)
    pad = (width // 2, width - 1 - width // 2)
    sums = torch.nn.functional.conv1d(torch.nn.functional.pad(probs.T.unsqueeze(1), pad), kernel)
    counts = torch.nn.functional.conv1d(
        torch.nn.functional.pad(torch.ones(1, 1, len(probs), dtype=probs.dtype), pad), kernel
    )
    return (sums / counts).squeeze(1).T


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """(label, first clip, one past the last clip) of each run of equal labels."""
    runs = []
    for i, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], i + 1)
        else:
            runs.append((label, i, i + 1))
    return runs
