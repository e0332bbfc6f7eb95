"""The distribution installs graphs/, server/ and adapters/ as the `loom` namespace, and nothing else at the top."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile

from tests.conftest import REPO

FOLDERS = {"graphs": "loom.graphs", "server": "loom.server", "adapters": "loom.adapters"}


def test_every_source_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {FOLDERS[init.relative_to(REPO).parts[0]] + "".join(f".{p}" for p in init.relative_to(REPO).parts[1:-1])
             for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")}
    assert found == listed


def test_the_wheel_holds_only_the_loom_namespace(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools builds in the source tree and would leave build/ behind
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("loom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"loom", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for module in ("loom/graphs/agent.py", "loom/server/cli.py", "loom/adapters/openwebui/pipe.py",
                   "loom/adapters/openai/outbound.py", "loom/graphs/data/all-MiniLM-L6-v2-tokenizer.json"):
        assert module in names
