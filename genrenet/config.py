"""Run configuration: typed sections loaded from YAML, with `--set section.key=value` overrides.

Every setting has a default, so a YAML file names only what differs. Unknown keys, wrong
types and out-of-range values are errors that name the key (and the closest valid one).
"""

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from genrenet.errors import UserError, error_line
from genrenet.registry import MODELS, features_of, frames_per_second, model_entry

# Unknown keys are errors; so are inf and nan, which pass a range check but break the pipeline.
# Booleans and quoted text where a number belongs (epochs: true, epochs: "3") are refused before
# validation by _number_problems (pydantic's own strict mode would also refuse a section given
# as a mapping, which is what a YAML file gives).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

# Upper bounds on sizes that would exhaust memory (or hang) before any other check could fail.
MAX_SECONDS = 600.0  # audio.clip_seconds, audio.hop_seconds: 10 minutes per clip
MAX_SAMPLE_RATE = 384_000
MAX_FFT = 65_536  # features.n_fft, win_length, hop_length
MAX_MELS = 1024
MAX_BATCH = 8192
MAX_WORKERS = 256


def _home(value: str) -> str:
    """A path setting with ~ expanded, as a shell would, so every user of the config sees the real folder."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def _named_folder(key: str, default: str):
    """A validator refusing an empty folder setting: '' is the current folder to pathlib, which would
    fill it with the run's or the store's files (--set data.cache_dir= wrote a hash-named folder there)."""

    def check(value):
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{key} is empty: name a folder (the default is {default}; '.' for the current one)")
        return value

    return check


@dataclass(config=STRICT)
class DataConfig:
    path: str = ""  # class folders, a CSV manifest, or a GTZAN root
    format: Literal["auto", "folder", "csv", "gtzan"] = "auto"
    # auto: a manifest's split/fold column, GTZAN's fault-filtered lists, else stratified.
    split: Literal["auto", "stratified"] = "auto"
    fold: int | None = None  # with a fold column: the fold held out for testing
    valid_fraction: float = Field(0.15, ge=0.0, lt=1.0)  # of tracks, when no valid split is given
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0
    cache_dir: str = "cache"
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)  # processes decoding audio into the store and reading batches
    on_error: Literal["skip", "fail"] = "skip"  # what an unreadable file does to a run
    # skip stops anyway when more than this share of a split's files cannot be read (a manifest
    # pointing at files that are gone); 1 goes on with whatever can be read
    max_unreadable: float = Field(0.5, ge=0.0, le=1.0)

    _expand_home = field_validator("path", "cache_dir")(_home)
    _cache_dir_named = field_validator("cache_dir")(_named_folder("data.cache_dir", "cache"))

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.valid_fraction ({self.valid_fraction}) + data.test_fraction "
                f"({self.test_fraction}) must be below 1, or nothing is left to train on"
            )
        return self


@dataclass(config=STRICT)
class AudioConfig:
    sample_rate: int = Field(22050, gt=0, le=MAX_SAMPLE_RATE)
    normalize: Literal["peak", "off"] = "peak"
    peak_dbfs: float = Field(-1.0, le=0.0)  # peak level after normalization
    strip_silence: bool = False
    silence_dbfs: float = Field(-50.0, lt=0.0)  # quieter than this counts as silence
    min_silence_ms: int = Field(1000, gt=0)  # shorter pauses are kept
    clip_seconds: float = Field(3.0, gt=0.0, le=MAX_SECONDS)
    hop_seconds: float = Field(3.0, gt=0.0, le=MAX_SECONDS)  # start-to-start distance between clips

    @field_validator("normalize", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return (
            {False: "off", True: "peak"}.get(value, value) if isinstance(value, bool) else value
        )  # YAML: off is false

    @model_validator(mode="after")
    def _hop_within_clip(self):
        if self.hop_seconds > self.clip_seconds:
            raise ValueError(
                f"audio.hop_seconds ({self.hop_seconds}) is larger than audio.clip_seconds "
                f"({self.clip_seconds}): parts of every track would be skipped"
            )
        return self


@dataclass(config=STRICT)
class FeatureConfig:
    n_fft: int = Field(1024, gt=0, le=MAX_FFT)
    win_length: int | None = Field(None, gt=0, le=MAX_FFT)  # None: n_fft
    hop_length: int = Field(512, gt=0, le=MAX_FFT)
    n_mels: int = Field(128, gt=0, le=MAX_MELS)
    f_min: float = Field(0.0, ge=0.0)
    f_max: float | None = Field(None, gt=0.0)  # None: sample_rate / 2
    power: float = Field(2.0, gt=0.0)
    top_db: float | None = Field(80.0, gt=0.0)
    n_mfcc: int = Field(20, gt=0)  # handcrafted features (svm, random_forest) only

    @model_validator(mode="after")
    def _consistent(self):
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(
                f"features.n_mels ({self.n_mels}) is more than the {self.n_fft // 2 + 1} "
                f"frequency bins of features.n_fft={self.n_fft}"
            )
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError(f"features.win_length ({self.win_length}) is larger than features.n_fft ({self.n_fft})")
        return self


@dataclass(config=STRICT)
class AugmentConfig:
    """Training-time augmentation; each piece is off at 0 / null, and all are off at evaluation."""

    # Train on crops of this length at random offsets; evaluation then averages over windows of
    # this length every half crop across each clip.
    crop_seconds: float | None = Field(None, gt=0.0)
    gain_db: float = Field(0.0, ge=0.0)  # random gain in +/- gain_db
    freq_masks: int = Field(0, ge=0)  # SpecAugment frequency masks per example
    freq_mask_width: int = Field(8, gt=0)  # at most this many mel bands each
    time_masks: int = Field(0, ge=0)
    time_mask_width: int = Field(16, gt=0)  # at most this many frames each
    mixup_alpha: float = Field(0.0, ge=0.0)  # Beta(alpha, alpha) mixing weight; 0 is off
    # Circular time shift (roll) of each example by a uniform offset of up to this many seconds
    # either way; 0 is off. Keeps all of a clip's content, unlike crop_seconds.
    time_shift_seconds: float = Field(0.0, ge=0.0)


@dataclass(config=STRICT)
class TrainConfig:
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0.0)  # peak learning rate of AdamW
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)  # linear warm-up before the cosine decay
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    early_stopping: int = Field(0, ge=0)  # stop after this many epochs without improvement; 0 is off
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision, used on CUDA only: bfloat16 where the GPU supports it, else float16
    compile: bool = False  # torch.compile the model: slower start, faster steps on a GPU
    seed: int = 0


@dataclass(config=STRICT)
class RunConfig:
    dir: str = "runs/default"
    # Where epoch metrics go besides metrics.jsonl, which is always written (resume and the
    # learning-curve plot read it): csv adds metrics.csv, tensorboard a tensorboard/ folder.
    log: list[Literal["jsonl", "csv", "tensorboard"]] = dataclasses.field(default_factory=lambda: ["jsonl"])
    plots: bool = True  # PNG plots beside the JSON they are drawn from

    @field_validator("log", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    _expand_home = field_validator("dir")(_home)
    _dir_named = field_validator("dir")(_named_folder("run.dir", "runs/default"))


@dataclass(config=STRICT)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    # The settings class of the model named by model.name (see genrenet.registry), so each
    # model's section holds its own keys only: CNN keys for a CNN, SVM keys for the SVM.
    model: Any = dataclasses.field(default_factory=lambda: model_settings({}))
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, raw):
        if isinstance(raw, dict):
            sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "model"}
            problems = [
                p
                for name, values in raw.items()
                if name in sections
                for p in _number_problems(values, sections[name], name)
            ]
            if problems:
                raise ValueError("; ".join(problems))
        return raw

    @field_validator("model", mode="before")
    @classmethod
    def _model_for_its_kind(cls, value):
        return value if dataclasses.is_dataclass(value) else model_settings(value)

    @model_validator(mode="after")
    def _features_fit_audio(self):
        nyquist = self.audio.sample_rate / 2
        if self.features.f_max is not None and self.features.f_max > nyquist:
            raise ValueError(f"features.f_max ({self.features.f_max}) is above half of audio.sample_rate ({nyquist})")
        clip_samples = round(self.audio.clip_seconds * self.audio.sample_rate)
        if clip_samples < self.features.n_fft:
            raise ValueError(
                f"features.n_fft ({self.features.n_fft}) is longer than a clip ({clip_samples} samples "
                f"= audio.clip_seconds x audio.sample_rate)"
            )
        f_max = self.features.f_max if self.features.f_max is not None else nyquist
        if self.features.f_min >= f_max:
            raise ValueError(f"features.f_min ({self.features.f_min}) must be below features.f_max ({f_max})")
        if self.augment.crop_seconds is not None and self.augment.crop_seconds > self.audio.clip_seconds:
            raise ValueError(
                f"augment.crop_seconds ({self.augment.crop_seconds}) is longer than audio.clip_seconds "
                f"({self.audio.clip_seconds})"
            )
        if self.train.warmup_epochs >= self.train.epochs and self.train.warmup_epochs > 0:
            raise ValueError(
                f"train.warmup_epochs ({self.train.warmup_epochs}) must be fewer than train.epochs "
                f"({self.train.epochs})"
            )
        return self


DEFAULT_MODEL = "small_cnn"
# Format-1 configs named the classic models by model.type (cnn / svm / random_forest).
LEGACY_TYPES = ("cnn", "svm", "random_forest")


def model_settings(raw) -> Any:
    """The model section validated by the settings class of the model it names."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"model: expected a mapping of settings, got {type(raw).__name__}")
    raw = dict(raw)
    legacy = raw.pop("type", None)
    if legacy is not None and legacy not in LEGACY_TYPES:
        raise ValueError(f"model.type '{legacy}' is not cnn, svm or random_forest (model.name alone picks a model)")
    if legacy in ("svm", "random_forest"):
        raw["name"] = legacy
    name = raw.get("name", DEFAULT_MODEL)
    if name not in MODELS:
        raise ValueError(f"model.name '{name}' is not a known model (choose from {', '.join(sorted(MODELS))})")
    settings = model_entry(name).settings
    problems = _number_problems(raw, settings, "model")
    if problems:
        raise ValueError("; ".join(problems))
    try:
        return TypeAdapter(settings).validate_python(raw)
    except ValidationError as error:
        raise ValueError("; ".join(_describe(e, ["model"], settings, name) for e in error.errors())) from None


def _value_kinds(annotation) -> set:
    """The Python types a field's annotation admits: Literal values' types, each member of a Union."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(value) for value in get_args(annotation)}
    if origin in (Union, types.UnionType):
        return set().union(*(_value_kinds(member) for member in get_args(annotation)))
    return {annotation}


def _number_problems(values, section: type, prefix: str) -> list[str]:
    """A line for each boolean or text value given for a number setting of `section`. Pydantic's lax
    mode would take true as 1 and "3" as 3; in a config they are mistakes (epochs: yes, epochs: "3")."""
    if not isinstance(values, dict) or not dataclasses.is_dataclass(section):
        return []
    problems = []
    kinds = {f.name: _value_kinds(f.type) for f in dataclasses.fields(section)}
    for name, value in values.items():
        allowed = kinds.get(name, set())
        if not allowed & {int, float} or not isinstance(value, (bool, str)) or type(value) in allowed:
            continue
        expected = "a number" if float in allowed else "a whole number"
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        problems.append(f"{prefix}.{name}: expected {expected}, got {shown}")
    return problems


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def from_dict(raw: dict, source: str = "config") -> Config:
    """Validate a plain dict into a Config; any problem becomes one UserError line."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections (data, audio, features, model, train, run)")
    try:
        return TypeAdapter(Config).validate_python(raw)
    except ValidationError as error:
        raise UserError(f"{source}: " + "; ".join(_describe(e) for e in error.errors())) from None


def with_changes(config: Config, **sections: dict) -> Config:
    """A validated copy of config with some keys changed, e.g. with_changes(c, data={"fold": 2})."""
    raw = to_dict(config)
    for section, values in sections.items():
        raw[section].update(values)
    return from_dict(raw, source="derived config")


def builtin_configs() -> list[str]:
    """Names of the configs shipped inside the package (genrenet/configs/NAME.yaml)."""
    return sorted(
        f.name.removesuffix(".yaml")
        for f in (resources.files("genrenet") / "configs").iterdir()
        if f.name.endswith(".yaml")
    )


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file() and path.name == str(path):  # no such file; a bare name may be a built-in config
        builtin = resources.files("genrenet") / "configs" / (path.name.removesuffix(".yaml") + ".yaml")
        path = builtin if builtin.is_file() else path
    if not path.is_file():
        raise UserError(f"config file not found: {path} (built-in configs: {', '.join(builtin_configs())})")
    raw = read_yaml(path)
    return from_dict(apply_overrides(raw, overrides), source=str(path))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings; values are parsed as YAML (so 5 is an int, true a bool)."""
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise UserError(f"--set expects section.key=value, got '{item}'")
        section, name = parts
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise UserError(f"config section '{section}' is not a mapping")
        if _is_text_setting(_section_class(section, raw), name):  # run.dir=2024 is a folder name, not a number
            raw[section][name] = value
            continue
        try:
            raw[section][name] = yaml.load(value, Loader=_ConfigLoader) if value.strip() else None
        except yaml.YAMLError:
            raw[section][name] = value
    return raw


def _section_class(section: str, raw: dict) -> type | None:
    if section == "model":
        name = raw.get("model", {}).get("name", DEFAULT_MODEL)
        return MODELS[name].settings if name in MODELS else None
    return {f.name: f.type for f in dataclasses.fields(Config)}.get(section)


def _is_text_setting(cls: type | None, name: str) -> bool:
    fields = {f.name: f.type for f in dataclasses.fields(cls)} if cls else {}
    return fields.get(name) is str


def preprocessing_key(config: Config) -> str:
    """A short hash of every setting that changes the cached features."""
    settings = {
        "audio": dataclasses.asdict(config.audio),
        "features": dataclasses.asdict(config.features),
        "kind": features_of(config).name,
    }
    extra = features_of(config).model_keys(config)
    if extra:  # only then: the keys of existing stores stay as they were
        settings["model"] = extra
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def crop_frames(config: Config) -> int | None:
    """Spectrogram frames of one augment.crop_seconds crop, or None when training uses whole clips.

    A model trained on crops is also scored on crops (windows of this length across each clip), so
    that training and evaluation see inputs of the same length. Features without a time axis
    (the classic models' clip statistics) are never cropped."""
    seconds = config.augment.crop_seconds
    if seconds is None or not features_of(config).framed:
        return None
    return round(seconds * frames_per_second(config)) + 1


def _describe(error: dict, prefix: list[str] = (), section: type | None = None, model: str = "") -> str:
    location = list(prefix) + [str(part) for part in error["loc"]]
    key = ".".join(location)
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown key '{key}'" + _unknown_key_hint(location, section, model)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error") or not key:
        return message
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {message.lower()[:1]}{message[1:]}{shown}"


def _unknown_key_hint(location: list[str], section: type | None, model: str) -> str:
    """The closest valid spelling of an unknown dotted key, searched in its own section; for a
    model's section, also which models do take that key."""
    cls = section or Config
    for part in location[1 if section else 0 : -1]:
        field = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if field is None or not dataclasses.is_dataclass(field.type):
            return ""
        cls = field.type
    names = [f.name for f in dataclasses.fields(cls)]
    match = difflib.get_close_matches(location[-1], names, n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{'.'.join(location[:-1] + match)}'?)"
    if section is None:
        return ""
    owners = sorted(n for n, e in MODELS.items() if location[-1] in {f.name for f in dataclasses.fields(e.settings)})
    if owners:
        return f": it is a setting of {', '.join(owners)}, not of {model} (whose keys are {', '.join(names)})"
    return f" ({model} takes {', '.join(names)})"


# A config holds a few dozen settings; a YAML file whose aliases expand past this many nodes is
# an alias bomb ("billion laughs"), refused before anything copies or validates the expansion.
# Aliases themselves stay allowed (clip_seconds: &c 3 / hop_seconds: *c is a fair use).
MAX_YAML_NODES = 10_000


def read_yaml(path: Path) -> dict:
    """The sections of a YAML config file as plain data; any problem with the file is one UserError line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read the config file ({error.strerror or error_line(error)})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save the config as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error_line(error)})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None
    if raw is None:  # an empty file, or one whose lines are all comments
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: expected a mapping of sections (data, audio, features, model, augment, train, run), "
            f"got {_yaml_kind(raw)}"
        )
    return {section: {} if values is None else values for section, values in raw.items()}  # all keys commented out


def _yaml_kind(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return f"{type(value).__name__} {value!r}"[:60]


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs and duplicate keys, and keeps dates as text."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merge keys (<<) may be overridden; a non-scalar key is refused by SafeLoader itself
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key '{key}' on line {key_node.start_mark.line + 1} (first on line {seen[key] + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _expanded_size(node, sizes: dict, open_nodes: set) -> int:
    """The number of nodes `node` stands for once every alias is expanded; raises past MAX_YAML_NODES
    or on an alias that refers to itself (which no plain config needs)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.composer.ComposerError(None, None, "an alias refers to the node that holds it", node.start_mark)
    open_nodes.add(id(node))
    children = (
        node.value
        if isinstance(node, yaml.SequenceNode)
        else [n for pair in node.value for n in pair]
        if isinstance(node, yaml.MappingNode)
        else []
    )
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)", node.start_mark
            )
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


# A date-like value (run.dir: 2024-01-01) is a folder name here, not a datetime; sets and binary
# data have no place in a config (and would not survive the copy of the settings).
def _refuse_tag(loader, node):
    raise yaml.constructor.ConstructorError(
        None, None, f"{node.tag} values are not allowed in a config", node.start_mark
    )


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
# YAML 1.1 (PyYAML) reads 1e-3 and 3e-4 as text, having no dot; every user means a number.
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
for _tag in ("set", "binary", "omap", "pairs"):
    _ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
