"""The layout stays walkable: every folder of Python is a package that pyproject.toml installs
(imported by name, so no file edits `sys.path`), and the tests mirror the packages."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Folders of Python that cannot be packages, and why.
NOT_PACKAGES = {
    "model_repository/llm/1": "Triton loads model.py by its path",
    "model_repository/llm_stream/1": "Triton loads model.py by its path",
    "model_repository/llm_adapters/1": "Triton loads model.py by its path",
    "clients/examples": "standalone scripts for users to copy; they import only tritonclient",
}


def _tracked_python() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return [Path(name) for name in listed]


def test_no_python_file_edits_sys_path():
    """A `sys.path` edit hides a missing package and breaks when a file moves."""
    edits = [f"{path}:{number}" for path in _tracked_python()
             for number, line in enumerate((ROOT / path).read_text().splitlines(), 1)
             if re.search(r"\bsys\.path\s*(\.(insert|append|extend)\b|\[|\+?=)", line)]
    assert not edits, f"sys.path edited at {edits}: install the package instead (pyproject.toml)"


def test_every_folder_of_python_is_an_installed_package():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    installed = {name.rstrip("*") for name in include}
    for folder in sorted({path.parent for path in _tracked_python()}):
        if str(folder) in NOT_PACKAGES or folder.parts[0] == "tests":
            continue
        assert (ROOT / folder / "__init__.py").exists(), f"{folder} has no __init__.py"
        assert folder.parts[0] in installed, f"{folder.parts[0]} is not in pyproject.toml"


def test_every_test_folder_is_a_package_so_test_names_never_collide():
    for folder in sorted({path.parent for path in _tracked_python()
                          if path.parts[0] == "tests"}):
        assert (ROOT / folder / "__init__.py").exists(), f"{folder} has no __init__.py"


def test_unit_tests_mirror_the_packages_they_test():
    """tests/<package>/... for a package's unit tests; the suites that start servers stand
    beside them."""
    suites = {"integration", "reliability", "robustness", "docker", "bench", "docs", "deploy"}
    for folder in (ROOT / "tests").iterdir():
        if folder.is_dir() and folder.name not in suites and folder.name != "__pycache__":
            source = ROOT / folder.relative_to(ROOT / "tests")
            assert (source / "__init__.py").exists(), \
                f"tests/{folder.name} mirrors no package: move its tests to the package's folder"
            for sub in folder.rglob("*"):
                if sub.is_dir() and sub.name != "__pycache__":
                    mirrored = ROOT / sub.relative_to(ROOT / "tests")
                    assert mirrored.is_dir(), f"{sub.relative_to(ROOT)} mirrors no folder"


def test_no_file_points_outside_the_repository_for_its_reasons():
    """A clone is all a reader has: a reason cited from a folder beside the checkout is lost."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    here = Path(__file__).relative_to(ROOT).as_posix()
    outside = [name for name in listed if not name.endswith((".safetensors", ".png")) and name != here
               and "../shared/" in (ROOT / name).read_text(errors="replace")]
    assert not outside, f"these cite files outside the repository: {outside}"
