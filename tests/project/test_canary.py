"""The secret canary (tests/support/canary.py) can fail: leaks planted on purpose are caught."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import REPO
from support.canary import Canary, run_cli_watched

VALUE = b"canary-probe-7f3a9c"


def leaks_of(observed: bytes, value: bytes = VALUE) -> list[str]:
    watcher = Canary()
    watcher.register(value)
    watcher.observe("somewhere", observed)
    return watcher.check()


def test_raw_hex_and_base64_forms_at_every_alignment() -> None:
    assert leaks_of(b"x " + VALUE + b" y") == ["secret #1 (raw form) in somewhere"]
    assert leaks_of(VALUE.hex().encode()) == ["secret #1 (hex form) in somewhere"]
    assert leaks_of(VALUE.hex().upper().encode()) == ["secret #1 (HEX form) in somewhere"]
    for prefix in (b"", b"a", b"ab"):  # the value inside a longer base64 blob
        blob = base64.b64encode(prefix + VALUE + b"tail")
        assert any("base64 form" in leak for leak in leaks_of(blob)), prefix
    assert leaks_of(b"unrelated text, no value here") == []


def test_short_values_and_placeholders_are_not_registered() -> None:
    watcher = Canary()
    watcher.register(b"v1")
    watcher.register(b"io.systemd.credential.binary:X=<redacted>")
    assert watcher.values == {}


def test_child_environment_and_argv_are_read_from_proc(canary: Canary) -> None:
    canary.tolerate("")  # this test plants the leak itself and inspects a private canary
    watcher = Canary()
    watcher.register(VALUE)
    child = subprocess.Popen(
        ["sleep", "5"], env={"PLANTED": VALUE.decode(), "PATH": os.environ["PATH"]}
    )
    try:
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(b"sleep"):
            assert time.monotonic() < deadline, "the child never exec'd"
            time.sleep(0.01)  # before exec, /proc shows the forked parent's environment
        watcher.observe_process(child.pid, "a child")
    finally:
        child.kill()
        child.wait()
    assert watcher.check() == ["secret #1 (raw form) in environ of a child"]


def test_grandchildren_of_a_cli_run_are_scanned(canary: Canary, tmp_path: Path) -> None:
    """run_cli's watcher reads /proc of every descendant while the child runs."""
    canary.tolerate("")  # the leak is planted: the verdict below is checked by hand
    canary.register(VALUE)
    spawn = (
        "import os, subprocess; "
        "subprocess.run(['sleep', '0.5'], env={'V': os.environ['LEAK'], 'PATH': '/usr/bin:/bin'})"
    )
    run_cli_watched(
        [sys.executable, "-c", spawn],
        ("-c", str(tmp_path / "none.toml"), "plant"),
        env={**os.environ, "LEAK": VALUE.decode()},
        cwd=tmp_path,
        input=None,
        timeout=30,
    )
    canary.tolerated.clear()
    found = canary.check()
    canary.observed.clear()  # the planted leak must not fail this test at teardown
    assert any("environ of credbridge's child" in leak for leak in found), found


def test_stray_files_outside_secret_homes(tmp_path: Path) -> None:
    watcher = Canary()
    watcher.register(VALUE)
    watcher.watch(tmp_path)
    home = tmp_path / "store"
    watcher.allow(home)
    home.mkdir()
    started = time.time_ns() - 1
    (home / "current").write_bytes(VALUE)  # allowed: a secret home
    (tmp_path / ".x.tmp").write_bytes(b"prefix" + VALUE)  # a stray copy
    watcher.scan_new_files(started)
    assert watcher.check() == [f"secret #1 (raw form) in stray file {tmp_path / '.x.tmp'}"]


def test_spawns_from_credbridge_code_are_recognised(canary: Canary) -> None:
    """Popen calls made from core/, backends/ or launchers/ have argv and environ scanned."""
    canary.tolerate("")
    canary.register(VALUE)
    code = compile(
        f"import subprocess\nsubprocess.run(['true', {VALUE.decode()!r}], check=True)\n",
        str(REPO / "core" / "planted_by_test_canary.py"),
        "exec",
    )
    exec(code, {})  # noqa: S102 - runs as if it were credbridge code
    canary.tolerated.clear()
    found = canary.check()
    canary.observed.clear()
    assert found == ["secret #1 (raw form) in argv of a child of credbridge"]


INNER_TESTS = """
import base64, logging, os, sys

from credbridge.core.errors import DeliveryError
from credbridge.core.secret import Secret
from support.canary import run_cli_watched

VALUE = "canary-probe-inner-1"


def test_leak_in_a_debug_log(canary):
    canary.register(VALUE)
    logging.getLogger("credbridge.somewhere").debug("resolved %s", VALUE)


def test_leak_in_an_error_message_never_raised():
    Secret(VALUE.encode())  # registered automatically
    DeliveryError(f"cannot write {VALUE}")


def test_leak_base64_on_stdout(canary, capsys):
    canary.register(VALUE)
    print(base64.b64encode(b"xy" + VALUE.encode()).decode())


def test_leak_through_a_credbridge_child(canary):
    canary.register(VALUE)
    argv = [sys.executable, "-m", "credbridge.core.cli", "get", "env:" + VALUE]
    run_cli_watched(argv, tuple(argv[3:]), env=dict(os.environ), cwd=None, input=None, timeout=60)


def test_clean(canary):
    canary.register(VALUE)
    logging.getLogger("x").debug("nothing secret here")
"""


def test_the_fixture_fails_leaking_tests(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO / "tests")!r})
            from support.canary import canary, pytest_runtest_makereport  # noqa: F401
            """
        )
    )
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 1, out
    assert "PASSED test_inner.py::test_clean" in out
    for name, place in (
        ("test_leak_in_a_debug_log", "log record of credbridge.somewhere"),
        ("test_leak_in_an_error_message_never_raised", "message of DeliveryError"),
        ("test_leak_base64_on_stdout", "base64 form) in Captured stdout call"),
        ("test_leak_through_a_credbridge_child", "stderr of credbridge get"),
        ("test_leak_through_a_credbridge_child", "argv of credbridge get"),
    ):
        assert f"ERROR test_inner.py::{name}" in out, out
        assert place in out, (place, out)
    verdicts = [line for line in out.splitlines() if line.startswith("canary:")]
    assert len(verdicts) == 4
    assert not [v for v in verdicts if "canary-probe-inner-1" in v]  # places, never the value
