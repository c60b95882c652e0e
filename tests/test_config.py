"""Config: defaults, YAML loading, --set overrides, and one-line errors for every kind of mistake."""

import dataclasses

import pytest

from conftest import write_config
from genrenet.config import AudioConfig, Config, apply_overrides, from_dict, load_config, preprocessing_key, to_dict
from genrenet.errors import UserError


def error_of(raw=None, overrides=(), path=None) -> str:
    with pytest.raises(UserError) as info:
        if path is not None:
            load_config(path, list(overrides))
        else:
            from_dict(apply_overrides(raw or {}, list(overrides)))
    message = str(info.value)
    assert "\n" not in message, f"multi-line error: {message!r}"
    return message


def test_defaults_load():
    config = from_dict({})
    assert config == Config()
    assert config.audio.sample_rate == 22050
    assert config.audio.clip_seconds == 3.0 and config.audio.hop_seconds == 3.0
    assert config.features.n_mels == 128 and config.features.n_fft == 1024
    assert config.train.epochs == 30
    assert config.model.name == "small_cnn"
    assert config.data.format == "auto" and config.data.split == "auto"


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_yaml_file_loading(tmp_path):
    path = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"path": "somewhere", "valid_fraction": 0.2},
            "audio": {"sample_rate": 16000, "clip_seconds": 2.5, "hop_seconds": 1.0, "strip_silence": True},
            "features": {"n_mels": 64, "f_max": 7000},
            "train": {"epochs": 4, "lr": 0.005, "device": "cpu"},
            "run": {"dir": "runs/x"},
        },
    )
    config = load_config(path)
    assert config.data.path == "somewhere" and config.data.valid_fraction == 0.2
    assert config.audio.sample_rate == 16000 and config.audio.clip_seconds == 2.5
    assert config.audio.strip_silence is True
    assert config.features.n_mels == 64 and config.features.f_max == 7000.0
    assert config.train.epochs == 4 and config.train.lr == 0.005 and config.train.device == "cpu"
    assert config.run.dir == "runs/x"
    # untouched settings keep their defaults
    assert config.features.n_fft == 1024 and config.train.batch_size == 32


def test_set_overrides_with_typed_values(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", {"train": {"epochs": 4}})
    config = load_config(
        path,
        [
            "train.epochs=7",
            "train.lr=3e-4",
            "audio.strip_silence=true",
            "features.f_max=4000",
            "data.path=my/data",
            "data.fold=2",
            "features.top_db=",
        ],
    )
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.train.lr == pytest.approx(3e-4)
    assert config.audio.strip_silence is True
    assert config.features.f_max == 4000.0
    assert config.data.path == "my/data"
    assert config.data.fold == 2
    assert config.features.top_db is None


def test_later_override_wins_and_input_is_not_mutated():
    raw = {"train": {"epochs": 4}}
    result = apply_overrides(raw, ["train.epochs=5", "train.epochs=6"])
    assert result["train"]["epochs"] == 6
    assert raw == {"train": {"epochs": 4}}


def test_round_trip_through_dict():
    config = from_dict(
        {
            "audio": {"sample_rate": 8000, "clip_seconds": 1.0, "hop_seconds": 0.5},
            "features": {"n_mels": 32, "n_fft": 256},
        }
    )
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("audio.sample_rat=8000", "unknown key 'audio.sample_rat' (did you mean 'audio.sample_rate'?)"),
        ("features.nmels=64", "unknown key 'features.nmels' (did you mean 'features.n_mels'?)"),
    ],
)
def test_unknown_key_names_key_and_suggests_closest(override, expected):
    assert expected in error_of(overrides=[override])


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", {"train": {"epoch": 3}})
    message = error_of(path=path)
    assert str(path) in message
    assert "unknown key 'train.epoch'" in message and "'train.epochs'" in message


def test_unknown_section():
    message = error_of(overrides=["trian.epochs=3"])
    assert "unknown key 'trian'" in message and "did you mean 'train'" in message
    assert "unknown key 'bogus'" in error_of({"bogus": {"x": 1}})


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("audio.sample_rate=fast", "audio.sample_rate"),
        ("audio.strip_silence=maybe", "audio.strip_silence"),
        ("train.device=tpu", "train.device"),
        ("data.split=random", "data.split"),
    ],
)
def test_wrong_type_or_choice_names_key(override, key):
    message = error_of(overrides=[override])
    assert message.startswith("config: " + key + ":"), message


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("audio.clip_seconds=-1", "audio.clip_seconds: input should be greater than 0"),
        ("audio.sample_rate=0", "audio.sample_rate: input should be greater than 0"),
        ("audio.peak_dbfs=3", "audio.peak_dbfs: input should be less than or equal to 0"),
        ("train.epochs=0", "train.epochs: input should be greater than 0"),
        ("data.valid_fraction=1.5", "data.valid_fraction"),
        ("model.dropout=1", "model.dropout"),
    ],
)
def test_out_of_range_values(override, fragment):
    assert fragment in error_of(overrides=[override])


def test_hop_larger_than_clip_is_an_error():
    message = error_of(overrides=["audio.clip_seconds=2", "audio.hop_seconds=3"])
    assert "audio.hop_seconds (3.0) is larger than audio.clip_seconds (2.0)" in message


def test_n_mels_above_frequency_bins_is_an_error():
    message = error_of(overrides=["features.n_fft=256", "features.n_mels=200"])
    assert "features.n_mels (200)" in message and "129" in message
    # the boundary itself is fine
    assert from_dict(apply_overrides({}, ["features.n_fft=256", "features.n_mels=129"])).features.n_mels == 129


def test_f_max_above_nyquist_is_an_error():
    message = error_of(overrides=["audio.sample_rate=8000", "features.f_max=5000"])
    assert "features.f_max (5000.0)" in message and "4000" in message


def test_several_errors_in_one_line():
    message = error_of(overrides=["train.epochs=0", "train.lr=-1"])
    assert "train.epochs" in message and "train.lr" in message


@pytest.mark.parametrize("item", ["train.epochs", "epochs=3", "a.b.c=1", ".epochs=3", "train.=3", "=3"])
def test_bad_set_syntax(item):
    message = error_of(overrides=[item])
    assert "--set expects section.key=value" in message and item in message


def test_set_into_non_mapping_section(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: 5\n")
    assert "train" in error_of(path=path, overrides=["train.epochs=3"])


def test_missing_config_file(tmp_path):
    message = error_of(path=tmp_path / "nope.yaml")
    assert "config file not found" in message and "nope.yaml" in message


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 3\n  lr: [\n")
    assert "not valid YAML" in error_of(path=path)


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "expected a mapping" in error_of(path=path)


def test_quoted_off_is_accepted():
    assert from_dict({"audio": {"normalize": "off"}}).audio.normalize == "off"


def test_normalize_off_unquoted_in_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("audio:\n  normalize: off\n")
    assert load_config(path).audio.normalize == "off"


def test_normalize_off_via_set(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", {})
    assert load_config(path, ["audio.normalize=off"]).audio.normalize == "off"


def test_numeric_looking_path_via_set(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", {})
    assert load_config(path, ["run.dir=2024"]).run.dir == "2024"


# --- preprocessing key ------------------------------------------------------------------------------

PREPROCESSING_CHANGES = [
    "audio.sample_rate=16000",
    "audio.normalize=peak",
    "audio.peak_dbfs=-3",
    "audio.strip_silence=true",
    "audio.silence_dbfs=-40",
    "audio.min_silence_ms=500",
    "audio.clip_seconds=4",
    "audio.hop_seconds=1",
    "features.n_fft=2048",
    "features.win_length=512",
    "features.hop_length=256",
    "features.n_mels=64",
    "features.f_min=20",
    "features.f_max=8000",
    "features.power=1.0",
    "features.top_db=60",
    "features.n_mfcc=13",
]
OTHER_CHANGES = [
    "train.epochs=3",
    "train.lr=0.1",
    "train.batch_size=4",
    "train.seed=5",
    "train.device=cpu",
    "model.width=8",
    "model.dropout=0.1",
    "data.path=elsewhere",
    "data.cache_dir=/tmp/c",
    "data.split_seed=3",
    "data.valid_fraction=0.3",
    "run.dir=runs/other",
    "model.type=cnn",
]
BASE = {"audio": {"normalize": "off", "clip_seconds": 3.0, "hop_seconds": 3.0}}


def key_with(*overrides):
    return preprocessing_key(from_dict(apply_overrides(BASE, list(overrides))))


def test_every_audio_and_feature_setting_is_in_the_key():
    covered = {item.split("=")[0] for item in PREPROCESSING_CHANGES}
    every = {f"audio.{f.name}" for f in dataclasses.fields(AudioConfig)}
    every |= {f"features.{f.name}" for f in dataclasses.fields(Config().features)}
    assert covered == every  # this test changes each one of them


@pytest.mark.parametrize("override", PREPROCESSING_CHANGES)
def test_preprocessing_key_changes_with_audio_and_feature_settings(override):
    base = key_with()
    changed = key_with(override)
    assert changed != base
    assert len(base) == 16 and all(c in "0123456789abcdef" for c in base)


@pytest.mark.parametrize("override", OTHER_CHANGES)
def test_preprocessing_key_ignores_other_settings(override):
    assert key_with(override) == key_with()


def test_preprocessing_key_is_stable():
    assert key_with("audio.sample_rate=16000") == key_with("audio.sample_rate=16000")
    assert key_with("audio.clip_seconds=4") == key_with("audio.clip_seconds=4.0")


# --- no silent coercion: booleans and text where numbers belong ------------------------------------


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.epochs=true", "train.epochs: expected a whole number, got true"),
        ("train.epochs='3'", "train.epochs: expected a whole number, got '3'"),
        ("train.lr=yes", "train.lr: expected a number, got true"),
        ("train.lr='0.1'", "train.lr: expected a number, got '0.1'"),
        ("audio.sample_rate=off", "audio.sample_rate: expected a whole number, got false"),
        ("data.fold='2'", "data.fold: expected a whole number, got '2'"),
        ("model.width=true", "model.width: expected a whole number, got true"),
        ("model.dropout='0.1'", "model.dropout: expected a number, got '0.1'"),
    ],
)
def test_booleans_and_text_are_not_numbers_via_set(override, expected):
    assert expected in error_of(overrides=[override])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train:\n  epochs: true\n", "train.epochs: expected a whole number, got true"),
        ('train:\n  epochs: "3"\n', "train.epochs: expected a whole number, got '3'"),
        ("features:\n  top_db: '60'\n", "features.top_db: expected a number, got '60'"),
        ("model:\n  name: svm\n  svm_c: on\n", "model.svm_c: expected a number, got true"),
    ],
)
def test_booleans_and_text_are_not_numbers_in_yaml(tmp_path, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    message = error_of(path=path)
    assert message.startswith(f"{path}: ") and expected in message, message


def test_numbers_and_choices_still_validate():
    config = from_dict(
        apply_overrides(
            {},
            [
                "train.lr=1",
                "audio.clip_seconds=2",
                "audio.hop_seconds=1",
                "audio.normalize=off",
                "features.top_db=",
                "train.amp=false",
            ],
        )
    )
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)  # an int is a fine float
    assert config.audio.clip_seconds == 2.0 and config.audio.normalize == "off"
    assert config.features.top_db is None and config.train.amp is False
    svm = from_dict(apply_overrides({}, ["model.name=svm", "model.svm_gamma=auto", "model.svm_c=3"])).model
    assert svm.svm_gamma == "auto" and svm.svm_c == 3.0
    assert from_dict(apply_overrides({}, ["model.name=svm", "model.svm_gamma=0.5"])).model.svm_gamma == 0.5


# --- ~ in path settings ------------------------------------------------------------------------


def test_home_is_expanded_in_path_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  path: ~/music\n")
    config = load_config(path, ["run.dir=~/runs/x", "data.cache_dir=~/cache"])
    assert config.data.path == str(tmp_path / "music")
    assert config.run.dir == str(tmp_path / "runs" / "x")
    assert config.data.cache_dir == str(tmp_path / "cache")
    assert from_dict({"run": {"dir": "runs/~x"}}).run.dir == "runs/~x"  # only a leading ~ is the home folder


# --- sizes that would exhaust memory before any other check ---------------------------------------


@pytest.mark.parametrize(
    "override,bound",
    [
        ("audio.clip_seconds=100000", "600"),
        ("audio.hop_seconds=1000", "600"),
        ("audio.sample_rate=10000000", "384000"),
        ("features.n_fft=1048576", "65536"),
        ("features.hop_length=1000000", "65536"),
        ("features.n_mels=100000", "1024"),
        ("train.batch_size=1000000", "8192"),
        ("data.num_workers=100000", "256"),
    ],
)
def test_sizes_have_upper_bounds(override, bound):
    key = override.split("=")[0]
    assert f"{key}: input should be less than or equal to {bound}" in error_of(overrides=[override])


def test_sizes_at_the_bounds_are_accepted():
    config = from_dict(
        apply_overrides(
            {},
            [
                "audio.clip_seconds=600",
                "audio.hop_seconds=600",
                "audio.sample_rate=384000",
                "features.n_fft=65536",
                "features.n_mels=1024",
                "train.batch_size=8192",
                "data.num_workers=256",
            ],
        )
    )
    assert config.audio.clip_seconds == 600 and config.features.n_fft == 65536


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """PyYAML reads 3e-4 as text (YAML 1.1 wants 3.0e-4); now that text is no number, it must parse as one."""
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-5\n")
    config = load_config(path, ["train.label_smoothing=1e-1"])
    assert config.train.lr == 1e-3 and config.train.weight_decay == 5e-5 and config.train.label_smoothing == 0.1
