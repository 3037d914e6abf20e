"""Start-up stays light: loading plugins imports only their registration modules, and a config
without VMs never imports the launchers or networking (bench/bench_core.py has the timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.configs import app_service_config

IMPLEMENTATIONS = [
    "credbridge.backends.local",
    "credbridge.backends.generate",
    "credbridge.backends.generators",
    "credbridge.backends.filestore",
    "credbridge.backends.credstore",
    "credbridge.backends.vault",
    "credbridge.backends.oem_strings",
    "credbridge.backends.fw_cfg",
    "credbridge.backends.virtiofs",
    "credbridge.launchers.cloud_hypervisor",
    "credbridge.launchers.qemu",
    "credbridge.launchers.runtime",
    "credbridge.launchers.vmspec",
]
NEVER_WITHOUT_VMS = [
    "http.client",
    "ssl",
    "socket",
    "credbridge.launchers.cloud_hypervisor",
    "credbridge.launchers.qemu",
    "credbridge.launchers.runtime",
    "credbridge.launchers.vmspec",
    "hvac",
    "requests",
    "boto3",
]


def modules_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    probe = (
        code + "\nimport sys\nloaded = sorted(sys.modules)\n"
        "import json\nprint()\nprint(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CREDBRIDGE_LOAD_PLUGINS": "", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_loading_every_plugin_imports_no_implementation() -> None:
    loaded = modules_after(
        "from credbridge.core.plugins import get_plugin_manager\n"
        "manager = get_plugin_manager()\n"
        "manager.collect_all()\n"
        "assert len(manager.sources()) >= 6 and 'qemu' in manager.launchers()\n"
    )
    assert [m for m in IMPLEMENTATIONS if m in loaded] == []
    assert "credbridge.backends.hooks.vault" in loaded


def test_a_record_loads_its_implementation_on_first_use() -> None:
    loaded = modules_after(
        "from credbridge.core import resolve\nassert resolve(['env:PATH'])['env:PATH'].reveal()\n"
    )
    assert "credbridge.backends.local" in loaded
    assert "credbridge.backends.generate" not in loaded


def unit_config(tmp_path: Path, credstore: Path) -> Path:
    return app_service_config(tmp_path, credstore, 'home = "env:HOME"')


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins"],
        ["plugins", "--json"],
        ["get", "env:HOME"],
        ["deliver", "--dry-run"],
        ["deliver"],
        ["deliver", "--json"],
        ["check"],
        ["unit", "app.service"],
        ["rotate", "app.service", "api-key"],
    ],
)
def test_configs_without_vms_never_import_launchers_or_networking(
    args: list[str], tmp_path: Path, tmpfs_dir: Path
) -> None:
    path = unit_config(tmp_path, tmpfs_dir)
    loaded = modules_after(
        "from credbridge.core.cli import cli\n"
        "try:\n"
        f"    cli({['-c', str(path), *args]!r}, prog_name='credbridge')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n",
        env={"HOME": str(tmp_path)},
    )
    assert [m for m in NEVER_WITHOUT_VMS if m in loaded] == []


def test_the_module_check_can_fail() -> None:
    """Negative control: a VM's launch plan does import its launcher."""
    loaded = modules_after(
        "from credbridge.core import parse_config, Session\n"
        "config = parse_config({'targets': {'vm': {'kind': 'vm', 'launcher': "
        "{'type': 'cloud-hypervisor', 'kernel': '/k', 'runtime_dir': '/dev/shm/cb-none'}}}})\n"
        "Session(config).launch('vm', dry_run=True)\n"
    )
    assert "credbridge.launchers.cloud_hypervisor" in loaded
    assert "http.client" in loaded


NEVER_FOR_GET_ENV = [
    "ctypes",  # libc is loaded when a file system is checked or a directory swapped
    "subprocess",
    "select",
    "selectors",
    "shutil",
    "json",
    "tomllib",
    "secrets",
    "concurrent.futures",
    "importlib.metadata",
    "credbridge.core.process",
    # The core's records are made by core.records, which compiles no code (docs/performance.md).
    "dataclasses",
    # get resolves through core.resolution's Resolver: none of the delivery code (plans,
    # commits, run locks, unit restarts, reports) and none of the CLI's other commands.
    "credbridge.core.engine",
    "credbridge.core.units",
    "credbridge.core.report",
    "credbridge.core.fsutil",
    "credbridge.core.faults",
    "credbridge.core.cli_unit",
    "credbridge.core.cli_plugins",
    "credbridge.backends.generate",
    "credbridge.backends.filestore",
    "credbridge.backends.credstore",
]
NEVER_FOR_HELP = [
    # click sizes the help to the terminal; it lists the lazily loaded commands' short help
    *(m for m in NEVER_FOR_GET_ENV if m != "shutil" and not m.startswith("credbridge.core.cli_")),
    "pluggy",
    "credbridge.core.engine",
    "credbridge.core.plugins",
    "credbridge.core.plugin_calls",
    "credbridge.core.types",
    "credbridge.core.interfaces",
    "credbridge.core.config",
    "credbridge.core.fsutil",
    "credbridge.core.trusted_dirs",
]


@pytest.mark.parametrize(
    ("args", "never"), [(["get", "env:HOME"], NEVER_FOR_GET_ENV), (["--help"], NEVER_FOR_HELP)]
)
def test_the_quickest_commands_import_nothing_they_do_not_use(
    args: list[str], never: list[str], tmp_path: Path
) -> None:
    """No config (HOME has none): what `get env:HOME` and `--help` load is start-up cost only
    (docs/performance.md: their ratio to a bare `python -c pass`)."""
    loaded = modules_after(
        "import sys\n"
        "from credbridge.core.cli import cli\n"
        "try:\n"
        f"    cli({args!r}, prog_name='credbridge')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "sys.stdout.flush()\n",
        env={"HOME": str(tmp_path)},
    )
    assert [m for m in never if m in loaded] == []


def test_a_kept_delivery_starts_no_child_and_loads_no_openssl(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    """The everyday `ExecStartPre=credbridge deliver` of kept values: no child process, so no
    subprocess machinery; comparing values needs no OpenSSL (hmac, _hashlib)."""
    path = unit_config(tmp_path, tmpfs_dir)
    code = (
        "from credbridge.core.cli import cli\n"
        "try:\n"
        f"    cli({['-c', str(path), 'deliver', '--no-restart']!r}, prog_name='credbridge')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
    )
    modules_after(code, env={"HOME": str(tmp_path)})  # the first run generates and keeps
    loaded = modules_after(code, env={"HOME": str(tmp_path)})
    assert "credbridge.backends.credstore" in loaded
    assert [m for m in ("subprocess", "selectors", "hmac", "_hashlib") if m in loaded] == []
