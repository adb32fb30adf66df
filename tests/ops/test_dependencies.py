"""pyproject.toml declares ranges; requirements/constraints.txt locks one release in each.

The ranges say what the code supports, the lock what was tested and what bin/setup, CI
and the Dockerfile install.  A pin in pyproject would stop bin/lock from moving, and a
locked release outside its range would make pip refuse to install.
"""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_DIR

pytestmark = pytest.mark.pure

UPPER_BOUNDS = {"<", "<=", "~="}


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(line) for line in lines]


def locked() -> dict[str, Version]:
    lines = (REPO_DIR / "requirements" / "constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name, equals, version = line.partition("==")
        assert equals, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_is_a_range_with_an_upper_bound():
    for requirement in declared():
        operators = {spec.operator for spec in requirement.specifier}

        assert not operators & {"==", "==="}, f"{requirement}: a pin; give it a range"
        assert ">=" in operators, f"{requirement}: no lower bound"
        assert operators & UPPER_BOUNDS, f"{requirement}: no upper bound"


def test_every_dependency_is_locked_at_a_release_its_range_allows():
    pins = locked()

    for requirement in declared():
        pinned = pins.get(canonicalize_name(requirement.name))

        assert pinned is not None, f"{requirement.name} is not in constraints.txt: run bin/lock"
        assert requirement.specifier.contains(pinned, prereleases=True), (
            f"{requirement.name}=={pinned} is outside {requirement.specifier}: run bin/lock"
        )
