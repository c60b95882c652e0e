"""Convert musicnn's pretrained taggers to genrenet's weight files and record the original's outputs.

The PyPI wheel musicnn 0.1.0 (ISC licence, Music Technology Group, Universitat Pompeu Fabra 2019)
ships the MSD_musicnn and MTT_musicnn TensorFlow checkpoints. genrenet runs them in PyTorch
(genrenet/musicnn.py) and needs no TensorFlow, so this script runs once, by hand, in a throwaway
virtual environment outside the repository (Python 3.11), from the repository root:

    python3.11 -m venv /tmp/musicnn-conv
    /tmp/musicnn-conv/bin/pip install tensorflow-cpu==2.15.1 numpy==1.26.4 torch==2.11.0 \
        librosa==0.11.0 soundfile==0.14.0
    /tmp/musicnn-conv/bin/pip install --no-deps musicnn==0.1.0
    /tmp/musicnn-conv/bin/python tools/convert_musicnn.py

(musicnn's own pins, numpy<1.17 and tensorflow>=1.14, predate Python 3.11: hence --no-deps; its
code runs unmodified on tensorflow-cpu 2.15 through tf.compat.v1. numpy must stay below 2: with
numpy 1.x, musicnn's `10000 * float16 array` is computed in float32, as with its own pin; numpy 2
keeps float16 and overflows to inf above a mel power of 6.55.)

It writes:
- genrenet/pretrained/musicnn_msd.pt and musicnn_mtt.pt: {"state_dict", "tags", "source"}, float32,
  loadable with torch.load(weights_only=True) into genrenet.musicnn.MusiCNN;
- tests/fixtures/musicnn_reference.npz: generated waveforms (int16, as a PCM_16 wav holds them), the
  float16 mel patches musicnn's own batch_data fed its network (the log is recomputed from them
  bit for bit, checked here), and per patch the logits, tag probabilities and penultimate layer of
  the original TensorFlow graph.

Every checkpoint variable but the optimizer's is used exactly once, or the script stops.
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from musicnn import configuration  # noqa: E402
from musicnn import extractor as musicnn_extractor  # noqa: E402  (disables eager execution, as musicnn does)
from musicnn import models as musicnn_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(configuration.__file__).parent
WEIGHTS = REPO / "genrenet" / "pretrained"
FIXTURE = REPO / "tests" / "fixtures" / "musicnn_reference.npz"
MODELS = {
    "MSD_musicnn": ("musicnn_msd", configuration.MSD_LABELS),
    "MTT_musicnn": ("musicnn_mtt", configuration.MTT_LABELS),
}
# As musicnn's extractor converts its input_length=3 and input_overlap=1 (seconds) to frames: 187 and 61.
FRAMES = {"sr": configuration.SR, "n_fft": configuration.FFT_SIZE, "hop_length": configuration.FFT_HOP}
N_FRAMES = int(librosa.time_to_frames(3, **FRAMES)) + 1  # a patch
STEP = int(librosa.time_to_frames(1, **FRAMES))  # from one patch's start to the next

# musicnn's layers in the order build_musicnn creates them (TF names conv2d, conv2d_1, ...), as
# genrenet.musicnn.MusiCNN names them; each conv is followed by its batch norm.
CONVS = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2", "midend.0", "midend.1", "midend.2"]
NORMS = ["input_norm"] + [f"{name}.norm" for name in CONVS] + ["pool_norm", "dense_norm"]
DENSES = ["dense", "head"]
BN_KEYS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def tf_name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


class Checkpoint:
    """A TF checkpoint's variables, each handed out once."""

    def __init__(self, prefix: str):
        self.reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        names = self.reader.get_variable_to_shape_map()
        # Adam's slots and power accumulators are training state, not the model.
        self.left = {n for n in names if "Adam" not in n and not n.startswith("beta")}

    def take(self, name: str) -> torch.Tensor:
        self.left.remove(name)
        return torch.from_numpy(np.array(self.reader.get_tensor(name), dtype=np.float32))


def convert(checkpoint: Checkpoint) -> dict:
    state = {}
    for i, module in enumerate(CONVS):
        kernel = checkpoint.take(f"{tf_name('conv2d', i)}/kernel")  # [time, width, 1, out]
        # The mid-end convolves over the whole feature width with one input channel: a Conv1d over
        # time with the features as channels. The front end keeps its 2D [time, frequency] kernels.
        weight = kernel[:, :, 0, :].permute(2, 1, 0) if module.startswith("midend") else kernel.permute(3, 2, 0, 1)
        state[f"{module}.conv.weight"] = weight
        state[f"{module}.conv.bias"] = checkpoint.take(f"{tf_name('conv2d', i)}/bias")
    for i, module in enumerate(NORMS):
        scope = tf_name("batch_normalization", i)
        for tf_key, key in BN_KEYS.items():
            state[f"{module}.{key}"] = checkpoint.take(f"{scope}/{tf_key}")
        state[f"{module}.num_batches_tracked"] = torch.tensor(0)
    for i, module in enumerate(DENSES):
        state[f"{module}.weight"] = checkpoint.take(f"{tf_name('dense', i)}/kernel").T  # TF: [in, out]
        state[f"{module}.bias"] = checkpoint.take(f"{tf_name('dense', i)}/bias")
    if checkpoint.left:
        sys.exit(f"checkpoint variables left unconverted: {sorted(checkpoint.left)}")
    return {key: value.contiguous().clone() for key, value in state.items()}


def write_weights():
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for model, (stem, tags) in MODELS.items():
        state = convert(Checkpoint(str(CHECKPOINTS / model) + "/"))
        source = f"musicnn 0.1.0 {model} (ISC licence: LICENSE-musicnn)"
        torch.save({"state_dict": state, "tags": list(tags), "source": source}, WEIGHTS / f"{stem}.pt")
        print(f"{stem}.pt: {sum(v.numel() for v in state.values() if v.is_floating_point())} weights, {len(tags)} tags")


def envelope(t: np.ndarray, period: float, decay: float) -> np.ndarray:
    return np.exp(-(t % period) / decay)


def harmonic(freq: np.ndarray | float, t: np.ndarray, harmonics: int) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, t.shape)) * (t[1] - t[0])
    return sum(np.sin(h * phase) / h for h in range(1, harmonics + 1))


def song(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Chords with vibrato, a bass line, kick, snare and hi-hat at 120 bpm, and a quiet tail."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    chords = [(220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66), (164.81, 207.65, 246.94)]
    which = np.minimum((t // 1.0).astype(int), len(chords) - 1)
    vibrato = 1 + 0.005 * np.sin(2 * np.pi * 5 * t)
    pads = sum(harmonic(np.take([c[k] for c in chords], which) * vibrato, t, 6) for k in range(3))
    bass = harmonic(np.take([c[0] / 2 for c in chords], which), t, 10) * envelope(t, 0.25, 0.2)
    beat = t % 1.0
    kick = np.sin(2 * np.pi * (45 * beat + 12 * (1 - np.exp(-beat / 0.03)))) * np.exp(-beat / 0.15)
    snare = (rng.standard_normal(t.size) + np.sin(2 * np.pi * 180 * t)) * envelope(t - 0.5, 1.0, 0.08) * (t >= 0.5)
    hats = np.diff(rng.standard_normal(t.size + 1)) * envelope(t, 0.25, 0.02)
    mix = 0.08 * pads + 0.15 * bass + 0.5 * kick + 0.15 * snare + 0.05 * hats
    mix[t > seconds - 0.3] *= 0.01  # a quiet tail: tiny mel powers, where the float16 cast matters most
    return np.round(np.clip(mix / np.abs(mix).max() * 0.7, -1, 1) * 32767).astype(np.int16)


WAVES = {"song16k": (16000, 4.0, 1), "song22k": (22050, 3.0, 2)}  # name: (rate, seconds, seed)


def mel16(path: Path) -> np.ndarray:
    """musicnn's batch_data up to its float16 cast: [frames, 96] float16."""
    audio, rate = librosa.load(path, sr=configuration.SR)
    mel = librosa.feature.melspectrogram(
        y=audio, sr=rate, hop_length=configuration.FFT_HOP, n_fft=configuration.FFT_SIZE, n_mels=configuration.N_MELS
    )
    return mel.T.astype(np.float16)


def fed_patches(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """musicnn's own batch_data patches [n, 187, 96] and their float16 mel before the log, checked to match."""
    patches, _ = musicnn_extractor.batch_data(str(path), N_FRAMES, STEP)
    mel = mel16(path)
    starts = np.arange(0, mel.shape[0] - N_FRAMES + 1, STEP)
    mels = np.stack([mel[s : s + N_FRAMES] for s in starts])
    logs = np.log10(10000 * mels + 1)
    assert logs.dtype == np.float32 and np.array_equal(logs, patches), "float16 mel does not give musicnn's patches"
    return patches, mels


def original_outputs(model: str, patches: np.ndarray) -> dict:
    """musicnn's own graph and checkpoint, one patch at a time (as its extractor runs them): logits,
    probabilities and the penultimate layer for each patch."""
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, configuration.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        logits, *_, penultimate = musicnn_models.define_model(x, is_training, model, len(MODELS[model][1]))
        probabilities = tf.nn.sigmoid(logits)
    with tf.compat.v1.Session() as session:
        tf.compat.v1.train.Saver().restore(session, str(CHECKPOINTS / model) + "/")
        runs = [
            session.run([logits, probabilities, penultimate], {x: patch[None], is_training: False}) for patch in patches
        ]
    keys = ["logits", "probabilities", "penultimate"]
    return {key: np.concatenate([r[i] for r in runs]) for i, key in enumerate(keys)}


def check_against_extractor(path: Path, model: str, outputs: dict):
    """The graph above is musicnn's: its extractor gives the same taggram. Its penultimate features are
    patch 0's for every patch (the extractor concatenates a stale variable), hence our own per patch."""
    taggram, _, features = musicnn_extractor.extractor(str(path), model=model, input_length=3, input_overlap=1)
    gap = np.abs(taggram - outputs["probabilities"]).max()
    assert gap < 1e-6, f"{model}: taggram differs from musicnn's extractor by {gap}"
    stale = np.abs(features["penultimate"] - outputs["penultimate"][:1]).max(axis=1)
    moved = np.abs(outputs["penultimate"] - outputs["penultimate"][:1]).max(axis=1)
    print(f"  {model} {path.stem}: taggram as musicnn's extractor gives it (within {gap:.1e}); penultimate of each")
    print(f"    patch vs patch 0: extractor {np.round(stale, 3)}, per patch here {np.round(moved, 3)}")


def record_references():
    fixture = {"n_frames": np.int64(N_FRAMES), "step": np.int64(STEP)}
    for model, (_, tags) in MODELS.items():
        fixture[f"tags/{model}"] = np.array(tags)
    with tempfile.TemporaryDirectory() as folder:
        for name, (rate, seconds, seed) in WAVES.items():
            samples = song(rate, seconds, seed)
            path = Path(folder) / f"{name}.wav"
            soundfile.write(path, samples, rate, subtype="PCM_16")
            patches, mels = fed_patches(path)
            fixture.update({f"{name}/rate": np.int64(rate), f"{name}/samples": samples, f"{name}/mel16": mels})
            for model in MODELS:
                outputs = original_outputs(model, patches)
                check_against_extractor(path, model, outputs)
                fixture.update({f"{name}/{model}/{key}": value for key, value in outputs.items()})
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **fixture)
    print(f"{FIXTURE.relative_to(REPO)}: {FIXTURE.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    write_weights()
    record_references()
