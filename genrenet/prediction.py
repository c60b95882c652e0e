"""Prediction: the genre (class) of any audio file, from a checkpoint alone.

For each file: the top-k labels with track probabilities (clips' log-probabilities averaged,
then renormalized), and optionally a timeline of clip decisions.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from genrenet.audio import AUDIO_EXTENSIONS
from genrenet.cache import compute_features, feature_extractor
from genrenet.checkpoint import load_model
from genrenet.config import crop_frames
from genrenet.errors import UserError, cli_entry
from genrenet.scores import clip_log_probs, track_log_probs
from genrenet.training import resolve_device


def predict_file(path: Path, model, config, labels: list[str], device, extractor, top_k: int = 3) -> dict:
    features = compute_features(path, config, extractor)
    clip_scores = clip_log_probs(model, [features], device, window=crop_frames(config))[0]
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
    lines = [result["file"]]
    width = max(len(t["label"]) for t in result["top"])
    lines += [f"  {rank}. {t['label']:<{width}}  {t['probability']:.3f}" for rank, t in enumerate(result["top"], 1)]
    if segments:
        lines.append("  timeline (seconds, clip decision):")
        lines += [f"    {s['start']:8.2f} - {s['end']:8.2f}  {s['label']}  {s['probability']:.3f}"
                  for s in result["segments"]]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Predict the class (genre) of audio files with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="a best.pt or last.pt from a run directory")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files or folders of audio files")
    parser.add_argument("--top-k", type=int, default=3, help="how many labels to show per file (default 3)")
    parser.add_argument("--segments", action="store_true", help="add a timeline: start, end, label, probability per clip")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    return parser.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    device = resolve_device(args.device)
    model, config, labels, _ = load_model(args.checkpoint, device)
    extractor = feature_extractor(config)
    paths = expand_inputs(args.files)
    if not paths:
        raise UserError("no audio files found in the given folders")
    results, failed = [], 0
    for path in paths:
        try:
            result = predict_file(path, model, config, labels, device, extractor, args.top_k)
        except UserError as error:  # one bad file must not stop the others
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"file": str(path), "error": str(error)})
            continue
        if not args.segments:
            result.pop("segments")
        results.append(result)
        if not args.json:
            print(format_prediction(result, args.segments))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0
