"""The lock (requirements/lock.txt) is what `make demo` and `make test` install: every package in
this environment is in it at the installed version, and it agrees with pyproject.toml's ranges and
exact pins. A dependency added to pyproject.toml without `make lock` fails here."""

import importlib.metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

LOCK = REPO_ROOT / "requirements" / "lock.txt"


def locked() -> dict[str, str]:
    """name -> version of the lock's lines whose markers hold here (a universal lock has one per Python)."""
    versions = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (pin,) = requirement.specifier
            assert pin.operator == "==", line
            assert canonicalize_name(requirement.name) not in versions, f"two lines apply here: {line}"
            versions[canonicalize_name(requirement.name)] = pin.version
    return versions


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's, those whose markers hold here."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def test_every_installed_package_is_locked_at_its_installed_version():
    lock = locked()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop("genrenet")
    missing = sorted(name for name in installed if name not in lock)
    assert not missing, f"installed but not in {LOCK.name} (run make lock): {missing}"
    differ = {name: (version, lock[name]) for name, version in installed.items() if lock[name] != version}
    assert not differ, f"installed (left) and locked (right) versions differ (rebuild .venv: make setup): {differ}"


def test_the_lock_satisfies_every_requirement_of_pyproject():
    lock = locked()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in {LOCK.name}: run make lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{LOCK.name} has {name} {lock[name]}, outside pyproject's {requirement}: run make lock"
        )


def test_torch_and_torchaudio_are_one_exact_pair_in_pyproject_and_the_lock():
    pins = {canonicalize_name(r.name): r.specifier for r in project_requirements() if r.name in ("torch", "torchaudio")}
    for name, specifier in pins.items():
        (pin,) = specifier  # one exact version: torchaudio's wheels declare no torch version
        assert pin.operator == "==" and "*" not in pin.version, f"{name}{specifier} is not an exact pin"
        assert locked()[name] == pin.version
    torch, torchaudio = (next(iter(pins[name])).version.split(".")[:2] for name in ("torch", "torchaudio"))
    assert torch == torchaudio  # torchaudio 2.N is built against torch 2.N
