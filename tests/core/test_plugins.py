"""The plugin system: real third-party distributions installed into a venv, and in-process
plugins for the policy on broken plugins, conflicts, wrappers and tracing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from credbridge.core import (
    BadReference,
    ConfigError,
    DocumentSource,
    Locator,
    PluginError,
    PluginFailed,
    Secret,
    SecretDocument,
    Session,
    SinkType,
    SourceType,
    Store,
    StoreType,
    hookimpl,
    lazy,
    resolve,
)
from credbridge.core.config import parse_config
from credbridge.core.plugins import (
    SINK,
    SOURCE,
    PluginManager,
    Provided,
    find_entry_points,
    normalize,
)
from credbridge.core.settings import Setting
from support.venvs import install_into, make_distribution, venv_seeing_this_credbridge

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

CRASH_MODULE = """
from credbridge.core import Source, SourceType, hookimpl

class Crash(Source):
    def fetch(self, requests, mode):
        raise ValueError("crash-canary-" + "value-in-message")

@hookimpl
def credbridge_sources():
    yield SourceType(scheme="crash", open=lambda ctx: Crash())
"""

COMMAND_MODULE = """
import sys

import click
from credbridge.core import NotFound, hookimpl

@hookimpl
def credbridge_commands(cli):
    sys.stderr.write("hello-plugin: commands hook called\\n")

    @cli.command()
    @click.argument("name")
    def hello(name):
        \"\"\"Say hello.\"\"\"
        if name == "nobody":
            raise NotFound("hello:nobody", "nobody is there")
        click.echo(f"hello {name}")

    @cli.command()
    def deliver():
        \"\"\"Tries to replace a built-in command.\"\"\"
        click.echo("plugin deliver")
"""


def doc_example_files() -> dict[str, str]:
    """The files of the example plugin in docs/plugins.md (so the documented plugin is tested)."""
    text = (REPO / "docs" / "plugins.md").read_text()
    found = re.findall(r"<!-- example-file: (\S+) -->\n```\w*\n(.*?)```", text, re.DOTALL)
    assert {name for name, _ in found} == {
        "pyproject.toml",
        "credbridge_dotenv.py",
        "tests/test_dotenv.py",
    }
    return dict(found)


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this environment's credbridge, plus plugin distributions."""
    root = tmp_path_factory.mktemp("plugins")
    venv = venv_seeing_this_credbridge(root / "venv")
    example = root / "credbridge-dotenv"
    for name, content in doc_example_files().items():
        (example / name).parent.mkdir(parents=True, exist_ok=True)
        (example / name).write_text(content)
    dists = [
        example,
        make_distribution(root, "credbridge-broken", "credbridge_broken", BROKEN_MODULE),
        make_distribution(root, "credbridge-clash", "credbridge_clash", CLASH_MODULE),
        make_distribution(root, "credbridge-crash", "credbridge_crash", CRASH_MODULE),
        make_distribution(root, "credbridge-hello", "credbridge_hello", COMMAND_MODULE),
    ]
    for dist in dists:
        install_into(venv, dist)
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


# --------------------------------------------------------------------------- installed plugins


def test_third_party_source_works_from_the_cli(plugin_venv: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text('# app secrets\nexport DB_PASSWORD="s3cret value"\nOTHER=x\n')
    result = run_in(plugin_venv, "get", f"dotenv:{env_file}#DB_PASSWORD")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "s3cret value"
    missing = run_in(plugin_venv, "get", f"dotenv:{env_file}#NOPE")
    assert missing.returncode == 5
    assert "no field" in missing.stderr
    # The broken plugin was reported (which plugin, why) and skipped, not fatal.
    assert "credbridge_broken" in result.stderr
    assert "broken on purpose" in result.stderr


def test_plugins_lists_every_plugin_state_and_conflict(plugin_venv: Path) -> None:
    result = run_in(plugin_venv, "plugins", "--json", CREDBRIDGE_DISABLE_PLUGINS="vault")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert plugins["dotenv"]["sources"] == ["dotenv"]
    assert plugins["dotenv"]["distribution"] == "credbridge-dotenv"
    assert plugins["dotenv"]["version"] == "0.1.0"
    assert plugins["dotenv"]["builtin"] is False
    assert plugins["credbridge_broken"]["state"] == "failed"
    assert "broken on purpose" in plugins["credbridge_broken"]["error"]
    assert plugins["vault"]["state"] == "disabled"
    assert plugins["local"]["builtin"] is True
    assert set(plugins["local"]["sources"]) == {"file", "env", "credential"}
    assert plugins["credstore"]["sinks"] == ["credstore"]
    assert plugins["core"]["sources"] == ["target"]  # every scheme, the core's own too
    assert plugins["credbridge_hello"]["commands"] == ["hello"]
    assert any("clashes with" in w for w in plugins["credbridge_hello"]["warnings"])
    (conflict,) = listing["conflicts"]
    assert (conflict["kind"], conflict["name"]) == ("source scheme", "env")
    assert set(conflict["plugins"]) == {"local", "credbridge_clash"}
    assert "CREDBRIDGE_DISABLE_PLUGINS=credbridge-clash" in conflict["message"]
    text = run_in(plugin_venv, "plugins")
    assert text.returncode == 0, text.stderr
    assert "credbridge_broken (credbridge-broken 1.2.3)  [failed]" in text.stdout
    assert "conflict: source scheme 'env' is provided by two plugins" in text.stdout


def test_a_conflict_fails_only_the_commands_that_use_the_name(
    plugin_venv: Path, tmp_path: Path
) -> None:
    result = run_in(plugin_venv, "get", "env:HOME")
    assert result.returncode == 11
    assert "'env'" in result.stderr
    assert "credbridge_clash" in result.stderr and "credbridge-clash 1.2.3" in result.stderr
    assert "'local'" in result.stderr
    assert "disable one with CREDBRIDGE_DISABLE_PLUGINS=credbridge-clash" in result.stderr
    assert "Traceback" not in result.stderr
    other = run_in(plugin_venv, "get", "generate:hex?bytes=4")
    assert other.returncode == 0, other.stderr
    assert len(other.stdout) == 8
    disabled = run_in(plugin_venv, "get", "env:HOME", CREDBRIDGE_DISABLE_PLUGINS="credbridge-clash")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout == os.environ["HOME"]


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


def test_plugin_names_are_normalised_and_unknown_ones_reported(plugin_venv: Path) -> None:
    # Distribution name, entry-point name, odd spelling: all the same plugin.
    for spelling in ("credbridge-clash", "credbridge_clash", "Credbridge.Clash"):
        result = run_in(plugin_venv, "get", "env:HOME", CREDBRIDGE_DISABLE_PLUGINS=spelling)
        assert result.returncode == 0, (spelling, result.stderr)
    allowed = run_in(
        plugin_venv,
        "get",
        "dotenv:/nonexistent.env#K",
        CREDBRIDGE_LOAD_PLUGINS="CREDBRIDGE_DOTENV,credbridge-dotnev",
    )
    assert allowed.returncode == 5, allowed.stderr
    assert "CREDBRIDGE_LOAD_PLUGINS names no installed plugin: credbridge-dotnev" in allowed.stderr
    listing = run_in(plugin_venv, "plugins", "--json", CREDBRIDGE_DISABLE_PLUGINS="nope,vault")
    assert listing.returncode == 0
    assert any("nope" in p for p in json.loads(listing.stdout)["problems"])


def test_a_crashing_plugin_is_named_with_its_version_and_no_value(plugin_venv: Path) -> None:
    off = {"CREDBRIDGE_DISABLE_PLUGINS": "credbridge-clash"}
    result = run_in(plugin_venv, "get", "crash:x", **off)
    assert result.returncode == 11, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "credbridge: error: plugin 'credbridge_crash' (credbridge-crash 1.2.3) failed in source "
        "scheme 'crash' fetch(): ValueError (a bug in that plugin: report it with the output "
        "of -vv)"
    ]
    assert "crash-canary-value-in-message" not in result.stderr
    assert "Traceback" not in result.stderr
    verbose = run_in(plugin_venv, "-vv", "get", "crash:x", **off)
    assert verbose.returncode == 11
    assert "credbridge_crash/__init__.py" in verbose.stderr  # where it happened ...
    assert "in fetch" in verbose.stderr
    assert "crash-canary-value-in-message" not in verbose.stderr  # ... never the message


def test_plugin_commands_load_only_when_named(plugin_venv: Path) -> None:
    off = {"CREDBRIDGE_DISABLE_PLUGINS": "credbridge-clash"}
    hello = run_in(plugin_venv, "hello", "world", **off)
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "hello world\n"
    assert "hello-plugin: commands hook called" in hello.stderr
    failing = run_in(plugin_venv, "hello", "nobody", **off)
    assert failing.returncode == 5
    assert "credbridge: error: hello:nobody: nobody is there" in failing.stderr
    builtin = run_in(plugin_venv, "get", "generate:uuid", **off)
    assert builtin.returncode == 0
    assert "commands hook called" not in builtin.stderr
    helped = run_in(plugin_venv, "--help", **off)
    assert "commands hook called" not in helped.stderr
    # A plugin cannot replace a built-in command.
    deliver = run_in(plugin_venv, "deliver", "--help", **off)
    assert "plugin deliver" not in deliver.stdout
    assert "Resolve every credential" in deliver.stdout
    unknown = run_in(plugin_venv, "nosuchcommand", **off)
    assert unknown.returncode == 2
    assert "No such command 'nosuchcommand'" in unknown.stderr


def test_testing_a_plugin_recipe_runs_as_written(plugin_venv: Path, tmp_path: Path) -> None:
    """docs/plugins.md "Testing a plugin", run by pytest in the venv where it is installed."""
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_dotenv.py").write_text(doc_example_files()["tests/test_dotenv.py"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBRIDGE_")}
    env["CREDBRIDGE_DISABLE_PLUGINS"] = "credbridge-clash"
    result = subprocess.run(
        [
            str(plugin_venv / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            str(tests),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path / "checkout",
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


# --------------------------------------------------------------------------- in process


class _Upper:
    """An in-process plugin object, registered per test like datasette's test plugins."""

    __name__ = "upper-test-plugin"

    class Source(DocumentSource):
        def fetch_document(self, locator: Locator) -> Secret:
            return Secret(locator.path.upper().encode())

    @hookimpl
    def credbridge_sources(self) -> Iterable[SourceType]:
        yield SourceType(scheme="upper", open=lambda ctx: _Upper.Source(), summary="upper-cases")


def manager_with(*plugins: object) -> PluginManager:
    manager = PluginManager()
    manager.load_entrypoints({})
    for index, plugin in enumerate(plugins):
        manager.register(plugin, name=f"p{index}")
    return manager


def test_in_process_registration() -> None:
    manager = manager_with(_Upper())
    with Session(plugins=manager) as session:
        assert session.resolve_one("upper:abc").reveal() == b"ABC"


def test_reserved_scheme_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Bad:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="target", open=lambda ctx: _Upper.Source())

    manager = manager_with(Bad())
    assert "target" not in manager.sources()
    assert "file" in manager.sources()
    assert "claims the reserved scheme 'target'" in caplog.text
    assert "plugin 'p0'" in caplog.text


def test_wrong_record_type_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Wrong:
        @hookimpl
        def credbridge_sinks(self) -> Iterable[object]:
            yield SinkType(name="fine", open=lambda ctx: None)  # type: ignore[arg-type,return-value]
            yield "not a record"

    manager = manager_with(Wrong())
    assert "fine" not in manager.sinks()  # the plugin's sinks are skipped as a whole
    assert "credstore" in manager.sinks()
    assert "credbridge_sinks returned str, not SinkType" in caplog.text
    assert manager.infos["p0"].warnings


def test_invalid_name_and_raising_hook_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Invalid:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="Not_Valid", open=lambda ctx: _Upper.Source())

    class Raising:
        @hookimpl
        def credbridge_sinks(self) -> Iterable[SinkType]:
            raise RuntimeError("hook-canary")

    manager = manager_with(Invalid(), Raising(), _Upper())
    assert "upper" in manager.sources()
    assert "credstore" in manager.sinks()
    # credbridge's own errors say which name and why (they carry no values); others do not.
    assert (
        "plugin 'p0': credbridge_sources raised PluginError: invalid source scheme name "
        "'Not_Valid': use lowercase letters" in caplog.text
    )
    assert "plugin 'p1': credbridge_sinks raised RuntimeError" in caplog.text
    assert "hook-canary" not in caplog.text


def test_misspelt_hook_is_refused_with_a_suggestion() -> None:
    class Typo:
        @hookimpl
        def credbridge_source(self) -> None:  # misspelled hook name
            pass

    manager = PluginManager()
    with pytest.raises(PluginError, match="did you mean 'credbridge_sources'"):
        manager.register(Typo(), name="typo")
    assert not manager.pm.has_plugin("typo")


def test_undecorated_hook_function_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    class Forgot:
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="forgot", open=lambda ctx: _Upper.Source())

    manager = manager_with(Forgot())
    assert "forgot" not in manager.sources()
    assert "credbridge_sources has no @hookimpl and is ignored" in caplog.text


def test_conflict_fails_only_lookups_of_that_name() -> None:
    class Clash:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="env", open=lambda ctx: _Upper.Source())

    manager = manager_with(Clash())
    with pytest.raises(PluginError, match="source scheme 'env' is provided by two plugins"):
        manager.lookup(SOURCE, "env")
    assert manager.lookup(SOURCE, "file") is not None
    assert "env" in manager.names(SOURCE)
    (conflict,) = manager.conflicts()
    assert set(conflict.providers) == {"local", "p0"}
    with Session(plugins=manager) as session:
        assert session.resolve_one("file:/etc/hostname").reveal()
        with pytest.raises(PluginError, match="CREDBRIDGE_DISABLE_PLUGINS=p0"):
            session.resolve_one("env:HOME")


def test_wrapper_hookimpls_and_tracing_work() -> None:
    class HideEnv:
        @hookimpl(wrapper=True)
        def credbridge_sources(self) -> Iterator[None]:
            results = yield
            for provided in results:
                provided[:] = [r for r in provided if r.scheme != "env"]
            return results

    lines: list[str] = []
    manager = PluginManager()
    manager.trace(lines.append)
    manager.load_entrypoints({})
    manager.register(HideEnv(), name="hide-env")
    assert "env" not in manager.sources()
    assert "file" in manager.sources()
    assert manager.sources()["file"][1] == "local"  # still attributed through the wrapper
    assert any("credbridge_sources() -> plugins:" in line and "local" in line for line in lines)
    assert any(re.search(r"credbridge_sources local: file, credential", line) for line in lines)


def test_a_raising_wrapper_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Breaks:
        @hookimpl(wrapper=True)
        def credbridge_sinks(self) -> Iterator[None]:
            yield
            raise RuntimeError("wrapper-canary")

    manager = manager_with(Breaks())
    assert "credstore" in manager.sinks()
    assert manager.infos["p0"].state == "failed"
    assert "failed in its credbridge_sinks wrapper: RuntimeError" in caplog.text
    assert "wrapper-canary" not in caplog.text


def test_wrapper_sees_provided_lists() -> None:
    seen: list[object] = []

    class Look:
        @hookimpl(wrapper=True)
        def credbridge_stores(self) -> Iterator[None]:
            results = yield
            seen.extend(results)
            return results

    manager_with(Look()).stores()
    assert seen and all(isinstance(item, Provided) for item in seen)
    assert {item.plugin for item in seen if isinstance(item, Provided)} == {"filestore", "sops"}


def test_disable_names_are_normalised_in_process() -> None:
    manager = PluginManager()
    manager.load_entrypoints({"CREDBRIDGE_DISABLE_PLUGINS": "OEM_Strings, nope"})
    assert manager.infos["oem-strings"].state == "disabled"
    assert "oem-strings" not in manager.sinks()
    assert manager.problems and "nope" in manager.problems[0]
    assert normalize("Credbridge__Dotenv.x") == "credbridge-dotenv-x"


def test_plugin_failures_are_attributed_without_the_message() -> None:
    class Boom(DocumentSource):
        def fetch_document(self, locator: Locator) -> Secret:
            raise KeyError("boom-canary")

    class Plugin:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="boom", open=lambda ctx: Boom())

    manager = manager_with(Plugin())
    with Session(plugins=manager) as session, pytest.raises(PluginFailed) as info:
        session.resolve_one("boom:x")
    message = str(info.value)
    assert message.startswith("plugin 'p0' failed in source scheme 'boom' fetch(): KeyError")
    assert "boom-canary" not in message
    assert isinstance(info.value.error, KeyError)


def test_document_source_default_field() -> None:
    class Demo(DocumentSource):
        default_field = "value"

        def fetch_document(self, locator: Locator) -> SecretDocument:
            return SecretDocument({"value": locator.path, "other": "o"})

    class Plugin:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="demo", open=lambda ctx: Demo())
            yield SourceType(
                scheme="demo2", open=lambda ctx: Demo(default_field="other", concurrency=1)
            )

    with Session(plugins=manager_with(Plugin())) as session:
        assert session.resolve_one("demo:hello").reveal() == b"hello"
        assert session.resolve_one("demo:hello#other").reveal() == b"o"
        assert session.resolve_one("demo2:hello").reveal() == b"o"


def test_target_kinds_and_settings_take_any_iterable() -> None:
    def opener(ctx: Any) -> Any:
        return None

    assert SinkType(name="a", open=opener, target_kinds=["vm"]).target_kinds == {"vm"}
    assert SinkType(name="b", open=opener, target_kinds=("unit", "vm")).target_kinds == {
        "unit",
        "vm",
    }
    assert SinkType(name="c", open=opener, target_kinds=(k for k in ["vm"])).target_kinds == {"vm"}
    assert SinkType(name="d", open=opener, target_kinds="vm").target_kinds == {"vm"}
    assert set(SinkType(name="e", open=opener, settings=["x"]).settings or ()) == {"x"}
    with pytest.raises(PluginError, match="target_kinds"):
        SinkType(name="f", open=opener, target_kinds=["container"])


def test_lazy_imports_on_first_call() -> None:
    fake = lazy("credbridge.core.reference:parse_reference")
    assert repr(fake) == "lazy('credbridge.core.reference:parse_reference')"
    assert fake("env:HOME").scheme == "env"
    with pytest.raises(PluginError, match=r"expected 'package\.module:attribute'"):
        lazy("no-colon")


def test_fixture_registers_for_one_test_and_tolerates_installed(
    credbridge_plugins: Any,
) -> None:
    """The credbridge.testing fixture, on a plugin that is also installed (``local``)."""
    from credbridge.backends.hooks import local as installed
    from credbridge.core.plugins import get_plugin_manager

    manager = get_plugin_manager()
    assert manager.plugin("local") is installed
    name = credbridge_plugins.register(installed)
    assert manager.sources()["env"][1] == name
    assert resolve(["env:HOME"])["env:HOME"].reveal() == os.environ["HOME"].encode()
    credbridge_plugins.register(_Upper())
    assert resolve(["upper:x"])["upper:x"].reveal() == b"X"
    credbridge_plugins.close()
    assert manager.plugin("local") is installed
    assert manager.sources()["env"][1] == "local"
    assert "upper" not in manager.sources()


def test_entry_point_scan_matches_importlib_metadata() -> None:
    from importlib.metadata import distributions

    for group in ("credbridge", "console_scripts", "pytest11"):
        expected = set()
        seen = set()
        for dist in distributions():
            name = normalize(dist.metadata["Name"])
            if name in seen:
                continue
            seen.add(name)
            expected |= {(name, ep.name, ep.value) for ep in dist.entry_points if ep.group == group}
        found = {(normalize(ep.distribution), ep.name, ep.value) for ep in find_entry_points(group)}
        assert found == expected, group
    builtin = {ep.name for ep in find_entry_points() if ep.builtin}
    assert {"local", "generate", "credstore", "qemu", "cloud-hypervisor"} <= builtin


def test_builtins_come_from_entry_points() -> None:
    manager = PluginManager()
    manager.load_entrypoints({})
    manager.collect_all()
    assert {"generate", "stored", "file", "env", "credential"} <= set(manager.sources())
    assert all(info.distribution == "credbridge" for info in manager.infos.values())
    assert resolve(["generate:uuid"])  # the default manager has them too


def test_bad_reference_is_the_public_name() -> None:
    assert BadReference.__name__ == "BadReference"
    assert SINK.record_type is SinkType


RUN_WITH_PLUGIN = """
import importlib
import sys

from credbridge.core.cli import main
from credbridge.testing import registered

with registered(importlib.import_module(sys.argv[1])):
    sys.argv[1:2] = []
    main()
"""


def run_with_plugin(
    directory: Path, module: str, *args: str, cwd: Path | None = None, fault: str = ""
) -> subprocess.CompletedProcess[str]:
    """``credbridge ARGS`` with the plugin module in ``directory`` registered in-process
    (``fault``: a ``-X credbridge-fault=`` spec, core/faults.py)."""
    env = {**os.environ, "PYTHONPATH": str(directory), "CREDBRIDGE_LOAD_PLUGINS": ""}
    env.pop("CREDBRIDGE_CONFIG", None)
    options = ["-X", f"credbridge-fault={fault}"] if fault else []
    return subprocess.run(
        [sys.executable, *options, "-c", RUN_WITH_PLUGIN, module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or directory,
        timeout=120,
        check=False,
    )


RAISING_COMMANDS = """
import click
from credbridge.core import hookimpl

@hookimpl
def credbridge_commands(cli):
    @cli.command()
    def boom():
        raise ValueError("command-canary-" + "value-in-message")

    @cli.group()
    def tool():
        pass

    @tool.command()
    def sub():
        raise KeyError("subcommand-canary")

    @cli.command()
    def usage():
        raise click.UsageError("click's own errors stay click's")
"""


def test_a_raising_plugin_command_is_that_plugins_bug_exit_11(tmp_path: Path) -> None:
    (tmp_path / "raising_commands.py").write_text(RAISING_COMMANDS)
    boom = run_with_plugin(tmp_path, "raising_commands", "boom")
    assert boom.returncode == 11, boom.stderr
    assert boom.stderr.splitlines() == [
        "credbridge: error: plugin 'raising_commands' ((registered for a test)) failed in "
        "command 'boom': ValueError (a bug in that plugin: report it with the output of -vv)"
    ]
    sub = run_with_plugin(tmp_path, "raising_commands", "tool", "sub")
    assert sub.returncode == 11, sub.stderr
    assert "failed in command 'tool sub': KeyError" in sub.stderr
    assert "subcommand-canary" not in sub.stderr
    verbose = run_with_plugin(tmp_path, "raising_commands", "-vv", "boom")
    assert verbose.returncode == 11
    assert "raising_commands.py" in verbose.stderr  # where it happened, never the message
    assert "command-canary-value-in-message" not in verbose.stderr
    usage = run_with_plugin(tmp_path, "raising_commands", "usage")
    assert usage.returncode == 2
    assert "click's own errors stay click's" in usage.stderr


def write_doc_example(directory: Path, kind: str) -> str:
    """The module of docs/plugins.md's ``KIND-example``, written into ``directory``: its name."""
    text = (REPO / "docs" / "plugins.md").read_text()
    ((name, code),) = re.findall(
        rf"<!-- {kind}-example: (\S+) -->\n```python\n(.*?)```", text, re.DOTALL
    )
    (directory / name).write_text(code)
    return str(name.removesuffix(".py"))


def test_pass_config_example_gets_the_config_named_with_c(tmp_path: Path) -> None:
    """The command example in docs/plugins.md, run as written."""
    module = write_doc_example(tmp_path, "command")
    config = tmp_path / "elsewhere.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        '[targets."app.service".credentials]\n'
        'a = "generate:hex"\nb = "generate:uuid"\n'
        '[targets."web.service".credentials]\nkey = "generate:hex"\n'
    )
    expected = "app.service unit 2\nweb.service unit 1\n"
    after = run_with_plugin(tmp_path, module, "targets", "-c", str(config))
    assert (after.returncode, after.stdout) == (0, expected), after.stderr
    before = run_with_plugin(tmp_path, module, "-c", str(config), "targets", "--kind", "unit")
    assert (before.returncode, before.stdout) == (0, expected), before.stderr
    vms = run_with_plugin(tmp_path, module, "-c", str(config), "targets", "--kind", "vm")
    assert (vms.returncode, vms.stdout) == (0, ""), vms.stderr
    config.write_text('[targets."app.service".credentials\na = "generate:hex"\n')
    bad = run_with_plugin(tmp_path, module, "targets", "-c", str(config))
    assert bad.returncode == 3, bad.stderr
    assert str(config) in bad.stderr and "Traceback" not in bad.stderr


def test_plugin_load_warnings_are_left_to_the_embedding_program() -> None:
    """A library's warnings go through logging; without a handler of the program's, nothing is
    printed (no last-resort output), while the credbridge command prints them itself."""
    code = "from credbridge.core import get_plugin_manager; get_plugin_manager()"
    env = {**os.environ, "CREDBRIDGE_DISABLE_PLUGINS": "no-such-plugin"}
    quiet = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert quiet.stderr == ""
    configured = subprocess.run(
        [sys.executable, "-c", f"import logging; logging.basicConfig(); {code}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "names no installed plugin: no-such-plugin" in configured.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "credbridge.core", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "credbridge: WARNING:" in cli.stderr and "no-such-plugin" in cli.stderr


def test_dir_of_the_package_is_its_public_api() -> None:
    import credbridge.core

    assert dir(credbridge.core) == sorted(credbridge.core.__all__)
    for name in credbridge.core.__all__:
        assert getattr(credbridge.core, name) is not None, name


def test_sink_example_delivers_swaps_and_cleans_up_through_credbridge(tmp_path: Path) -> None:
    """The sink example in docs/plugins.md, run through check, deliver --dry-run and deliver."""
    module = write_doc_example(tmp_path, "sink")
    out = tmp_path / "out"
    config = tmp_path / "credbridge.toml"
    (tmp_path / "db").write_text("first")

    def configure(credentials: str) -> None:
        config.write_text(
            f'[store]\npath = "{tmp_path / "store"}"\n'
            f'[sinks.dirset]\ndirectory = "{out}"\n'
            '[targets."app.service"]\nsink = "dirset"\n'
            f'[targets."app.service".credentials]\n{credentials}'
        )

    def credbridge(*args: str) -> subprocess.CompletedProcess[str]:
        return run_with_plugin(tmp_path, module, "-c", str(config), *args)

    configure(f'db = "file:{tmp_path / "db"}"\nkey = "generate:hex?bytes=8"\n')
    checked = credbridge("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dry = credbridge("deliver", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not out.exists()  # a dry run writes nothing, takes no lock
    first = credbridge("deliver")
    assert first.returncode == 0, first.stderr
    live = out / "app.service"
    assert sorted(p.name for p in live.iterdir()) == ["db", "key"]
    assert (live / "db").read_bytes() == b"first"
    assert (live / "db").stat().st_mode & 0o777 == 0o400
    key = (live / "key").read_bytes()
    assert len(key) == 16

    (tmp_path / "db").write_text("second")
    configure(f'db = "file:{tmp_path / "db"}"\nnew = "generate:uuid"\n')
    planned = credbridge("deliver", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    second = credbridge("deliver")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in live.iterdir()) == ["db", "new"]
    assert (live / "db").read_bytes() == b"second"
    # finalize() removed the old set; only the live set and the lock file remain.
    assert sorted(p.name for p in out.iterdir()) == [".credbridge.lock", "app.service"]

    # An unsafe directory: refused before anything is resolved (deliver), a FAIL line (check).
    (tmp_path / "real").mkdir()
    out.rename(tmp_path / "gone")
    out.symlink_to(tmp_path / "real")
    refused = credbridge("deliver")
    assert refused.returncode == 13, refused.stderr
    failed = credbridge("check")
    assert failed.returncode == 13, failed.stdout + failed.stderr
    assert "FAIL" in failed.stdout
    assert list((tmp_path / "real").iterdir()) == []


def test_sink_example_rolls_back_a_committed_target(tmp_path: Path) -> None:
    """The second target's commit fails (a failing disk): the first, committed, is put back."""
    module = write_doc_example(tmp_path, "sink")
    out = tmp_path / "out"
    value = tmp_path / "value"
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[sinks.dirset]\ndirectory = "{out}"\n'
        + "".join(
            f'[targets."{unit}"]\nsink = "dirset"\n'
            f'[targets."{unit}".credentials]\nv = "file:{value}"\n'
            for unit in ("a.service", "b.service")
        )
    )
    value.write_text("old")
    delivered = run_with_plugin(tmp_path, module, "-c", str(config), "deliver")
    assert delivered.returncode == 0, delivered.stderr
    value.write_text("new")
    failed = run_with_plugin(
        tmp_path, module, "-c", str(config), "deliver", fault="engine.commit@2:error"
    )
    assert failed.returncode == 9, failed.stderr
    assert "delivery failed, nothing changed" in failed.stderr
    for unit in ("a.service", "b.service"):
        assert (out / unit / "v").read_bytes() == b"old", unit
    assert sorted(p.name for p in out.iterdir()) == [".credbridge.lock", "a.service", "b.service"]
    again = run_with_plugin(tmp_path, module, "-c", str(config), "deliver")
    assert again.returncode == 0, again.stderr
    assert (out / "b.service" / "v").read_bytes() == b"new"


class _MemoryStore(Store):
    """A third-party store written for the old API: no run lock (``lock_file`` returns None)."""

    def __init__(self) -> None:
        self.values: dict[str, Secret] = {}

    def read(self, key: str, *, previous: bool = False) -> Secret | None:
        return None if previous else self.values.get(key)

    def create(self, key: str, value: Secret) -> Secret:
        return self.values.setdefault(key, value)

    def rotate(self, key: str, value: Secret) -> None:
        self.values[key] = value

    def keys(self) -> list[str]:
        return sorted(self.values)

    def location(self) -> str:
        return "memory"

    def lock_file(self) -> Path:
        return None  # type: ignore[return-value]


def test_a_store_must_have_a_run_lock(tmp_path: Path) -> None:
    """Every store serialises rotate with deliver: a store without a run lock is refused as a
    broken plugin before it is used, and a Store subclass without lock_file() cannot exist."""

    class Provides:
        @hookimpl
        def credbridge_stores(self) -> list[StoreType]:
            return [StoreType(name="memory", open=lambda _context: _MemoryStore())]

    plugins = manager_with(Provides())
    config = parse_config(
        {"store": {"type": "memory"}, "targets": {"app": {"credentials": {"x": "generate:hex"}}}},
        directory=tmp_path,
        plugins=plugins,
    )
    with (
        Session(config, plugins=plugins) as session,
        pytest.raises(PluginError, match=r"store 'memory': lock_file\(\) returned no lock"),
    ):
        session.rotate("app", "x")

    class Unlocked(Store):
        read = _MemoryStore.read
        create = _MemoryStore.create
        rotate = _MemoryStore.rotate
        keys = _MemoryStore.keys
        location = _MemoryStore.location

    with pytest.raises(TypeError, match="lock_file"):
        Unlocked()  # type: ignore[abstract]


class _Typed:
    """A third-party source declaring typed settings, as docs/plugins.md shows."""

    opened = 0

    @hookimpl
    def credbridge_sources(self) -> Iterable[SourceType]:
        def never_opened(context: Any) -> Any:
            _Typed.opened += 1
            raise AssertionError("a config with bad settings must not reach open()")

        yield SourceType(
            scheme="typed",
            open=never_opened,
            settings=[
                Setting("endpoint", "string", doc="where the service listens"),
                Setting("timeout", "duration", 10.0, doc="seconds per request", maximum=60),
                Setting("mode", "choice", "fast", doc="how hard to try", choices=("fast", "safe")),
            ],
        )


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ({"endpont": "x"}, "sources.typed.endpont", "did you mean 'endpoint'? known: endpoint"),
        ({"timeout": 61}, "sources.typed.timeout", "at most 60"),
        ({"mode": "slow"}, "sources.typed.mode", "must be one of fast, safe, not 'slow'"),
    ],
)
def test_a_third_party_plugins_declared_settings_are_checked_at_load(
    table: dict[str, Any], key: str, problem: str
) -> None:
    manager = manager_with(_Typed())
    with pytest.raises(ConfigError) as error:
        parse_config({"sources": {"typed": table}}, path=Path("/etc/c.toml"), plugins=manager)
    assert str(error.value).startswith(f"/etc/c.toml: {key}: "), str(error.value)
    assert problem in str(error.value)
    assert "\n" not in str(error.value)
    assert _Typed.opened == 0


def test_a_config_is_validated_once() -> None:
    """parse_config validates; a Session with the same plugins does not validate again."""
    calls: list[str] = []

    class Counting:
        @hookimpl
        def credbridge_sources(self) -> Iterable[SourceType]:
            yield SourceType(scheme="counted", open=lambda ctx: None, validate=calls.append)

    manager = manager_with(Counting())
    data = {"targets": {"a.service": {"credentials": {"x": "counted:one"}}}}
    config = parse_config(data, plugins=manager)
    assert len(calls) == 1
    with Session(config, plugins=manager) as session:
        session.validate()
    assert len(calls) == 1
    # Other plugins are another check: the config is validated against them too.
    with Session(config, plugins=manager_with(Counting())) as session:
        session.validate()
    assert len(calls) == 2


def test_plugins_verbose_lists_each_plugins_settings() -> None:
    result = run_cli("plugins", "-v")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    vault = text[text.index("source vault settings:") :]
    assert "    retries: integer 0..10, default 3 -- retries of a failed request\n" in vault
    assert "    ca_cert: path -- CA bundle to verify the server ($VAULT_CACERT)\n" in vault
    assert "  sink fw-cfg settings: none\n" in text
    assert "retry_mode: choice: standard | adaptive, default 'standard'" in text
    assert "memory: size (bytes or '512M', at most 1 PiB), default 536870912" in text
    assert "settings:" not in run_cli("plugins").stdout.decode()
    listing = json.loads(run_cli("plugins", "--json", "--verbose").stdout)
    vault_plugin = next(p for p in listing["plugins"] if p["name"] == "vault")
    retries = next(
        s for s in vault_plugin["settings"]["sources"]["vault"] if s["name"] == "retries"
    )
    assert retries == {
        "name": "retries",
        "kind": "integer",
        "type": "integer 0..10",
        "default": 3,
        "doc": "retries of a failed request",
    }


def test_an_error_class_of_a_plugin_names_its_exit_code_and_kind_in_the_class_line() -> None:
    """docs/plugins.md, CredbridgeError: the class keywords set what messages and exits use."""
    from credbridge.core import ExitCode, SourceError, Unreachable

    class Sealed(SourceError, exit_code=ExitCode.UNREACHABLE, kind="sealed"):
        pass

    class StillSealed(Sealed):
        pass

    error = StillSealed("vault:secret/app", "the vault is sealed").for_credential("app", "db")
    assert (error.exit_code, error.kind) == (ExitCode.UNREACHABLE, "sealed")
    assert str(error) == "app/db: vault:secret/app: sealed: the vault is sealed"
    assert (SourceError.exit_code, SourceError.kind) == (ExitCode.NOT_FOUND, "failed")
    assert (Unreachable.exit_code, Unreachable.kind) == (ExitCode.UNREACHABLE, "unreachable")


def test_a_plugin_command_never_takes_the_name_of_a_lazily_loaded_built_in() -> None:
    """`unit`, `plugins`, `agent` and `status` load only when they run; a plugin's command of
    one of those names is refused as a clash in any run, not only once the built-in loaded."""
    code = textwrap.dedent(
        """
        import click
        from credbridge.core import hookimpl
        from credbridge.core.cli import cli
        from credbridge.core.plugins import get_plugin_manager

        class Clasher:
            @hookimpl
            def credbridge_commands(self, cli):
                @cli.command()
                def hello():
                    click.echo("hello")

                @cli.command()
                def status():
                    click.echo("plugin status")

        get_plugin_manager().register(Clasher(), "clasher")
        cli(["hello"], prog_name="credbridge", standalone_mode=False)
        assert cli.get_command(click.Context(cli), "status").callback.__module__ == (
            "credbridge.core.cli_agent"
        )
        print(*get_plugin_manager().infos["clasher"].warnings, sep=chr(10))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello",
        "command 'status' clashes with 'core''s; skipped",
    ]
