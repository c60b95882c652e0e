"""Data sources and splits: which files are tracks, their labels, and train/valid/test by track.

Three sources: a folder with one sub-folder per class, a CSV manifest (path,label plus an
optional split or fold column), and GTZAN in either common layout. Every split is made over
tracks, never clips, so clips of one track cannot land on both sides.

A manifest with a `labels` column in place of `label` holds tags, any number per track
(`rock;indie`): the data is then multi-label, its label list the sorted union of the tags.
"""

import collections
import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from genrenet.audio import AUDIO_EXTENSIONS
from genrenet.cache import cached_features
from genrenet.config import Config, DataConfig
from genrenet.errors import UserError
from genrenet.store import TrackFeatures

SPLITS = ("train", "valid", "test")
MAX_REPORTED = 5  # unreadable files listed by name; the rest are counted
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
    "eval": "test",
}

GTZAN_HELP = (
    "GTZAN is not redistributable with genrenet: download the GTZAN genre collection "
    "(for example the 'GTZAN Dataset - Music Genre Classification' archive on Kaggle) and "
    "unpack it so that {path}/genres_original/blues/blues.00000.wav (or "
    "{path}/genres/blues/blues.00000.au) exists, or point data.path at your copy"
)


TAG_SEPARATOR = ";"


@dataclass(frozen=True)
class Track:
    path: Path
    label: str  # multi-label: the sorted tags joined by TAG_SEPARATOR ("" for none)
    split: str | None = None  # given by a manifest or GTZAN's filtered lists
    fold: int | None = None
    tags: tuple[str, ...] | None = None  # multi-label data only: the track's tags, sorted


def tags_of(track: Track) -> tuple[str, ...]:
    """A track's labels as tags: its tags, or its one label."""
    return track.tags if track.tags is not None else (track.label,)


def is_multi_label(tracks: list[Track]) -> bool:
    return any(t.tags is not None for t in tracks)


def find_tracks(data: DataConfig, min_classes: int = 2) -> list[Track]:
    """All labelled tracks the config points at, in a stable order. Training needs two classes
    or more; evaluating a model on data of a single class is fine."""
    if not data.path:
        raise UserError("data.path is empty: set it in the config or with --set data.path=PATH")
    path = Path(data.path).expanduser()
    kind = data.format if data.format != "auto" else _detect_format(path)
    if kind == "gtzan":
        tracks = _gtzan_tracks(path)
    elif not path.exists():
        # A relative path in a config file is read from where the command runs, not from the config's folder.
        where = "" if path.is_absolute() else f" (read relative to the current folder: {path.resolve()})"
        raise UserError(f"data.path '{data.path}' does not exist{where}")
    elif kind == "csv":
        tracks = _manifest_tracks(path)
    else:
        tracks = _folder_tracks(path)
    if not tracks:
        raise UserError(f"no audio files found under data.path '{path}'")
    labels = labels_of(tracks)
    if len(labels) < min_classes:
        kind = "tag" if is_multi_label(tracks) else "class"
        held = f"only one {kind} ({labels[0]})" if labels else "no tags"
        raise UserError(f"data.path '{path}' holds {held}; a classifier needs two or more")
    return tracks


def split_tracks(tracks: list[Track], data: DataConfig) -> dict[str, list[Track]]:
    """train/valid/test lists of tracks, as the data source and config define them."""
    has_split = any(t.split for t in tracks)
    has_fold = any(t.fold is not None for t in tracks)
    if data.fold is not None and not has_fold:
        raise UserError(f"data.fold={data.fold} was asked for, but the data has no fold column")

    if data.split == "stratified" or not (has_split or has_fold):
        rest, test = _stratified(tracks, data.test_fraction, data.split_seed)
        valid_share = data.valid_fraction / (1 - data.test_fraction)
        train, valid = _stratified(rest, valid_share, data.split_seed)
    elif has_fold and (data.fold is not None or not has_split):
        folds = sorted({t.fold for t in tracks if t.fold is not None})
        if data.fold is None:
            raise UserError(f"the data has folds {folds}: choose the test fold with --fold K (or data.fold)")
        if data.fold not in folds:
            raise UserError(f"data.fold={data.fold} is not one of the folds {folds}")
        test = [t for t in tracks if t.fold == data.fold]
        train, valid = _stratified([t for t in tracks if t.fold != data.fold], data.valid_fraction, data.split_seed)
    else:
        given = {name: [t for t in tracks if t.split == name] for name in SPLITS}
        train, valid, test = given["train"], given["valid"], given["test"]
        if not valid:
            train, valid = _stratified(train, data.valid_fraction, data.split_seed)

    splits = {"train": train, "valid": valid, "test": test}
    _check_disjoint(splits)
    if not train:
        raise UserError("the training split has no tracks")
    return splits


def labels_of(tracks: list[Track]) -> list[str]:
    """The label list: every class, or with multi-label data every tag, sorted."""
    return sorted({tag for t in tracks for tag in tags_of(t)})


def targets_of(tracks: list[Track], labels: list[str], multi_label: bool) -> list:
    """Each track's label index, or with multi_label its multi-hot row over the labels."""
    index = {label: i for i, label in enumerate(labels)}
    if not multi_label:
        return [index[t.label] for t in tracks]
    return [[int(label in tags_of(t)) for label in labels] for t in tracks]


@dataclass
class SplitData:
    """The tracks of one split that could be read, with their features and targets."""

    tracks: list[Track]
    features: TrackFeatures  # read from the feature store as they are used
    targets: list  # label indices, or multi-label: multi-hot rows [tracks][labels] (targets_of)

    @property
    def clip_count(self) -> int:
        return self.features.clip_count


def load_split(
    tracks: list[Track], labels: list[str], config: Config, name: str, multi_label: bool = False
) -> SplitData:
    """Features of a split's tracks from the cache, computed where missing.

    A file that cannot be read is skipped with a summary (data.on_error=skip, the default) or
    stops the run with the list of failures (data.on_error=fail) once every file was tried.
    """
    features, failures = cached_features([t.path for t in tracks], config, desc=f"{name} features")
    if failures:
        report_failures(failures, len(tracks), config.data, name)
    kept = [t for t in tracks if t.path not in failures]
    return SplitData(kept, features, targets_of(kept, labels, multi_label))


def report_failures(failures: dict[Path, str], total: int, data: DataConfig, name: str) -> None:
    """Unreadable files of a split: a warning listing the first few, or one error line with
    data.on_error=fail or past data.max_unreadable of the split (most of the data is not there)."""
    reasons = list(failures.values())
    count = f"{len(failures)} of {total} {name} files could not be read"
    if data.on_error == "fail":
        raise UserError(f"{count} (data.on_error=fail; set data.on_error=skip to leave them out), first: {reasons[0]}")
    if len(failures) > data.max_unreadable * total:
        others = "".join(f", {path}" for path in list(failures)[1:3])
        raise UserError(
            f"{count}, more than data.max_unreadable={data.max_unreadable:g} of them (first: {reasons[0]}{others}); "
            f"check data.path, or add --set data.max_unreadable=1 to go on with the {total - len(failures)} "
            "that can be read"
        )
    shown = [f"  - {reason}" for reason in reasons[:MAX_REPORTED]]
    more = [f"  ... and {len(failures) - MAX_REPORTED} more"] if len(failures) > MAX_REPORTED else []
    skipped = f"warning: skipped {len(failures)} of {total} {name} files that could not be read:"
    print("\n".join([skipped] + shown + more), file=sys.stderr)


class ClipDataset(torch.utils.data.Dataset):
    """Every clip of every track, read a batch at a time: indexed by a list of clip numbers (from a
    BatchSampler), it returns (features [n, 1, ...] as stored, label indices [n] or multi-hot
    targets [n, labels], track indices), the clips of each shard read in one go rather than
    collated one by one."""

    def __init__(self, features: TrackFeatures, targets: list[int]):
        self.features = features
        self.targets = torch.tensor(targets, dtype=torch.long)
        self.track_of_clip = torch.from_numpy(features.track_of_clips())

    def __len__(self):
        return len(self.track_of_clip)

    def __getitem__(self, clips: list[int]):
        tracks = self.track_of_clip[clips]
        return self.features.clips(np.asarray(clips)).unsqueeze(1), self.targets[tracks], tracks


def _detect_format(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    if _gtzan_root(path) is not None:
        return "gtzan"
    return "folder"


def _folder_tracks(root: Path) -> list[Track]:
    if not root.is_dir():
        raise UserError(f"data.path '{root}' is not a folder (expected one sub-folder per class)")
    tracks = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and _listable(p))
        tracks += [Track(path=f, label=class_dir.name) for f in files]
    if not tracks:
        loose = [p for p in root.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and _listable(p)]
        if loose:
            files = f"{len(loose)} audio file" + ("s" if len(loose) > 1 else "")
            raise UserError(
                f"data.path '{root}' holds {files} but no class sub-folders: put each class's files "
                f"in {root}/<class>/ (or list them in a CSV manifest with path,label)"
            )
    return tracks


def _listable(path: Path) -> bool:
    """A regular file, or a broken link: it stays in, so the run reports it instead of dropping it
    without a word. A pipe or device (even behind a link) would block or never end when read."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _manifest_tracks(manifest: Path) -> list[Track]:
    columns, rows = _read_manifest(manifest)
    tracks, first_line = [], {}  # resolved path -> (line, track), to catch a file listed twice
    for line, row in rows:
        track = _manifest_row(manifest, line, row, columns)
        key = track.path.resolve()  # one file spelled two ways is one track
        if key in first_line:
            _refuse_repeat(manifest, line, row["path"].strip(), *first_line[key], track)
        first_line[key] = (line, track)
        tracks.append(track)
    return tracks


def _read_manifest(manifest: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the (line number, row) pairs of a CSV manifest."""
    try:
        raw = manifest.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the manifest {manifest}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: spreadsheets ("CSV UTF-8") start the file with a BOM
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise UserError(
            f'{manifest}:{line}: not UTF-8 text; save the manifest as UTF-8 ("CSV UTF-8" in a spreadsheet)'
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
        if "label" in columns and "labels" in columns:
            raise UserError(
                f"{manifest}: both a label and a labels column; keep label (one class per track) "
                "or labels (tags separated by ';')"
            )
        missing = [c for c in ("path", "label") if c not in columns and not (c == "label" and "labels" in columns)]
        if missing:
            raise UserError(
                f"{manifest}: missing column(s) {', '.join(missing)} (need path,label, or path,labels with tags "
                "separated by ';'; optional split or fold)"
            )
        # line_num after a row is its last line, which blank lines and quoted line breaks keep true
        return columns, [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise UserError(f"{manifest}:{reader.line_num}: not a valid CSV row ({error})") from None


def _manifest_row(manifest: Path, line: int, row: dict, columns: list[str]) -> Track:
    """One manifest row as a track; an empty cell or a path that is no file is an error."""
    # A short row leaves its last cells as None; an empty path would otherwise name the CSV's folder.
    raw_path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    tags = _row_tags(manifest, line, row["labels"] or "") if "labels" in columns else None
    empty = [name for name, value in (("path", raw_path), ("label", label or tags is not None)) if not value]
    if empty:
        raise UserError(f"{manifest}:{line}: empty {' and '.join(empty)} (every row needs path,label)")
    if tags is not None:
        label = TAG_SEPARATOR.join(tags)
    split = (row.get("split") or "").strip().lower() or None
    if "split" in columns and split not in SPLIT_ALIASES:
        raise UserError(f"{manifest}:{line}: split '{split or ''}' is not train, valid or test")
    fold = (row.get("fold") or "").strip()
    if fold and not fold.lstrip("-").isdigit():
        raise UserError(f"{manifest}:{line}: fold must be a whole number, got '{fold}'")
    path = Path(raw_path).expanduser()
    path = path if path.is_absolute() else manifest.parent / path
    # A folder, pipe or device would fail or block when decoded; a missing file is reported later.
    if path.exists() and not path.is_file():
        raise UserError(f"{manifest}:{line}: '{raw_path}' is not a file")
    return Track(path=path, label=label, split=SPLIT_ALIASES.get(split), fold=int(fold) if fold else None, tags=tags)


def _row_tags(manifest: Path, line: int, cell: str) -> tuple[str, ...]:
    """A labels cell as sorted tags: spaces around each stripped, empty pieces (a trailing ';')
    dropped, a tag given twice refused (it usually stands for a mistyped other tag). An empty
    cell is a track with none of the tags: a negative example for every one of them."""
    tags = [tag.strip() for tag in cell.split(TAG_SEPARATOR) if tag.strip()]
    repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
    if repeated:
        raise UserError(f"{manifest}:{line}: tag '{repeated[0]}' is given twice in labels '{cell.strip()}'")
    return tuple(sorted(tags))


def _refuse_repeat(manifest: Path, line: int, raw_path: str, first: int, earlier: Track, track: Track) -> None:
    """A file listed twice: under two labels, or the same row again (which would count it twice)."""
    if earlier.label != track.label:
        rule = "list a track once, with all its tags" if track.tags is not None else "a track has one label"
        raise UserError(
            f"{manifest}:{line}: '{raw_path}' is labelled '{track.label}' here but "
            f"'{earlier.label}' on line {first}; {rule}"
        )
    where = ""
    if earlier.split != track.split:
        where = f" (in both the {earlier.split} and the {track.split} split)"
    elif earlier.fold != track.fold:
        where = f" (in both fold {earlier.fold} and fold {track.fold})"
    raise UserError(f"{manifest}:{line}: '{raw_path}' is already listed on line {first}{where}; list each track once")


def _gtzan_root(path: Path) -> Path | None:
    """The folder holding blues/, classical/, ... in either GTZAN layout, if any."""
    for candidate in (path / "genres_original", path / "genres", path / "Data" / "genres_original", path):
        if (candidate / "blues").is_dir() and any((candidate / "blues").glob("blues.000*.*")):
            return candidate
    return None


def _gtzan_tracks(path: Path) -> list[Track]:
    from torchaudio.datasets import gtzan  # the fault-filtered split lists ship with torchaudio

    root = _gtzan_root(path)
    if root is None:
        raise UserError(f"GTZAN not found at data.path '{path}'. " + GTZAN_HELP.format(path=path))
    split_of = {
        name: split
        for split, names in (
            ("train", gtzan.filtered_train),
            ("valid", gtzan.filtered_valid),
            ("test", gtzan.filtered_test),
        )
        for name in names
    }
    pattern = re.compile(r"^([a-z]+)\.(\d{5})$")
    tracks = []
    for genre in gtzan.gtzan_genres:
        for file in sorted((root / genre).glob(f"{genre}.*")):
            match = pattern.match(file.stem)
            if match and file.suffix.lower() in AUDIO_EXTENSIONS:
                # Tracks outside the filtered lists are the known faulty ones; they get no split
                # and are used only by the stratified split.
                tracks.append(Track(path=file, label=genre, split=split_of.get(file.stem, "excluded")))
    return tracks


def _stratified(tracks: list[Track], fraction: float, seed: int) -> tuple[list[Track], list[Track]]:
    """Split tracks in two, keeping class proportions; every class keeps at least one track."""
    if fraction <= 0 or len(tracks) < 2:
        return list(tracks), []
    labels = _strata(tracks)
    try:
        kept, held = train_test_split(tracks, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError:  # a class too small for sklearn to stratify: hold out per class by hand
        rng = np.random.default_rng(seed)
        kept, held = [], []
        for label in sorted(set(labels)):
            members = [tracks[i] for i in rng.permutation(len(tracks)) if labels[i] == label]
            count = min(round(fraction * len(members)), len(members) - 1)
            held += members[:count]
            kept += members[count:]
    return sorted(kept, key=_order), sorted(held, key=_order)


def _strata(tracks: list[Track]) -> list[str]:
    """What a split keeps in proportion: each track's class, or with multi-label data its rarest
    tag (ties: the first by name; "" for no tag), so every tag is spread over the splits."""
    if not is_multi_label(tracks):
        return [t.label for t in tracks]
    counts = collections.Counter(tag for t in tracks for tag in t.tags)
    return [min(t.tags, key=lambda tag: (counts[tag], tag), default="") for t in tracks]


def _order(track: Track):
    return (track.label, str(track.path))


def _check_disjoint(splits: dict[str, list[Track]]) -> None:
    seen = {}
    for name, tracks in splits.items():
        for track in tracks:
            other = seen.setdefault(track.path.resolve(), name)  # one file spelled two ways is one track
            if other != name:
                raise UserError(f"{track.path} is listed in both the {other} and the {name} split")
