"""The split a model was trained on, recorded in its run directory and checkpoints, so that
evaluation and resume use the very tracks of training, not a fresh draw over today's files.

A track is recorded by its path relative to the data's root (the data folder, or the manifest's
folder), its label and a fingerprint (fileio.fingerprint: its size and a hash of its content,
the one the feature store keys on), so the same data moved elsewhere is still recognized, and an
edited file, or other data under the same names, is noticed. Splits recorded before fingerprints
had a version (size and a hash of the first 64 KiB) are compared that way.
"""

import hashlib
import os
import sys
from pathlib import Path

from genrenet.config import DataConfig
from genrenet.datasets import SPLITS, Track
from genrenet.errors import UserError
from genrenet.fileio import fingerprint as content_fingerprint

# Data settings that change which tracks land in which split; the others (where the data is,
# caching, error handling) leave a recorded split valid.
SPLIT_SETTINGS = ("format", "split", "fold", "valid_fraction", "test_fraction", "split_seed")


def data_root(data: DataConfig) -> Path:
    path = Path(data.path).expanduser()
    return path.parent if path.suffix.lower() == ".csv" else path


def track_id(track: Track, root: Path) -> str:
    return Path(os.path.relpath(track.path, root)).as_posix()


def record_split(splits: dict[str, list[Track]], data: DataConfig) -> dict:
    """Plain data (it goes into checkpoints): the split settings and every track of every split."""
    root = data_root(data)
    return {
        "settings": {key: getattr(data, key) for key in SPLIT_SETTINGS},
        "tracks": {
            name: [
                {"id": track_id(t, root), "label": t.label, "fingerprint": fingerprint(t.path)} for t in splits[name]
            ]
            for name in SPLITS
        },
    }


def recorded_tracks(
    recorded: dict, found: list[Track], data: DataConfig, split: str, strict: bool = False
) -> list[Track] | None:
    """The recorded tracks of one split as they are on disk now, or None when the record does not
    apply (other split settings, or other data holding none of the recorded tracks).

    Missing, changed and added tracks are reported on stderr; strict (resume) refuses missing
    or changed ones, since continuing on other data would not be the same run."""
    if {key: getattr(data, key) for key in SPLIT_SETTINGS} != recorded["settings"]:
        return None
    root = data_root(data)
    on_disk = {track_id(t, root): t for t in found}
    wanted = recorded["tracks"][split]
    changed = [r["id"] for r in wanted if r["id"] in on_disk and not unchanged(on_disk[r["id"]].path, r["fingerprint"])]
    present = [r["id"] for r in wanted if r["id"] in on_disk]
    if wanted and len(changed) == len(present):
        return None  # another data set: none of the recorded tracks is there as it was
    missing = [r["id"] for r in wanted if r["id"] not in on_disk]
    relabelled = [r["id"] for r in wanted if r["id"] in on_disk and on_disk[r["id"]].label != r["label"]]
    problems = _describe(split, len(wanted), missing=missing, changed=changed, relabelled=relabelled)
    if problems and strict:
        raise UserError(f"cannot continue the run on other data: {problems}; restore those files or start a new run")
    if problems:
        print(
            f"warning: {problems}; using the {len(present) - len(set(changed) | set(relabelled))} unchanged "
            f"recorded {split} tracks",
            file=sys.stderr,
        )
    known = {r["id"] for name in SPLITS for r in recorded["tracks"][name]}
    added = [i for i in on_disk if i not in known]
    if added and split == "test":
        print(
            f"note: {len(added)} file(s) on disk are in none of the recorded splits (new since training, "
            f"e.g. {added[0]}) and are left out",
            file=sys.stderr,
        )
    skip = set(changed) | set(relabelled)
    return [on_disk[r["id"]] for r in wanted if r["id"] in on_disk and r["id"] not in skip]


def _describe(split: str, total: int, **groups: list[str]) -> str:
    parts = [f"{len(ids)} {what} (e.g. {ids[0]})" for what, ids in groups.items() if ids]
    return f"of the {total} {split} tracks recorded at training, " + ", ".join(parts) if parts else ""


def fingerprint(path: Path) -> str:
    """fileio.fingerprint, or "" for a file that cannot be read."""
    try:
        return content_fingerprint(path)
    except OSError:
        return ""


def unchanged(path: Path, recorded: str) -> bool:
    """Whether the file is as it was when `recorded` was taken, compared the way it was taken."""
    return (fingerprint(path) if recorded.startswith("v2:") else _first_64k_fingerprint(path)) == recorded


def _first_64k_fingerprint(path: Path) -> str:
    """The fingerprint of splits recorded before version 2: size and a hash of the first 64 KiB."""
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
        return f"{path.stat().st_size}:{hashlib.sha1(head).hexdigest()[:16]}"
    except OSError:
        return ""
