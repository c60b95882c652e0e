"""`genrenet export`: ONNX (run in ONNX Runtime) and TorchScript (loaded in a fresh process) files that
map a waveform to the same probabilities and embedding as PyTorch; the built-in taggers and musicnn
checkpoints export with musicnn's front end and their task's track output; classic models are refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SR, class_signal, make_class_folder, tiny_config_dict
from genrenet import Classifier, cli
from genrenet.audio import to_pcm16
from genrenet.checkpoint import save_checkpoint
from genrenet.config import from_dict, to_dict
from genrenet.export import WaveformModel
from genrenet.registry import build_model
from genrenet.trained import load_model
from genrenet.training import train

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = make_class_folder(tmp / "data", per_class=4)
    # clips overlap (hop < clip) so the framing of the exported model is exercised too
    raw = tiny_config_dict(tmp, data, audio={"hop_seconds": 0.25}, train={"epochs": 1})
    return tmp, data, train(from_dict(raw)) / "best.pt"


def waveforms():
    """A waveform shorter than one clip, one of a whole number of clips, and one with a tail."""
    return [
        class_signal(label, seconds, seed=i).astype(np.float32)
        for i, (label, seconds) in enumerate([("tone", 0.3), ("noise", 1.0), ("clicks", 1.37)])
    ]


def reference(checkpoint):
    trained = load_model(checkpoint)
    wrapper = WaveformModel(trained.model, trained.config).eval()
    with torch.no_grad():
        return [tuple(t.numpy() for t in wrapper(torch.from_numpy(w))) for w in waveforms()], trained.labels


def test_onnx_runs_in_onnx_runtime_as_in_pytorch(trained, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    tmp, _, checkpoint = trained
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    path = checkpoint.with_name("best.onnx")
    assert capsys.readouterr().out.startswith(f"wrote {path}: waveform [samples] at {SR} Hz")
    expected, labels = reference(checkpoint)
    session = onnxruntime.InferenceSession(str(path))
    for wave, (probs, embedding) in zip(waveforms(), expected):
        got_probs, got_embedding = session.run(None, {"waveform": wave})
        assert np.abs(got_probs - probs).max() < TOLERANCE and np.abs(got_embedding - embedding).max() < TOLERANCE
        assert got_probs.sum() == pytest.approx(1.0, abs=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["labels"]) == labels


def test_torchscript_runs_in_a_fresh_process_as_in_pytorch(trained, capsys):
    tmp, _, checkpoint = trained
    path = tmp / "model.torchscript.pt"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--output", str(path)]) == 0
    np.save(tmp / "waves.npy", np.array(waveforms(), dtype=object), allow_pickle=True)
    script = (
        "import json, sys, numpy as np, torch\n"
        "files = {'labels.json': ''}\n"
        "model = torch.jit.load(sys.argv[1], _extra_files=files)\n"
        "out = [[t.tolist() for t in model(torch.from_numpy(w))] for w in np.load(sys.argv[2], allow_pickle=True)]\n"
        "print(json.dumps({'labels': json.loads(files['labels.json']), 'out': out}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp / "waves.npy")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    expected, labels = reference(checkpoint)
    assert result["labels"] == labels
    for (got_probs, got_embedding), (probs, embedding) in zip(result["out"], expected):
        assert np.abs(np.array(got_probs) - probs).max() < TOLERANCE
        assert np.abs(np.array(got_embedding) - embedding).max() < TOLERANCE


def test_exported_probabilities_follow_the_product_decision(trained):
    """A waveform at the model's rate: the same top label as genrenet's own prediction of that file."""
    from genrenet import Classifier

    _, data, checkpoint = trained
    classifier = Classifier.load(checkpoint, device="cpu")
    expected, _ = reference(checkpoint)
    for wave, (probs, _) in zip(waveforms(), expected):
        assert classifier.labels[int(probs.argmax())] == classifier.predict(wave, sample_rate=SR)["top"][0]["label"]


def test_a_classic_model_is_refused_in_one_line(trained, tmp_path, capsys):
    _, data, _ = trained
    raw = tiny_config_dict(tmp_path, data, model={"name": "random_forest"})
    raw["model"] = {"name": "random_forest", "rf_trees": 5}
    checkpoint = train(from_dict(raw)) / "best.pt"
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: model 'random_forest' is a classic model (scikit-learn on handcrafted features) and cannot "
        "be exported to onnx; use its checkpoint with genrenet predict or Classifier"
    ]


# --- taggers and musicnn checkpoints: musicnn's own front end inside --------------------------------


def on_the_pcm_grid(samples: np.ndarray) -> np.ndarray:
    """The samples the audio stage decodes an array to (16-bit PCM, as pydub holds it): what the
    exported model must be given to see what Classifier sees."""
    return (to_pcm16(samples) / 32768).astype(np.float32)


def tagger_waveforms():
    """At 16 kHz: shorter than a 2.992 s clip, two clips, two clips and a tail."""
    return [
        class_signal(label, seconds, seed=i, sr=16000).astype(np.float32)
        for i, (label, seconds) in enumerate([("tone", 1.0), ("clicks", 5.984), ("noise", 7.3)])
    ]


def all_probabilities(result: dict, labels: list[str]) -> np.ndarray:
    found = {t["label"]: t["probability"] for t in result["top"]}
    return np.array([found[label] for label in labels])


def test_builtin_tagger_exports_to_onnx_and_torchscript_as_classifier_predicts(tmp_path, capsys):
    """musicnn's front end casts the mel power to float16 and back; both formats keep that, and give
    Classifier.predict's tag probabilities (rounded there to 4 decimals: measured 5.0e-5) and its
    embedding (measured 1.2e-5)."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    paths = {"onnx": tmp_path / "tagger.onnx", "torchscript": tmp_path / "tagger.torchscript.pt"}
    for format, path in paths.items():
        assert cli.main(["export", "--model", "musicnn-msd", "--format", format, "--output", str(path)]) == 0
        summary = capsys.readouterr().out
        assert summary.startswith(
            f"wrote {path}: waveform [samples] at 16000 Hz -> probabilities (sigmoid per tag) [50]"
        )
    classifier = Classifier.load("musicnn-msd", device="cpu")
    session = onnxruntime.InferenceSession(str(paths["onnx"]))
    files = {"labels.json": ""}
    scripted = torch.jit.load(str(paths["torchscript"]), _extra_files=files)
    for wave in tagger_waveforms():
        expected = all_probabilities(classifier.predict(wave, sample_rate=16000, top_k=50), classifier.labels)
        embedding = classifier.embed(wave, sample_rate=16000)
        with torch.no_grad():
            outputs = [
                session.run(None, {"waveform": on_the_pcm_grid(wave)}),
                scripted(torch.from_numpy(on_the_pcm_grid(wave))),
            ]
        for probs, vector in outputs:
            assert np.abs(np.asarray(probs) - expected).max() < 1e-4
            assert np.abs(np.asarray(vector) - embedding).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(paths["onnx"])).metadata_props}
    assert json.loads(props["labels"]) == json.loads(files["labels.json"]) == classifier.labels


def musicnn_checkpoint(tmp_path, multi_label: bool):
    """A musicnn checkpoint with a new 3-label head, as training one writes it (its weights untrained)."""
    torch.manual_seed(0)
    raw = tiny_config_dict(
        tmp_path, tmp_path / "data", audio={"sample_rate": 16000, "clip_seconds": 1.0, "hop_seconds": 0.5}
    )
    raw["model"] = {"name": "musicnn", "pretrained": "musicnn-msd"}
    config = from_dict(raw)
    path = tmp_path / "best.pt"
    save_checkpoint(
        path,
        model_state=build_model(config, 3).state_dict(),
        config=to_dict(config),
        labels=["rock", "jazz", "folk"],
        epoch=1,
        metrics={},
        multi_label=multi_label,
    )
    return path


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_musicnn_checkpoint_exports_with_its_task(tmp_path, capsys, multi_label):
    """Single-label: softmax of the mean clip log-probabilities; multi-label: mean sigmoid probabilities.
    Measured against Classifier.predict: 1.1e-4, of which up to 5e-5 is its rounding to 4 decimals and
    the rest the peak gain, which genrenet's audio stage applies to 16-bit samples and the exported
    model to floats."""
    checkpoint = musicnn_checkpoint(tmp_path, multi_label)
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript"]) == 0
    kind = " (sigmoid per tag)" if multi_label else ""
    assert f"-> probabilities{kind} [3] (rock, jazz, folk), embedding [200]" in capsys.readouterr().out
    scripted = torch.jit.load(str(checkpoint.with_name("best.torchscript.pt")))
    classifier = Classifier.load(checkpoint, device="cpu")
    for wave in tagger_waveforms():
        with torch.no_grad():
            probs = scripted(torch.from_numpy(on_the_pcm_grid(wave)))[0].numpy()
        expected = all_probabilities(classifier.predict(wave, sample_rate=16000), classifier.labels)
        assert np.abs(probs - expected).max() < 2e-4
        assert (probs.sum() == pytest.approx(1.0, abs=1e-5)) != multi_label


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "musicnn-msd", "--checkpoint", "best.pt"], "not allowed with argument"),
        ([], "one of the arguments --checkpoint --model is required"),
    ],
)
def test_export_takes_a_checkpoint_or_a_tagger(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", "--format", "onnx", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
