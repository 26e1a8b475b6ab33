"""constraints.txt pins what the test command installs: every requirement of the package and of its test extra
has one exact release there, inside the range pyproject.toml asks for, so a fresh clone tests what was tested."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.unit.test_readme import ROOT, _ci_command


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_every_requirement_is_pinned_inside_its_range():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
        )


def test_the_test_command_installs_under_the_constraints_and_the_demo_command_does_not():
    installs = [part.strip() for part in _ci_command().split("&&") if part.strip().startswith("pip install")]
    assert len(installs) == 2 and all(" -c constraints.txt " in f" {cmd} " for cmd in installs), installs
    readme = (ROOT / "README.md").read_text()
    demo = next(line for line in readme.splitlines() if "curate demo --out demo-out" in line)
    assert "constraints" not in demo  # users get current releases within the ranges
