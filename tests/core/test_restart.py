"""Restart what changed: which units ``deliver`` acts on, once each, after the commit.

systemd itself is exercised in tests/core/test_host_guest.py and tests/nix/test_nixos_host_guest.py
(real units restarting in the host guest, the latter from inside credbridge-deliver.service). Here a ``systemctl`` on PATH records every call -- its argv and what the credstore
held at that moment -- so these tests check the selection: exactly the changed units,
exactly once, after every target committed, the configured action, and per-unit failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.systemctl_stub import calls, outside_a_service, stub, verbs
from support.systemd_creds import null_key_name

__all__ = ["outside_a_service", "stub"]  # fixtures, imported for pytest


def test_the_stub_logs_into_its_own_directory_however_it_is_run(stub: Path, tmp_path: Path) -> None:
    """Run through a shell reading it from stdin ($0 is then "sh"), from another directory:
    the log still lands beside the stub, never in the working directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        ["sh", "-s", "status", "app.service"],
        input=(stub / "systemctl").read_text(),
        text=True,
        cwd=elsewhere,
        check=True,
    )
    assert list(elsewhere.iterdir()) == []
    assert calls(stub) == [{"watched": "", "argv": ["status", "app.service"]}]


def write(tmp_path: Path, credstore: Path, body: str, **values: str) -> Path:
    """The config (``body`` after the store and the credstore sink), with each of ``values``
    written as the file ``values/NAME`` it reads."""
    (tmp_path / "values").mkdir(exist_ok=True)
    for name, data in values.items():
        value(tmp_path, name, data)
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n' + body
    )
    return config


def value(tmp_path: Path, name: str, data: str) -> None:
    path = tmp_path / "values" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(data)


BODY = """
[targets."app.service".credentials]
token = "file:values/token"
[targets."worker.service".credentials]
other = "file:values/other"
"""


def run(cli: Any, stub: Path, config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return cli("-c", str(config), *args, env={"PATH": f"{stub}:{os.environ['PATH']}"})


def test_only_the_changed_unit_is_restarted_once_after_the_commit(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    value(tmp_path, "token", "token-1")
    value(tmp_path, "other", "other-1")
    config = write(tmp_path, tmpfs_dir, BODY)
    first = run(cli, stub, config, "deliver", "--restart")
    assert first.returncode == 0, first.stderr.decode()
    # Both units are new: each restarted (try-restart: a stopped unit stays stopped).
    assert verbs(stub) == [("try-restart", "app.service"), ("try-restart", "worker.service")]
    (stub / "calls.jsonl").unlink()

    (stub / "watch").write_text(str(tmpfs_dir / "app.service" / "token"))
    value(tmp_path, "token", "token-2")
    second = run(cli, stub, config, "deliver", "--restart")
    assert second.returncode == 0, second.stderr.decode()
    assert verbs(stub) == [("try-restart", "app.service")]
    # systemctl ran after the commit: the unit restarts onto the new value.
    assert calls(stub)[0]["watched"] == hashlib.sha256(b"token-2").hexdigest()
    assert calls(stub)[0]["argv"] == ["--no-ask-password", "try-restart", "--", "app.service"]
    assert "unit\tapp.service\trestart\tdone" in second.stdout.decode().splitlines()
    (stub / "calls.jsonl").unlink()

    third = run(cli, stub, config, "deliver", "--restart")
    assert third.returncode == 0
    assert calls(stub) == []


THREE = (
    BODY
    + """
[targets."third.service".credentials]
more = "file:values/more"
"""
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_restarts_cut_short_by_a_signal_are_done_by_the_next_deliver(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, signum: int
) -> None:
    """A stop while systemctl restarts the second of three units: the delivery is committed,
    the second and third units still run with the old values. The record written before the
    first restart makes the next deliver (nothing changed since: every credential 'keep')
    restart exactly those two, and the one after that nothing."""
    for name in ("token", "other", "more"):
        value(tmp_path, name, f"{name}-1")
    config = write(tmp_path, tmpfs_dir, THREE)
    (stub / "slow").write_text("worker.service\n")
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "credbridge.core.cli", "-c", str(config)]
    proc = subprocess.Popen(
        [*command, "deliver", "--restart"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (stub / "slow-started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "systemctl was never called for worker.service"
            time.sleep(0.02)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert verbs(stub) == [("try-restart", "app.service"), ("try-restart", "worker.service")]
    if signum == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert (
            "not yet restarted or reloaded: worker.service, third.service; recorded" in err.decode()
        ), err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL
    (stub / "slow").unlink()
    (stub / "calls.jsonl").unlink()

    second = subprocess.run([*command, "deliver", "--restart"], env=env, capture_output=True)
    assert second.returncode == 0, second.stderr.decode()
    lines = second.stdout.decode().splitlines()
    assert all(line.endswith("\tkeep") for line in lines if not line.startswith("unit\t")), lines
    assert verbs(stub) == [("try-restart", "worker.service"), ("try-restart", "third.service")]
    assert "unit\tworker.service\trestart\tdone (pending from an interrupted run)" in lines
    assert "unit\tthird.service\trestart\tdone (pending from an interrupted run)" in lines
    (stub / "calls.jsonl").unlink()

    third = subprocess.run([*command, "deliver", "--restart"], env=env, capture_output=True)
    assert third.returncode == 0, third.stderr.decode()
    assert calls(stub) == []


def test_no_restart_leaves_pending_restarts_recorded_and_says_so(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    record = tmpfs_dir / ".credbridge-restarts.json"
    record.write_text(
        json.dumps({"units": [{"unit": "app.service", "action": "restart", "targets": []}]})
    )
    record.chmod(0o600)
    kept = run(cli, stub, config, "deliver", "--no-restart")
    assert kept.returncode == 0, kept.stderr.decode()
    assert calls(stub) == []
    assert "still to restart after an interrupted delivery: app.service" in kept.stderr.decode()
    done = run(cli, stub, config, "deliver")
    assert done.returncode == 0, done.stderr.decode()
    assert verbs(stub) == [("try-restart", "app.service")]
    assert not record.exists()


def test_inside_a_service_the_jobs_are_queued_not_awaited(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    """In credbridge-deliver.service (ordered Before= the units it restarts), waiting for a
    restart deadlocks: systemd starts the unit only after the delivering job ended
    (tests/nix/test_nixos_host_guest.py shows it under systemd). So there: --no-block."""
    (stub / "fail").write_text("worker.service\n")
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "INVOCATION_ID": "0" * 32}
    result = cli("-c", str(config), "deliver", "--restart", env=env)
    assert result.returncode == 14, result.stderr.decode()
    assert [c["argv"] for c in calls(stub)] == [
        ["--no-ask-password", "--no-block", "try-restart", "--", "app.service"],
        ["--no-ask-password", "--no-block", "try-restart", "--", "worker.service"],
    ]
    lines = result.stdout.decode().splitlines()
    assert "unit\tapp.service\trestart\tqueued" in lines
    # A job systemd refuses to queue (unknown unit, bad transaction) still fails the run.
    assert any(line.startswith("unit\tworker.service\trestart\tfailed") for line in lines)


def test_without_restart_nothing_is_touched(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    assert run(cli, stub, config, "deliver").returncode == 0
    assert calls(stub) == []


@pytest.mark.parametrize(
    ("settings", "flag", "expected"),
    [
        ('on_change = "reload-or-restart"', (), [("try-reload-or-restart", "app.service")]),
        ('on_change = "restart"', ("--no-restart",), []),
        ('on_change = "none"', ("--restart",), []),
        ('on_change = "reload"', ("--restart",), [("is-active", "app.service")]),
        ("", (), []),
        ("", ("--restart",), [("try-restart", "app.service")]),
    ],
)
def test_on_change_per_target(
    tmp_path: Path,
    tmpfs_dir: Path,
    stub: Path,
    cli: Any,
    settings: str,
    flag: tuple[str, ...],
    expected: list[tuple[str, str]],
) -> None:
    config = write(
        tmp_path,
        tmpfs_dir,
        f'[targets."app.service"]\n{settings}\n'
        '[targets."app.service".credentials]\ntoken = "file:values/token"\n',
        token="a",
    )
    result = run(cli, stub, config, "deliver", *flag)
    assert result.returncode == 0, result.stderr.decode()
    assert verbs(stub) == expected
    if settings.endswith('"reload"'):  # not running: nothing to reload, and said so
        assert "unit\tapp.service\treload\tskipped (not running)" in result.stdout.decode()


def test_reload_of_a_running_unit(tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any) -> None:
    (stub / "active").write_text("app.service\n")
    config = write(
        tmp_path,
        tmpfs_dir,
        '[targets."app.service"]\non_change = "reload"\n'
        '[targets."app.service".credentials]\ntoken = "file:values/token"\n',
        token="a",
    )
    assert run(cli, stub, config, "deliver").returncode == 0
    assert verbs(stub) == [("is-active", "app.service"), ("reload", "app.service")]


def test_defaults_on_change_and_the_command_line(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(
        tmp_path,
        tmpfs_dir,
        '[defaults]\non_change = "restart"\n'
        '[targets."app.service".credentials]\ntoken = "file:values/token"\n'
        '[targets."worker.service"]\non_change = "none"\n'
        '[targets."worker.service".credentials]\nother = "file:values/other"\n',
        token="a",
        other="b",
    )
    assert run(cli, stub, config, "deliver").returncode == 0
    assert verbs(stub) == [("try-restart", "app.service")]


def test_failed_restart_has_its_own_exit_code_and_the_delivery_stays(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    (stub / "fail").write_text("app.service\n")
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    result = run(cli, stub, config, "deliver", "--restart")
    assert result.returncode == 14, result.stderr.decode()
    err = result.stderr.decode()
    assert "delivered, but restart of app.service failed: Job for app.service failed" in err
    # Every unit was still tried once; the delivery is committed.
    assert verbs(stub) == [("try-restart", "app.service"), ("try-restart", "worker.service")]
    assert (tmpfs_dir / "app.service" / "token").read_text() == "a"
    lines = result.stdout.decode().splitlines()
    assert "unit\tworker.service\trestart\tdone" in lines
    assert any(line.startswith("unit\tapp.service\trestart\tfailed") for line in lines)


def test_missing_systemctl_is_a_failed_restart(tmp_path: Path, tmpfs_dir: Path, cli: Any) -> None:
    value(tmp_path, "token", "a")
    config = write(
        tmp_path, tmpfs_dir, '[targets."app.service".credentials]\ntoken = "file:values/token"\n'
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("-c", str(config), "deliver", "--restart", env={"PATH": str(empty)})
    assert result.returncode == 14
    assert "systemctl not found" in result.stderr.decode()


def test_dry_run_and_json_list_the_units(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    dry = run(cli, stub, config, "deliver", "--restart", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    lines = dry.stdout.decode().splitlines()
    assert "unit\tapp.service\trestart\twould" in lines
    assert "unit\tworker.service\trestart\twould" in lines
    assert calls(stub) == []
    assert not (tmpfs_dir / "app.service").exists()
    as_json = run(cli, stub, config, "deliver", "--restart", "--dry-run", "--json")
    units = json.loads(as_json.stdout)["units"]
    assert units == [
        {
            "unit": "app.service",
            "action": "restart",
            "targets": ["app.service"],
            "status": "planned",
            "detail": "",
        },
        {
            "unit": "worker.service",
            "action": "restart",
            "targets": ["worker.service"],
            "status": "planned",
            "detail": "",
        },
    ]
    real = run(cli, stub, config, "deliver", "--restart", "--json")
    assert [u["status"] for u in json.loads(real.stdout)["units"]] == ["done", "done"]


VM_BODY = """
[targets."microvm@vm1.service".credentials]
host-key = "file:values/token"
host-other = "file:values/other"

[targets.vm1]
kind = "vm"
launcher = { type = "qemu", kernel = "/nonexistent" }
[targets.vm1.credentials]
KEY = "credential:host-key"

[targets.vm2]
kind = "vm"
unit = "vm2-runner.service"
launcher = { type = "qemu", kernel = "/nonexistent" }
[targets.vm2.credentials]
KEY = "target:microvm@vm1.service/host-other"
"""


def test_vm_targets_restart_their_unit(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(tmp_path, tmpfs_dir, VM_BODY, token="a", other="b")
    assert run(cli, stub, config, "deliver").returncode == 0
    value(tmp_path, "token", "a2")  # what vm1 takes through its unit's credentials
    result = run(cli, stub, config, "deliver", "--restart", "--json")
    assert result.returncode == 0, result.stderr.decode()
    units = json.loads(result.stdout)["units"]
    # One restart of the host unit, on behalf of the unit target and the VM in it.
    assert [(u["unit"], u["targets"]) for u in units] == [
        ("microvm@vm1.service", ["microvm@vm1.service", "vm1"])
    ]
    assert verbs(stub) == [("try-restart", "microvm@vm1.service")]
    (stub / "calls.jsonl").unlink()

    value(tmp_path, "other", "b2")  # vm2 links to it: its own unit (the `unit` key) restarts
    result = run(cli, stub, config, "deliver", "--restart", "--json")
    units = json.loads(result.stdout)["units"]
    assert [(u["unit"], u["targets"]) for u in units] == [
        ("microvm@vm1.service", ["microvm@vm1.service"]),
        ("vm2-runner.service", ["vm2"]),
    ]
    assert verbs(stub) == [
        ("try-restart", "microvm@vm1.service"),
        ("try-restart", "vm2-runner.service"),
    ]


def test_strongest_action_wins_for_a_shared_unit(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    config = write(
        tmp_path,
        tmpfs_dir,
        VM_BODY.replace(
            '[targets.vm1]\nkind = "vm"', '[targets.vm1]\nkind = "vm"\non_change = "restart"'
        ).replace(
            '[targets."microvm@vm1.service".credentials]',
            '[targets."microvm@vm1.service"]\non_change = "reload"\n'
            '[targets."microvm@vm1.service".credentials]',
        ),
        token="a",
        other="b",
    )
    result = run(cli, stub, config, "deliver", "--dry-run", "--json")
    units = json.loads(result.stdout)["units"]
    assert [(u["unit"], u["action"]) for u in units] == [("microvm@vm1.service", "restart")]


def test_rotate_prints_the_targets_that_need_delivery(
    tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    config = write(
        tmp_path,
        tmpfs_dir,
        """
[targets."microvm@vm1.service".credentials]
host-key = "generate:hex?bytes=16"
unrelated = "generate:hex?bytes=16"
[targets."backup.service".credentials]
key = "target:microvm@vm1.service/host-key"
[targets."other.service".credentials]
key = "generate:hex?bytes=16"
[targets.vm1]
kind = "vm"
launcher = { type = "qemu", kernel = "/nonexistent" }
[targets.vm1.credentials]
KEY = "credential:host-key"
""",
    )
    assert cli("-c", str(config), "deliver").returncode == 0
    result = cli("-c", str(config), "rotate", "backup.service", "key")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["microvm@vm1.service", "backup.service"]
    err = result.stderr.decode()
    assert "VM vm1 takes it when it starts" in err
    assert "microvm@vm1.service" in err
    assert "credbridge deliver --restart microvm@vm1.service backup.service" in err


def test_subset_delivery_warns_about_a_link_left_behind(
    tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    body = """
[targets."app.service".credentials]
db = "generate:hex?bytes=16"
[targets."worker.service".credentials]
db = "target:app.service/db"
[targets."lone.service".credentials]
x = "generate:hex?bytes=16"
"""
    config = write(tmp_path, tmpfs_dir, body)
    first = cli("-c", str(config), "deliver", "app.service")
    assert first.returncode == 0
    assert "warning" not in first.stderr.decode()  # worker holds nothing yet: nothing differs
    assert cli("-c", str(config), "deliver").returncode == 0
    assert cli("-c", str(config), "rotate", "app.service", "db").returncode == 0
    dry = cli("-c", str(config), "deliver", "--dry-run", "app.service")
    assert "worker.service/db shares its value with app.service/db" in dry.stderr.decode()
    result = cli("-c", str(config), "deliver", "app.service")
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "credbridge: warning: worker.service/db shares its value with app.service/db" in err
    assert "run 'credbridge deliver worker.service'" in err
    both = cli("-c", str(config), "deliver", "app.service", "worker.service")
    assert "warning" not in both.stderr.decode()
    lone = cli("-c", str(config), "deliver", "lone.service")
    assert "warning" not in lone.stderr.decode()
    # The JSON report carries the warnings too.
    assert cli("-c", str(config), "rotate", "app.service", "db").returncode == 0
    report = json.loads(cli("-c", str(config), "deliver", "--json", "app.service").stdout)
    assert len(report["warnings"]) == 1


def test_the_link_warning_opens_no_sink_of_a_target_left_out(
    tmp_path: Path, tmpfs_dir: Path, credbridge_plugins: Any
) -> None:
    """The warning about a linked target left out of a delivery comes from what the delivery
    changed: the sink of the target left out is neither opened nor planned (the run holds
    none of its locks, and what happens there is not this delivery's business)."""
    from collections.abc import Iterable, Mapping, Sequence

    from credbridge.core import (
        Change,
        Delivery,
        Pending,
        PlanEntry,
        Secret,
        Session,
        Sink,
        SinkContext,
        SinkType,
        Staged,
        hookimpl,
        load_config,
    )

    opened: list[str] = []
    delivering = False  # the test's canary opens every sink when a session closes

    class Watched(Sink):
        def plan(self, credentials: Mapping[str, Secret | Pending]) -> list[PlanEntry]:
            opened.append("plan()")
            return [PlanEntry(name, Change.ADD) for name in credentials]

        def stage(self, deliveries: Sequence[Delivery]) -> Staged:
            raise AssertionError("the target left out is not delivered")

    def open_watched(context: SinkContext) -> Sink:
        if delivering:
            opened.append(f"open() for {context.target.name}")
        return Watched()

    class Plugin:
        @hookimpl
        def credbridge_sinks(self) -> Iterable[SinkType]:
            yield SinkType(name="watched", open=open_watched)

    credbridge_plugins.register(Plugin(), "watched-sink")
    body = """
[targets."app.service".credentials]
db = "generate:hex?bytes=16"
[targets."worker.service"]
sink = "watched"
[targets."worker.service".credentials]
db = "target:app.service/db"
"""
    config = load_config(write(tmp_path, tmpfs_dir, body))
    with Session(config) as session:
        delivering = True
        assert session.deliver(["app.service"]).warnings == []  # added, not changed
        delivering = False
    assert opened == []
    with Session(config) as session:
        session.rotate("app.service", "db")
    with Session(config) as session:
        delivering = True
        dry = session.deliver(["app.service"], dry_run=True)
        report = session.deliver(["app.service"])
        delivering = False
    assert [e.change for e in report.entries] == [Change.CHANGE]
    for warnings in (dry.warnings, report.warnings):
        assert len(warnings) == 1
        assert warnings[0].startswith("worker.service/db shares its value with app.service/db")
        assert warnings[0].endswith("run 'credbridge deliver worker.service'")
    assert opened == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[targets."a.service"]\non_change = "bounce"\n', 'targets."a.service".on_change: must be'),
        ('[defaults]\non_change = "always"\n', "defaults.on_change: must be one of"),
        ("[defaults]\nrestart = true\n", "defaults.restart: unknown setting"),
    ],
)
def test_on_change_is_validated(
    tmp_path: Path, tmpfs_dir: Path, cli: Any, text: str, problem: str
) -> None:
    config = write(tmp_path, tmpfs_dir, text)
    result = cli("-c", str(config), "deliver", "--dry-run")
    assert result.returncode == 3
    assert problem in result.stderr.decode()


def test_encrypted_targets_are_compared_by_their_plaintext(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, cli: Any
) -> None:
    """A new ciphertext of the same value is not a change: no restart for it."""
    key = null_key_name()
    if key is None:
        pytest.skip("systemd-creds is not installed")
    value(tmp_path, "token", "same")
    config = write(
        tmp_path,
        tmpfs_dir,
        f'[targets."app.service"]\nsink = {{ type = "credstore", encrypt = true, '
        f'with_key = "{key}", directory = "{tmpfs_dir}" }}\n'
        '[targets."app.service".credentials]\ntoken = "file:values/token"\n',
    )
    assert run(cli, stub, config, "deliver", "--restart").returncode == 0
    (stub / "calls.jsonl").unlink()
    again = run(cli, stub, config, "deliver", "--restart", "--json")
    assert [e["change"] for e in json.loads(again.stdout)["entries"]] == ["keep"]
    assert calls(stub) == []
    value(tmp_path, "token", "new")
    changed = run(cli, stub, config, "deliver", "--restart", "--json")
    assert [e["change"] for e in json.loads(changed.stdout)["entries"]] == ["change"]
    assert verbs(stub) == [("try-restart", "app.service")]


@pytest.mark.parametrize("failing", [False, True], ids=["restarts-ok", "a-restart-fails"])
def test_a_closed_stdout_still_restarts_and_records_everything(
    tmp_path: Path, tmpfs_dir: Path, stub: Path, failing: bool
) -> None:
    """``deliver --restart | head -0``: the targets are written, every unit is restarted and
    struck off the record, and the exit status is SIGPIPE's -- or 14 with the failed unit named
    on stderr when a restart failed (that must not be lost with the closed stdout)."""
    if failing:
        (stub / "fail").write_text("worker.service\n")
    config = write(tmp_path, tmpfs_dir, BODY, token="a", other="b")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "credbridge.core.cli",
                "-c",
                str(config),
                "deliver",
                "--restart",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert "internal error" not in err
    assert (tmpfs_dir / "app.service" / "token").read_text() == "a"
    assert verbs(stub) == [("try-restart", "app.service"), ("try-restart", "worker.service")]
    assert not (tmpfs_dir / ".credbridge-restarts.json").exists()
    if failing:
        assert result.returncode == 14, err
        assert "delivered, but restart of worker.service failed" in err
    else:
        assert result.returncode == 128 + signal.SIGPIPE, err
        assert "error" not in err
