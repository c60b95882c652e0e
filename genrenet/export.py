"""`genrenet export`: a CNN checkpoint as one ONNX or TorchScript file, mel front end inside.

The exported model takes a mono waveform [samples] (float32 in [-1, 1]) at the model's sample
rate and returns (probabilities [classes], embedding [dim]), the way the product decides a track:
peak normalization (when the config asks for it), clips of clip_seconds every hop_seconds (a
short waveform is padded to one clip, a tail shorter than a clip is dropped), log-mel features,
the model, the mean of the clips' log-probabilities renormalized, and the clips' mean embedding.
Decoding, downmixing, resampling and silence stripping are the caller's job. The label names are
stored in the file (ONNX metadata "labels"; TorchScript extra file "labels.json").
"""

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from genrenet.errors import UserError, error_line
from genrenet.features import MelFeatures
from genrenet.registry import features_of
from genrenet.trained import load_model

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class WaveformModel(torch.nn.Module):
    """Waveform [samples] -> (probabilities [classes], embedding [dim]), as described above."""

    def __init__(self, model: torch.nn.Module, config):
        super().__init__()
        audio = config.audio
        self.mel, self.model = MelFeatures(config.features, audio), model.eval()
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
        output = self.model(self.mel(clips).unsqueeze(1))
        log_probs = (torch.log_softmax(output["logits"], dim=1) * keep).sum(dim=0) / keep.sum()
        return torch.softmax(log_probs, dim=0), (output["embedding"] * keep).sum(dim=0) / keep.sum()


def export_model(checkpoint: str | Path, format: str, output: str | Path | None = None) -> tuple[Path, str]:
    """Write the checkpoint's model as `format`; returns the path and a line saying what it takes and gives."""
    trained = load_model(checkpoint, "cpu")
    config = trained.config
    if features_of(config).name != "mel":
        raise UserError(
            f"model '{config.model.name}' is a classic model (scikit-learn on handcrafted features) and "
            f"cannot be exported to {format}; use its checkpoint with genrenet predict or Classifier"
        )
    output = Path(output) if output else Path(checkpoint).with_name(Path(checkpoint).stem + FORMATS[format])
    wrapper = WaveformModel(trained.model, config).eval()
    example = torch.zeros(2 * wrapper.clip)
    with torch.no_grad():
        probs, embedding = wrapper(example)
    temp = output.with_name(f".{output.name}.tmp")
    try:
        (_write_onnx if format == "onnx" else _write_torchscript)(wrapper, example, temp, trained.labels)
        os.replace(temp, output)  # never half a model
    finally:
        temp.unlink(missing_ok=True)
    return output, (
        f"{output}: waveform [samples] at {config.audio.sample_rate} Hz -> probabilities "
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
