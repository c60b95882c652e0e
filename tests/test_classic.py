"""Classic baselines: SVM and random forest learn handcrafted features, persist safely, score tracks."""

import io
import os
import re
import zipfile

import numpy as np
import pytest
import skops.io
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from conftest import CLASSES, SR, class_signal
from genrenet.classic import build_classifier, clip_log_probs, fit_classifier, from_bytes, to_bytes
from genrenet.errors import UserError
from genrenet.handcrafted import HandcraftedFeatures


@pytest.fixture(scope="module")
def dataset():
    """Handcrafted features of 1 s clips of conftest's three classes: 20 per class to train, 10 to test."""
    features = HandcraftedFeatures(SR, n_fft=512, hop_length=128)

    def split(seeds):
        x = features(
            torch.from_numpy(
                np.stack(
                    [class_signal(label, 1.0, seed=1000 * c + s) for c, label in enumerate(CLASSES) for s in seeds]
                ).astype(np.float32)
            )
        )
        return x, np.repeat(np.arange(len(CLASSES)), len(seeds))

    return split(range(20)), split(range(20, 30))


@pytest.fixture(scope="module")
def fitted(dataset):
    (x, y), _ = dataset
    return {kind: build_classifier(kind, rf_trees=50).fit(x.numpy(), y) for kind in ("svm", "random_forest")}


def test_build_classifier_steps():
    assert [name for name, _ in build_classifier("svm").steps] == ["scale", "svm"]
    assert [name for name, _ in build_classifier("random_forest", standardize=False).steps] == ["random_forest"]
    forest = build_classifier("random_forest", rf_trees=7, rf_max_depth=3, seed=5)[-1]
    assert (forest.n_estimators, forest.max_depth, forest.random_state) == (7, 3, 5)
    svm = build_classifier("svm", svm_c=2.0, svm_kernel="linear", svm_gamma=0.1)[-1].estimator
    assert (svm.C, svm.kernel, svm.gamma) == (2.0, "linear", 0.1)
    with pytest.raises(UserError, match="unknown classic model 'knn'"):
        build_classifier("knn")


@pytest.mark.parametrize("kind", ["svm", "random_forest"])
def test_learns_a_separable_problem(dataset, fitted, kind):
    _, (x, y) = dataset
    assert (fitted[kind].predict(x.numpy()) == y).mean() >= 0.9


@pytest.mark.parametrize("kind", ["svm", "random_forest"])
def test_round_trip_through_a_torch_checkpoint(dataset, fitted, kind):
    _, (x, _) = dataset
    buffer = io.BytesIO()
    torch.save({"classic": torch.frombuffer(bytearray(to_bytes(fitted[kind])), dtype=torch.uint8)}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)["classic"]
    model = from_bytes(stored.numpy().tobytes())
    assert np.array_equal(model.predict_proba(x.numpy()), fitted[kind].predict_proba(x.numpy()))


class Tripwire:
    """Records that it was rebuilt: loading must never get that far."""

    marker = None

    def __setstate__(self, state):
        open(state["marker"], "w").close()


def test_refuses_unknown_types_without_running_them(tmp_path):
    trap = Tripwire()
    trap.marker = str(tmp_path / "ran")
    data = skops.io.dumps({"model": trap})
    with pytest.raises(UserError, match="contains type '.*Tripwire'"):
        from_bytes(data)
    assert not (tmp_path / "ran").exists()

    shell = Pipeline([("scale", FunctionTransformer(func=os.system)), ("svm", LogisticRegression())])  # unfitted
    with pytest.raises(UserError, match=r"contains type '.*system'"):
        from_bytes(skops.io.dumps(shell))


def test_refuses_models_this_module_does_not_build():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), [0, 1] * 10
    for model, reason in [
        (LogisticRegression().fit(x, y), "not a Pipeline"),
        (
            Pipeline([("scale", StandardScaler()), ("svm", LogisticRegression())]).fit(x, y),
            "holds a LogisticRegression",
        ),
    ]:
        with pytest.raises(UserError, match=reason):
            from_bytes(skops.io.dumps(model))


def test_garbage_is_a_user_error(fitted):
    for data in (b"", b"not a model at all" * 10, to_bytes(fitted["svm"])[:500]):
        with pytest.raises(UserError, match="not a readable classic model"):
            from_bytes(data)


def test_clip_log_probs_per_track(dataset, fitted):
    _, (x, y) = dataset
    tracks = [x[:3], x[10:11], x[0:0], x[25:]]
    scores = clip_log_probs(fitted["svm"], tracks, num_classes=3)
    assert [s.shape for s in scores] == [(3, 3), (1, 3), (0, 3), (5, 3)]
    assert all(s.dtype == torch.float32 for s in scores)
    flat = torch.cat(scores)
    assert torch.allclose(flat.exp().sum(dim=1), torch.ones(len(flat)), atol=1e-5)
    assert (flat.argmax(dim=1).numpy() == np.concatenate([y[:3], y[10:11], y[25:]])).all()
    assert clip_log_probs(fitted["svm"], [], num_classes=3) == []


def test_clip_log_probs_keeps_columns_of_unseen_classes(dataset):
    (x, y), _ = dataset
    keep = y != 1  # label 1 has no training example
    model = build_classifier("random_forest", rf_trees=20).fit(x.numpy()[keep], y[keep])
    scores = clip_log_probs(model, [x[:2], x[40:42]], num_classes=4)[1]
    assert scores.shape == (2, 4) and torch.isfinite(scores).all()
    assert (scores.argmax(dim=1) == 2).all()  # class 2's column is still column 2
    assert (scores[:, [1, 3]] < np.log(1e-6)).all()
    with pytest.raises(UserError, match="only 2 labels"):
        clip_log_probs(model, [x[:2]], num_classes=2)


@pytest.mark.parametrize(
    "per_class, note",
    [
        (1, "on the training clips themselves.*has 1 training clip,"),
        (2, "with 2-fold cross-validation .*has 2 training clips"),
        (3, "with 3-fold cross-validation .*has 3 training clips"),
        (5, None),
    ],
)
def test_svm_calibration_adapts_to_few_clips_per_class(dataset, per_class, note):
    """Few-shot data: 5-fold calibration used to refuse any class with fewer than 5 training clips."""
    (x, y), (test_x, test_y) = dataset
    keep = np.concatenate([np.flatnonzero(y == label)[:per_class] for label in np.unique(y)])
    model = build_classifier("svm")
    said = fit_classifier(model, x.numpy()[keep], y[keep])
    assert said is None if note is None else re.search(note, said) and "\n" not in said
    loaded = from_bytes(to_bytes(model))
    probabilities = loaded.predict_proba(test_x.numpy())
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities.argmax(axis=1) == test_y).mean() >= 0.9
    assert np.array_equal(probabilities, model.predict_proba(test_x.numpy()))


def test_refuses_a_foreign_estimator_inside_the_calibration(fitted):
    """predict_proba runs the calibration's own fitted copies, so they are checked too, not only the template."""
    model = from_bytes(to_bytes(fitted["svm"]))
    model[-1].calibrated_classifiers_[0].estimator = LogisticRegression()
    with pytest.raises(UserError, match=r"calibrated_classifiers_\[0\]\.estimator' holds a LogisticRegression"):
        from_bytes(skops.io.dumps(model))


def rezip(data: bytes, change) -> bytes:
    """The skops archive with every member's bytes passed through change(name, bytes)."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, change(name, source.read(name)))
    return out.getvalue()


def test_damaged_bytes_say_the_model_is_damaged(fitted):
    """Not a zip error or numpy's 'pickled (object) data' advice: one line saying the model is damaged."""
    good = to_bytes(fitted["svm"])
    noise = np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes()
    damaged = {
        "random": noise,
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage arrays": rezip(good, lambda name, d: noise[: len(d)] if name.endswith(".npy") else d),
        "garbage schema": rezip(good, lambda name, d: noise[: len(d)] if name == "schema.json" else d),
        "cut schema": rezip(good, lambda name, d: d[: len(d) // 2] if name == "schema.json" else d),
    }
    for what, data in damaged.items():
        with pytest.raises(UserError) as caught:
            from_bytes(data)
        message = str(caught.value)
        assert message.startswith("not a readable classic model (its stored scikit-learn model is damaged: "), what
        assert "\n" not in message and "pickle" not in message, what
