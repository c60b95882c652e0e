"""A model from outside the package: one settings class, one model class, a feature kind of its own,
registered by name, then trained, evaluated and predicted through the ordinary commands."""

import json

import pytest
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from conftest import CLASSES, make_class_folder, tiny_config_dict, write_config
from genrenet import Classifier, cli, registry
from genrenet.config import STRICT, from_dict
from genrenet.errors import UserError
from genrenet.evaluation import evaluate
from genrenet.registry import FeatureKind, ModelEntry


class BandEnergies:
    """Waveforms [clips, samples] -> log energy in `bands` equal slices of the spectrum [clips, bands]:
    a feature kind with no time axis, unlike the mel spectrograms."""

    def __init__(self, bands: int):
        self.bands = bands

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft(waves).abs() ** 2
        slices = torch.tensor_split(power, self.bands, dim=1)
        return torch.stack([torch.log10(s.mean(dim=1) + 1e-10) for s in slices], dim=1)


@dataclass(config=STRICT)
class TinyMLPSettings:
    name: str = "tiny_mlp"
    hidden: int = Field(16, gt=0)


class TinyMLP(torch.nn.Module):
    def __init__(self, settings: TinyMLPSettings, n_classes: int, width: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.BatchNorm1d(width), torch.nn.Linear(width, settings.hidden), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(settings.hidden, n_classes)

    def forward(self, x: torch.Tensor) -> dict:
        embedding = self.body(x)
        return {"logits": self.head(embedding), "embedding": embedding}


@pytest.fixture
def tiny_mlp():
    registry.register_features(
        FeatureKind("band_energies", extractor=lambda config: BandEnergies(12), width=lambda config: 12, framed=False)
    )
    registry.register_model(ModelEntry("tiny_mlp", TinyMLPSettings, "band_energies", TinyMLP))
    yield
    registry.MODELS.pop("tiny_mlp")
    registry.FEATURES.pop("band_energies")


def test_a_model_registered_outside_the_package_trains_evaluates_and_predicts(tmp_path, tiny_mlp, capsys):
    data = make_class_folder(tmp_path / "data", per_class=8)
    raw = tiny_config_dict(
        tmp_path, data, train={"epochs": 15, "lr": 0.05, "batch_size": 8}, augment={"crop_seconds": 0.25}
    )  # no time axis: the crop must not apply
    raw["model"] = {"name": "tiny_mlp", "hidden": 16}
    config_file = write_config(tmp_path / "mlp.yaml", raw)

    assert cli.train_main(["--config", str(config_file)]) == 0
    assert "model: tiny_mlp" in capsys.readouterr().out
    run = tmp_path / "run"
    settings = json.loads(next((tmp_path / "cache").glob("*/settings.json")).read_text())
    assert settings["kind"] == "band_energies"

    report = evaluate(run / "best.pt")
    assert report["model"] == "tiny_mlp" and report["track"]["n"] > 0
    assert report["track"]["accuracy"] >= 0.8, report["track"]

    classifier = Classifier.load(run / "best.pt", device="cpu")
    unseen = make_class_folder(tmp_path / "unseen", per_class=1, seed=5)
    for label in CLASSES:
        result = classifier.predict(next((unseen / label).iterdir()))
        assert result["top"][0]["label"] == label, result


def test_a_registered_model_validates_its_own_keys(tmp_path, tiny_mlp):
    raw = tiny_config_dict(tmp_path, tmp_path)
    raw["model"] = {"name": "tiny_mlp", "hidden": 4, "width": 8}
    with pytest.raises(UserError) as error:
        from_dict(raw)
    assert "unknown key 'model.width'" in str(error.value) and "not of tiny_mlp" in str(error.value)
    raw["model"] = {"name": "tiny_mlp", "hidden": 0}
    with pytest.raises(UserError, match="model.hidden"):
        from_dict(raw)


def test_a_setting_of_another_kind_of_model_says_whose_it_is(tmp_path):
    raw = tiny_config_dict(tmp_path, tmp_path)  # small_cnn
    raw["model"]["svm_c"] = 1
    with pytest.raises(UserError) as error:
        from_dict(raw)
    message = str(error.value)
    assert (
        "unknown key 'model.svm_c'" in message
        and "setting of logreg, musicnn_logreg, musicnn_svm, random_forest, svm, not of small_cnn" in message
    )
