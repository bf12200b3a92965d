"""The lock files against pyproject.toml, read from disk only (no network, no resolver).

make (and so .ci/run) installs requirements/test.txt and the Dockerfile requirements/runtime.txt,
each followed by the project with --no-deps: a requirement added to or tightened in
pyproject.toml without `make lock` would never be installed. So:

- every requirement of pyproject.toml (the runtime dependencies in both locks; the embedded and
  test extras in requirements/test.txt) is met by the version pinned, with the packages of its
  own extras (`psycopg[binary]` needs psycopg-binary) pinned too;
- every entry of a lock is `name==version` with its sha256 hashes and nothing else: no index
  URL, path, editable install or marker, no machine path or host in the comments;
- the runtime lock pins the test lock's versions: the image runs what the tests ran;
- make's install stamp is rebuilt when a lock changes, from the lock; the image installs the
  runtime lock (hash-checked), lets it into its build context, and pins its base by digest.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"

# What `make lock` resolves for: CPython 3.11 on Linux, the image's and CI's interpreter.
LOCK_ENVIRONMENT = {
    "python_version": "3.11",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
}

PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """The lock's pins by canonical name; fails on any line that is not `name==version` and
    hashes (continuation lines joined as pip joins them)."""
    pins: dict[NormalizedName, Pin] = {}
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split()
        match = PIN.fullmatch(requirement)
        assert match, f"{path.name}: not a plain name==version pin: {line!r}"
        assert options, f"{path.name}: {requirement} has no --hash"
        bad = [option for option in options if not HASH.fullmatch(option)]
        assert not bad, f"{path.name}: {requirement} carries more than hashes: {bad}"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"{path.name}: {name} is pinned twice"
        pins[name] = Pin(Version(match["version"]), frozenset(options))
    assert pins, f"{path.name} pins nothing"
    return pins


def pyproject_requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {
        "runtime": [Requirement(r) for r in project["dependencies"]],
        "embedded": [Requirement(r) for r in extras["embedded"]],
        "test": [Requirement(r) for r in extras["test"]],
    }


def applies(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**LOCK_ENVIRONMENT, "extra": extra})


def unmet(requirements: list[Requirement], pins: dict[NormalizedName, Pin]) -> list[str]:
    """Why each requirement that applies to the lock's platform is not met by its pins."""
    problems = []
    for requirement in filter(applies, requirements):
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement}: {name} is not pinned")
            continue
        if not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: the lock pins {name}=={pin.version}")
        problems.extend(unmet_extras(requirement, pin, pins))
    return problems


def unmet_extras(requirement: Requirement, pin: Pin, pins: dict[NormalizedName, Pin]) -> list[str]:
    """The packages that requirement's extras add, read from the installed distribution's
    metadata (no network): each must be pinned, and fit when the installed version is the
    pinned one (the metadata of another version says nothing of the pinned one's ranges)."""
    if not requirement.extras:
        return []
    try:
        distribution = importlib.metadata.distribution(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return [f"{requirement}: not installed, so its extras cannot be checked: run make"]
    same_version = Version(distribution.version) == pin.version
    problems = []
    for line in distribution.requires or []:
        dependency = Requirement(line)
        if not any(applies(dependency, extra) for extra in requirement.extras):
            continue
        name = canonicalize_name(dependency.name)
        if name not in pins:
            problems.append(f"{requirement}: its extra needs {dependency}, not pinned")
        elif same_version and not dependency.specifier.contains(
            pins[name].version, prereleases=True
        ):
            problems.append(
                f"{requirement}: its extra needs {dependency}, the lock pins "
                f"{name}=={pins[name].version}"
            )
    return problems


@pytest.mark.parametrize("path", [RUNTIME_LOCK, TEST_LOCK], ids=lambda path: path.name)
def test_lock_lines_are_pins_with_hashes_only(path: Path) -> None:
    read_lock(path)


@pytest.mark.parametrize("path", [RUNTIME_LOCK, TEST_LOCK], ids=lambda path: path.name)
def test_lock_names_no_host_and_no_machine_path(path: Path) -> None:
    text = path.read_text()
    assert "://" not in text
    words = text.replace("#", " ").split()
    assert [word for word in words if word.startswith(("/", "~", "file:"))] == []
    # No option but hashes: an index URL, find-links or an editable install has no place here
    # (`-c` is uv's note that a runtime pin follows the test lock).
    options = [word for word in words if word.startswith("-") and not HASH.fullmatch(word)]
    assert set(options) <= {"-c"}


def test_runtime_lock_meets_the_runtime_dependencies() -> None:
    requirements = pyproject_requirements()
    assert unmet(requirements["runtime"], read_lock(RUNTIME_LOCK)) == []


def test_test_lock_meets_runtime_embedded_and_test_requirements() -> None:
    requirements = pyproject_requirements()
    everything = requirements["runtime"] + requirements["embedded"] + requirements["test"]
    assert unmet(everything, read_lock(TEST_LOCK)) == []


def test_the_project_itself_is_not_in_the_locks() -> None:
    # It is installed after them, with --no-deps; a pin of it would fetch it from the index.
    assert "exporter" not in read_lock(RUNTIME_LOCK)
    assert "exporter" not in read_lock(TEST_LOCK)


def test_runtime_lock_pins_what_the_tests_ran() -> None:
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)
    differing = {
        name: (pin.version, test[name].version if name in test else None)
        for name, pin in runtime.items()
        if test.get(name) != pin
    }
    assert differing == {}


def test_a_check_catches_a_requirement_the_lock_does_not_meet() -> None:
    pins = read_lock(TEST_LOCK)
    trio = pins[canonicalize_name("trio")].version
    assert unmet([Requirement(f"trio>{trio}")], pins) == [
        f"trio>{trio}: the lock pins trio=={trio}"
    ]
    assert unmet([Requirement("no-such-package-here>=1")], pins) == [
        "no-such-package-here>=1: no-such-package-here is not pinned"
    ]
    assert unmet([Requirement("no-such-package-here>=1; sys_platform == 'win32'")], pins) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK], ids=lambda path: path.name)
def test_make_reinstalls_from_the_lock_when_it_changes(lock: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / ".installed").touch()  # newer than pyproject.toml and the locks
    target = f"{venv}/bin/.installed"

    def dry_run(*options: str) -> str:
        environment = {**os.environ, "MAKEFLAGS": ""}
        command = ["make", "-C", str(ROOT), "-n", f"VENV={venv}", *options, target]
        return subprocess.run(
            command, capture_output=True, text=True, check=True, env=environment
        ).stdout

    assert "pip install" not in dry_run()
    recipe = dry_run("-W", str(lock.relative_to(ROOT)))
    assert "pip install --quiet -r requirements/test.txt" in recipe
    assert "pip install --quiet --no-deps -e ." in recipe


def test_the_image_installs_the_runtime_lock_on_a_pinned_base() -> None:
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = [
        line.strip()
        for line in dockerfile.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert re.fullmatch(r"FROM python:3\.11-slim@sha256:[0-9a-f]{64}", instructions[0])
    runs = [line for line in instructions if line.startswith("RUN ") and "pip install" in line]
    assert runs[0] == "RUN pip install --require-hashes -r requirements/runtime.txt"
    assert all("--no-deps" in run for run in runs[1:])
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!requirements/runtime.txt" in dockerignore
