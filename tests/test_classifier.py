"""The Python API: Classifier.load(checkpoint).predict / predict_many / embed, and sections of a timeline."""

import json
import weakref

import numpy as np
import pytest
import torch

from conftest import CLASSES, SR, class_signal, make_class_folder, tiny_config_dict, write_audio
from genrenet import Classifier
from genrenet.audio import BATCH_SAMPLES
from genrenet.classifier import describe, find_sections
from genrenet.config import AudioConfig, from_dict
from genrenet.errors import UserError
from genrenet.registry import build_model
from genrenet.scores import clip_log_probs, track_log_probs
from genrenet.trained import TrainedModel
from genrenet.training import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classifier")
    data = make_class_folder(tmp / "data", per_class=6)
    return train(from_dict(tiny_config_dict(tmp, data, train={"epochs": 4}))) / "best.pt"


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return Classifier.load(checkpoint, device="cpu")


def test_predict_a_path(classifier, tmp_path):
    path = write_audio(tmp_path / "noise.flac", class_signal("noise", 2.0, seed=99))
    result = classifier.predict(path, top_k=2)
    assert result["file"] == str(path) and result["seconds"] == 2.0
    assert [t["label"] for t in result["top"]][0] == "noise" and len(result["top"]) == 2
    assert classifier.labels == ["clicks", "noise", "tone"]


def test_an_array_at_any_rate_predicts_as_the_same_file(classifier, tmp_path):
    samples = class_signal("tone", 2.0, seed=5, sr=44100)
    path = write_audio(tmp_path / "tone.wav", samples, sr=44100, subtype="FLOAT")
    from_array = classifier.predict(samples, sample_rate=44100)
    assert from_array["top"] == classifier.predict(path)["top"]
    assert from_array["top"][0]["label"] == "tone" and "file" not in from_array
    stereo = np.stack([samples, samples], axis=1)
    assert classifier.predict(torch.from_numpy(stereo), sample_rate=44100)["top"] == from_array["top"]


def test_array_without_a_rate_is_one_clear_error(classifier):
    with pytest.raises(UserError, match="needs its sample_rate"):
        classifier.predict(np.zeros(8000))


def test_predict_many_keeps_order_and_reports_bad_files(checkpoint, tmp_path):
    classifier = Classifier(Classifier.load(checkpoint).trained, torch.device("cpu"), clips_per_forward=2)
    paths = [
        write_audio(tmp_path / f"{label}.wav", class_signal(label, 1.5, seed=i))
        for i, label in enumerate(["tone", "clicks", "noise"])
    ]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    results = list(classifier.predict_many([paths[0], bad, *paths[1:]], top_k=1, embeddings=True))
    assert [r["file"] for r in results] == [str(p) for p in [paths[0], bad, *paths[1:]]]
    assert results[1]["error"].startswith(f"{bad}: ")
    assert [r["top"][0]["label"] for r in results if "top" in r] == ["tone", "clicks", "noise"]
    assert np.allclose(results[0]["embedding"], classifier.embed(paths[0]), atol=1e-6)


def test_single_label_results_are_as_they_were(classifier, tmp_path):
    """Multi-label models changed describe; a single-label result keeps its keys, order and values:
    the top labels of the renormalized mean clip log-probability, rounded to 4 decimals."""
    path = write_audio(tmp_path / "tone.wav", class_signal("tone", 2.3, seed=8))
    [scores] = clip_log_probs(classifier.trained.model, [classifier.features(path)], torch.device("cpu"))
    track = track_log_probs([scores])[0].exp()
    top = torch.topk(track, 2)
    expected = {
        "file": str(path),
        "top": [
            {"label": classifier.labels[i], "probability": round(p, 4)}
            for p, i in zip(top.values.tolist(), top.indices.tolist())
        ],
        "seconds": 2.0,
    }
    assert json.dumps(classifier.predict(path, top_k=2)) == json.dumps(expected)


def test_embed_per_track_and_per_clip(classifier, tmp_path):
    path = write_audio(tmp_path / "clicks.ogg", class_signal("clicks", 2.0, seed=3))
    track, clips = classifier.embed(path, per_clip=True)
    assert clips.shape[0] == 4 and track.shape == (clips.shape[1],)  # 2 s in 0.5 s clips
    assert isinstance(track, np.ndarray) and np.allclose(track, clips.mean(axis=0), atol=1e-6)


def test_a_long_file_is_scored_a_decoded_batch_at_a_time(tmp_path):
    """predict held the features of all a file's clips at once, so its memory grew with the file:
    with the demo config, a 3-hour mix peaked 700 MB above a 3-minute song (the features and their
    concatenation). Clips are now scored as their decoded batches come, and each batch is let go
    once it has been run: no tensor ever spans more than a forward pass and a decoded batch."""
    rate, seconds = 44100, 120  # 119 clips of 2 s every 1 s, decoded 47 at a time, scored 32 at a time
    audio = {"sample_rate": SR, "clip_seconds": 2.0, "hop_seconds": 1.0}
    config = from_dict(tiny_config_dict(tmp_path, tmp_path, audio=audio, features={"n_mels": 16}))
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES)).eval()  # untrained: memory does not depend on the weights
    classifier = Classifier(TrainedModel(model, config, list(CLASSES), {}), torch.device("cpu"), clips_per_forward=32)
    t = np.arange(seconds * rate) / rate
    path = write_audio(tmp_path / "long.wav", 0.4 * np.sin(2 * np.pi * (300 + 2 * t) * t), sr=rate)

    decoded, extract = [], classifier.extractor
    classifier.extractor = lambda waves: _recorded(extract(waves), decoded)
    spanned, alive = [], []  # at each forward pass: clips its input's memory holds, decoded batches alive

    def look(module, inputs, output):
        spanned.append(inputs[0].untyped_storage().nbytes() // inputs[0][0].nbytes)
        alive.append(sum(ref() is not None for ref in decoded))

    hook = model.register_forward_hook(look)
    try:
        result = classifier.predict(path, top_k=3)
    finally:
        hook.remove()
        classifier.extractor = extract
    per_batch = BATCH_SAMPLES // (2 * rate)
    assert len(decoded) == 3 and result["seconds"] == seconds  # 2 batches of 47 clips and one of 25
    assert len(spanned) == 4 and max(spanned) < 32 + per_batch  # 119 before: the whole file
    assert max(alive) <= 2
    [whole] = clip_log_probs(model, [classifier.features(path)], torch.device("cpu"))
    assert result["top"] == describe(whole, classifier.labels, config.audio, 3)["top"]


def _recorded(features: torch.Tensor, refs: list) -> torch.Tensor:
    refs.append(weakref.ref(features))
    return features


def test_sections_merge_runs_smooth_strays_and_respect_a_minimum():
    audio = AudioConfig(sample_rate=SR, clip_seconds=1.0, hop_seconds=1.0)
    labels = [0] * 5 + [1] + [0] * 4 + [2] * 3
    probs = torch.nn.functional.one_hot(torch.tensor(labels), 3).float() * 0.8 + 0.2 / 3
    raw = find_sections(probs, audio, smooth=1)
    assert [(s["start"], s["end"], s["label"]) for s in raw] == [(0, 5, 0), (5, 6, 1), (6, 10, 0), (10, 13, 2)]
    smoothed = find_sections(probs, audio, smooth=3)
    assert [(s["start"], s["end"], s["label"]) for s in smoothed] == [(0, 10, 0), (10, 13, 2)]
    merged = find_sections(probs, audio, smooth=1, min_seconds=4)
    assert [(s["start"], s["end"], s["label"]) for s in merged] == [(0, 13, 0)]
    assert 0 < merged[0]["probability"] < 1
