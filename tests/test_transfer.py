"""Transfer learning from the shipped musicnn taggers: a head on frozen embeddings (musicnn_probe),
classic models on them (musicnn_svm, musicnn_logreg), and fine-tuning (musicnn, fine_tune and
backbone_lr), through the same train / cross-validate / resume / evaluate / predict paths."""

import json
import subprocess

import pytest
import torch
from test_distributed import ENV, torchrun
from test_export import all_probabilities, on_the_pcm_grid, tagger_waveforms
from test_multilabel import make_tagged

from conftest import CLASSES, make_class_folder, tiny_config_dict, write_config
from genrenet import Classifier, cli
from genrenet.checkpoint import load_checkpoint, save_checkpoint, save_state
from genrenet.config import crop_frames, from_dict, preprocessing_key, to_dict
from genrenet.errors import UserError
from genrenet.evaluation import evaluate
from genrenet.musicnn import MusicnnFrontEnd, MusicnnSettings, build_musicnn, pretrained_weights
from genrenet.probe import TaggerEmbedding
from genrenet.registry import build_model, parameter_groups
from genrenet.training import train

PROBE = {"name": "musicnn_probe", "pretrained": "musicnn-msd", "embedding": "penultimate"}
TUNED = {"name": "musicnn", "pretrained": "musicnn-msd", "fine_tune": "last_blocks", "backbone_lr": 0.001}


def transfer_config(tmp_path, folder, model: dict, **sections) -> dict:
    sections = {"train": {"epochs": 6, "batch_size": 8, "lr": 0.01}, **sections}
    raw = tiny_config_dict(tmp_path, folder, **sections)
    raw["audio"] = {"sample_rate": 16000, "clip_seconds": 1.0, "hop_seconds": 1.0}
    raw.pop("features")
    raw["model"] = model
    return raw


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("transfer") / "data", per_class=6, seconds=2.0)


def test_a_linear_probe_on_frozen_embeddings_learns_the_classes(tmp_path, data):
    raw = transfer_config(tmp_path, data, PROBE, data={"test_fraction": 0.34, "valid_fraction": 0.0})
    train(from_dict(raw))
    report = evaluate(tmp_path / "run" / "best.pt")
    assert report["track"]["accuracy"] >= 5 / 6  # measured: 1.0 (chance: 1/3)
    classifier = Classifier.load(tmp_path / "run" / "best.pt", device="cpu")
    vector = classifier.embed(next((data / CLASSES[0]).iterdir()))
    assert vector.shape == (200,)


def test_stored_embeddings_are_keyed_by_tagger_and_layer(tmp_path, data):
    """Features of another tagger or layer are never served from the store as this one's."""
    keys = {
        preprocessing_key(from_dict(transfer_config(tmp_path, data, {**PROBE, **change})))
        for change in ({}, {"pretrained": "musicnn-mtt"}, {"embedding": "pooled"})
    }
    assert len(keys) == 3
    small_cnn = tiny_config_dict(tmp_path, data)
    assert preprocessing_key(from_dict(small_cnn)) == preprocessing_key(from_dict(json.loads(json.dumps(small_cnn))))


def test_the_embedding_features_are_the_taggers_own(data):
    wave = torch.randn(2, 16000) * 0.1
    features = TaggerEmbedding("musicnn-mtt", "pooled")(wave)
    assert features.shape == (2, 1506)
    tagger = build_musicnn(MusicnnSettings(pretrained="musicnn-mtt"), 50, 96).eval()
    tagger.load_state_dict(pretrained_weights("musicnn-mtt")["state_dict"])
    with torch.no_grad():
        expected = tagger(MusicnnFrontEnd()(wave).unsqueeze(1))["pooled"]
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("name", ["musicnn_svm", "musicnn_logreg"])
def test_classic_models_fit_on_the_taggers_embeddings(tmp_path, data, name):
    model = {"name": name, "pretrained": "musicnn-msd", "embedding": "penultimate"}
    raw = transfer_config(tmp_path, data, model, data={"test_fraction": 0.34, "valid_fraction": 0.0})
    train(from_dict(raw))
    assert evaluate(tmp_path / "run" / "best.pt")["track"]["accuracy"] >= 5 / 6  # measured: 1.0


def test_logistic_regression_on_handcrafted_features(tmp_path, data):
    raw = tiny_config_dict(tmp_path, data, data={"test_fraction": 0.34, "valid_fraction": 0.0})
    raw["model"] = {"name": "logreg", "logreg_c": 0.5}
    train(from_dict(raw))
    assert evaluate(tmp_path / "run" / "best.pt")["track"]["accuracy"] >= 5 / 6


def test_fine_tuning_the_last_blocks_keeps_the_front_end_as_shipped(tmp_path, data, capsys):
    raw = transfer_config(tmp_path, data, TUNED, train={"epochs": 2, "batch_size": 8, "lr": 0.01})
    train(from_dict(raw))
    assert "model: musicnn, 777,712 parameters (614,663 trained, the rest frozen)" in capsys.readouterr().out
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    shipped = pretrained_weights("musicnn-msd")["state_dict"]
    state = saved["model_state"]
    for key in (
        "input_norm.running_mean",
        "timbral.0.conv.weight",
        "timbral.1.norm.running_var",
        "temporal.2.norm.weight",
    ):
        assert torch.equal(state[key], shipped[key]), key  # batch-norm statistics included
    assert not torch.equal(state["midend.0.conv.weight"], shipped["midend.0.conv.weight"])
    assert not torch.equal(state["dense.weight"], shipped["dense.weight"])
    head, backbone = saved["training_state"]["optimizer"]["param_groups"]
    assert head["initial_lr"] == 0.01 and backbone["initial_lr"] == 0.001


def test_parameter_groups_of_a_fully_fine_tuned_tagger():
    settings = MusicnnSettings(pretrained="musicnn-msd", backbone_lr=0.0002)
    model = build_musicnn(settings, 4, 96)
    config = from_dict({"audio": {"sample_rate": 16000}, "model": {**settings.__dict__}, "train": {"lr": 0.002}})
    head, backbone = parameter_groups(config, model)
    assert (head["lr"], backbone["lr"]) == (0.002, 0.0002)
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))


def test_last_blocks_without_a_pretrained_tagger_is_refused(tmp_path, data):
    model = {"name": "musicnn", "pretrained": None, "fine_tune": "last_blocks"}
    with pytest.raises(UserError, match="model.fine_tune: last_blocks and model.backbone_lr need model.pretrained"):
        from_dict(transfer_config(tmp_path, data, model))


def test_crops_of_musicnn_features_count_its_own_frames(tmp_path, data):
    """musicnn's front end hops 256 samples whatever features.hop_length says: a 3 s crop is 188 frames."""
    raw = transfer_config(tmp_path, data, {"name": "musicnn"}, augment={"crop_seconds": 0.5})
    raw["features"] = {"hop_length": 128}
    assert crop_frames(from_dict(raw)) == round(0.5 * 16000 / 256) + 1


def test_probe_cross_validates_and_resumes(tmp_path, data, capsys):
    index = tmp_path / "index.csv"
    rows = sorted(data.rglob("*.wav"))
    index.write_text("path,label,fold\n" + "".join(f"{p},{p.parent.name},{i % 2 + 1}\n" for i, p in enumerate(rows)))
    raw = transfer_config(tmp_path, data, PROBE, data={"path": str(index), "valid_fraction": 0.0})
    config = write_config(tmp_path / "probe.yaml", raw)
    assert cli.train_main(["--config", str(config), "--cv", "--no-plots", "-q"]) == 0
    summary = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert len(summary["folds"]) == 2 and summary["mean_track_accuracy"] >= 0.75  # measured: 1.0
    run = tmp_path / "run" / "fold-1"
    saved = load_checkpoint(run / "last.pt")
    saved["training_state"].update(epoch=4, batches_done=0, finished=False)  # as if stopped after epoch 3 of 6
    save_state(saved, run / "last.pt")
    assert cli.train_main(["--resume", str(run)]) == 0
    assert "resuming" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["training_state"]["finished"]


@pytest.mark.parametrize("model", [PROBE, TUNED], ids=["probe", "last_blocks"])
def test_transfer_models_train_under_torchrun(tmp_path, data, model):
    raw = transfer_config(tmp_path, data, model, train={"epochs": 2, "batch_size": 8, "lr": 0.01})
    config = write_config(tmp_path / "transfer.yaml", raw)
    done = subprocess.run(torchrun("--config", str(config)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (torchrun)" in done.stdout
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["training_state"]["finished"] and saved["config"]["model"]["name"] == model["name"]


def test_a_probe_exports_with_the_frozen_tagger_inside(tmp_path, capsys):
    """The exported file runs the tagger and the head from a 16 kHz waveform, as Classifier.predict does."""
    raw = transfer_config(tmp_path, tmp_path / "data", {**PROBE, "embedding": "pooled", "hidden": 8})
    config = from_dict(raw)
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    labels = ["rain", "sea", "wind"]
    save_checkpoint(
        checkpoint,
        model_state=build_model(config, 3).state_dict(),
        config=to_dict(config),
        labels=labels,
        epoch=1,
        metrics={},
    )
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript"]) == 0
    assert "-> probabilities [3] (rain, sea, wind), embedding [8]" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "best.torchscript.pt"))
    classifier = Classifier.load(checkpoint, device="cpu")
    for wave in tagger_waveforms():
        with torch.no_grad():
            probs = scripted(torch.from_numpy(on_the_pcm_grid(wave)))[0].numpy()
        expected = all_probabilities(classifier.predict(wave, sample_rate=16000, top_k=3), labels)
        assert abs(probs - expected).max() < 2e-4


def test_a_probe_learns_tags_from_a_labels_manifest(tmp_path):
    """A head on the frozen tagger's embeddings, trained with one sigmoid per tag, as other models are."""
    manifest = make_tagged(tmp_path / "data", tracks=30)
    split = {"test_fraction": 0.3, "valid_fraction": 0.15}
    raw = transfer_config(tmp_path, manifest, {**PROBE, "embedding": "pooled"}, train={"epochs": 20}, data=split)
    raw["audio"] = {"sample_rate": 16000, "clip_seconds": 2.0, "hop_seconds": 2.0}
    train(from_dict(raw))
    saved = load_checkpoint(tmp_path / "run" / "best.pt")
    assert saved["multi_label"] and len(saved["thresholds"]) == len(saved["labels"]) == 5
    track = evaluate(tmp_path / "run" / "best.pt")["track"]
    assert track["n"] == 10 and track["macro_pr_auc"] >= 0.8  # measured: 0.98 (chance: about 0.4)
