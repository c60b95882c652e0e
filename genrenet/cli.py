"""Entry points: the `genrenet` command (also `python -m genrenet`) and train.py, evaluate.py, predict.py.

Each `run_*(argv, prog)` parses its arguments and calls the command module that does the work
(genrenet.training, .crossval, .evaluation, .prediction, .export). The `*_main(argv)` wrappers and `main`
turn a user's mistake into one line on stderr (see genrenet.errors.cli_entry).
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from genrenet import __version__, demo_data, distributed, stack
from genrenet.classifier import Classifier
from genrenet.config import builtin_configs, load_config, with_changes
from genrenet.crossval import cross_validate
from genrenet.device import resolve_device
from genrenet.errors import UserError, cli_entry
from genrenet.evaluation import (
    compare_reports,
    default_report_path,
    evaluate,
    format_report,
    write_comparison,
    write_report,
)
from genrenet.export import FORMATS as EXPORT_FORMATS
from genrenet.export import export_model
from genrenet.musicnn import PRETRAINED
from genrenet.plots import draw_timeline, write_plot
from genrenet.prediction import PredictOptions, expand_inputs, predict_library
from genrenet.progress import quiet
from genrenet.trained import is_builtin
from genrenet.training import Interrupted, resume, train

DEFAULT_TAGGER = "musicnn-msd"  # what predict uses with no --checkpoint


def train_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description="Train an audio classifier from a YAML config.")
    parser.add_argument(
        "--config", help="YAML config file, or a built-in config by name: " + ", ".join(builtin_configs())
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument("--fold", type=int, help="test fold of a dataset with a fold column (same as data.fold)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in run.dir")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    parser.add_argument(
        "--cv", action="store_true", help="cross-validate: train and evaluate every fold of the data's fold column"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots (same as --set run.plots=false)")
    add_quiet(parser, "print only warnings and errors: no progress, no per-epoch lines")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config FILE (a new run) or --resume RUN_DIR (continue a run)")
    if args.resume and (args.overrides or args.fold is not None or args.overwrite or args.cv or args.no_plots):
        parser.error(
            "--resume continues a run with its stored config; --set, --fold, --overwrite, --cv and "
            "--no-plots do not apply"
        )
    if args.cv and args.fold is not None:
        parser.error("--cv trains every fold; --fold picks one")
    return args


def add_quiet(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help=what)


@contextlib.contextmanager
def quieted(enabled: bool, chatter: bool = False):
    """--quiet: no progress reports and, with chatter, nothing on stdout; stderr (warnings, errors) stays."""
    if not enabled:
        yield
        return
    with (
        quiet(),
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink) if chatter else contextlib.nullcontext(),
    ):
        yield


def run_train(argv=None, prog=None):
    args = train_args(argv, prog)
    try:
        with quieted(args.quiet, chatter=True):
            train_or_resume(args)
    except Interrupted as stopped:
        again = f"{prog or 'python train.py'} --resume {stopped}"
        print(f"\ninterrupted: saved a resumable checkpoint; continue with: {again}")
        return 130
    finally:
        distributed.stop()
    return 0


def train_or_resume(args) -> None:
    if args.resume:
        resume(args.resume)
        return
    config = load_config(args.config, args.overrides + (["run.plots=false"] if args.no_plots else []))
    if args.cv:
        cross_validate(config, overwrite=args.overwrite)
    else:
        if args.fold is not None:
            config = with_changes(config, data={"fold": args.fold})
        train(config, overwrite=args.overwrite)


train_main = cli_entry(run_train)


def evaluate_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate a checkpoint: scikit-learn report on one data split."
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="a best.pt or last.pt from a run directory; repeat to compare models side by side",
    )
    parser.add_argument("--split", choices=("test", "valid", "train"), default="test")
    parser.add_argument("--data", help="data path, when the data has moved since training (same as --set data.path=)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help="override a data setting or train.device (repeatable)",
    )
    parser.add_argument("--fold", type=int, help="test fold, for data with a fold column (same as --set data.fold=)")
    parser.add_argument(
        "--output",
        metavar="FILE.json",
        help="write the report here (default: eval_<checkpoint>_<split>.json beside the checkpoint)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON (a list for several checkpoints)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots beside the report")
    add_quiet(parser, "print only the report, warnings and errors: no progress, no list of files written")
    args = parser.parse_args(argv)
    if args.output and len(args.checkpoint) > 1:
        parser.error("--output takes one checkpoint; several write a report each beside their checkpoints")
    return args


def run_evaluate(argv=None, prog=None):
    args = evaluate_args(argv, prog)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.fold is not None:
        overrides.append(f"data.fold={args.fold}")
    with quieted(args.quiet):
        reports = [evaluate(path, args.split, overrides) for path in args.checkpoint]
    tracks = [[t["path"] for t in r["tracks"]] for r in reports]
    if any(t != tracks[0] for t in tracks[1:]):
        raise UserError(
            "the checkpoints were evaluated on different tracks (another dataset, split or fold), "
            "so they cannot be compared side by side"
        )
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print(format_report(reports[0]) if len(reports) == 1 else compare_reports(reports))
    # Printed first, written second: a folder that cannot be written never costs the report.
    plots = not args.no_plots
    written = [
        w
        for r, path in zip(reports, args.checkpoint)
        for w in write_report(r, Path(args.output) if args.output else default_report_path(path, args.split), plots)
    ]
    if len(reports) > 1:
        written += write_comparison(reports, Path(args.checkpoint[0]).parent / f"compare_{args.split}.json", plots)
    if written and not args.quiet:  # on stderr under --json, so stdout stays one JSON document
        print("\nwritten to " + ", ".join(str(w) for w in written), file=sys.stderr if args.json else sys.stdout)
    return 0


evaluate_main = cli_entry(run_evaluate)


def predict_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Predict the class (genre) of audio files with a trained checkpoint, or, with no --checkpoint, "
            f"their music tags with the built-in {DEFAULT_TAGGER} tagger."
        ),
    )
    add_model_choice(parser, f"a built-in music tagger (default {DEFAULT_TAGGER} when no --checkpoint is given)")
    parser.add_argument("files", nargs="*", metavar="FILE", help="audio files or folders of audio files")
    parser.add_argument("--files-from", metavar="LIST", help="a text file naming one audio file per line (- for stdin)")
    parser.add_argument("--top-k", type=int, default=3, help="how many labels to show per file (default 3)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="for a tagger (multi-label model): list the tags of probability P or more "
        "(default: the model's own thresholds, else 0.5)",
    )
    parser.add_argument(
        "--segments",
        action="store_true",
        help="split each file into sections of one label: start, end, label, mean probability",
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=3,
        metavar="CLIPS",
        help="with --segments: average clip probabilities over this many clips first (default 3; 1: off)",
    )
    parser.add_argument(
        "--min-section",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --segments: a shorter section joins its longer neighbour (default 0: off)",
    )
    parser.add_argument(
        "--clips", action="store_true", help="add every clip's decision: start, end, label, probability"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--output", metavar="RESULTS", help="write results to a .jsonl or .csv file, file by file")
    parser.add_argument("--resume", action="store_true", help="with --output: skip the files already in it")
    parser.add_argument(
        "--embeddings",
        metavar="OUT.npy",
        help="write each file's embedding to OUT.npy, with the files in row order in OUT.json",
    )
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: the main process)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto (default): CUDA when PyTorch sees a GPU"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw each file's timeline of sections (as --segments finds them) as one image",
    )
    add_quiet(parser, "print only the predictions, warnings and errors")
    args = parser.parse_args(argv)
    check_predict_args(parser, args)
    return args


def check_predict_args(parser: argparse.ArgumentParser, args) -> None:
    """Option combinations that cannot work, refused before the model loads."""
    if not args.files and not args.files_from:
        parser.error("give audio files or folders, or --files-from LIST")
    if args.resume and not args.output:
        parser.error("--resume continues an --output file")
    if args.output and args.json:
        parser.error("--output writes the results file; --json prints them instead: pick one")
    if args.output and args.output.lower().endswith(".csv") and (args.segments or args.clips):
        parser.error("a .csv holds one row per file; use a .jsonl output for --segments or --clips")
    for name in ("top_k", "smooth"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0 or args.min_section < 0:
        parser.error("--workers and --min-section cannot be negative")
    if args.threshold is not None and not 0 < args.threshold < 1:
        parser.error("--threshold must be between 0 and 1")


def add_model_choice(parser: argparse.ArgumentParser, what: str) -> argparse._MutuallyExclusiveGroup:
    """--checkpoint (a trained model) or --model (a built-in tagger), not both."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="a best.pt or last.pt from a run directory")
    which.add_argument("--model", choices=sorted(PRETRAINED), help=what)
    return which


def load_predictor(args) -> Classifier:
    """The classifier predict asked for; a built-in tagger says once what it reports."""
    source = args.checkpoint or args.model or DEFAULT_TAGGER
    classifier = Classifier.load(source, resolve_device(args.device, setting="--device"))
    if args.threshold is not None and not classifier.multi_label:
        raise UserError(f"--threshold is for taggers (multi-label models); {source} gives one label per track")
    if is_builtin(source) and not args.quiet:
        print(
            f"note: using the built-in tagger {source} (musicnn, {len(classifier.labels)} music tags such as "
            f"{', '.join(classifier.labels[:3])}): it reports music tags, not genres or classes of your own; "
            "for those, train a model and give --checkpoint",
            file=sys.stderr,
        )
    return classifier


def run_predict(argv=None, prog=None):
    args = predict_args(argv, prog)
    classifier = load_predictor(args)
    paths = expand_inputs(args.files, args.files_from)
    if not paths:
        raise UserError("no audio files found in the given folders")
    sections = {"smooth": args.smooth, "min_seconds": args.min_section}
    options = PredictOptions(
        top_k=args.top_k,
        clips=args.clips,
        workers=args.workers,
        resume=args.resume,
        json=args.json,
        sections=sections if args.segments or args.plot else None,
        keep=bool(args.plot),
        progress=not args.quiet,
        threshold=args.threshold,
        output=Path(args.output) if args.output else None,
        embeddings=Path(args.embeddings) if args.embeddings else None,
    )
    results = predict_library(classifier, paths, options)
    if args.json:
        print(json.dumps(results, indent=2))
    if args.plot and any("sections" in r for r in results):
        written = write_plot(draw_timeline([r for r in results if "sections" in r]), Path(args.plot))
        if written and not args.quiet:
            print(f"timeline plot written to {written}", file=sys.stderr)
    stats = options.stats
    if (args.output or args.embeddings) and not args.quiet:
        done = f", {stats['skipped']} already done" if stats["skipped"] else ""
        pace = f", {stats['seconds'] / stats['wall']:.0f}x real time" if stats["wall"] > 0 and stats["seconds"] else ""
        written = ", ".join(str(p) for p in (args.output, args.embeddings) if p)
        print(f"{stats['files']} files predicted ({stats['failed']} failed{done}{pace}): {written}")
    return 1 if stats["failed"] else 0


predict_main = cli_entry(run_predict)


def run_export(argv=None, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export a checkpoint (or a built-in music tagger) as one file that maps a mono waveform at the "
            "model's sample rate to class or tag probabilities and the embedding, with the front end inside."
        ),
    )
    add_model_choice(parser, "a built-in music tagger").required = True
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    parser.add_argument(
        "--output",
        help="the file to write (default: beside the checkpoint, e.g. best.onnx; for --model, e.g. musicnn-msd.onnx)",
    )
    args = parser.parse_args(argv)
    _, summary = export_model(args.checkpoint or args.model, args.format, args.output)
    print(f"wrote {summary}")
    return 0


def run_demo(argv=None, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "The whole demo in one command: generate the synthetic 7-genre songs, train the built-in 'demo' "
            "config, evaluate it, then predict 7 songs it has never heard. Writes data/demo, data/demo-unseen, "
            "runs/demo and cache/ in the current folder."
        ),
    )
    add_quiet(parser, "print only the evaluation, the predictions, warnings and errors")
    args = parser.parse_args(argv)
    config = load_config("demo")
    checkpoint = f"{config.run.dir}/best.pt"
    unseen = f"{config.data.path}-unseen"
    hush = ["--quiet"] if args.quiet else []
    steps = [
        ("generate the demo songs", lambda: demo_data.main([config.data.path])),
        ("train", lambda: run_train(["--config", "demo", "--overwrite"] + hush, "genrenet train")),
        ("evaluate on the held-out test tracks", lambda: run_evaluate(["--checkpoint", checkpoint] + hush)),
        ("generate 7 unseen songs", lambda: demo_data.main([unseen, "--tracks-per-genre", "1", "--seed", "2026"])),
        (
            "predict the unseen songs",
            lambda: run_predict(
                ["--checkpoint", checkpoint, unseen, "--plot", f"{config.run.dir}/unseen_timeline.png"] + hush
            ),
        ),
    ]
    for number, (title, step) in enumerate(steps, 1):
        with quieted(args.quiet and "generate" in title, chatter=True):
            if not args.quiet:
                print(f"\n== demo {number}/{len(steps)}: {title}", flush=True)
            code = step()
        if code:  # demo_data.main returns None; the commands return an exit code
            return code
    return 0


def run_check(argv=None, prog=None):
    """Import the whole stack (torch, torchaudio's compiled library, soundfile, scikit-learn) and say
    its versions; a package that does not import is one line naming the installed and the needed pair."""
    argparse.ArgumentParser(prog=prog, description=run_check.__doc__).parse_args(argv)
    print(stack.summary())  # importing genrenet checked the stack (genrenet.stack.require)
    return 0


COMMANDS = {
    "train": (run_train, "train a model from a YAML config or a built-in config name"),
    "evaluate": (run_evaluate, "report a checkpoint's accuracy on the test (or another) split"),
    "predict": (run_predict, "predict the genre (class) of audio files or folders, or their music tags"),
    "export": (run_export, "write a model or built-in tagger as ONNX or TorchScript, waveform in, probabilities out"),
    "demo": (run_demo, "generate demo songs, train, evaluate and predict, in the current folder"),
    "check": (run_check, "check that the installed packages import together, and print their versions"),
}


@cli_entry
def main(argv=None):
    """`genrenet COMMAND ...`: the rest of the arguments go to the command, so each has its own --help."""
    parser = argparse.ArgumentParser(
        prog="genrenet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Music-genre and audio classification on mel spectrograms.",
        epilog="commands:\n" + "\n".join(f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the command's arguments; 'genrenet COMMAND --help' lists them",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `genrenet` shows what there is to type
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    run, _ = COMMANDS[args.command]
    return run(args.args, prog=f"genrenet {args.command}")
