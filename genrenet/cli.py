"""Entry points: the `genrenet` command (also `python -m genrenet`) and train.py, evaluate.py, predict.py.

Each `run_*(argv, prog)` parses its arguments and calls the command module that does the work
(genrenet.training, .crossval, .evaluation, .prediction). The `*_main(argv)` wrappers and `main`
turn a user's mistake into one line on stderr (see genrenet.errors.cli_entry).
"""

import argparse
import json
import sys
from pathlib import Path

from genrenet import __version__, demo_data
from genrenet.config import builtin_configs, load_config, with_changes
from genrenet.crossval import cross_validate
from genrenet.device import resolve_device
from genrenet.errors import UserError, cli_entry, one_line
from genrenet.evaluation import compare_reports, default_report_path, evaluate, format_report, write_report
from genrenet.prediction import expand_inputs, format_prediction, predict_file, prepare_predictor
from genrenet.training import Interrupted, resume, train


def train_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description="Train an audio classifier from a YAML config.")
    parser.add_argument("--config", help="YAML config file, or a built-in config by name: " + ", ".join(builtin_configs()))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--fold", type=int, help="test fold of a dataset with a fold column (same as data.fold)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in run.dir")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    parser.add_argument("--cv", action="store_true",
                        help="cross-validate: train and evaluate every fold of the data's fold column")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config FILE (a new run) or --resume RUN_DIR (continue a run)")
    if args.resume and (args.overrides or args.fold is not None or args.overwrite or args.cv):
        parser.error("--resume continues a run with its stored config; --set, --fold, --overwrite and --cv do not apply")
    if args.cv and args.fold is not None:
        parser.error("--cv trains every fold; --fold picks one")
    return args


def run_train(argv=None, prog=None):
    args = train_args(argv, prog)
    try:
        if args.resume:
            resume(args.resume)
            return 0
        config = load_config(args.config, args.overrides)
        if args.cv:
            cross_validate(config, overwrite=args.overwrite)
        else:
            if args.fold is not None:
                config = with_changes(config, data={"fold": args.fold})
            train(config, overwrite=args.overwrite)
    except Interrupted as stopped:
        print(f"\ninterrupted: saved a resumable checkpoint; continue with: {prog or 'python train.py'} --resume {stopped}")
        return 130
    return 0


train_main = cli_entry(run_train)


def evaluate_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description="Evaluate a checkpoint: scikit-learn report on one data split.")
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="a best.pt or last.pt from a run directory; repeat to compare models side by side")
    parser.add_argument("--split", choices=("test", "valid", "train"), default="test")
    parser.add_argument("--data", help="data path, when the data has moved since training (same as --set data.path=)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                        help="override a data setting or train.device (repeatable)")
    parser.add_argument("--fold", type=int, help="test fold, for data with a fold column (same as --set data.fold=)")
    parser.add_argument("--output", metavar="FILE.json",
                        help="write the report here (default: eval_<checkpoint>_<split>.json beside the checkpoint)")
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
    reports = [evaluate(path, args.split, overrides) for path in args.checkpoint]
    if len(reports) == 1:
        print(format_report(reports[0]))
    else:
        tracks = [[t["path"] for t in r["tracks"]] for r in reports]
        if any(t != tracks[0] for t in tracks[1:]):
            raise UserError("the checkpoints were evaluated on different tracks (another dataset, split or fold), "
                            "so they cannot be compared side by side")
        print(compare_reports(reports))
    # Printed first, written second: a folder that cannot be written never costs the report.
    written = [write_report(r, Path(args.output) if args.output else default_report_path(path, args.split))
               for r, path in zip(reports, args.checkpoint)]
    if any(written):
        print("\nwritten to " + ", ".join(str(w) for w in written if w))
    return 0


evaluate_main = cli_entry(run_evaluate)


def predict_args(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description="Predict the class (genre) of audio files with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="a best.pt or last.pt from a run directory")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files or folders of audio files")
    parser.add_argument("--top-k", type=int, default=3, help="how many labels to show per file (default 3)")
    parser.add_argument("--segments", action="store_true", help="add a timeline: start, end, label, probability per clip")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    return parser.parse_args(argv)


def run_predict(argv=None, prog=None):
    args = predict_args(argv, prog)
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    predictor = prepare_predictor(args.checkpoint, resolve_device(args.device, setting="--device"))
    paths = expand_inputs(args.files)
    if not paths:
        raise UserError("no audio files found in the given folders")
    results, failed = [], 0
    for path in paths:
        try:
            result = predict_file(path, predictor, args.top_k)
        except UserError as error:  # one bad file must not stop the others
            failed += 1
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            results.append({"file": str(path), "error": str(error)})
            continue
        if not args.segments:
            result.pop("segments")
        results.append(result)
        if not args.json:
            print(format_prediction(result, args.segments))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


predict_main = cli_entry(run_predict)


def run_demo(argv=None, prog=None):
    argparse.ArgumentParser(prog=prog, description=(
        "The whole demo in one command: generate the synthetic 7-genre songs, train the built-in 'demo' "
        "config, evaluate it, then predict 7 songs it has never heard. Writes data/demo, data/demo-unseen, "
        "runs/demo and cache/ in the current folder.")).parse_args(argv)
    config = load_config("demo")
    checkpoint = f"{config.run.dir}/best.pt"
    unseen = f"{config.data.path}-unseen"
    steps = [
        ("generate the demo songs", lambda: demo_data.main([config.data.path])),
        ("train", lambda: run_train(["--config", "demo", "--overwrite"], "genrenet train")),
        ("evaluate on the held-out test tracks", lambda: run_evaluate(["--checkpoint", checkpoint])),
        ("generate 7 unseen songs", lambda: demo_data.main([unseen, "--tracks-per-genre", "1", "--seed", "2026"])),
        ("predict the unseen songs", lambda: run_predict(["--checkpoint", checkpoint, unseen])),
    ]
    for number, (title, step) in enumerate(steps, 1):
        print(f"\n== demo {number}/{len(steps)}: {title}", flush=True)
        code = step()
        if code:  # demo_data.main returns None; the commands return an exit code
            return code
    return 0


COMMANDS = {
    "train": (run_train, "train a model from a YAML config or a built-in config name"),
    "evaluate": (run_evaluate, "report a checkpoint's accuracy on the test (or another) split"),
    "predict": (run_predict, "predict the genre (class) of audio files or folders"),
    "demo": (run_demo, "generate demo songs, train, evaluate and predict, in the current folder"),
}


@cli_entry
def main(argv=None):
    """`genrenet COMMAND ...`: the rest of the arguments go to the command, so each has its own --help."""
    parser = argparse.ArgumentParser(
        prog="genrenet", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Music-genre and audio classification on mel spectrograms.",
        epilog="commands:\n" + "\n".join(f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="...",
                        help="the command's arguments; 'genrenet COMMAND --help' lists them")
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `genrenet` shows what there is to type
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    run, _ = COMMANDS[args.command]
    return run(args.args, prog=f"genrenet {args.command}")
