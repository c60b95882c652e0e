"""The installed stack, checked before anything else runs: a broken pair of compiled packages is
named in one line instead of a traceback deep inside torch's library loader.

torchaudio's wheels declare no torch version, yet its compiled library loads only with the torch
it was built against: a new torchaudio upload beside an older torch fails at `import torchaudio`
(e.g. torchaudio 2.11.1 with torch 2.11.0: undefined symbol). genrenet pins the pair exactly; this
module says which pair is installed and which one genrenet needs.

Importing genrenet checks the stack first (genrenet imports all of it anyway); `genrenet check`,
the last step of `make setup`, then prints the versions.
"""

import importlib
import importlib.metadata
import re
import sys

COMPILED_PAIR = ("torch", "torchaudio")
# module -> the distribution that installs it
STACK = {"torch": "torch", "torchaudio": "torchaudio", "soundfile": "soundfile", "sklearn": "scikit-learn"}


class BrokenStack(ImportError):
    """An installed package that genrenet needs does not import; the message is one line."""


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def pinned_version(distribution: str) -> str | None:
    """The exact version genrenet's own metadata pins, or None (a source tree, or no exact pin)."""
    try:
        requirements = importlib.metadata.requires("genrenet") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        found = re.fullmatch(rf"{re.escape(distribution)}\s*==\s*([\w.+]+)", requirement.split(";")[0].strip())
        if found:
            return found.group(1)
    return None


def root_cause(error: BaseException) -> str:
    """The innermost reason in one line, with a library's folder left out (`libx.so: undefined symbol: y`)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"/\S*/([^/\s]+\.(?:so|dylib|dll)\b)", r"\1", text)[:300]


def describe(module: str, error: BaseException) -> str:
    """One line: what does not import, the pair installed, and the pair genrenet needs."""
    cause = root_cause(error)
    if module in COMPILED_PAIR:
        have = " with ".join(f"{name} {installed_version(name)}" for name in COMPILED_PAIR)
        wanted = [(name, pinned_version(name)) for name in COMPILED_PAIR]
        if all(version for _, version in wanted):
            fix = " ".join(f"{name}=={version}" for name, version in wanted)
            need = f"genrenet needs {' with '.join(f'{n} {v}' for n, v in wanted)}: pip install {fix}"
        else:
            need = "install the torch and torchaudio pair pinned in genrenet's pyproject.toml"
        return f"broken install: {module} does not load ({have}: {cause}); {need} (or rebuild .venv with make setup)"
    distribution = STACK.get(module, module)
    return (
        f"broken install: {module} does not import ({distribution} {installed_version(distribution)}: {cause}); "
        f"reinstall it: pip install --force-reinstall {distribution} (or rebuild .venv with make setup)"
    )


def first_broken(modules) -> str | None:
    """The one-line description of the first module that does not import, or None."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure to import is the install's, whatever its type
            return describe(module, error)
    return None


def require(modules=tuple(STACK)) -> None:
    """Raise BrokenStack if one of `modules` does not import. Uncaught, it prints as one line."""
    problem = first_broken(modules)
    if problem is None:
        return
    previous_hook = sys.excepthook

    def one_line_hook(kind, value, traceback):
        if isinstance(value, BrokenStack):
            print(f"genrenet: {value}", file=sys.stderr)
        else:
            previous_hook(kind, value, traceback)

    sys.excepthook = one_line_hook
    raise BrokenStack(problem) from None


def summary() -> str:
    versions = ", ".join(f"{distribution} {installed_version(distribution)}" for distribution in STACK.values())
    return f"genrenet {installed_version('genrenet')}: {versions}: all import"
