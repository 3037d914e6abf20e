"""The first hour of a new user: -c anywhere, the deliver summary, what check reports, the
README's lines from the checkout, one key set for launch plans, and bugs as one line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, run_cli
from credbridge.core.types import PLAN_KEYS
from support.canary import run_cli_watched
from support.configs import app_service_config


def unit_config(tmp_path: Path, credstore: Path) -> Path:
    return app_service_config(tmp_path, credstore, 'token = "env:CB_NEWCOMER_TOKEN"')


def test_config_option_is_accepted_after_the_command(tmp_path: Path, tmpfs_dir: Path) -> None:
    path = str(unit_config(tmp_path, tmpfs_dir))
    env = {"CB_NEWCOMER_TOKEN": "t"}
    for args in (
        ("deliver", "--dry-run", "-c", path),
        ("deliver", "--config", path, "--dry-run"),
        ("check", "-c", path),
        ("unit", "app.service", "-c", path),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
    missing = run_cli("deliver", "-c", str(tmp_path / "nope.toml"))
    assert missing.returncode == 3
    assert b"nope.toml: config file not found" in missing.stderr


def test_deliver_ends_with_a_summary_and_keeps_the_lines(tmp_path: Path, tmpfs_dir: Path) -> None:
    path = str(unit_config(tmp_path, tmpfs_dir))
    env = {"CB_NEWCOMER_TOKEN": "token-canary-value"}
    dry = run_cli("deliver", "--dry-run", "-c", path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert all(len(line.split("\t")) == 5 for line in dry.stdout.decode().splitlines())
    summary = dry.stderr.decode()
    assert f"credbridge: app.service: would add 2 (credstore: {tmpfs_dir}/app.service)" in summary
    assert f"would be kept in the store: {tmp_path / 'store'}" in summary
    assert "nothing was changed (dry run)" in summary
    real = run_cli("deliver", "-c", path, env=env)
    assert real.returncode == 0, real.stderr
    assert f"app.service: 2 added (credstore: {tmpfs_dir}/app.service)" in real.stderr.decode()
    assert f"are kept in the store: {tmp_path / 'store'}" in real.stderr.decode()
    again = run_cli("deliver", "-c", path, env=env)
    assert "app.service: 2 kept" in again.stderr.decode()
    assert "kept in the store" not in again.stderr.decode()  # nothing new was generated
    as_json = run_cli("deliver", "--json", "-c", path, env=env)
    assert set(json.loads(as_json.stdout)) == {"dry_run", "entries", "skipped", "units", "warnings"}
    for result in (dry, real, again, as_json):
        assert b"token-canary-value" not in result.stdout + result.stderr


def test_check_reports_a_credstore_not_on_tmpfs(tmp_path: Path) -> None:
    # The checkout is on a persistent disk; nothing is written there (check plans only).
    persistent = REPO / "no-such-credstore"
    path = unit_config(tmp_path, persistent)
    result = run_cli("check", "-c", str(path), env={"CB_NEWCOMER_TOKEN": "t"})
    out = result.stdout.decode()
    assert result.returncode == 9, result.stderr
    assert "ok\tapp.service/token\tenv:CB_NEWCOMER_TOKEN\treadable" in out
    assert re.search(r"^FAIL\tapp\.service\tsink credstore\t.*not on tmpfs or ramfs", out, re.M)
    assert not persistent.exists()


def vm_config(tmp_path: Path, kernel: Path) -> Path:
    path = tmp_path / "vm.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        '[targets.test-vm]\nkind = "vm"\nsink = "oem-strings"\n'
        f'[targets.test-vm.launcher]\ntype = "cloud-hypervisor"\nkernel = "{kernel}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n'
        f'[targets.test-vm.credentials]\nAPI_KEY = "env:CB_NEWCOMER_VM"\n'
    )
    return path


def test_check_reports_what_launch_would_refuse(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    good = run_cli("check", "-c", str(vm_config(tmp_path, kernel)), env={"CB_NEWCOMER_VM": "v"})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok\ttest-vm\tlauncher cloud-hypervisor\tready to launch" in good.stdout.decode()
    empty = run_cli("check", "-c", str(vm_config(tmp_path, kernel)), env={"CB_NEWCOMER_VM": ""})
    assert empty.returncode == 9
    assert re.search(
        r"^FAIL\ttest-vm\tlauncher cloud-hypervisor\tcredential 'API_KEY': empty value",
        empty.stdout.decode(),
        re.M,
    )
    missing = run_cli(
        "check",
        "-c",
        str(vm_config(tmp_path, tmp_path / "nope")),
        env={"CB_NEWCOMER_VM": "v"},
    )
    assert missing.returncode == 10
    assert "targets.test-vm.launcher.kernel: no file" in missing.stdout.decode()


def test_launch_plans_have_the_same_keys_for_both_launchers(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    plans: dict[str, Any] = {}
    for launcher in ("cloud-hypervisor", "qemu"):
        path = vm_config(tmp_path, kernel)
        path.write_text(path.read_text().replace('"cloud-hypervisor"', f'"{launcher}"'))
        result = run_cli(
            "launch", "test-vm", "--dry-run", "-c", str(path), env={"CB_NEWCOMER_VM": "v"}
        )
        assert result.returncode == 0, result.stderr
        plans[launcher] = json.loads(result.stdout)
    assert list(plans["qemu"]) == list(plans["cloud-hypervisor"]) == list(PLAN_KEYS)
    assert plans["qemu"]["target"] == plans["cloud-hypervisor"]["target"] == "test-vm"


def test_a_bug_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from credbridge.core import resolution
    from credbridge.core.cli import cli

    def broken(self: Any, reference: str) -> None:
        raise ZeroDivisionError("bug-canary-" + "in-message")

    monkeypatch.setattr(resolution.Resolver, "resolve_one", broken)
    result = CliRunner().invoke(cli, ["get", "env:HOME"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "credbridge: error: internal error (ZeroDivisionError): a bug in credbridge; please "
        "report it with the output of -vv"
    ]
    verbose = CliRunner().invoke(cli, ["-vv", "get", "env:HOME"])
    assert verbose.exit_code == 1
    assert "in broken" in verbose.output
    assert "bug-canary-in-message" not in verbose.output


def test_readme_quick_start_runs_from_the_checkout(tmp_path: Path, tmpfs_dir: Path) -> None:
    """The quick-start lines, run as shown from (a copy of) the checkout."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)\n```", text, re.DOTALL) if "--dry-run" in b)
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "examples", checkout / "examples")
    demo = checkout / "examples" / "credbridge.toml"
    demo.write_text(
        demo.read_text().replace("/dev/shm/credbridge-demo/credstore", str(tmpfs_dir / "cs"))
    )
    lines = [line.partition("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(lines) >= 4
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == ".venv/bin/credbridge"
        result = run_cli(*argv[1:], cwd=checkout, env={"CREDENTIALS_DIRECTORY": ""})
        assert result.returncode == 0, (line, result.stderr)
    assert (tmpfs_dir / "cs" / "demo-app.service" / "api-key").stat().st_size == 44


def test_boot_unit_names_the_credbridge_that_is_installed(tmp_path: Path, tmpfs_dir: Path) -> None:
    """``unit --boot`` writes credbridge-deliver.service naming the entry point that ran it
    (not a /usr/bin/credbridge nothing creates); systemd accepts it, and its ExecStart= runs."""
    entry_point = Path(sys.executable).parent / "credbridge"
    assert entry_point.is_file()
    config = unit_config(tmp_path, tmpfs_dir)
    units = tmp_path / "units"
    installed = subprocess.run(
        [str(entry_point), "-c", str(config), "unit", "--boot", "--install", "--unit-dir", units],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    service = units / "credbridge-deliver.service"
    text = service.read_text()
    (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert command == [str(entry_point), "-c", str(config), "deliver"]
    assert "Before=app.service\n" in text
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(
            ["systemd-analyze", "verify", str(service)], capture_output=True, text=True
        )
        assert verified.returncode == 0, verified.stderr
    delivered = run_cli_watched(
        command,
        tuple(command[1:]),
        env={**os.environ, "CB_NEWCOMER_TOKEN": "t"},
        cwd=tmp_path,
        input=None,
        timeout=120,
    )
    assert delivered.returncode == 0, delivered.stderr
    assert sorted(p.name for p in (tmpfs_dir / "app.service").iterdir()) == ["api-key", "token"]
    # Run as a module, the unit names this interpreter and the module.
    module = run_cli("-c", str(config), "unit", "--boot")
    assert module.returncode == 0, module.stderr
    assert f"ExecStart={sys.executable} -m credbridge.core -c {config} deliver\n" in (
        module.stdout.decode()
    )
    both = run_cli("-c", str(config), "unit", "--boot", "app.service")
    assert both.returncode == 2
