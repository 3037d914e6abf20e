"""What docs/cli.md promises about the environment and two exit codes.

``CREDBRIDGE_CONFIG`` and ``CREDBRIDGE_STORE`` pick the config and the store; progress is
drawn only for a person at a terminal (never under systemd: ``INVOCATION_ID``,
``JOURNAL_STREAM``); an interrupt exits 130; a store the user may not read exits 6.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.proc import deliver_stopped_once_resolved

CLI = [sys.executable, "-m", "credbridge.core.cli"]


def write_config(directory: Path, store: Path | None, credstore: Path, value: str) -> Path:
    (directory / "value").write_text(value)
    lines = [f'[sinks.credstore]\ndirectory = "{credstore}"']
    if store is not None:
        lines.insert(0, f'[store]\npath = "{store}"')
    lines += [
        '[targets."app.service".credentials]',
        f'static = "file:{directory / "value"}"',
        'made = "generate:hex?bytes=8"',
    ]
    config = directory / "elsewhere.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_credbridge_config_and_credbridge_store_choose_config_and_store(
    tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    config = write_config(tmp_path, None, tmpfs_dir, "from-env-config")
    store = tmp_path / "env-store"
    cwd = tmp_path / "cwd"  # no ./credbridge.toml here
    cwd.mkdir()
    env = {"CREDBRIDGE_CONFIG": str(config), "CREDBRIDGE_STORE": str(store)}
    result = cli("deliver", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert (tmpfs_dir / "app.service" / "static").read_bytes() == b"from-env-config"
    assert (store / "app.service" / "made" / "current").exists()
    made = (tmpfs_dir / "app.service" / "made").read_bytes()
    assert (store / "app.service" / "made" / "current").read_bytes() == made
    # -c wins over $CREDBRIDGE_CONFIG; without either, ./credbridge.toml is looked for.
    missing = cli("deliver", env={"CREDBRIDGE_CONFIG": str(tmp_path / "nope.toml")}, cwd=cwd)
    assert missing.returncode == 3
    assert str(tmp_path / "nope.toml") in missing.stderr.decode()
    chosen = cli(
        "-c",
        str(config),
        "deliver",
        env={"CREDBRIDGE_CONFIG": "/nope.toml", "CREDBRIDGE_STORE": str(store)},
        cwd=cwd,
    )
    assert chosen.returncode == 0, chosen.stderr


def run_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run with stderr on a pseudo-terminal (as a person would); return (rc, what it drew)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal, env=env
    )
    os.close(terminal)
    drawn = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            process.kill()
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    return process.wait(timeout=60), drawn


@pytest.mark.parametrize(
    ("extra", "draws"),
    [
        ({}, True),
        ({"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}, False),
        ({"JOURNAL_STREAM": "8:12345"}, False),
        ({"TERM": "dumb"}, False),
    ],
    ids=["terminal", "INVOCATION_ID", "JOURNAL_STREAM", "TERM=dumb"],
)
def test_progress_only_for_a_person_at_a_terminal(
    tmp_path: Path, tmpfs_dir: Path, extra: dict[str, str], draws: bool
) -> None:
    config = write_config(tmp_path, tmp_path / "store", tmpfs_dir, "v")
    env = {k: v for k, v in os.environ.items() if k not in {"INVOCATION_ID", "JOURNAL_STREAM"}}
    env.update({"TERM": "xterm", **extra})
    rc, drawn = run_on_terminal([*CLI, "-c", str(config), "deliver"], env)
    assert rc == 0, drawn
    progress = b"resolving" in drawn or b"staging" in drawn
    assert progress is draws, drawn
    assert b"app.service: 2 added" in drawn  # the summary is always there


def test_an_interrupt_exits_130_and_changes_nothing(tmp_path: Path, tmpfs_dir: Path) -> None:
    config = write_config(tmp_path, tmp_path / "store", tmpfs_dir, "v")
    # Paused (SIGSTOP, the test-only switch) once every value is resolved; SIGINT then.
    process = deliver_stopped_once_resolved(config)
    os.kill(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines() == ["credbridge: interrupted"]
    assert not (tmpfs_dir / "app.service").exists()


def test_a_store_the_user_may_not_read_exits_6(tmp_path: Path, tmpfs_dir: Path) -> None:
    """Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH is an ordinary user to the kernel:
    a key directory of mode 000 cannot be read."""
    config = write_config(tmp_path, tmp_path / "store", tmpfs_dir, "v")
    assert subprocess.run([*CLI, "-c", str(config), "deliver"], check=False).returncode == 0
    key_dir = tmp_path / "store" / "app.service" / "made"
    key_dir.chmod(0)
    try:
        result = subprocess.run(
            [
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                *CLI,
                "-c",
                str(config),
                "get",
                "stored:app.service/made",
            ],
            capture_output=True,
            check=False,
        )
    finally:
        key_dir.chmod(0o700)
    assert result.returncode == 6, result.stderr
    assert result.stderr.decode().splitlines() == [
        "credbridge: error: stored:app.service/made: store key app.service/made: Permission denied"
    ]
    assert result.stdout == b""
