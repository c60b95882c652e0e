"""A trained model as a Python object: `Classifier.load(checkpoint).predict("song.mp3")`.

The command line's prediction is built on this class, so a notebook and `genrenet predict` give
the same numbers. Files are decoded by the audio stage (genrenet.cache.compute_features); an
array goes through the very same decode, by way of a temporary WAV file, so peak normalization,
clip cutting and resampling cannot drift apart between the two.

Many files: predict_many decodes and computes features in DataLoader worker processes and scores
the clips of several files in one forward pass.
"""

import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch

from genrenet.cache import compute_features, feature_extractor, one_thread
from genrenet.config import crop_frames
from genrenet.device import resolve_device
from genrenet.errors import UserError
from genrenet.scores import clip_log_probs, per_file, track_log_probs
from genrenet.trained import load_model

CLIPS_PER_FORWARD = 256  # clips scored in one forward pass; several files' worth for ordinary tracks


class Classifier:
    """A checkpoint's model with its preprocessing: audio in, labels with probabilities out."""

    def __init__(self, trained, device: torch.device):
        self.trained, self.device = trained, device
        self.extractor = feature_extractor(trained.config)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "auto") -> "Classifier":
        """device: auto (CUDA when PyTorch sees a GPU), cpu, cuda or a torch.device."""
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

    def features(self, item, sample_rate: int | None = None) -> torch.Tensor:
        """The model's features of every clip of a file path, or of an array [samples] or
        [samples, channels] of floats in [-1, 1] at sample_rate."""
        if isinstance(item, (str, Path)):
            if sample_rate is not None:
                raise UserError("sample_rate is for arrays; a file's rate is read from the file")
            return compute_features(Path(item), self.config, self.extractor)
        if sample_rate is None:
            raise UserError("an array needs its sample_rate, e.g. predict(samples, sample_rate=44100)")
        samples = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if samples.ndim not in (1, 2) or samples.size == 0:
            raise UserError(f"expected audio samples [samples] or [samples, channels], got shape {samples.shape}")
        with tempfile.TemporaryDirectory() as folder:  # the file path's decode, byte for byte
            path = Path(folder) / "array.wav"
            soundfile.write(path, samples, int(sample_rate), subtype="FLOAT")
            return compute_features(path, self.config, self.extractor)

    def predict(
        self, item, sample_rate: int | None = None, top_k: int = 3, clips: bool = False, sections: dict | None = None
    ) -> dict:
        """{"top": [{"label", "probability"}, ...], "seconds": ...} for one path or array; clips=True
        adds every clip's decision, sections={"smooth": 3, "min_seconds": 0} the merged sections."""
        features = self.features(item, sample_rate)
        [scores] = self.clip_scores([features])
        result = describe(scores, self.labels, self.config.audio, top_k, clips, sections)
        return {"file": str(item), **result} if isinstance(item, (str, Path)) else result

    def predict_many(
        self,
        paths: Iterable,
        top_k: int = 3,
        workers: int = 0,
        clips: bool = False,
        sections: dict | None = None,
        embeddings: bool = False,
        files_per_batch: int = 16,
    ) -> Iterator[dict]:
        """One result per path, in order, as predict gives them, plus {"embedding": numpy} when asked.
        A file that cannot be read yields {"file", "error"} and the others go on."""
        for batch in self._batches([Path(p) for p in paths], workers, files_per_batch):
            good = [row for row in batch if row["features"] is not None]
            scores = iter(self.clip_scores([row["features"] for row in good]))
            vectors = iter(self.clip_embeddings([row["features"] for row in good]) if embeddings else ())
            for row in batch:
                if row["features"] is None:
                    yield {"file": str(row["path"]), "error": row["error"]}
                    continue
                result = {
                    "file": str(row["path"]),
                    **describe(next(scores), self.labels, self.config.audio, top_k, clips, sections),
                }
                if embeddings:
                    result["embedding"] = next(vectors).mean(dim=0).numpy()
                yield result

    def embed(self, item, sample_rate: int | None = None, per_clip: bool = False):
        """The model's embedding of a path or array: the mean over its clips, a numpy vector; with
        per_clip=True, (that vector, [clips, dim] array)."""
        [vectors] = self.clip_embeddings([self.features(item, sample_rate)])
        track = vectors.mean(dim=0).numpy()
        return (track, vectors.numpy()) if per_clip else track

    def clip_scores(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per file, [clips, classes] log-probabilities; all files' clips share forward passes."""
        return clip_log_probs(
            self.trained.model, features, self.device, batch_size=CLIPS_PER_FORWARD, window=crop_frames(self.config)
        )

    def clip_embeddings(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per file, [clips, dim] embeddings on the CPU (whole clips: the CNNs pool over time)."""
        return per_file(features, CLIPS_PER_FORWARD, self._embedding)

    def _embedding(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.trained.model(batch.to(self.device))
        if "embedding" not in output:
            raise UserError(f"model '{self.config.model.name}' has no embedding (only the CNNs have one)")
        return output["embedding"].float().cpu()

    def _batches(self, paths: list[Path], workers: int, files_per_batch: int) -> Iterator[list[dict]]:
        loader = torch.utils.data.DataLoader(
            _Decode(paths, self.config, self.extractor),
            batch_size=files_per_batch,
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=one_thread,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        yield from loader


class _Decode(torch.utils.data.Dataset):
    """Files to decode into features; a Dataset so that DataLoader workers do the decoding."""

    def __init__(self, paths: list[Path], config, extractor):
        self.paths, self.config, self.extractor = paths, config, extractor

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        row = {"path": self.paths[i], "features": None, "error": None}
        try:
            row["features"] = compute_features(self.paths[i], self.config, self.extractor)
        except UserError as error:  # one bad file is one error row, never a stopped library
            row["error"] = str(error)
        except MemoryError:
            row["error"] = f"{self.paths[i]}: not enough memory to compute its features"
        return row


def describe(
    scores: torch.Tensor, labels: list[str], audio, top_k: int, clips: bool = False, sections: dict | None = None
) -> dict:
    """One file's result from its [clips, classes] log-probabilities: the top-k labels of the track
    decision (mean clip log-probability, renormalized), its length, and clips or sections on request."""
    track = track_log_probs([scores])[0].exp()
    top = torch.topk(track, min(top_k, len(labels)))
    result = {
        "top": [
            {"label": labels[i], "probability": round(p, 4)} for p, i in zip(top.values.tolist(), top.indices.tolist())
        ],
        "seconds": round(clip_end(len(scores) - 1, audio), 3),
    }
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
