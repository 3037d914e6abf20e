"""Virtual environments for the tests that need credbridge as a user installs it: plugin
distributions built from a few lines of source, and fresh venvs that see this test run's
credbridge (and its dependencies) without reinstalling it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path


def make_distribution(root: Path, name: str, module: str, source: str) -> Path:
    """A project directory ``root/name`` whose one module ``module`` is a credbridge plugin."""
    project = root / name
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "1.2.3"
            dependencies = ["credbridge"]

            [project.entry-points.credbridge]
            {module} = "{module}"

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    return project


def purelib(python: Path | str) -> str:
    """The site-packages directory of the interpreter ``python``."""
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def venv_seeing_this_credbridge(venv: Path) -> Path:
    """A fresh venv (no pip) that imports this environment's credbridge and its dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # addsitedir (not a plain path line) so the parent's own .pth files run too: an editable
    # install of credbridge is found through one of them.
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib(venv / "bin" / "python"), "_credbridge_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    return venv


def install_into(venv: Path, project: Path) -> None:
    """``pip install`` of a local project into ``venv``, with this environment's pip, offline."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(project),
        ],
        check=True,
        capture_output=True,
    )
