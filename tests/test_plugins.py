"""The plugin system, including a real third-party distribution installed into a venv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import REPO
from credbridge.core import (
    DocumentSource,
    Locator,
    PluginError,
    Secret,
    Session,
    SourceType,
    hookimpl,
    resolve,
)
from credbridge.core.plugins import PluginManager

BROKEN_MODULE = 'raise ImportError("this plugin is broken on purpose")\n'

CLASH_MODULE = """
from credbridge.core import DocumentSource, Secret, SourceType, hookimpl

class Env(DocumentSource):
    def fetch_document(self, locator):
        return Secret(b"")

@hookimpl
def credbridge_sources():
    yield SourceType(scheme="env", open=lambda ctx: Env())
"""


def doc_example_files() -> dict[str, str]:
    """The files of the example plugin in docs/plugins.md (so the documented plugin is tested)."""
    text = (REPO / "docs" / "plugins.md").read_text()
    found = re.findall(r"<!-- example-file: (\S+) -->\n```\w*\n(.*?)```", text, re.DOTALL)
    assert {name for name, _ in found} == {"pyproject.toml", "credbridge_dotenv.py"}
    return dict(found)


def make_distribution(root: Path, name: str, module: str, source: str) -> Path:
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


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this environment's credbridge, plus three plugin distributions."""
    root = tmp_path_factory.mktemp("plugins")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Make credbridge (as installed for this test run) and its dependencies importable.
    # addsitedir (not a plain path line) so the parent's own .pth files run too: an editable
    # install of credbridge is found through one of them.
    parent = sysconfig.get_paths()["purelib"]
    (site / "_credbridge_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    example = root / "credbridge-dotenv"
    example.mkdir()
    for name, content in doc_example_files().items():
        (example / name).write_text(content)
    dists = [
        example,
        make_distribution(root, "credbridge-broken", "credbridge_broken", BROKEN_MODULE),
        make_distribution(root, "credbridge-clash", "credbridge_clash", CLASH_MODULE),
    ]
    for dist in dists:
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
                str(dist),
            ],
            check=True,
            capture_output=True,
        )
    return venv


def run_in(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith("CREDBRIDGE_")}
    merged.update(env)
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "credbridge.core.cli", *args],
        capture_output=True,
        text=True,
        env=merged,
        check=False,
        timeout=120,
    )


def test_third_party_source_works_from_the_cli(plugin_venv: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text('# app secrets\nexport DB_PASSWORD="s3cret value"\nOTHER=x\n')
    off = {"CREDBRIDGE_DISABLE_PLUGINS": "credbridge_clash"}
    result = run_in(plugin_venv, "get", f"dotenv:{env_file}#DB_PASSWORD", **off)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "s3cret value"
    missing = run_in(plugin_venv, "get", f"dotenv:{env_file}#NOPE", **off)
    assert missing.returncode == 5
    assert "no field" in missing.stderr
    # The broken plugin was reported (which plugin, why) and skipped, not fatal.
    assert "credbridge_broken" in result.stderr
    assert "broken on purpose" in result.stderr


def test_plugins_json_lists_providers_and_distributions(plugin_venv: Path) -> None:
    result = run_in(plugin_venv, "plugins", "--json", CREDBRIDGE_DISABLE_PLUGINS="credbridge_clash")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["dotenv"]["sources"] == ["dotenv"]
    assert plugins["dotenv"]["distribution"] == "credbridge-dotenv"
    assert plugins["dotenv"]["version"] == "0.1.0"
    assert plugins["dotenv"]["builtin"] is False
    assert "broken on purpose" in plugins["credbridge_broken"]["error"]
    assert plugins["local"]["builtin"] is True
    assert set(plugins["local"]["sources"]) == {"file", "env", "credential"}
    assert plugins["credstore"]["sinks"] == ["credstore"]


def test_name_clash_names_both_providers(plugin_venv: Path) -> None:
    result = run_in(plugin_venv, "get", "env:HOME")
    assert result.returncode == 11
    assert "'env'" in result.stderr
    assert "credbridge_clash" in result.stderr and "credbridge-clash 1.2.3" in result.stderr
    assert "'local'" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_plugins_allowlist_and_disable(plugin_venv: Path) -> None:
    none = run_in(plugin_venv, "get", "dotenv:/x.env#K", CREDBRIDGE_LOAD_PLUGINS="")
    assert none.returncode == 4
    assert "unknown scheme 'dotenv'" in none.stderr
    only = run_in(
        plugin_venv, "get", "dotenv:/nonexistent.env#K", CREDBRIDGE_LOAD_PLUGINS="credbridge-dotenv"
    )
    assert only.returncode == 5, only.stderr
    assert "no file /nonexistent.env" in only.stderr
    assert "broken" not in only.stderr  # not in the allowlist, so not even imported
    disabled = run_in(
        plugin_venv, "get", "env:HOME", CREDBRIDGE_DISABLE_PLUGINS="local,credbridge_clash"
    )
    assert disabled.returncode == 4
    assert "unknown scheme 'env'" in disabled.stderr


class _Upper:
    """An in-process plugin object, registered per test like datasette's test plugins."""

    __name__ = "upper-test-plugin"

    class Source(DocumentSource):
        def fetch_document(self, locator: Locator) -> Secret:
            return Secret(locator.path.upper().encode())

    @hookimpl
    def credbridge_sources(self) -> Iterable[SourceType]:
        yield SourceType(scheme="upper", open=lambda ctx: _Upper.Source(), summary="upper-cases")


def test_in_process_registration() -> None:
    manager = PluginManager()
    manager.load_entrypoints({})
    manager.register(_Upper(), name="upper")
    with Session(plugins=manager) as session:
        assert session.resolve_one("upper:abc").reveal() == b"ABC"


def test_reserved_scheme_is_refused() -> None:
    class Bad:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="target", open=lambda ctx: _Upper.Source())

    manager = PluginManager()
    manager.register(Bad(), name="bad")
    with pytest.raises(PluginError, match="reserved scheme 'target'"):
        manager.sources()


def test_wrong_record_type_is_a_plugin_error() -> None:
    class Wrong:
        @hookimpl
        def credbridge_sinks(self) -> Iterable[object]:
            yield "not a record"

    manager = PluginManager()
    manager.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="'wrong' returned str from credbridge_sinks"):
        manager.sinks()


def test_unknown_hook_is_rejected_by_check_pending() -> None:
    class Typo:
        @hookimpl
        def credbridge_source(self) -> None:  # misspelled hook name
            pass

    manager = PluginManager()
    manager.register(Typo(), name="typo")
    assert not manager.pm.has_plugin("typo")


def test_builtins_come_from_entry_points() -> None:
    manager = PluginManager()
    manager.load_entrypoints({})
    manager.collect_all()
    assert {"generate", "stored", "file", "env", "credential"} <= set(manager.sources())
    assert all(info.distribution == "credbridge" for info in manager.infos.values())
    assert resolve(["generate:uuid"])  # the default manager has them too
