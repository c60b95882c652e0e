"""genrenet as a user gets it: built and installed (not editable) into a fresh virtual environment,
then train -> evaluate -> predict with the `genrenet` command from a folder outside the repository.

Nothing is downloaded: the new environment sees the dependencies already installed here through
a .pth file, and genrenet is built without build isolation, with the setuptools installed here.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, class_signal, make_class_folder, tiny_config_dict, write_audio, write_config

# `genrenet predict` with no --checkpoint, in the installed package: which weight files it opens
# (printed last, on stdout), and no network at all (a connection attempt stops it).
OFFLINE_PREDICT = """
import json, sys
opened = []
def watch(event, args):
    if event == "socket.connect":
        raise RuntimeError("network used")
    if event == "open" and str(args[0]).endswith(".pt"):
        opened.append(str(args[0]))
sys.addaudithook(watch)
from genrenet.cli import predict_main
code = predict_main(sys.argv[1:])
print(json.dumps(opened))
sys.exit(code)
"""


def run(*command, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing may point back at the repo
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def new_venv(folder: Path) -> Path:
    """A virtual environment whose site-packages ends in a .pth naming this interpreter's site-packages.

    Paths in a .pth are appended after the environment's own site-packages, and .pth files inside
    them are not processed: the editable genrenet installed here stays invisible there."""
    run(sys.executable, "-m", "venv", "--without-pip", folder, cwd=folder.parent)
    python = folder / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=folder).stdout.strip())
    shared = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "shared-dependencies.pth").write_text("\n".join(shared) + "\n")
    return python


def source_copy(folder: Path) -> Path:
    """What a build needs, copied: setuptools writes build/ and *.egg-info into the folder it builds."""
    folder.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", folder)
    shutil.copy(REPO_ROOT / "README.md", folder)
    shutil.copy(REPO_ROOT / "LICENSE", folder)
    shutil.copytree(REPO_ROOT / "genrenet", folder / "genrenet", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_installed_package_trains_evaluates_predicts_outside_the_repo(tmp_path):
    setuptools = importlib.metadata.version("setuptools")
    if int(setuptools.split(".")[0]) < 77:
        pytest.fail(
            f"setuptools {setuptools} cannot build genrenet without downloading a newer one; "
            "install the dev extra (make setup, or pip install -e '.[dev]')"
        )
    python = new_venv(tmp_path / "venv")
    src = source_copy(tmp_path / "src")
    run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--ignore-installed",
        src,
        cwd=tmp_path,
    )
    genrenet = tmp_path / "venv" / "bin" / "genrenet"
    work = tmp_path / "work"  # outside the repository, and no configs/ folder here
    data = make_class_folder(work / "data", per_class=4)
    write_config(work / "tiny.yaml", tiny_config_dict(work, data, train={"epochs": 2}))

    where = run(
        python,
        "-c",
        "import genrenet; from genrenet.config import load_config; "
        "print(genrenet.__file__); print(load_config('demo').run.dir)",
        cwd=work,
    ).stdout.split()
    assert Path(where[0]).resolve().is_relative_to((tmp_path / "venv").resolve()), where[
        0
    ]  # the built package, not the editable one
    assert where[1] == "runs/demo"  # a built-in config, by name, from the installed package data

    # `pip install genrenet` without the lock still gets the exact torch / torchaudio pair, and the licence.
    metadata = run(
        python,
        "-c",
        "import importlib.metadata as m; d = m.distribution('genrenet'); "
        "print(*d.requires, sep='\\n'); print('licence:', any(f.name == 'LICENSE' for f in d.files))",
        cwd=work,
    ).stdout.splitlines()
    assert "torch==2.11.0" in metadata and "torchaudio==2.11.0" in metadata, metadata
    assert "licence: True" in metadata

    run(genrenet, "train", "--config", "tiny.yaml", cwd=work)
    assert (work / "run" / "best.pt").is_file()
    evaluated = run(genrenet, "evaluate", "--checkpoint", "run/best.pt", cwd=work)
    assert "written to run/eval_best_test.json" in evaluated.stdout and (work / "run" / "eval_best_test.json").is_file()
    predicted = run(genrenet, "predict", "--checkpoint", "run/best.pt", "data", "--json", cwd=work)
    assert len(json.loads(predicted.stdout)) == 12

    # Music tags out of the box: the shipped tagger, its weights read from the installed package.
    write_audio(work / "song.wav", class_signal("clicks", 4.0, seed=3, sr=16000), sr=16000)
    tagged = run(python, "-c", OFFLINE_PREDICT, "song.wav", "--json", cwd=work)
    *results, opened = tagged.stdout.strip().splitlines()
    [result] = json.loads("\n".join(results))
    assert len(result["top"]) == 3 and "tags" in result and "built-in tagger musicnn-msd" in tagged.stderr
    [weights] = json.loads(opened)  # read once
    installed = (tmp_path / "venv").resolve()  # the venv's own site-packages, not the repository's copy
    assert Path(weights).name == "musicnn_msd.pt" and Path(weights).resolve().is_relative_to(installed), weights
    assert "site-packages" in Path(weights).parts

    version = re.search(r'^version = "(.+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert run(genrenet, "--version", cwd=work).stdout.strip() == f"genrenet {version}"
    assert run(python, "-m", "genrenet", "--help", cwd=work).stdout.startswith("usage: genrenet")
    missing = run(genrenet, "train", "--config", "nope", cwd=work, check=False)
    assert missing.returncode == 2 and "built-in configs: demo, esc10" in missing.stderr
