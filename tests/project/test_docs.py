"""The docs describe what the code does: hook signatures, the API example, the CLI commands."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from conftest import REPO
from credbridge.core import hookspecs
from credbridge.core.cli import cli

DOCS = REPO / "docs"
HOOKS = [
    name
    for name, fn in vars(hookspecs).items()
    if name.startswith("credbridge_") and callable(fn) and hasattr(fn, "credbridge_spec")
]


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    sig = inspect.signature(fn)
    params = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        for p in sig.parameters.values()
    )
    return f"{name}({params}) -> {sig.return_annotation}"


def test_there_are_hooks() -> None:
    assert set(HOOKS) == {
        "credbridge_sources",
        "credbridge_sinks",
        "credbridge_launchers",
        "credbridge_stores",
        "credbridge_commands",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_documented_with_exact_signature(hook: str) -> None:
    text = (DOCS / "plugins.md").read_text()
    assert f"### `{signature(hook)}`" in text, (
        f"docs/plugins.md lacks a heading for {signature(hook)}"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    assert (getattr(hookspecs, hook).__doc__ or "").strip()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command: str) -> None:
    assert re.search(rf"^## `credbridge {command}\b", (DOCS / "cli.md").read_text(), re.MULTILINE)


@pytest.mark.parametrize(
    "page",
    [
        "index.md",
        "cli.md",
        "configuration.md",
        "references.md",
        "plugins.md",
        "api.md",
        "security.md",
        "performance.md",
    ],
)
def test_doc_pages_exist(page: str) -> None:
    assert (DOCS / page).stat().st_size > 500


def test_relative_links_resolve() -> None:
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (
                f"{page.relative_to(REPO)} links to missing {target}"
            )


def test_api_example_runs(tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example in docs/api.md runs as written (paths pointed at temp dirs)."""
    text = (DOCS / "api.md").read_text()
    (code,) = re.findall(r"<!-- tested-example -->\n```python\n(.*?)```", text, re.DOTALL)
    code = code.replace("/run/credstore", str(tmpfs_dir)).replace(
        "/var/lib/credbridge", str(tmp_path / "store")
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - running our own docs
    assert (tmpfs_dir / "app.service" / "db-password").stat().st_size == 44


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, re.DOTALL)[:2]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_command() -> None:
    install, test = readme_commands()
    assert "\n" not in install and "\n" not in test
    # A stock Debian image has no package lists: both commands start by fetching them.
    assert install.startswith("apt-get update && ") and test.startswith("apt-get update && ")
    assert "examples/credbridge.toml deliver" in install
    assert "pytest" in test
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci


# --------------------------------------------------------------------------- the reference


def _reference_text() -> str:
    return (DOCS / "plugins.md").read_text() + (DOCS / "api.md").read_text()


def _section(text: str, name: str) -> str:
    start = re.search(rf"^### `{re.escape(name)}[`(]", text, re.MULTILINE)
    assert start, f"no '### `{name}`' entry in docs/plugins.md or docs/api.md"
    end = re.search(r"^##", text[start.end() :], re.MULTILINE)
    return text[start.end() : start.end() + end.start()] if end else text[start.end() :]


def _public_names() -> list[str]:
    import credbridge.core
    import credbridge.testing

    names = [n for n in credbridge.core.__all__ if not n.startswith("_")]
    return sorted({*names, "credbridge.testing", *credbridge.testing.__all__} - {"registered"})


@pytest.mark.parametrize("name", _public_names())
def test_every_public_name_has_an_entry(name: str) -> None:
    text = _reference_text()
    if name in {"PluginRegistrar", "credbridge_plugins"}:
        name = "credbridge.testing"
    assert re.search(rf"^### `{re.escape(name)}[`(]", text, re.MULTILINE), (
        f"{name} is public (credbridge.core.__all__) but has no '### `{name}`' entry in "
        "docs/plugins.md or docs/api.md"
    )


def test_the_public_name_check_can_fail() -> None:
    assert not re.search(r"^### `NoSuchName[`(]", _reference_text(), re.MULTILINE)


def _records() -> list[type]:
    from credbridge.core import types

    return [
        types.SourceType,
        types.SinkType,
        types.LauncherType,
        types.StoreType,
        types.SourceContext,
        types.SinkContext,
        types.LauncherContext,
        types.StoreContext,
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda c: c.__name__)
def test_every_field_of_records_and_contexts_is_documented(record: type) -> None:
    from credbridge.core.records import fields

    section = _section((DOCS / "plugins.md").read_text(), record.__name__)
    for item in fields(record):
        assert f"`{item.name}`" in section, f"{record.__name__}.{item.name} is not documented"


def _interfaces() -> list[type]:
    from credbridge.core import types, vm

    return [
        types.Source,
        types.DocumentSource,
        types.RotatableSource,
        types.Store,
        types.Sink,
        types.Staged,
        vm.VmSink,
        types.Launcher,
    ]


@pytest.mark.parametrize("interface", _interfaces(), ids=lambda c: c.__name__)
def test_every_method_of_interfaces_is_documented(interface: type) -> None:
    section = _section((DOCS / "plugins.md").read_text(), interface.__name__)
    for name, value in vars(interface).items():
        if callable(value) and not name.startswith("_"):
            if interface.__name__ == "VmSink" and name == "stage":
                continue  # documented as refusing, in prose
            assert f"`{name}(" in section, f"{interface.__name__}.{name}() is not documented"
