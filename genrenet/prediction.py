"""Prediction over files, folders or a whole library: the work behind `genrenet predict` / predict.py.

Scoring is genrenet.classifier.Classifier's; this module turns command-line inputs into a list of
files, shows progress (files/s and how many times faster than real time), and writes results as
they come: text, one JSON list, or a results file (.jsonl or .csv) flushed file by file, which a
later run with resume=True continues. Embeddings go to a .npy file with a JSON index beside it.
"""

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genrenet.audio import AUDIO_EXTENSIONS
from genrenet.classifier import Classifier
from genrenet.errors import UserError, one_line
from genrenet.runlock import OutputLock

# "tags": a multi-label model's tags at or above their thresholds, as rock;indie (empty for one label per track)
CSV_COLUMNS = ["file", "label", "probability", "top", "tags", "seconds", "error"]


@dataclass
class PredictOptions:
    top_k: int = 3
    clips: bool = False  # every clip's decision
    sections: dict | None = None  # {"smooth": clips, "min_seconds": seconds}: merged sections
    workers: int = 0
    output: Path | None = None  # .jsonl or .csv
    resume: bool = False
    embeddings: Path | None = None  # .npy
    json: bool = False  # one JSON list on stdout
    keep: bool = False  # also return the results printed as text (to draw them)
    progress: bool = True
    threshold: float | None = None  # for a multi-label model: one threshold for every tag
    stats: dict = field(default_factory=dict)  # filled in: files, failed, skipped, seconds, wall


def expand_inputs(items: list[str], files_from: str | None = None) -> list[Path]:
    """Files as given (and those listed one per line in files_from); folders become the audio files inside them."""
    if files_from:
        try:
            listed = Path(files_from).read_text().splitlines() if files_from != "-" else sys.stdin.read().splitlines()
        except OSError as error:
            raise UserError(f"--files-from {files_from}: cannot read ({error.strerror or error})") from None
        items = list(items) + [line for line in listed if line.strip()]
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        else:
            paths.append(path)
    return paths


def predict_library(classifier: Classifier, paths: list[Path], options: PredictOptions) -> list[dict]:
    """Predict every path, writing each result as it comes; returns the results not written to a file."""
    writer, vectors = open_outputs(options, tags=classifier.multi_label)
    done = writer.done if writer else set()
    todo = [p for p in paths if str(p) not in done]
    stats = options.stats
    stats.update(files=len(todo), failed=0, skipped=len(paths) - len(todo), seconds=0.0)
    kept, start = [], time.perf_counter()
    bar = tqdm(total=len(todo), unit="file", file=sys.stderr, disable=None if options.progress else True)
    try:
        for result in classifier.predict_many(
            todo,
            options.top_k,
            options.workers,
            options.clips,
            options.sections,
            embeddings=vectors is not None,
            threshold=options.threshold,
        ):
            if "error" in result:
                stats["failed"] += 1
                tqdm.write(f"error: {one_line(result['error'])}", file=sys.stderr)
            else:
                stats["seconds"] += result["seconds"]
                if vectors:
                    vectors.add(result["file"], result.pop("embedding"))
            if writer:
                writer.write(result)
            if options.json or options.keep:
                kept.append(result)
            if not writer and not options.json and "error" not in result:
                tqdm.write(format_prediction(result), file=sys.stdout)
            bar.update()
            bar.set_postfix_str(
                f"{stats['seconds'] / max(time.perf_counter() - start, 1e-9):.0f}x real time", refresh=False
            )
    finally:  # Ctrl-C keeps what is done: the results file is already flushed, embeddings are saved here
        bar.close()
        stats["wall"] = time.perf_counter() - start
        if writer:
            writer.close()
        if vectors:
            vectors.close()
    return kept


def open_outputs(options: PredictOptions, tags: bool = False) -> tuple["ResultsFile | None", "EmbeddingsFile | None"]:
    """The results and embeddings files, each locked for this process alone. The embeddings come
    first, as they write nothing until the end: when the results file cannot be opened, their lock
    is released again and no file was made. tags: the results carry a multi-label model's tags."""
    vectors = EmbeddingsFile(options.embeddings, options.resume) if options.embeddings else None
    try:
        writer = ResultsFile(options.output, options.resume, tags) if options.output else None
    except BaseException:
        if vectors:
            vectors.lock.release()
        raise
    return writer, vectors


def format_prediction(result: dict) -> str:
    lines = [one_line(result["file"])]  # a newline in a file name must not start a new line
    width = max(len(t["label"]) for t in result["top"])
    lines += [f"  {rank}. {t['label']:<{width}}  {t['probability']:.3f}" for rank, t in enumerate(result["top"], 1)]
    if "tags" in result:
        lines.append(f"  tags: {', '.join(t['label'] for t in result['tags']) or '(none at or above the threshold)'}")
    for key, title in (("sections", "sections"), ("clips", "clips")):
        if key in result:
            lines.append(f"  {title} (seconds, label, probability):")
            lines += [
                f"    {s['start']:8.2f} - {s['end']:8.2f}  {s['label']}  {s['probability']:.3f}" for s in result[key]
            ]
    return "\n".join(lines)


class ResultsFile:
    """Results appended file by file to .jsonl or .csv and flushed, so a crash loses only the files
    in flight; with resume, the files already there are skipped (error rows included). A .csv
    continued with resume keeps its own columns: one written before the tags column existed takes
    single-label rows, and refuses a tagger's, whose tags it has no column for."""

    def __init__(self, path: Path, resume: bool, tags: bool = False):
        self.path, self.csv = Path(path), Path(path).suffix.lower() == ".csv"
        if Path(path).suffix.lower() not in (".jsonl", ".csv"):
            raise UserError(f"--output {path}: give a .jsonl or .csv file")
        self.lock = OutputLock(self.path, "--output")  # two runs appending here would each write every row
        with self.lock.opening():
            if self.path.exists() and not resume:
                raise UserError(f"{self.path} already exists; add --resume to continue it, or remove it")
            self.done, columns = self._read_done() if self.path.exists() else (set(), CSV_COLUMNS)
            if tags and "tags" not in columns:
                raise UserError(
                    f"--resume: {self.path} has no tags column (written by an earlier genrenet); "
                    "give a new --output file for a tagger's results"
                )
            try:
                self.file = open(self.path, "a", newline="" if self.csv else None, encoding="utf-8")
            except OSError as error:
                raise UserError(f"--output {self.path}: cannot write ({error.strerror or error})") from None
            self.rows = csv.DictWriter(self.file, columns) if self.csv else None
            if self.csv and not self.done and self.file.tell() == 0:
                self.rows.writeheader()

    def _read_done(self) -> tuple[set[str], list[str]]:
        """The files already in the results file, and its csv columns (CSV_COLUMNS for a .jsonl or
        a csv without a header)."""
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a line cut short by a crash: drop it, that file runs again
            os.truncate(self.path, len(complete))
        text = complete.decode("utf-8", errors="replace")
        if self.csv:
            rows = csv.DictReader(io.StringIO(text))
            done = {row["file"] for row in rows if row.get("file")}
            return done, rows.fieldnames or CSV_COLUMNS
        try:
            return {json.loads(line)["file"] for line in text.splitlines() if line.strip()}, CSV_COLUMNS
        except (ValueError, KeyError, TypeError):
            raise UserError(f"--resume: {self.path} holds a line that is not a result of genrenet predict") from None

    def write(self, result: dict) -> None:
        if self.csv:
            self.rows.writerow(csv_row(result))
        else:
            self.file.write(json.dumps(result) + "\n")
        self.file.flush()

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.lock.release()


def csv_row(result: dict) -> dict:
    """A result as a csv row; a single-label result has no "tags", so a csv without that column takes it."""
    if "error" in result:
        return {"file": result["file"], "error": result["error"]}
    top = result["top"]
    row = {
        "file": result["file"],
        "label": top[0]["label"],
        "probability": top[0]["probability"],
        "top": ";".join(f"{t['label']}:{t['probability']}" for t in top),
        "seconds": result["seconds"],
    }
    if "tags" in result:
        row["tags"] = ";".join(t["label"] for t in result["tags"])
    return row


class EmbeddingsFile:
    """Track embeddings as one [files, dim] float32 .npy, and beside it a .json index naming the file
    of each row; with resume, an earlier run's rows are kept."""

    def __init__(self, path: Path, resume: bool):
        self.path, self.index = Path(path), Path(path).with_suffix(".json")
        if self.path.suffix != ".npy":
            raise UserError(f"--embeddings {path}: give a .npy file")
        self.files, self.vectors = [], []
        self.lock = OutputLock(self.path, "--embeddings")  # a second run would replace this one's rows
        with self.lock.opening():
            if resume and self.path.exists() and self.index.exists():
                self.files = json.loads(self.index.read_text())["files"]
                self.vectors = list(np.load(self.path))

    def add(self, file: str, vector: np.ndarray) -> None:
        self.files.append(file)
        self.vectors.append(vector.astype(np.float32))

    def close(self) -> None:
        """Save, then let another run have the file."""
        try:
            self.save()
        finally:
            self.lock.release()

    def save(self) -> None:
        if not self.vectors:
            return
        for target, write in (
            (self.path, lambda f: np.save(f, np.stack(self.vectors))),
            (self.index, lambda f: f.write(json.dumps({"files": self.files}).encode())),
        ):
            temp = target.with_name(f".{target.name}.tmp")
            with open(temp, "wb") as file:
                write(file)
            os.replace(temp, target)  # never half a file
