"""The package states version ranges, make installs exact versions, and pip keeps a torch that
is already there."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
OLDEST_TESTED = {"torch": "2.13.0", "torchvision": "0.28.0"}
"""The oldest pair the whole suite has passed on (README: Requirements)."""


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def pinned() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            r = Requirement(line)
            (spec,) = r.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact version"
            out[r.name] = spec.version
    return out


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_the_package_states_a_range_that_holds_the_tested_versions(name):
    req = requirements()[name]
    assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req} pins one version"
    assert any(s.operator == ">=" for s in req.specifier), f"{req} states no oldest version"
    for version in (OLDEST_TESTED[name], pinned()[name]):
        assert req.specifier.contains(version), f"{req} refuses {version}, which was tested"


def test_make_installs_the_pinned_versions():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert {"torch", "torchvision"} <= set(pinned())


def test_pip_keeps_the_torch_already_installed(tmp_path):
    """Resolving the package and its extras in this environment (no index: nothing may be
    fetched) installs the package alone: the torch that is there satisfies it."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index"]
    cmd += ["--no-build-isolation", "--quiet", "--report", str(report), "-e", f"{ROOT}[dev]"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    if done.returncode and "No module named" in done.stderr and "setuptools" in done.stderr:
        pytest.skip("no setuptools in this environment to read the project's metadata")
    assert done.returncode == 0, done.stderr[-2000:]
    install = json.loads(report.read_text())["install"]
    assert [i["metadata"]["name"] for i in install] == ["swav"]
