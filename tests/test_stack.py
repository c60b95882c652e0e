"""A broken install is named in one line: `import genrenet` and every command check that torch,
torchaudio (its compiled library), soundfile and scikit-learn import, and say which pair is
installed and which genrenet needs. The broken packages here are stand-ins put ahead of the real
ones on PYTHONPATH, each failing the way a real broken install fails."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# torchaudio 2.11.1 beside torch 2.11.0: torch's loader raises OSError from ctypes' OSError.
BROKEN_TORCHAUDIO = """
try:
    raise OSError("/site/torchaudio/lib/libtorchaudio.so: undefined symbol: torch_exception_get_what")
except OSError as e:
    raise OSError("Could not load this library: /site/torchaudio/lib/libtorchaudio.so") from e
"""
BROKEN_SOUNDFILE = (
    "raise OSError(\"cannot load library 'libsndfile.so': libsndfile.so: cannot open shared object file\")\n"
)


def stand_in(folder, module, version, code):
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(code)
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")


def run(*args, pythonpath=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [pythonpath, REPO_ROOT] if p)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_check_prints_the_versions_of_a_working_stack():
    result = run("-m", "genrenet", "check")
    assert result.returncode == 0, result.stderr
    torch = importlib.metadata.version("torch")
    torchaudio = importlib.metadata.version("torchaudio")
    assert f"torch {torch}, torchaudio {torchaudio}, soundfile " in result.stdout
    assert result.stdout.strip().endswith("all import")


@pytest.mark.parametrize("command", [["-m", "genrenet", "check"], ["-m", "genrenet", "predict", "x.wav"]])
def test_a_torchaudio_that_does_not_load_with_this_torch_is_one_line_naming_both_pairs(tmp_path, command):
    stand_in(tmp_path, "torchaudio", "2.11.1", BROKEN_TORCHAUDIO)
    result = run(*command, pythonpath=tmp_path)
    torch = importlib.metadata.version("torch")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(
        f"genrenet: broken install: torchaudio does not load (torch {torch} with torchaudio 2.11.1: "
        "libtorchaudio.so: undefined symbol: torch_exception_get_what); "
    )
    # the pins come from genrenet's installed metadata
    assert "genrenet needs torch 2.11.0 with torchaudio 2.11.0: pip install torch==2.11.0 torchaudio==2.11.0" in (
        result.stderr
    )


def test_a_broken_soundfile_is_named_with_what_to_reinstall(tmp_path):
    stand_in(tmp_path, "soundfile", "0.14.0", BROKEN_SOUNDFILE)
    result = run("-m", "genrenet", "check", pythonpath=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("genrenet: broken install: soundfile does not import (soundfile 0.14.0: ")
    assert "pip install --force-reinstall soundfile" in result.stderr


def test_importing_genrenet_in_a_program_raises_an_import_error_it_can_catch(tmp_path):
    stand_in(tmp_path, "torchaudio", "2.11.1", BROKEN_TORCHAUDIO)
    code = "try:\n import genrenet\nexcept ImportError as e:\n print(type(e).__name__, isinstance(e, ImportError))"
    result = run("-c", code, pythonpath=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "BrokenStack True", result.stderr
