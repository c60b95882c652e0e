"""Classic baselines: an SVM, a random forest or logistic regression on handcrafted clip features
(genrenet.handcrafted), or on a frozen tagger's embeddings (musicnn_svm, musicnn_logreg: genrenet.probe).

Models are stored with skops.io, scikit-learn's secure format, never pickle: loading first lists
the types in the file and refuses any this module does not create, so a crafted file cannot run
code. The bytes fit in a genrenet checkpoint as a uint8 tensor (ClassicModel's state_dict), which
torch.load(weights_only=True) reads back as plain data.
"""

import json
import zipfile
import zlib
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from genrenet.config import STRICT
from genrenet.errors import UserError, error_line

KINDS = ("svm", "random_forest", "logreg")


@dataclass(config=STRICT)
class ClassicSettings:
    """The model section of the classic models (svm, random_forest, logreg); each uses its own keys."""

    name: Literal["svm", "random_forest", "logreg"] = "svm"
    standardize: bool = True  # scale each feature to zero mean, unit variance
    svm_c: float = Field(10.0, gt=0.0)
    svm_kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf"
    svm_gamma: Literal["scale", "auto"] | float = "scale"
    rf_trees: int = Field(300, gt=0, le=100_000)
    rf_max_depth: int | None = Field(None, gt=0)
    logreg_c: float = Field(1.0, gt=0.0)  # inverse strength of logistic regression's L2 penalty

    @property
    def estimator(self) -> str:
        """The scikit-learn estimator of build_classifier: svm, random_forest or logreg."""
        return self.name.removeprefix("musicnn_")


MIN_PROBABILITY = 1e-7  # floor before the log: a class the model rules out must not become -inf
CALIBRATION_FOLDS = 5  # at most; fewer when the smallest class has fewer training clips (see fit_classifier)

# Types inside the models built here that skops does not trust by default: a forest's trees,
# the SVM's probability calibration and, when a class has a single training clip, the frozen SVC
# that calibration wraps. Everything else in them (the Pipeline, scaler, SVC, forest, numpy
# arrays and dtypes) is on skops' own trusted list.
ALLOWED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.frozen._frozen.FrozenEstimator",
    }
)
STEP_TYPES = {
    "scale": StandardScaler,
    "svm": CalibratedClassifierCV,
    "random_forest": RandomForestClassifier,
    "logreg": LogisticRegression,
}
PLAIN = (str, int, float, bool, type(None), np.generic)


def build_classifier(
    kind: str,
    *,
    svm_c: float = 10.0,
    svm_kernel: str = "rbf",
    svm_gamma: str | float = "scale",
    rf_trees: int = 300,
    rf_max_depth: int | None = None,
    logreg_c: float = 1.0,
    standardize: bool = True,
    seed: int = 0,
    calibration_folds: int = CALIBRATION_FOLDS,
) -> Pipeline:
    """An unfitted Pipeline: optional standardization, then an SVM, random forest or logistic regression.

    Its .fit needs calibration_folds training clips of every class for the SVM; fit_classifier
    picks the folds from the data and also fits a class with a single clip."""
    if kind == "svm":
        # Platt-scaled probabilities from k-fold cross-validation, as SVC(probability=True) does;
        # scikit-learn 1.9 deprecates that flag in favour of exactly this wrapper.
        step = CalibratedClassifierCV(
            SVC(C=svm_c, kernel=svm_kernel, gamma=svm_gamma), method="sigmoid", cv=calibration_folds, ensemble=False
        )
    elif kind == "random_forest":
        step = RandomForestClassifier(n_estimators=rf_trees, max_depth=rf_max_depth, n_jobs=-1, random_state=seed)
    elif kind == "logreg":
        step = LogisticRegression(C=logreg_c, max_iter=2000, random_state=seed)
    else:
        raise UserError(f"unknown classic model '{kind}' (expected one of: {', '.join(KINDS)})")
    return Pipeline(([("scale", StandardScaler())] if standardize else []) + [(kind, step)])


def fit_classifier(pipeline: Pipeline, x: np.ndarray, y: np.ndarray) -> str | None:
    """Fit a pipeline of build_classifier in place; returns a line saying how the SVM's probability
    calibration was adapted to few clips per class, or None when it was not.

    Cross-validated calibration needs as many clips of every class as there are folds: the folds
    drop from CALIBRATION_FOLDS to the smallest class's clip count, and a class with one clip
    (few-shot data) leaves no fold to hold out, so the SVC fitted on every clip is calibrated on
    those same clips (Platt's smoothed targets keep that from claiming certainty).
    """
    kind, calibrated = pipeline.steps[-1]
    counts = np.unique(y, return_counts=True)[1]
    smallest = int(counts.min()) if len(counts) else 0
    if kind != "svm" or len(counts) < 2 or smallest >= calibrated.cv:
        pipeline.fit(x, y)
        return None
    clips = f"{smallest} training clip{'s' if smallest > 1 else ''}"
    if smallest >= 2:
        calibrated.set_params(cv=smallest)
        pipeline.fit(x, y)
        return f"svm: probability calibration with {smallest}-fold cross-validation (the smallest class has {clips})"
    scaled = pipeline[:-1].fit_transform(x, y) if len(pipeline) > 1 else x
    svc = clone(calibrated.estimator).fit(scaled, y)
    # A frozen estimator is not refitted, so the one split below (calibrate on every clip) is all
    # cross_val_predict needs; cv goes back to a plain value so the stored model holds no index lists.
    everything = np.arange(len(y))
    calibrated.set_params(estimator=FrozenEstimator(svc), cv=[(everything, everything)])
    calibrated.fit(scaled, y)
    calibrated.set_params(cv=None)
    return (
        f"svm: probability calibration on the training clips themselves, without cross-validation "
        f"(the smallest class has {clips}, none to hold out)"
    )


def to_bytes(model: Pipeline) -> bytes:
    import skops.io  # imported here: it takes most of a second, and only classic models need it

    return skops.io.dumps(model)


def from_bytes(data: bytes) -> Pipeline:
    """A model written by to_bytes; anything holding other types is refused before it is built."""
    import skops.io  # imported here: it takes most of a second, and only classic models need it

    if not len(data):
        raise UserError(f"not a readable classic model ({DAMAGED}: it is empty)")
    try:
        found = skops.io.get_untrusted_types(data=bytes(data))
    except Exception as error:
        raise _unreadable(error) from None
    unexpected = [name for name in found if name not in ALLOWED_TYPES]
    if unexpected:
        raise UserError(
            f"refusing to load classic model: it contains type '{unexpected[0]}', which genrenet does not create"
        )
    try:
        model = skops.io.loads(bytes(data), trusted=found)
    except Exception as error:
        raise _unreadable(error) from None
    _check_structure(model)
    return model


DAMAGED = "its stored scikit-learn model is damaged"


def _unreadable(error: Exception) -> UserError:
    """The one-line error for bytes skops cannot read: damaged bytes say so, in words that do not
    send the user after pickles or zip tools; anything else keeps the library's own line."""
    if _from_numpy_reader(error):  # an array member holds garbage (numpy then speaks of pickled data)
        return UserError(f"not a readable classic model ({DAMAGED}: an array in it is not readable)")
    if isinstance(
        error, (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError)
    ):
        return UserError(f"not a readable classic model ({DAMAGED}: {error_line(error)})")
    return UserError(f"not a readable classic model ({error_line(error)})")


def _from_numpy_reader(error: Exception) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith("numpy.lib"):
            return True
        traceback = traceback.tb_next
    return False


def clip_log_probs(model: Pipeline, features: list[torch.Tensor], num_classes: int) -> list[torch.Tensor]:
    """Per track, log-probabilities of every clip: a list of [clips, num_classes] float tensors.

    Like genrenet.scores.clip_log_probs. The model's classes_ are label indices; a label with no
    training example has no column in predict_proba, so it gets MIN_PROBABILITY here.
    """
    classes = np.asarray(model.classes_).astype(int)
    if classes.min() < 0 or classes.max() >= num_classes:
        raise UserError(
            f"classic model predicts label indices up to {classes.max()}, but there are only {num_classes} labels"
        )
    sizes = [len(f) for f in features]
    probabilities = np.full((sum(sizes), num_classes), MIN_PROBABILITY)
    if sum(sizes):
        flat = torch.cat(features).double().numpy()
        probabilities[:, classes] = np.maximum(model.predict_proba(flat), MIN_PROBABILITY)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return list(torch.split(torch.from_numpy(np.log(probabilities)).float(), sizes))


class ClassicModel(torch.nn.Module):
    """A scikit-learn pipeline behind the CNNs' interface, so validation, evaluation and prediction
    share one path: a batch of clip features [batch, 1, features] in, {"logits": log-probabilities}
    out. Its state_dict is the fitted pipeline in skops format, as one uint8 tensor."""

    def __init__(self, settings: ClassicSettings, num_classes: int):
        super().__init__()
        self.settings, self.num_classes = settings, num_classes
        self.pipeline: Pipeline | None = None
        self.register_buffer("sklearn", torch.zeros(0, dtype=torch.uint8))

    @classmethod
    def from_settings(cls, settings: ClassicSettings, num_classes: int, _width: int) -> "ClassicModel":
        return cls(settings, num_classes)

    def fit(self, features: torch.Tensor, targets: torch.Tensor, seed: int) -> None:
        """Fit on every training clip at once: features [clips, 1, features], targets [clips]."""
        s = self.settings
        pipeline = build_classifier(
            s.estimator,
            svm_c=s.svm_c,
            svm_kernel=s.svm_kernel,
            svm_gamma=s.svm_gamma,
            rf_trees=s.rf_trees,
            rf_max_depth=s.rf_max_depth,
            logreg_c=s.logreg_c,
            standardize=s.standardize,
            seed=seed,
        )
        try:
            note = fit_classifier(pipeline, features.reshape(len(features), -1).double().numpy(), targets.numpy())
        except ValueError as error:  # e.g. a single class in the training clips
            raise UserError(f"cannot fit {s.name}: {error_line(error)}") from None
        if note:
            print(note)
        self.pipeline = pipeline
        self.sklearn = torch.frombuffer(bytearray(to_bytes(pipeline)), dtype=torch.uint8)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.pipeline = from_bytes(state_dict["sklearn"].numpy().tobytes())
        self.sklearn = state_dict["sklearn"].clone()

    def forward(self, x: torch.Tensor) -> dict:
        rows = x.reshape(len(x), -1).cpu()
        return {"logits": clip_log_probs(self.pipeline, [rows], self.num_classes)[0].to(x.device)}


def _check_structure(model) -> None:
    """The loaded object must be a Pipeline shaped as build_classifier makes it, with plain settings.

    skops' default trusted list admits many scikit-learn types; this keeps out every one that
    build_classifier would not have put there.
    """
    if type(model) is not Pipeline:
        raise UserError(f"refusing to load classic model: it holds a {type(model).__name__}, not a Pipeline")
    names = [name for name, _ in model.steps]
    if names not in [[*scale, kind] for kind in KINDS for scale in ([], ["scale"])]:
        raise UserError(f"refusing to load classic model: unexpected steps {names}")
    for name, step in model.steps:
        _check_estimator(name, step, STEP_TYPES[name])
        if name == "svm":
            _check_svc("svm.estimator", step.estimator)
            for i, pair in enumerate(getattr(step, "calibrated_classifiers_", [])):  # what predict_proba runs
                where = f"svm.calibrated_classifiers_[{i}]"
                if type(pair) is not _CalibratedClassifier:
                    raise UserError(f"refusing to load classic model: '{where}' holds a {type(pair).__name__}")
                _check_svc(f"{where}.estimator", pair.estimator)
                for calibrator in pair.calibrators:
                    _check_estimator(f"{where}.calibrators", calibrator, _SigmoidCalibration)


def _check_svc(where: str, estimator) -> None:
    """An SVC, or (a class with a single training clip) an SVC in a FrozenEstimator."""
    if type(estimator) is FrozenEstimator:
        _check_estimator(where, estimator, FrozenEstimator)
        where, estimator = f"{where}.estimator", estimator.estimator
    _check_estimator(where, estimator, SVC)


def _check_estimator(where: str, estimator, cls) -> None:
    if type(estimator) is not cls:
        raise UserError(
            f"refusing to load classic model: '{where}' holds a {type(estimator).__name__}, expected {cls.__name__}"
        )
    for key, value in estimator.get_params(deep=False).items():
        if key != "estimator" and not isinstance(value, PLAIN):  # a callable kernel, say
            raise UserError(f"refusing to load classic model: setting '{where}.{key}' holds a {type(value).__name__}")
