"""Prediction: the genre (class) of any audio file, from a checkpoint alone.

For each file: the top-k labels with track probabilities (clips' log-probabilities averaged,
then renormalized), and optionally a timeline of clip decisions.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from genrenet.audio import AUDIO_EXTENSIONS
from genrenet.cache import compute_features, feature_extractor
from genrenet.config import crop_frames
from genrenet.errors import one_line
from genrenet.scores import clip_log_probs, track_log_probs
from genrenet.trained import TrainedModel, load_model


@dataclass
class Predictor:
    trained: TrainedModel
    device: torch.device
    extractor: Callable  # waveforms [clips, samples] -> the model's features


def prepare_predictor(checkpoint: str | Path, device: torch.device) -> Predictor:
    trained = load_model(checkpoint, device)
    return Predictor(trained, device, feature_extractor(trained.config))


def predict_file(path: Path, predictor: Predictor, top_k: int = 3) -> dict:
    config, labels = predictor.trained.config, predictor.trained.labels
    features = compute_features(path, config, predictor.extractor)
    clip_scores = clip_log_probs(predictor.trained.model, [features], predictor.device, window=crop_frames(config))[0]
    track_probs = track_log_probs([clip_scores])[0].exp()
    top = torch.topk(track_probs, min(top_k, len(labels)))
    clip_probs, clip_labels = clip_scores.exp().max(dim=1)
    hop, length = config.audio.hop_seconds, config.audio.clip_seconds
    return {"file": str(path),
            "top": [{"label": labels[i], "probability": round(p, 4)} for p, i in zip(top.values.tolist(), top.indices.tolist())],
            "segments": [{"start": round(i * hop, 3), "end": round(i * hop + length, 3), "label": labels[c],
                          "probability": round(p, 4)}
                         for i, (p, c) in enumerate(zip(clip_probs.tolist(), clip_labels.tolist()))]}


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given; folders become the audio files inside them."""
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        else:
            paths.append(path)
    return paths


def format_prediction(result: dict, segments: bool) -> str:
    lines = [one_line(result["file"])]  # a newline in a file name must not start a new line
    width = max(len(t["label"]) for t in result["top"])
    lines += [f"  {rank}. {t['label']:<{width}}  {t['probability']:.3f}" for rank, t in enumerate(result["top"], 1)]
    if segments:
        lines.append("  timeline (seconds, clip decision):")
        lines += [f"    {s['start']:8.2f} - {s['end']:8.2f}  {s['label']}  {s['probability']:.3f}"
                  for s in result["segments"]]
    return "\n".join(lines)
