"""What a new user installs is what CI tests: the newest versions the bounds allow, and bounds
that exclude the transformers minors llm-flow was not tested on."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


def test_ci_installs_the_newest_versions_the_bounds_allow():
    commands = [shlex.split(line) for line in (REPO / ".ci" / "run").read_text().splitlines()
                if re.match(r"\s*pip install .*-e", line)]  # fmt: skip
    assert commands, "CI installs llm-flow with pip"
    for words in commands:
        assert "--upgrade" in words and words[words.index("--upgrade-strategy") + 1] == "eager", words
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--upgrade --upgrade-strategy eager" in readme and 'pip install -e ".[test]" && python -m pytest' in readme


def test_transformers_is_capped_below_a_minor_this_environment_runs():
    """A cap at the next minor (``<5.26``): transformers changes its cache and generation API from
    one minor to the next. The suite runs on a version inside the bounds."""
    specifier = requirements()["transformers"].specifier
    caps = [Version(s.version) for s in specifier if s.operator == "<"]
    assert len(caps) == 1 and caps[0].micro == 0 and caps[0].minor > 0, specifier
    installed = Version(importlib.metadata.version("transformers"))
    assert installed in specifier and (installed.major, installed.minor + 1) == (caps[0].major, caps[0].minor), (
        f"transformers {installed} is not the newest minor the bounds allow ({specifier})"
    )
