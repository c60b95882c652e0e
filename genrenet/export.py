"""`genrenet export`: a checkpoint (or a built-in tagger) as one ONNX or TorchScript file, its
feature front end inside.

The exported model takes a mono waveform [samples] (float32 in [-1, 1]) at the model's sample
rate and returns (probabilities [classes], embedding [dim]), the way the product decides a track:
peak normalization (when the config asks for it), clips of clip_seconds every hop_seconds (a
short waveform is padded to one clip, a tail shorter than a clip is dropped), the model's
features (its registry feature kind's extractor, a torch module), the model, then the track:
for one label per track, the mean of the clips' log-probabilities renormalized (softmax); for a
multi-label model (tags), the mean of the clips' sigmoid probabilities. The embedding is the
clips' mean. Decoding, downmixing, resampling and silence stripping are the caller's job. The
label (tag) names are stored in the file (ONNX metadata "labels"; TorchScript extra file "labels.json").
"""

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from genrenet.errors import UserError, error_line
from genrenet.registry import features_of
from genrenet.trained import load_model

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class WaveformModel(torch.nn.Module):
    """Waveform [samples] -> (probabilities [classes], embedding [dim]), as described above."""

    def __init__(
        self, model: torch.nn.Module, config, multi_label: bool = False, features: torch.nn.Module | None = None
    ):
        super().__init__()
        audio = config.audio
        self.features = features if features is not None else front_end(config)
        self.model, self.multi_label = model.eval(), multi_label
        self.clip, self.hop = (
            round(audio.clip_seconds * audio.sample_rate),
            round(audio.hop_seconds * audio.sample_rate),
        )
        self.peak = 10 ** (audio.peak_dbfs / 20) if audio.normalize == "peak" else None

    def forward(self, waveform: torch.Tensor):
        if self.peak is not None:
            waveform = waveform * (self.peak / waveform.abs().max().clamp_min(1e-8))
        # Frames of the waveform padded by one clip, then a mask over them instead of a
        # length-dependent branch, so exporters keep the number of samples free.
        clips = torch.cat([waveform, waveform.new_zeros(self.clip)]).unfold(0, self.clip, self.hop)
        ends = torch.arange(clips.shape[0]) * self.hop + self.clip
        keep = ((ends <= waveform.shape[0]) | (ends == self.clip)).to(waveform.dtype).unsqueeze(1)
        # float: the features as the model gets them in genrenet (some kinds are kept as float16)
        output = self.model(self.features(clips).float().unsqueeze(1))
        logits, embedding = output["logits"].float(), _clip_mean(output["embedding"], keep)
        if self.multi_label:
            return _clip_mean(torch.sigmoid(logits), keep), embedding
        return torch.softmax(_clip_mean(torch.log_softmax(logits, dim=1), keep), dim=0), embedding


def _clip_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The mean over the clips kept (keep: [clips, 1] of 1 and 0)."""
    return (values * keep).sum(dim=0) / keep.sum()


def front_end(config, format: str = "onnx") -> torch.nn.Module:
    """The config's feature extractor, which must be a torch module to go inside an exported model
    (the classic models' handcrafted features are computed with librosa and numpy)."""
    extractor = features_of(config).extractor(config)
    if not isinstance(extractor, torch.nn.Module):
        raise UserError(
            f"model '{config.model.name}' is a classic model (scikit-learn on handcrafted features) and "
            f"cannot be exported to {format}; use its checkpoint with genrenet predict or Classifier"
        )
    return extractor


def export_model(checkpoint: str | Path, format: str, output: str | Path | None = None) -> tuple[Path, str]:
    """Write the checkpoint's model (or a built-in tagger's, by name) as `format`; returns the path
    and a line saying what it takes and gives."""
    trained = load_model(checkpoint, "cpu")
    config = trained.config
    output = Path(output) if output else Path(checkpoint).with_name(Path(checkpoint).stem + FORMATS[format])
    wrapper = WaveformModel(trained.model, config, trained.multi_label, front_end(config, format)).eval()
    example = torch.zeros(2 * wrapper.clip)
    with torch.no_grad():
        probs, embedding = wrapper(example)
    temp = output.with_name(f".{output.name}.tmp")
    try:
        (_write_onnx if format == "onnx" else _write_torchscript)(wrapper, example, temp, trained.labels)
        os.replace(temp, output)  # never half a model
    finally:
        temp.unlink(missing_ok=True)
    kind = " (sigmoid per tag)" if trained.multi_label else ""
    return output, (
        f"{output}: waveform [samples] at {config.audio.sample_rate} Hz -> probabilities{kind} "
        f"[{len(probs)}] ({', '.join(trained.labels)}), embedding [{len(embedding)}]"
    )


def _write_torchscript(wrapper, example, path: Path, labels: list[str]) -> None:
    with torch.no_grad():  # tracing records the sample count as a size, so any length runs
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={"labels.json": json.dumps(labels)})


def _write_onnx(wrapper, example, path: Path, labels: list[str]) -> None:
    try:
        import onnx  # the export extra: pip install 'genrenet[export]'
    except ImportError:
        raise UserError("ONNX export needs the onnx packages: pip install 'genrenet[export]'") from None
    samples = torch.export.Dim("samples", min=1, max=2**31 - 1)
    logging.getLogger("torch.onnx").setLevel(
        logging.ERROR
    )  # "torchvision is not installed" lines concern no genrenet model
    try:
        # torch 2.11's exporter goes through torch.export (dynamo); the older one cannot handle the STFT.
        with warnings.catch_warnings():  # torch's own deprecation notices, nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["waveform"],
                output_names=["probabilities", "embedding"],
                dynamic_shapes=({0: samples},),
                dynamo=True,
                verbose=False,
            )
    except ImportError as error:
        raise UserError(
            f"ONNX export needs the export extra: pip install 'genrenet[export]' ({error_line(error)})"
        ) from None
    model = program.model_proto
    onnx.helper.set_model_props(model, {"labels": json.dumps(labels)})
    onnx.save(model, str(path))
