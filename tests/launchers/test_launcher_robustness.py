"""The cloud-hypervisor launcher when the hypervisor misbehaves (issue 13, item 10).

Stand-in hypervisors here are small programs with one fault each, run exactly where the
launcher runs cloud-hypervisor: one that listens on the API socket and never answers (and
ignores SIGTERM), one that never opens its API socket. docs/vm.md promises: the API
``timeout`` bounds the wait, a child that ignores SIGTERM is killed after ``stop_timeout``,
and a stop signal before the VM started ends the launch with 128+N, leaving nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.ch_harness import write_config

KERNEL = {"kernel": "/var/lib/microvms/test-vm/vmlinux"}  # never read: nothing boots

SECRETS = {"api-key": b"robust-api-key-0123456789"}

SILENT_API = """\
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = next(a.split("path=", 1)[1] for a in sys.argv if a.startswith("path="))
open(sys.argv[1], "w").write(str(os.getpid()))
server = socket.socket(socket.AF_UNIX)
server.bind(path.split(",")[0])
server.listen(8)
held = []
while True:
    connection, _ = server.accept()
    held.append(connection)  # read nothing, answer nothing
"""

NO_SOCKET = """\
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(3600)
"""


def stand_in(directory: Path, name: str, program: str) -> Path:
    """The program, started as cloud-hypervisor is; it writes its pid to ``directory/pid``
    (credbridge gives its children an allow-listed environment: the path is in argv)."""
    script = directory / f"{name}.py"
    script.write_text(program)
    wrapper = directory / name
    pid_file = directory / "pid"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} {pid_file} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def launch(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CREDBRIDGE_LOAD_PLUGINS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "launch", "test-vm"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return int(path.read_text())


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_an_api_that_never_answers_times_out_and_a_deaf_hypervisor_is_killed(
    tmpfs_dir: Path,
) -> None:
    binary = stand_in(tmpfs_dir, "silent-api", SILENT_API)
    run_dir = tmpfs_dir / "run"
    settings = {**KERNEL, "binary": str(binary), "runtime_dir": str(run_dir)}
    config = write_config(tmpfs_dir, {**settings, "timeout": 2, "stop_timeout": 1.5}, SECRETS)
    pid_file = tmpfs_dir / "pid"
    started = time.monotonic()
    process = launch(config)
    pid = wait_for_file(pid_file, process)
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    lines = stderr.decode().splitlines()
    assert process.returncode == 10, stderr
    assert lines[-1] == (
        "credbridge: error: cloud-hypervisor's API (/api/v1/vmm.ping) did not answer within 2s"
    ), lines
    # It ignored SIGTERM: killed after stop_timeout, not waited for forever.
    assert any("ignored SIGTERM; killing it" in line for line in lines), lines
    assert gone(pid)
    assert 2 + 1.5 <= elapsed < 60, elapsed
    assert not run_dir.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_before_the_vm_started_exits_128_plus_n(
    tmpfs_dir: Path, signum: signal.Signals
) -> None:
    binary = stand_in(tmpfs_dir, "no-socket", NO_SOCKET)
    run_dir = tmpfs_dir / "run"
    settings = {**KERNEL, "binary": str(binary), "runtime_dir": str(run_dir), "timeout": 60}
    config = write_config(tmpfs_dir, settings, SECRETS)
    pid_file = tmpfs_dir / "pid"
    process = launch(config)
    pid = wait_for_file(pid_file, process)  # started, waiting for its API socket
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert gone(pid), "the hypervisor outlived the launch"
    assert not run_dir.exists()
    assert b"robust-api-key" not in stderr


def test_a_virtiofsd_socket_path_of_107_bytes_is_used_and_108_refused(tmpfs_dir: Path) -> None:
    """AF_UNIX paths hold 107 bytes (108 with the NUL): the longest is used, one more refused
    before virtiofsd is started."""
    from credbridge.core.errors import ConfigError
    from credbridge.core.vm import VirtiofsShare
    from credbridge.launchers.runtime import VmRuntime, find_virtiofsd

    share = tmpfs_dir / "share"
    share.mkdir(mode=0o700)
    tail = len("/sockets/virtiofsd-t.sock")
    runtime = tmpfs_dir / ("r" * (107 - len(f"{tmpfs_dir}/") - tail))
    daemon = find_virtiofsd()
    with VmRuntime("vm", runtime) as rt:
        socket_path = rt.start_virtiofsd(VirtiofsShare("t", share), daemon)
        assert len(os.fsencode(socket_path)) == 107
        assert socket_path.is_socket()
        with pytest.raises(ConfigError) as refused:
            rt.start_virtiofsd(VirtiofsShare("tt", share), daemon)
    assert str(refused.value).endswith(
        f"socket path {runtime}/sockets/virtiofsd-tt.sock is longer than 107 bytes; "
        "choose a shorter runtime_dir"
    )


def test_a_runtime_directory_on_disk_is_refused_by_default(disk_dir: Path) -> None:
    from credbridge.core.errors import ConfigError
    from credbridge.launchers.runtime import check_runtime_dir

    with pytest.raises(ConfigError, match="runtime directory"):
        check_runtime_dir(disk_dir / "rt")
    check_runtime_dir(disk_dir / "rt", allow_persistent=True)


def test_a_hypervisor_that_cannot_be_started_is_named(tmpfs_dir: Path) -> None:
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        with pytest.raises(LaunchError) as helper:
            rt.start_helper("virtiofsd for share 'x'", ["/nonexistent/virtiofsd", "--flag"])
        with pytest.raises(LaunchError) as error:
            rt.start(["/nonexistent/hypervisor", "--flag"])
    assert str(helper.value) == (
        "cannot start virtiofsd for share 'x' (/nonexistent/virtiofsd): No such file or directory"
    )
    assert str(error.value) == "cannot start /nonexistent/hypervisor: No such file or directory"


def test_a_helper_that_ends_cleanly_as_the_vm_powers_off_is_no_failure(tmpfs_dir: Path) -> None:
    """virtiofsd exits 0 when the hypervisor closes its socket at power-off: the hypervisor
    gets stop_timeout to exit by itself, and the launch ends with its status."""
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt", stop_timeout=20) as rt:
        rt.start_helper("helper", [sys.executable, "-c", "pass"])
        status = rt.run([sys.executable, "-c", "import time; time.sleep(1.5)"])
    assert status == 0


def test_children_inherit_no_descriptor_but_those_passed(tmpfs_dir: Path) -> None:
    """Even a descriptor some library left inheritable (a secret's memfd, say) stays home."""
    from credbridge.launchers.runtime import VmRuntime

    leaked = os.memfd_create("leak")
    passed = os.memfd_create("passed")
    os.set_inheritable(leaked, True)
    probe = (
        "import os, sys\n"
        "def is_open(fd):\n"
        "    try:\n"
        "        os.fstat(fd)\n"
        "    except OSError:\n"
        "        return False\n"
        "    return True\n"
        "wanted = [int(fd) for fd in sys.argv[1:]]\n"
        f"sys.exit(0 if not is_open({leaked}) and all(map(is_open, wanted)) else 7)\n"
    )
    try:
        with VmRuntime("vm", tmpfs_dir / "rt") as rt:
            rt.start_helper("helper", [sys.executable, "-c", probe])
            status = rt.run([sys.executable, "-c", probe, str(passed)], pass_fds=[passed])
            assert rt.helpers[0].process.wait(timeout=30) == 0
    finally:
        os.close(leaked)
        os.close(passed)
    assert status == 0


def test_a_runtime_leaves_nothing_behind(tmpfs_dir: Path) -> None:
    """After the VM: helpers stopped, signal handlers back, no descriptor left open."""
    from credbridge.launchers.runtime import VmRuntime

    def on_hup(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGHUP, on_hup)
    fds_before = sorted(os.listdir("/proc/self/fd"))
    try:
        with VmRuntime("vm", tmpfs_dir / "rt") as rt:
            helper = rt.start_helper(
                "helper", [sys.executable, "-c", "import time; time.sleep(60)"]
            )
            assert rt.run([sys.executable, "-c", "pass"]) == 0
        assert helper.process.poll() is not None, "the helper outlived the VM"
        assert signal.getsignal(signal.SIGHUP) is on_hup
        assert sorted(os.listdir("/proc/self/fd")) == fds_before
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_virtiofsd_whose_help_fails_is_judged_by_what_it_printed(tmp_path: Path) -> None:
    """Some builds exit non-zero after printing --help: what they print still tells."""
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import virtiofsd_flavour

    rust = tmp_path / "rust-virtiofsd"
    rust.write_text("#!/bin/sh\necho '  --shared-dir <dir>'\nexit 2\n")
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\necho 'usage: other'\nexit 0\n")
    for stub in (rust, other):
        stub.chmod(0o755)
    assert virtiofsd_flavour(str(rust)) == "rust"
    with pytest.raises(LaunchError, match="does not look like virtiofsd"):
        virtiofsd_flavour(str(other))


def test_a_helper_that_died_before_the_vm_started_is_named_with_its_status(
    tmpfs_dir: Path,
) -> None:
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import VmRuntime

    for status in (3, 0):
        with VmRuntime("vm", tmpfs_dir / "rt") as rt:
            helper = rt.start_helper(
                "helper", [sys.executable, "-c", f"raise SystemExit({status})"]
            )
            helper.process.wait(timeout=30)
            with pytest.raises(LaunchError) as error:
                rt.start([sys.executable, "-c", "pass"])
            assert rt.hypervisor is None
        assert str(error.value) == f"helper exited with status {status} before the VM started"


def test_the_hypervisor_start_is_logged_without_its_arguments(
    tmpfs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The argv may carry a value (OEM strings on the command line, when a user asks for it):
    the debug line counts the arguments and never shows them."""
    import logging

    from credbridge.launchers.runtime import VmRuntime

    argv = [sys.executable, "-c", "pass", "--platform", "oem_strings=[robust-api-key-0123456789]"]
    with (
        caplog.at_level(logging.DEBUG, logger="credbridge.launchers.runtime"),
        VmRuntime("vm", tmpfs_dir / "rt") as rt,
    ):
        assert rt.run(argv) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert f"starting hypervisor of VM vm: {sys.executable} with 4 arguments" in messages
    assert not any("robust-api-key" in message for message in messages)


def test_a_failing_cleanup_is_logged_and_the_others_still_run(
    tmpfs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from credbridge.launchers.runtime import VmRuntime

    ran: list[str] = []

    def failing() -> None:
        ran.append("failing")
        raise RuntimeError("the sink's socket is gone")

    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        rt.callback(ran.append, "first")
        rt.callback(failing)
        rt.callback(ran.append, "last")
        assert rt.run([sys.executable, "-c", "pass"]) == 0
    assert ran == ["last", "failing", "first"]  # in reverse, every one
    assert not (tmpfs_dir / "rt").exists()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["cleanup of VM vm failed"]
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("planted", ["symlink", "directory"])
def test_a_stale_directory_whose_lock_is_no_file_is_refused_not_followed(
    tmpfs_dir: Path, planted: str
) -> None:
    """A leftover runtime directory is cleared only when its lock file proves credbridge made
    it; a symlink there is never followed (not even to read a pid)."""
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import LOCK_NAME, VmRuntime

    runtime = tmpfs_dir / "rt"
    runtime.mkdir(mode=0o700)
    victim = tmpfs_dir / "victim"
    victim.write_text("4242\n")
    if planted == "symlink":
        (runtime / LOCK_NAME).symlink_to(victim)
    else:
        (runtime / LOCK_NAME).mkdir()
    with pytest.raises(LaunchError) as error, VmRuntime("vm", runtime):
        pass
    reason = "Too many levels of symbolic links" if planted == "symlink" else "Is a directory"
    assert str(error.value) == (
        f"runtime directory {runtime} exists and was not made by credbridge "
        f"({LOCK_NAME}: {reason}); remove it or choose another runtime_dir"
    )
    assert victim.read_text() == "4242\n"
    assert (runtime / LOCK_NAME).exists()  # left for the user to look at


def test_waiting_for_the_vm_is_idle(tmpfs_dir: Path) -> None:
    """The wait sleeps on pidfds and the wake pipe: a VM that runs for a while costs its
    launcher next to no CPU (a polling loop would burn a core)."""
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        rt.start_helper("helper", [sys.executable, "-c", "import time; time.sleep(60)"])
        rt.start([sys.executable, "-c", "import time; time.sleep(2)"])
        before = time.process_time()
        assert rt.wait() == 0
        spent = time.process_time() - before
    assert spent < 0.5, f"{spent:.2f} s of CPU while waiting 2 s"


def test_a_hypervisor_reaped_before_the_wait_still_gives_its_status(tmpfs_dir: Path) -> None:
    """A launcher may poll the hypervisor between start() and wait() (to see whether it died
    during the API handshake); once reaped it has no pidfd, and wait() must still answer."""
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        hypervisor = rt.start([sys.executable, "-c", "raise SystemExit(7)"])
        hypervisor.wait(timeout=30)  # reaped: its pid may already belong to another process
        assert rt.wait() == 7


def test_a_signal_while_a_helper_starts_ends_the_launch_with_128_plus_n(tmpfs_dir: Path) -> None:
    """SIGTERM before the hypervisor exists (here: while waiting for a helper's socket) is
    held by the runtime's handler and raised between steps, naming the signal."""
    from credbridge.launchers.runtime import LaunchInterrupted, VmRuntime

    send_sigterm = "import os, signal, time; os.kill(os.getppid(), signal.SIGTERM); time.sleep(60)"
    with pytest.raises(LaunchInterrupted) as stopped, VmRuntime("vm", tmpfs_dir / "rt") as rt:
        rt.start_helper("helper", [sys.executable, "-c", send_sigterm], ready=tmpfs_dir / "never")
    assert stopped.value.status == 128 + signal.SIGTERM
    assert str(stopped.value) == "interrupted by SIGTERM before the VM started"
    assert rt.hypervisor is None
    assert rt.helpers[0].process.poll() is not None  # stopped with the runtime
    assert not (tmpfs_dir / "rt").exists()


def test_helpers_run_in_their_own_session_out_of_reach_of_terminal_signals(
    tmpfs_dir: Path,
) -> None:
    """A Ctrl-C on the terminal goes to credbridge's process group: credbridge forwards it to
    the hypervisor and stops helpers itself, in order, so helpers must not get it directly."""
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        helper = rt.start_helper("helper", [sys.executable, "-c", "import time; time.sleep(60)"])
        hypervisor = rt.start([sys.executable, "-c", "import time; time.sleep(60)"])
        assert os.getsid(helper.process.pid) == helper.process.pid != os.getsid(0)
        assert os.getpgid(hypervisor.pid) == os.getpgid(0)  # the console keeps working
        hypervisor.kill()
        assert rt.wait() == 128 + signal.SIGKILL


def test_the_hypervisor_keeps_the_console_and_helpers_get_no_stdin(tmpfs_dir: Path) -> None:
    """The hypervisor reads credbridge's stdin (a serial console on the terminal); helpers
    read nothing from it."""
    from credbridge.launchers.runtime import VmRuntime

    report = "import os, sys; open(sys.argv[1], 'w').write(os.readlink('/proc/self/fd/0'))"
    saved = os.dup(0)
    console_r, console_w = os.pipe()
    os.dup2(console_r, 0)
    try:
        with VmRuntime("vm", tmpfs_dir / "rt") as rt:
            helper = rt.start_helper(
                "helper", [sys.executable, "-c", report, str(tmpfs_dir / "helper")]
            )
            assert rt.run([sys.executable, "-c", report, str(tmpfs_dir / "hypervisor")]) == 0
            helper.process.wait(timeout=30)
        console = os.readlink("/proc/self/fd/0")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, console_r, console_w):
            os.close(fd)
    assert console.startswith("pipe:")
    assert (tmpfs_dir / "hypervisor").read_text() == console
    assert (tmpfs_dir / "helper").read_text() == "/dev/null"


def test_a_configured_virtiofsd_that_is_missing_is_named(tmp_path: Path) -> None:
    """A configured path is used alone: no fallback to another virtiofsd found elsewhere."""
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import find_virtiofsd

    missing = str(tmp_path / "virtiofsd")
    with pytest.raises(LaunchError) as error:
        find_virtiofsd(missing)
    assert str(error.value) == f"virtiofsd {missing!r} not found or not executable"


def test_virtiofsd_on_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup order of docs/vm.md: PATH, then /usr/libexec, then /usr/lib/qemu."""
    from credbridge.launchers.runtime import find_virtiofsd

    stub = tmp_path / "virtiofsd"
    stub.write_text("#!/bin/sh\necho '  --shared-dir <dir>'\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    found = find_virtiofsd()
    assert (found.path, found.flavour) == (str(stub), "rust")


_WITHOUT_PIDFDS = """
import errno, os, signal, sys, time
from pathlib import Path

def no_pidfd(pid):
    raise OSError(errno.ENOSYS, "pidfd_open is not available")  # an old kernel, or seccomp

os.pidfd_open = no_pidfd
from credbridge.core.errors import LaunchError
from credbridge.launchers.runtime import VmRuntime

runtime, case = Path(sys.argv[1]), sys.argv[2]
with VmRuntime("vm", runtime) as rt:
    if case == "exit":
        rt.start([sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(5)"])
        before = time.process_time()
        status = rt.wait()
        print(status, round(time.process_time() - before, 3))
    elif case == "helper-dies":
        rt.start_helper("helper", [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(4)"])
        try:
            rt.run([sys.executable, "-c", "import time; time.sleep(60)"])
        except LaunchError as error:
            print(error)
"""


@pytest.mark.parametrize("case", ["exit", "helper-dies"])
def test_without_pidfds_the_wait_polls_and_sees_every_exit(tmpfs_dir: Path, case: str) -> None:
    """On a kernel without pidfd_open (before 5.3) or under a seccomp filter that denies it,
    the wait falls back to polling: the same exits are seen, and it still idles."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PIDFDS, str(tmpfs_dir / "rt"), case],
        capture_output=True,
        text=True,
        timeout=60,  # a wait that never wakes up fails here instead of hanging
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if case == "exit":
        status, cpu = result.stdout.split()
        assert status == "5"
        assert float(cpu) < 0.5, f"{cpu} s of CPU while waiting 1 s"
    else:
        assert result.stdout.strip() == (
            "helper exited with status 4 while VM vm was running; the VM was stopped"
        )
    assert not (tmpfs_dir / "rt").exists()


def test_a_given_virtiofsd_is_used_and_the_found_one_otherwise(
    tmpfs_dir: Path, tmp_path: Path
) -> None:
    """``start_virtiofsd(share, daemon)`` runs the daemon it is given (a launcher's
    ``virtiofsd`` setting); without one, the one found on the system (the real virtiofsd)."""
    from credbridge.core.vm import VirtiofsShare
    from credbridge.launchers.runtime import Virtiofsd, VmRuntime, find_virtiofsd

    share = tmpfs_dir / "share"
    share.mkdir(mode=0o700)
    given = tmp_path / "my-virtiofsd"
    given.write_text(
        f"#!{sys.executable}\n"
        "import socket, sys, time\n"
        "path = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--socket-path='))\n"
        "socket.socket(socket.AF_UNIX).bind(path)\n"
        "time.sleep(60)\n"
    )
    given.chmod(0o755)
    with VmRuntime("vm", tmpfs_dir / "rt") as rt:
        rt.start_virtiofsd(VirtiofsShare("given", share), Virtiofsd(str(given), "rust"))
        rt.start_virtiofsd(VirtiofsShare("found", share))
        started = [helper.process.args[0] for helper in rt.helpers]  # type: ignore[index]
    assert started == [str(given), find_virtiofsd().path]


@pytest.mark.parametrize("status", [3, 0])
def test_a_process_that_exits_before_its_socket_appears_is_named(
    tmpfs_dir: Path, status: int
) -> None:
    """The hypervisor dies before it opens its API socket: said with its status at once,
    not after the start-up timeout."""
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import VmRuntime

    with VmRuntime("vm", tmpfs_dir / "rt", startup_timeout=600) as rt:
        hypervisor = rt.start([sys.executable, "-c", f"raise SystemExit({status})"])
        with pytest.raises(LaunchError) as error:
            rt.wait_for_path(tmpfs_dir / "rt" / "api.sock", "API socket", process=hypervisor)
        # Everything credbridge keeps there is the owner's alone.
        for entry in (tmpfs_dir / "rt").iterdir():
            assert entry.lstat().st_mode & 0o077 == 0, entry
    assert str(error.value) == (
        f"API socket: the process exited with status {status} before it appeared"
    )


def test_a_virtiofsd_that_cannot_run_is_named(tmp_path: Path) -> None:
    from credbridge.core.errors import LaunchError
    from credbridge.launchers.runtime import virtiofsd_flavour

    not_executable = tmp_path / "virtiofsd"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    with pytest.raises(LaunchError, match=f"cannot run virtiofsd {not_executable}: .*Permission"):
        virtiofsd_flavour(str(not_executable))


def test_a_runtime_in_another_thread_runs_without_signal_handling(tmpfs_dir: Path) -> None:
    """An embedding program may launch from a worker thread: signal handlers can only be set
    from the main thread, so there are none (and no wake pipe), and the VM still runs."""
    import threading

    from credbridge.launchers.runtime import VmRuntime

    outcome: list[object] = []

    def launch() -> None:
        try:
            with VmRuntime("vm", tmpfs_dir / "rt") as rt:
                rt.start_helper("helper", [sys.executable, "-c", "import time; time.sleep(60)"])
                outcome.append(rt.run([sys.executable, "-c", "raise SystemExit(6)"]))
        except BaseException as error:  # reported to the test below
            outcome.append(error)

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=launch)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert outcome == [6]
    assert signal.getsignal(signal.SIGTERM) is before
    assert not (tmpfs_dir / "rt").exists()
