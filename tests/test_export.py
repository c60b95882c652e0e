"""`genrenet export`: ONNX (run in ONNX Runtime) and TorchScript (loaded in a fresh process) files that
map a waveform to the same probabilities and embedding as PyTorch; classic models are refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SR, class_signal, make_class_folder, tiny_config_dict
from genrenet import cli
from genrenet.config import from_dict
from genrenet.export import WaveformModel
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
