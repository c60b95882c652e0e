"""The musicnn port (genrenet.musicnn) against the original TensorFlow code, without TensorFlow.

tests/fixtures/musicnn_reference.npz was recorded by tools/convert_musicnn.py with musicnn 0.1.0:
two generated songs (16 kHz and 22.05 kHz, int16 as a PCM_16 wav holds them), the float16 mel patches
musicnn's own batch_data fed its network (the log of which the script checked to be the patches,
bit for bit), and per patch the logits, tag probabilities and penultimate layer of both taggers.
"""

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_install import REPO_ROOT, run, source_copy

from conftest import CLASSES, make_class_folder, tiny_config_dict, write_config
from genrenet import Classifier, cli
from genrenet.errors import UserError
from genrenet.musicnn import (
    PATCH_FRAMES,
    PRETRAINED,
    MusiCNN,
    MusicnnFrontEnd,
    MusicnnSettings,
    build_musicnn,
    load_pretrained,
    patches,
    pretrained_path,
    to_sample_rate,
)

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "musicnn_reference.npz"
ORIGINAL = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}  # musicnn's names for the checkpoints


@pytest.fixture(scope="module")
def reference() -> dict:
    with np.load(FIXTURE) as saved:
        return dict(saved)


@pytest.fixture(scope="module")
def taggers() -> dict:
    return {name: load_pretrained(name)[0] for name in PRETRAINED}


def tag(model, x: torch.Tensor) -> dict:
    with torch.no_grad():
        out = model(x)
    return {
        "logits": out["logits"].numpy(),
        "probabilities": torch.sigmoid(out["logits"]).numpy(),
        "penultimate": out["embedding"].numpy(),
    }


def gaps(ours: dict, reference: dict, wave: str, name: str, keys=("logits", "probabilities", "penultimate")) -> dict:
    return {key: float(np.abs(ours[key] - reference[f"{wave}/{ORIGINAL[name]}/{key}"]).max()) for key in keys}


def waveform(reference: dict, wave: str) -> torch.Tensor:
    return torch.from_numpy(reference[f"{wave}/samples"].astype(np.float32) / 32768)  # as soundfile reads PCM_16


def front_end_patches(reference: dict, wave: str) -> torch.Tensor:
    logmel = MusicnnFrontEnd()(to_sample_rate(waveform(reference, wave), int(reference[f"{wave}/rate"])))
    return patches(logmel, int(reference["step"]))


@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.parametrize("wave", ["song16k", "song22k"])
def test_port_reproduces_musicnn_given_its_log_mel_patches(reference, taggers, name, wave):
    mel16 = reference[f"{wave}/mel16"].astype(np.float32)  # [patches, frames, mels]
    logmel = torch.from_numpy(np.log10(10000 * mel16 + 1))  # what musicnn fed its network
    ours = tag(taggers[name], logmel.transpose(1, 2).unsqueeze(1))
    # Measured: probabilities within 2e-6, logits 1.2e-5, penultimate 8e-6.
    assert all(gap < 1e-4 for gap in gaps(ours, reference, wave, name).values()), gaps(ours, reference, wave, name)


@pytest.mark.parametrize("name", PRETRAINED)
def test_port_reproduces_musicnn_through_genrenets_front_end(reference, taggers, name):
    x = front_end_patches(reference, "song16k")
    assert x.shape == (2, 1, 96, PATCH_FRAMES)  # two patches, 61 frames apart, as musicnn's extractor cut them
    ours = tag(taggers[name], x)
    # Measured: probabilities within 5e-6, penultimate 2.5e-5 (0.3% of the float16 mel values round
    # the other way after torch's STFT).
    assert all(gap < 1e-3 for gap in gaps(ours, reference, "song16k", name).values()), gaps(
        ours, reference, "song16k", name
    )


def test_front_end_gives_musicnns_log_mel_patches(reference):
    """Slaney mel, the STFT padded with zeros (as librosa 0.11), power rounded to float16, then
    log10(10000 x + 1): the values musicnn fed its network, up to the float16 rounding of a power
    that torch's STFT puts on the other side of a rounding boundary."""
    logmel = MusicnnFrontEnd()(waveform(reference, "song16k")).T.numpy()
    step = int(reference["step"])
    for i, mel16 in enumerate(reference["song16k/mel16"]):
        gap = np.abs(logmel[i * step : i * step + PATCH_FRAMES] - np.log10(10000 * mel16.astype(np.float32) + 1))
        assert gap.max() < 5e-4  # measured 4.2e-4: one float16 step of the power
        # Measured 0.997; without the float16 cast 0.01, as log10 then sees the unrounded power.
        assert (gap <= 1e-6).mean() > 0.99


@pytest.mark.parametrize("name", PRETRAINED)
def test_resampled_audio_tags_close_to_musicnns(reference, taggers, name):
    """22.05 kHz audio: musicnn resamples with soxr, genrenet with torchaudio, so values differ a little."""
    ours = tag(taggers[name], front_end_patches(reference, "song22k"))
    # Measured: 0.038 (msd) and 0.014 (mtt) on the probabilities.
    assert gaps(ours, reference, "song22k", name, keys=("probabilities",))["probabilities"] < 0.05


@pytest.mark.parametrize("name", PRETRAINED)
def test_weight_files_load_with_weights_only(reference, name):
    saved = torch.load(pretrained_path(name), map_location="cpu", weights_only=True)
    assert saved["tags"] == list(reference[f"tags/{ORIGINAL[name]}"]) and len(set(saved["tags"])) == 50
    floats = [value for value in saved["state_dict"].values() if value.is_floating_point()]
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in floats)
    assert sum(value.numel() for value in floats) == 792_079
    MusiCNN(n_tags=50).load_state_dict(saved["state_dict"], strict=True)


def test_short_recording_is_one_shorter_patch(taggers):
    logmel = MusicnnFrontEnd()(torch.zeros(16000))  # 1 s: 63 frames, under a patch
    x = patches(logmel)
    assert x.shape == (1, 1, 96, 63)
    out = tag(taggers["musicnn-msd"], x)
    assert out["probabilities"].shape == (1, 50) and np.isfinite(out["probabilities"]).all()


def test_unknown_tagger_is_one_user_error():
    with pytest.raises(UserError, match="'musicnn-big' is not a pretrained tagger"):
        load_pretrained("musicnn-big")


def test_wheel_carries_the_weights_and_their_licence(tmp_path):
    src = source_copy(tmp_path / "src")
    wheel_dir = tmp_path / "dist"
    options = "-m pip wheel -q --no-deps --no-build-isolation --no-index -w".split()  # builds with what is installed
    run(sys.executable, *options, wheel_dir, src, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("genrenet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        notice = archive.read("genrenet/pretrained/LICENSE-musicnn").decode()
    assert {"genrenet/pretrained/musicnn_msd.pt", "genrenet/pretrained/musicnn_mtt.pt"} <= names
    assert "Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019" in notice
    assert "License-Expression: MIT AND ISC" in metadata


def test_musicnn_starts_from_the_shipped_layers_under_a_new_head():
    model = build_musicnn(MusicnnSettings(pretrained="musicnn-mtt"), 3, 96)
    shipped = torch.load(pretrained_path("musicnn-mtt"), weights_only=True)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in shipped.items() if not key.startswith("head."))
    assert state["head.weight"].shape == (3, 200)
    scratch = build_musicnn(MusicnnSettings(pretrained=None), 3, 96).state_dict()
    assert not torch.equal(scratch["timbral.0.conv.weight"], shipped["timbral.0.conv.weight"])


def musicnn_config(tmp_path, data, sample_rate: int = 16000) -> Path:
    raw = tiny_config_dict(tmp_path, data, train={"epochs": 1, "batch_size": 8, "lr": 0.001})
    raw["audio"]["sample_rate"] = sample_rate
    raw["model"] = {"name": "musicnn", "pretrained": "musicnn-msd"}
    return write_config(tmp_path / "musicnn.yaml", raw)


def test_musicnn_trains_and_predicts_from_a_config(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=4, seconds=1.0)  # about 2.4 GFLOPs per 3 s: kept tiny
    assert cli.train_main(["--config", str(musicnn_config(tmp_path, data))]) == 0
    assert "model: musicnn" in capsys.readouterr().out
    classifier = Classifier.load(tmp_path / "run" / "best.pt", device="cpu")
    top = classifier.predict(next((data / CLASSES[0]).iterdir()))["top"]
    assert top[0]["label"] in CLASSES and 0 < top[0]["probability"] <= 1


def test_musicnn_at_another_sample_rate_is_one_error_line(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=4, seconds=1.0)
    assert cli.train_main(["--config", str(musicnn_config(tmp_path, data, sample_rate=8000))]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: model musicnn reads 16 kHz audio: set audio.sample_rate: 16000 (it is 8000)", error
