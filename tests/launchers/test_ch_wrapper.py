"""``credbridge-cloud-hypervisor``: microvm.nix's real cloud-hypervisor command lines, translated.

Every command line comes from microvm.nix's own runner (the vendored files in
../shared/vendor/microvm.nix, evaluated by tests/support/microvm_runner.py for the option
combinations of tests/support/microvm_cases.py), exactly as ``microvm-run`` would exec it. Each goes
through the wrapper's plan mode with each VM sink, into a ``vm.create`` body valid for the
vendored OpenAPI spec and for cloud-hypervisor v53's create-time rules (config.rs); every
shape the wrapper cannot carry is refused with one line naming the flag. Launches go through
the API stand-in (tests/support/ch_standin.py: a stand-in for cloud-hypervisor's API, not
cloud-hypervisor); the guest boot is in test_ch_wrapper_guest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import ConfigError, Delivery, Secret
from credbridge.core.config import load_config
from credbridge.core.engine import Session
from credbridge.launchers.ch_wrapper import (
    UntranslatableArgument,
    WrapperLauncher,
    open_launcher,
    parse_argv,
)
from support.ch_harness import (
    SECRETS,
    SPEC_MISSING,
    SPEC_PATH,
    read_records,
    scan_all_cmdlines,
    secret_forms,
    write_standin,
    write_vm_config,
)
from support.microvm_cases import REFUSED_BY_RUNNER, RUNNER_CASES
from support.microvm_runner import RunnerRefused, runner_argv, unavailable

REPO = Path(__file__).resolve().parents[2]
# Under CI=true a missing spec fails (the tests run and cannot load it), as the brief requires.
needs_spec = pytest.mark.skipif(
    not SPEC_PATH.is_file() and os.environ.get("CI") != "true", reason=SPEC_MISSING
)
needs_runner = pytest.mark.skipif(
    unavailable() is not None and os.environ.get("CI") != "true", reason=unavailable() or ""
)
#: What the wrapper refuses of the real runner's command lines, and the line it says.
WRAPPER_REFUSES = {
    "graphics": "--gpu: exists only in cloud-hypervisor's graphics build",
}
#: microvm.nix's notify-socket OEM string (set when vsock.cid is).
NOTIFY_OEM = "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888"
VM_SINKS = ("oem-strings", "virtiofs")


def as_module(options: str) -> str:
    """A case of tests/support/microvm_cases.py as a Nix module."""
    return options if options.startswith("{ pkgs") else f"{{ {options} }}"


@pytest.fixture(scope="session")
def runner_argvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Every runner case's argv, evaluated once (about a second each)."""
    if reason := unavailable():
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    out = {}
    for name, (options, system) in RUNNER_CASES.items():
        workdir = tmp_path_factory.mktemp(f"runner-{name}")
        out[name] = runner_argv(as_module(options), workdir, system=system)
    return out


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(SPEC_MISSING)
        pytest.skip(SPEC_MISSING)
    from support.ch_standin import load_spec

    return load_spec(SPEC_PATH)


def open_wrapper(config: Path, argv: list[str], binary: str = "cloud-hypervisor") -> Any:
    session = Session(load_config(config))
    return session, open_launcher(session, "test-vm", parse_argv(argv), binary)


def body_for(launcher: WrapperLauncher, runtime: Path, secrets: Mapping[str, bytes]) -> Any:
    deliveries = [Delivery(n, Secret(v)) for n, v in secrets.items()]
    runtime.mkdir(mode=0o700, exist_ok=True)
    channel = launcher.sink.prepare(deliveries, runtime)
    try:
        sockets = [runtime / f"fs-{s.tag}.sock" for s in channel.virtiofs]
        return launcher.build(channel, runtime, sockets, redact=False)
    finally:
        launcher.sink.cleanup(channel)


def credential_strings(secrets: Mapping[str, bytes]) -> list[str]:
    import base64

    return [
        f"io.systemd.credential.binary:{n}={base64.b64encode(v).decode()}"
        for n, v in secrets.items()
    ]


# --------------------------------------------------------------------------- microvm.nix's runner


def test_vendored_versions_are_named() -> None:
    """The microvm.nix commit the runner files come from and the cloud-hypervisor version the
    flag tables and create-time rules come from, in the vendored READMEs and docs/nixos.md."""
    from credbridge.launchers.ch_rules import CH_RULES_VERSION
    from support.microvm_runner import MICROVM, MICROVM_COMMIT

    assert MICROVM_COMMIT in (MICROVM / "README.md").read_text()
    ch_readme = (REPO.parent / "shared/vendor/cloud-hypervisor/README.md").read_text()
    assert f"src-v{CH_RULES_VERSION}/" in ch_readme
    docs = (REPO / "docs/nixos.md").read_text()
    assert MICROVM_COMMIT[:7] in docs
    assert f"cloud-hypervisor v{CH_RULES_VERSION}" in docs
    assert f"for {len(RUNNER_CASES)} option combinations" in docs
    assert f"the {len(REFUSED_BY_RUNNER)} microvm.nix refuses" in " ".join(docs.split())


@needs_runner
@pytest.mark.parametrize("name", sorted(REFUSED_BY_RUNNER))
def test_runner_refuses_what_microvm_nix_refuses(name: str, tmp_path: Path) -> None:
    options, system, message = REFUSED_BY_RUNNER[name]
    with pytest.raises(RunnerRefused) as info:
        runner_argv(as_module(options), tmp_path, system=system)
    assert message in str(info.value)


def run_plan(argv: list[str], config: Path, cwd: Path, tmpfs_dir: Path) -> Any:
    """The console script in plan mode, started as microvm-run would start it."""
    return subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", "--credbridge-plan", *argv],
        capture_output=True,
        env={
            **os.environ,
            "CREDBRIDGE_VM": "test-vm",
            "CREDBRIDGE_CONFIG": str(config),
            "CREDBRIDGE_CLOUD_HYPERVISOR": "/opt/ch/bin/cloud-hypervisor",
            "RUNTIME_DIRECTORY": str(tmpfs_dir),
        },
        cwd=cwd,
        check=False,
    )


@needs_spec
@pytest.mark.parametrize("sink", VM_SINKS)
@pytest.mark.parametrize("name", sorted(RUNNER_CASES))
def test_every_runner_argv_plans_with_every_sink(
    name: str,
    sink: str,
    runner_argvs: dict[str, list[str]],
    spec: dict[str, Any],
    tmp_path: Path,
    tmpfs_dir: Path,
) -> None:
    from credbridge.launchers.ch_rules import create_rule_broken
    from support.ch_standin import schema_problems

    argv = runner_argvs[name]
    result = run_plan(argv, write_vm_config(tmp_path, SECRETS, sink=sink), tmp_path, tmpfs_dir)
    lines = result.stderr.decode().splitlines()
    if name in WRAPPER_REFUSES:
        assert result.returncode == 3, result.stderr
        assert len(lines) == 1
        assert WRAPPER_REFUSES[name] in lines[0]
        return
    assert result.returncode == 0, result.stderr.decode()
    for form in secret_forms(SECRETS.values()):
        assert form not in result.stdout
    plan = json.loads(result.stdout)
    body = plan["requests"][1]["body"]
    assert schema_problems(body, "VmConfig", spec) == []
    arch = "aarch64" if RUNNER_CASES[name][1].startswith("aarch64") else "x86_64"
    assert create_rule_broken(body, arch) is None
    platform = argv[argv.index("--platform") + 1]
    own = (
        platform.split("oem_strings=[", 1)[1].split("]")[0].split(",") if "oem_" in platform else []
    )
    strings = body.get("platform", {}).get("oem_strings", [])
    assert strings[: len(own)] == own
    if sink == "oem-strings":
        assert strings[len(own) :] == [
            f"io.systemd.credential.binary:{n}=<redacted>" for n in SECRETS
        ]
    else:
        assert strings == own
        assert body["fs"][-1]["tag"] == "credbridge"
        assert body["memory"]["shared"] or body["memory"].get("hugepages")


def body_of(argv: list[str], sink: str, tmp_path: Path, tmpfs_dir: Path) -> dict[str, Any]:
    """The vm.create body the wrapper would send (values included) for ``argv``."""
    session, launcher = open_wrapper(write_vm_config(tmp_path, SECRETS, sink=sink), argv)
    with session:
        launch = body_for(launcher, tmpfs_dir / f"run-{sink}-{tmp_path.name}", SECRETS)
    body: dict[str, Any] = launch.body
    return body


def test_virtiofs_sink_turns_merging_off_not_the_vm(
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: Any,
    caplog: Any,
) -> None:
    """The runner asks for mergeable=on when the VM has no share of its own; the credentials'
    share needs shared=on; cloud-hypervisor refuses both together, so merging goes (said at
    -v) and the hugepages VM, already shared-backed, keeps its memory as it was."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = runner_argvs["defaults"]
    assert "mergeable=on,shared=off,size=512M" in argv
    caplog.set_level("INFO", logger="credbridge.launchers.ch_wrapper")
    assert body_of(argv, "virtiofs", tmp_path / "v", tmpfs_dir)["memory"] == {
        "size": 512 << 20,
        "shared": True,
    }
    assert [r.message for r in caplog.records if "KSM" in r.message] == [
        "VM test-vm: memory shared with virtiofsd for the credentials' share, so "
        "mergeable=on (KSM) is turned off"
    ]
    oem = body_of(argv, "oem-strings", tmp_path / "o", tmpfs_dir)
    assert oem["memory"] == {"size": 512 << 20, "mergeable": True, "shared": False}
    huge = body_of(runner_argvs["hugepages"], "virtiofs", tmp_path / "h", tmpfs_dir)
    assert huge["memory"] == {
        "size": 512 << 20,
        "hugepages": True,
        "mergeable": True,
        "shared": False,
    }


def test_extra_args_translate_key_by_key(
    runner_argvs: dict[str, list[str]], tmp_path: Path, tmpfs_dir: Path, monkeypatch: Any
) -> None:
    """Every --cpus key microvm.nix merges from extraArgs, --tpm, --rng, --pvpanic, a user's
    --vsock and --platform keys: each lands in its VmConfig field; --event-monitor stays on
    the hypervisor's own argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = runner_argvs["extra-args"]
    body = body_of(argv, "oem-strings", tmp_path, tmpfs_dir)
    assert body["cpus"] == {
        "boot_vcpus": 2,
        "max_vcpus": 4,
        "topology": {
            "threads_per_core": 1,
            "cores_per_die": 2,
            "dies_per_package": 1,
            "packages": 2,
        },
        "kvm_hyperv": True,
        "max_phys_bits": 40,
        "affinity": [{"vcpu": 0, "host_cpus": [0, 1]}, {"vcpu": 1, "host_cpus": [2]}],
        "nested": False,
        "core_scheduling": "Vcpu",
    }
    assert body["tpm"] == {"socket": "/run/swtpm/vm.sock"}
    assert body["rng"] == {"src": "/dev/urandom"}
    assert body["pvpanic"] is True
    assert body["vsock"] == {"cid": 7, "socket": str(tmp_path / "own.vsock")}
    assert body["platform"]["serial_number"] == "ABC"
    assert body["platform"]["uuid"] == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    session, launcher = open_wrapper(write_vm_config(tmp_path / "p", {}), argv, "/ch")
    with session:
        launch = body_for(launcher, tmpfs_dir / "run2", {})
    assert launch.argv[3:] == ["--event-monitor", "path=/run/vm-events.json"]


def test_kernel_params_reach_the_guest_as_written(
    runner_argvs: dict[str, list[str]], tmp_path: Path, tmpfs_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    body = body_of(runner_argvs["kernel-params-shell"], "oem-strings", tmp_path, tmpfs_dir)
    assert body["payload"]["cmdline"] == (
        "earlyprintk=ttyS0 console=ttyS0 reboot=t panic=-1 "
        "a=$(id) b;c d=\"x y\" e='q' f=`w` g=${HOME}"
    )


@pytest.mark.parametrize("name", sorted(set(RUNNER_CASES) - set(WRAPPER_REFUSES)))
def test_real_argv_holds_only_the_api_socket(
    name: str,
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = runner_argvs[name]
    session, launcher = open_wrapper(write_vm_config(tmp_path, SECRETS), argv, "/ch")
    with session:
        launch = body_for(launcher, tmpfs_dir / "run", SECRETS)
    given = "--api-socket" in argv
    socket = str(tmp_path / "test-vm.sock") if given else str(tmpfs_dir / "run" / "api.sock")
    process_args = ["--event-monitor", "path=/run/vm-events.json"] if name == "extra-args" else []
    assert str(launch.socket) == socket
    assert launch.argv == ["/ch", "--api-socket", f"path={socket}", *process_args]
    for form in secret_forms(SECRETS.values()):
        assert form not in "\0".join(launch.argv).encode()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--memory", "size=1G"], "--memory: given twice"),
        (["--seccomp", "log"], "--seccomp: given twice"),
        (["--cpus", "boot=2"], "--cpus: given twice"),
        (["--kernel"], "--kernel: needs a value"),
        (["stray"], "stray: is not translated"),
        (
            ["--generic-vhost-user", "socket=/s,queue_sizes=[256],device_type=watchdog"],
            "cannot work as a vhost-user device",
        ),
        (["--generic-vhost-user", "socket=/s,queue_sizes=[256]"], "needs device_type="),
        (["--memory-zone", "size=1G"], "--memory-zone: needs id="),
        (["--ivshmem", "path=/dev/shm/x"], "--ivshmem: has no schema in v53's OpenAPI spec"),
        (["--memory", "size=1G,file=/dev/shm/m"], "option 'file' has no field in the API's"),
        (["--device", "fd=7"], "option 'fd' is a file descriptor"),
        (["--landlock-rules", "path=/x,access=x"], "access='x' is not r, w or rw"),
        (["--pmem", "size=1G"], "--pmem: needs file="),
        (["--rate-limit-group", "id=g"], "--rate-limit-group: needs bw_*/ops_* limits"),
        (["-vv"], "-vv: refused: at -v"),
        (["--api-socket", "fd=3"], "--api-socket: fd= is not translated"),
        (["--console", "socket=/s,bogus=on"], "--console: option 'bogus' is not translated"),
        (["--serial", "socket=/s,iommu=on"], "--serial: option 'iommu' is not translated"),
        (["--disk", "path=/a,_disable_aio=on"], "option '_disable_aio' has no field"),
        (["--disk", "path=/a,bogus=1"], "option 'bogus' is not translated"),
        (["--disk", "readonly=on"], "--disk: needs path="),
        (["--disk", "path=/a,readonly=maybe"], "readonly='maybe' is not on or off"),
        (["--balloon", "size=lots"], "size='lots' is not a size"),
        (["--vsock", "cid=3"], "--vsock: needs cid= and socket="),
        (["--fs", "tag=x"], "--fs: needs tag= and socket="),
        (["--watchdog=on"], "--watchdog: takes no value"),
        (["--platform", "oem_strings=[a,,b]"], "--platform: an empty OEM string"),
        (["--platform", 'oem_strings=["a,b"]'], "--platform: double quotes"),
        (["--disk", "path=/a,image_type=iso"], "image_type='iso' is not one of raw"),
        (["--net", "tap=t0,vhost_user=on,socket=/s,bogus=1"], "option 'bogus' is not translated"),
        (["--cpus", "profile=sapphire-rapids"], "option 'profile' has no field in the API"),
        (["--cpus", "topology=1:2"], "topology='1:2' is not threads:cores:dies:packages"),
        (["--cpus", "affinity=[0@[3-1]]"], "has an empty range '3-1'"),
        (["--cpus", "affinity=0@[1]"], "is not a list like [0@[0,1],1@[2]]"),
        (["--cpus", "affinity=[x@[1]]"], "is not vcpu@[cpus] ('x@[1]')"),
        (["--numa", "guest_numa_id=0,distances=[1@x]"], "is not node@distance ('1@x')"),
        (["--numa", "guest_numa_id=0,distances=[1-20]"], "is not node@distance ('1-20')"),
        (["--cpus", "features=[sse]"], "names a feature other than amx"),
        (["--gpu", "socket=gpu.sock"], "--gpu: exists only in cloud-hypervisor's graphics build"),
        (["--restore", "source_url=file:///s"], "--restore: restores a snapshot"),
    ],
)
def test_refusals_name_the_flag(
    extra: list[str], message: str, runner_argvs: dict[str, list[str]], tmp_path: Path
) -> None:
    argv = list(runner_argvs["defaults"])
    for flag in ("--platform", "--cpus", "--console", "--serial", "--api-socket", "--memory"):
        if extra[0] == flag and "given twice" not in message:
            del argv[argv.index(flag) : argv.index(flag) + 2]
    argv += extra
    with pytest.raises(UntranslatableArgument) as info:
        parse_argv(argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    # The console script: one line, exit 3, nothing started.
    result = subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", *argv],
        capture_output=True,
        env={**os.environ, "CREDBRIDGE_VM": "test-vm", "CREDBRIDGE_CLOUD_HYPERVISOR": "/bin/false"},
        cwd=tmp_path,
        check=False,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 3, result.stderr
    assert len(lines) == 1
    assert lines[0].startswith("credbridge-cloud-hypervisor: error: cloud-hypervisor argument ")
    assert message in lines[0]


def test_confidential_vm_with_oem_credentials_is_refused(
    runner_argvs: dict[str, list[str]], tmp_path: Path, monkeypatch: Any
) -> None:
    argv = list(runner_argvs["defaults"])
    argv[argv.index("--platform") + 1] = "tdx=on"
    monkeypatch.chdir(tmp_path)
    session, launcher = open_wrapper(write_vm_config(tmp_path, {"API_KEY": b"x" * 12}), argv)
    with session, pytest.raises(ConfigError, match="confidential VM ignores SMBIOS credentials"):
        launcher.launch([Delivery("API_KEY", Secret(b"x" * 12))])


def test_launcher_table_sets_only_how_to_run(
    runner_argvs: dict[str, list[str]], tmp_path: Path, tmpfs_dir: Path
) -> None:
    """``virtiofsd``/``stop_timeout``/... come from the config; the VM's shape never does."""
    argv = runner_argvs["defaults"]
    config = write_vm_config(tmp_path, {})
    data = json.loads(config.read_text())
    launcher_table = {"type": "cloud-hypervisor", "stop_timeout": 3, "runtime_dir": str(tmpfs_dir)}
    data["targets"]["test-vm"]["launcher"] = launcher_table
    config.write_text(json.dumps(data))
    session, launcher = open_wrapper(config, argv)
    with session:
        assert launcher.runtime.stop_timeout == 3
        assert launcher.vm.runtime_dir == tmpfs_dir
    data["targets"]["test-vm"]["launcher"]["kernel"] = "/boot/vmlinuz"
    config.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"targets.test-vm.launcher.kernel: the VM\'s shape"):
        open_wrapper(config, argv)


def test_plan_is_redacted(
    runner_argvs: dict[str, list[str]], tmp_path: Path, tmpfs_dir: Path
) -> None:
    argv = runner_argvs["everything"]
    config = write_vm_config(tmp_path, SECRETS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "credbridge.launchers.ch_wrapper",
            "--credbridge-plan",
            *argv,
        ],
        capture_output=True,
        env={
            **os.environ,
            "CREDBRIDGE_VM": "test-vm",
            "CREDBRIDGE_CONFIG": str(config),
            "CREDBRIDGE_CLOUD_HYPERVISOR": "/opt/ch/bin/cloud-hypervisor",
            "RUNTIME_DIRECTORY": str(tmpfs_dir),
        },
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    for form in secret_forms(SECRETS.values()):
        assert form not in result.stdout
    plan = json.loads(result.stdout)
    body = plan["requests"][1]["body"]
    assert body["platform"]["oem_strings"] == [
        NOTIFY_OEM,
        *(f"io.systemd.credential.binary:{n}=<redacted>" for n in SECRETS),
    ]
    assert plan["argv"] == [
        "/opt/ch/bin/cloud-hypervisor",
        "--api-socket",
        f"path={tmp_path}/test-vm.sock",
    ]


def test_environment_errors(runner_argvs: dict[str, list[str]], tmp_path: Path) -> None:
    argv = runner_argvs["defaults"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBRIDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", *argv],
        capture_output=True,
        env={**env, "CREDBRIDGE_LOAD_PLUGINS": ""},
        check=False,
    )
    assert result.returncode == 3
    assert "CREDBRIDGE_VM is not set" in result.stderr.decode()
    result = subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", *argv],
        capture_output=True,
        env={
            **env,
            "CREDBRIDGE_VM": "nope",
            "CREDBRIDGE_CONFIG": str(write_vm_config(tmp_path, {})),
            "CREDBRIDGE_CLOUD_HYPERVISOR": "/bin/false",
        },
        check=False,
    )
    assert result.returncode == 3
    assert "no target 'nope'" in result.stderr.decode()


# --------------------------------------------------------------------------- through the stand-in


@pytest.fixture
def standin_run(tmp_path: Path, tmpfs_dir: Path) -> dict[str, Any]:
    record = tmpfs_dir / "record.jsonl"
    return {"record": record, "binary": write_standin(tmpfs_dir, record=record)}


WRAPPER = Path(sys.executable).parent / "credbridge-cloud-hypervisor"


def launch_until_booted(
    command: list[str],
    config: Path,
    cwd: Path,
    tmpfs_dir: Path,
    standin_run: dict[str, Any],
    while_booted: Callable[[], None] = lambda: None,
) -> tuple[int, bytes]:
    """Start the wrapper (``command``) for ``test-vm`` with the stand-in as cloud-hypervisor,
    wait for the stand-in's vm.boot, call ``while_booted``, then SIGTERM it, as systemd stops
    the VM: its exit status and stderr."""
    env = {
        **os.environ,
        "CREDBRIDGE_VM": "test-vm",
        "CREDBRIDGE_CONFIG": str(config),
        "CREDBRIDGE_CLOUD_HYPERVISOR": str(standin_run["binary"]),
        "RUNTIME_DIRECTORY": str(tmpfs_dir),
    }
    proc = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(r["path"].endswith("vm.boot") for r in read_records(standin_run["record"])):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "no vm.boot within 60s"
            time.sleep(0.05)
        while_booted()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@needs_spec
def test_launch_through_the_standin(
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    standin_run: dict[str, Any],
) -> None:
    """The console script, started like microvm-run execs cloud-hypervisor: the stand-in gets
    only --api-socket, a valid vm.create with microvm.nix's and the credentials' OEM strings,
    then vm.boot; SIGTERM stops both; no value in any process's argv meanwhile."""
    argv = runner_argvs["everything"]
    config = write_vm_config(tmp_path, SECRETS)
    leaks: list[str] = []

    def while_booted() -> None:
        leaks.extend(scan_all_cmdlines(secret_forms(SECRETS.values())))
        assert (tmp_path / "test-vm.sock").exists()

    returncode, err = launch_until_booted(
        [str(WRAPPER), *argv], config, tmp_path, tmpfs_dir, standin_run, while_booted
    )
    assert leaks == []
    assert returncode == 0, err.decode()  # cloud-hypervisor ends cleanly on SIGTERM
    records = read_records(standin_run["record"])
    create = next(r for r in records if r["path"].endswith("vm.create"))
    assert create["status"] == 204, create
    assert create["oem_names"] == [
        "io.systemd.credential:vmm.notify_socket",
        *(f"io.systemd.credential.binary:{n}" for n in SECRETS),
    ]
    assert create["fs_tags"] == ["data"]
    assert create["memory_shared"] is True
    assert not (tmpfs_dir / "credbridge").exists()
    for form in secret_forms(SECRETS.values()):
        assert form not in err


def test_macvtap_plan_adds_every_interface_after_create(
    runner_argvs: dict[str, list[str]], spec: dict[str, Any], tmp_path: Path, tmpfs_dir: Path
) -> None:
    """cloud-hypervisor v53 drops file descriptors sent with vm.create and takes them with
    vm.add-net: every interface goes there, in the runner's order, the macvtap queues' fds as
    SCM_RIGHTS, never in a body."""
    from support.ch_standin import schema_problems

    argv = runner_argvs["macvtap"]
    assert "fd=[3,4],mac=02:00:00:00:00:02,num_queues=4" in argv
    result = run_plan(argv, write_vm_config(tmp_path, SECRETS), tmp_path, tmpfs_dir)
    assert result.returncode == 0, result.stderr.decode()
    requests = json.loads(result.stdout)["requests"]
    assert [r["endpoint"].rpartition("/")[2] for r in requests] == [
        "vmm.ping",
        "vm.create",
        "vm.add-net",
        "vm.add-net",
        "vm.boot",
    ]
    assert "net" not in requests[1]["body"]
    assert [(r["body"], r["fds"]) for r in requests[2:4]] == [
        ({"tap": "vm-tap0", "mac": "02:00:00:00:00:01", "num_queues": 4}, []),
        ({"mac": "02:00:00:00:00:02", "num_queues": 4}, [3, 4]),
    ]
    for request in requests[2:4]:
        assert schema_problems(request["body"], "NetConfig", spec) == []


@needs_spec
def test_macvtap_fds_reach_the_vmm_over_the_api_socket(
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    standin_run: dict[str, Any],
) -> None:
    """Started as microvm-run starts it (fds 3 and 4 open on the macvtap device, here two
    files), the wrapper sends them with vm.add-net as SCM_RIGHTS; the stand-in receives them
    the way cloud-hypervisor's HTTP server does and records which files arrived."""
    argv = runner_argvs["macvtap"]
    queues = [tmp_path / "tap-queue-0", tmp_path / "tap-queue-1"]
    for queue in queues:
        queue.write_bytes(b"")
    script = 'exec 3<>"$1" 4<>"$2"; shift 2; exec "$@"'
    returncode, err = launch_until_booted(
        ["bash", "-c", script, "microvm-run", *map(str, queues), str(WRAPPER), *argv],
        write_vm_config(tmp_path, SECRETS),
        tmp_path,
        tmpfs_dir,
        standin_run,
    )
    assert returncode == 0, err.decode()
    records = read_records(standin_run["record"])
    add_net = [r for r in records if r["path"].endswith("vm.add-net")]
    assert [r["status"] for r in add_net] == [204, 204]
    assert add_net[0]["net_fds"] == []
    assert add_net[1]["net_fds"] == [[q.stat().st_ino, q.stat().st_dev] for q in queues]
    order = [r["path"].rpartition("/")[2] for r in records if r["method"] == "PUT"]
    assert order == ["vm.create", "vm.add-net", "vm.add-net", "vm.boot", *order[4:]]


def test_macvtap_fds_must_be_inherited(runner_argvs: dict[str, list[str]], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", *runner_argvs["macvtap"]],
        capture_output=True,
        env={**os.environ, "CREDBRIDGE_VM": "test-vm", "CREDBRIDGE_CLOUD_HYPERVISOR": "/bin/false"},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 3
    assert result.stderr.decode().splitlines() == [
        "credbridge-cloud-hypervisor: error: cloud-hypervisor argument --net: fd 3 is not open "
        "(microvm-run opens a macvtap interface's queues before it execs cloud-hypervisor) "
        "(the credbridge wrapper refuses what it cannot translate)"
    ]


@needs_spec
def test_virtiofs_vm_without_shares_is_created(
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    standin_run: dict[str, Any],
) -> None:
    """microvm.nix's defaults (mergeable=on, no share) with the virtiofs sink: the stand-in
    applies cloud-hypervisor's shared/mergeable rule on vm.create, and the VM is created."""
    argv = runner_argvs["defaults"]
    config = write_vm_config(tmp_path, SECRETS, sink="virtiofs")
    returncode, err = launch_until_booted(
        [str(WRAPPER), *argv], config, tmp_path, tmpfs_dir, standin_run
    )
    assert returncode == 0, err.decode()
    create = next(r for r in read_records(standin_run["record"]) if r["path"].endswith("vm.create"))
    assert create["status"] == 204, create
    assert create["memory_shared"] is True


def test_standin_refuses_shared_mergeable_memory(tmpfs_dir: Path) -> None:
    """The stand-in answers vm.create as cloud-hypervisor v53 does for this rule (500)."""
    from credbridge.launchers.ch_api import ApiClient

    record = tmpfs_dir / "record.jsonl"
    binary = write_standin(tmpfs_dir, record=record)
    sock = tmpfs_dir / "api.sock"
    proc = subprocess.Popen([str(binary), "--api-socket", f"path={sock}"])
    try:
        api = ApiClient(sock, 10)
        deadline = time.monotonic() + 30
        while not api.ping():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = {
            "payload": {"kernel": "/k"},
            "memory": {"size": 1 << 29, "shared": True, "mergeable": True},
        }
        status, answer = api.call("PUT", "vm.create", json.dumps(body).encode())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (status, answer) == (500, b"InvalidSharedMemoryWithMergeable")


def test_wrapper_is_installed_as_a_console_script() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["credbridge-cloud-hypervisor"] == "credbridge.launchers.ch_wrapper:main"


# --------------------------------------------------------------------------- cloud-hypervisor's rules


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        (["--cpus", "boot=4,max=2"], "CpusMaxLowerThanBoot: max=2 is lower than boot=4"),
        (["--cpus", "boot=1,max=300"], "TooManyCpus: max=300"),
        (["--cpus", "boot=2,max=4,topology=1:1:1:2"], "CpuTopologyCount: the topology gives 2"),
        (["--cpus", "boot=2,topology=0:1:1:2"], "CpuTopologyZeroPart"),
        (["--cpus", "boot=4,topology=4:1:1:1"], "CpuTopologyThreadsPerCore"),
        (["--memory", "size=512M,hugepage_size=2M"], "HugePageSizeWithoutHugePages"),
        (["--memory", "size=512M,hugepages=on,hugepage_size=3M"], "InvalidHugePageSize"),
        (["--memory", "size=512M,shared=on,mergeable=on"], "InvalidSharedMemoryWithMergeable"),
        (["--fs", "tag=a,socket=a.sock"], "VhostUserRequiresSharedMemory"),
        (["--vsock", "cid=2,socket=v.sock"], "VsockSpecialCid: cid 2 is reserved"),
        (["--balloon", "size=512M"], "BalloonLargerThanRam"),
        (
            ["--device", "path=/sys/bus/pci/devices/a", "path=/sys/bus/pci/devices/a"],
            "DuplicateDevicePath",
        ),
        (["--disk", "path=/a,id=x", "path=/b,id=x"], "IdentifierNotUnique"),
        (["--pmem", "file=/p,id=x", "--disk", "path=/b,id=x"], "IdentifierNotUnique"),
        (["--disk", "path=/a,rate_limit_group=g"], "InvalidRateLimiterGroup"),
        (["--user-device", "socket=/u.sock"], "UserDevicesRequireSharedMemory"),
        (["--disk", "path=/a,vhost_user=on,socket=/s"], "VhostUserRequiresSharedMemory"),
        (["--landlock-rules", "path=/nonexistent/x,access=r"], "LandlockPathDoesNotExist"),
        (["--net", "tap=t0,num_queues=8"], "TooManyQueues: --net num_queues=8 with 1 boot"),
        (["--net", "tap=t0,num_queues=1"], "VnetQueueLowerThan2"),
        (["--net", "num_queues=4,fd=[3]"], "VnetQueueFdMismatch"),
        (["--net", "tap=t0,ip=10.0.0.1"], "IpProvidedWithoutMask"),
        (["--numa", "guest_numa_id=0,cpus=[0],device_id=d"], "InvalidNumaConfig: device_id is"),
        (["--numa", "guest_numa_id=1,cpus=[0],pci_segments=[0]"], "DefaultPciSegmentInvalidNode"),
        (
            ["--numa", "guest_numa_id=0,memory_zones=[z]", "guest_numa_id=1,memory_zones=[z]"],
            "MemoryZoneReused: zone z in NUMA nodes 0 and 1",
        ),
    ],
)
def test_create_time_rules_fail_in_credbridge(
    extra: list[str],
    rule: str,
    runner_argvs: dict[str, list[str]],
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: Any,
) -> None:
    """A VM cloud-hypervisor v53 would refuse at vm.create (config.rs) fails before, with one
    line naming cloud-hypervisor's rule."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = list(runner_argvs["defaults"])
    if extra[0] in argv:
        del argv[argv.index(extra[0]) : argv.index(extra[0]) + 2]
    session, launcher = open_wrapper(write_vm_config(tmp_path, {}), [*argv, *extra])
    with session, pytest.raises(ConfigError) as info:
        body_for(launcher, tmpfs_dir / "run", {})
    assert str(info.value).startswith("test-vm: cloud-hypervisor would refuse this VM: ")
    assert rule in str(info.value)
    assert "\n" not in str(info.value)


#: cloud-hypervisor v53 flags and keys beyond what microvm.nix emits, as a user's extraArgs
#: would add them; each must land in the VmConfig field the spec names.
EVERY_FLAG = [
    "--pmem", "file=/srv/pmem.img,size=1G,discard_writes=on,id=pm0,pci_segment=0",
    "--vdpa", "path=/dev/vhost-vdpa-0,num_queues=2,iommu=on",
    "--pci-segment", "pci_segment=0,mmio32_aperture_weight=2,mmio64_aperture_weight=4",
    "--rate-limit-group", "id=g0,bw_size=1000,bw_refill_time=100,ops_size=10,ops_refill_time=5",
    "--disk", "path=/srv/d.img,rate_limit_group=g0,queue_affinity=[0@[0-1]],lock_granularity=full",
    "path=/srv/e.img,bw_size=10,bw_one_time_burst=5,bw_refill_time=1,pci_device_id=5",
    "--landlock", "--landlock-rules", "path=/tmp,access=rw",
    "--rtc",
    "--debug-console", "file=dbg.log,iobase=0xe9",
    "--no-shutdown", "--log-format", "{level} {msg}",
    "--host-data", "0123abcd",
    "--net", "tap=t0,offload_tso=on,offload_ufo=on,offload_csum=on,ops_size=5,ops_refill_time=1",
]  # fmt: skip
#: ... and --console's PCI keys, in place of microvm.nix's `--console null`.
CONSOLE_WITH_PCI = "pty,id=con0,iommu=on,pci_segment=0,pci_device_id=7"


@needs_spec
def test_every_translated_flag_reaches_its_field(
    runner_argvs: dict[str, list[str]],
    spec: dict[str, Any],
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: Any,
) -> None:
    from credbridge.launchers.ch_rules import create_rule_broken
    from support.ch_standin import schema_problems

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = [*runner_argvs["defaults"], *EVERY_FLAG]
    argv[argv.index("--console") + 1] = CONSOLE_WITH_PCI
    session, launcher = open_wrapper(write_vm_config(tmp_path, SECRETS), argv, "/ch")
    with session:
        launch = body_for(launcher, tmpfs_dir / "run", SECRETS)
    body = launch.body
    assert schema_problems(body, "VmConfig", spec) == []
    assert create_rule_broken(body, "x86_64") is None
    assert body["pmem"] == [
        {
            "file": "/srv/pmem.img",
            "size": 1 << 30,
            "discard_writes": True,
            "id": "pm0",
            "pci_segment": 0,
        }
    ]
    assert body["vdpa"] == [{"path": "/dev/vhost-vdpa-0", "num_queues": 2, "iommu": True}]
    assert body["pci_segments"] == [
        {"pci_segment": 0, "mmio32_aperture_weight": 2, "mmio64_aperture_weight": 4}
    ]
    assert body["rate_limit_groups"] == [
        {
            "id": "g0",
            "rate_limiter_config": {
                "bandwidth": {"size": 1000, "refill_time": 100},
                "ops": {"size": 10, "refill_time": 5},
            },
        }
    ]
    disks = body["disks"][1:]
    assert disks[0]["rate_limit_group"] == "g0"
    assert disks[0]["queue_affinity"] == [{"queue_index": 0, "host_cpus": [0, 1]}]
    assert disks[0]["lock_granularity"] == "Full"
    assert disks[1]["rate_limiter_config"] == {
        "bandwidth": {"size": 10, "one_time_burst": 5, "refill_time": 1}
    }
    assert disks[1]["pci_device_id"] == 5
    assert body["landlock_enable"] is True
    assert body["landlock_rules"] == [{"path": "/tmp", "access": "rw"}]
    assert body["rtc"] == {}
    assert body["debug_console"] == {
        "mode": "File",
        "file": str(tmp_path / "dbg.log"),
        "iobase": 0xE9,
    }
    assert body["payload"]["host_data"] == "0123abcd"
    assert body["console"] == {
        "mode": "Pty",
        "id": "con0",
        "iommu": True,
        "pci_segment": 0,
        "pci_device_id": 7,
    }
    assert body["net"][0]["offload_tso"] is True
    assert body["net"][0]["rate_limiter_config"] == {"ops": {"size": 5, "refill_time": 1}}
    assert launch.argv[3:] == ["--log-format", "{level} {msg}", "--no-shutdown"]


@needs_spec
def test_memory_zones_are_shared_for_the_virtiofs_sink(
    runner_argvs: dict[str, list[str]],
    spec: dict[str, Any],
    tmp_path: Path,
    tmpfs_dir: Path,
    monkeypatch: Any,
) -> None:
    """With ``size=0`` the guest's RAM is its zones': the credentials' share needs each zone
    shared (and so not mergeable); a hugepages zone already is. The same VM with OEM strings
    keeps its zones and is refused, as cloud-hypervisor refuses a vhost-user device on
    memory it cannot share."""
    from credbridge.launchers.ch_rules import create_rule_broken
    from support.ch_standin import schema_problems

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    argv = list(runner_argvs["defaults"])
    argv[argv.index("--memory") + 1] = "size=0"
    argv += [
        "--memory-zone", "id=z0,size=256M,mergeable=on", "id=z1,size=256M,hugepages=on",
        "--numa", "guest_numa_id=0,cpus=[0],memory_zones=[z0,z1],distances=[0@10]",
        "--generic-vhost-user", "socket=/run/snd.sock,queue_sizes=[64,64],device_type=sound",
    ]  # fmt: skip
    body = body_of(argv, "virtiofs", tmp_path, tmpfs_dir)
    assert schema_problems(body, "VmConfig", spec) == []
    assert create_rule_broken(body, "x86_64") is None
    assert body["memory"] == {
        "size": 0,
        "zones": [
            {"id": "z0", "size": 256 << 20, "shared": True},
            {"id": "z1", "size": 256 << 20, "hugepages": True},
        ],
    }
    assert body["numa"] == [
        {
            "guest_numa_id": 0,
            "cpus": [0],
            "memory_zones": ["z0", "z1"],
            "distances": [{"destination": 0, "distance": 10}],
        }
    ]
    assert body["generic_vhost_user"] == [
        {"socket": "/run/snd.sock", "queue_sizes": [64, 64], "device_type": 25}
    ]
    session, launcher = open_wrapper(write_vm_config(tmp_path / "o", {}), argv)
    with session, pytest.raises(ConfigError, match="VhostUserRequiresSharedMemory"):
        body_for(launcher, tmpfs_dir / "run-o", {})


def test_every_v53_flag_is_decided_and_documented() -> None:
    """Each flag of cloud-hypervisor v53's main.rs is translated, passed through or refused
    with a reason of its own, and has its row in docs/vm.md's table."""
    import re

    from credbridge.launchers import ch_options as opt

    main_rs = REPO.parent / "shared/vendor/cloud-hypervisor/src-v53.0/main.rs"
    if not main_rs.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{main_rs} is missing")
        pytest.skip(f"{main_rs} is missing (vendored in ../shared)")
    names = re.findall(r'Arg::new\("([a-z-]+)"\)', main_rs.read_text())
    flags = {"-v" if name == "v" else f"--{name}" for name in names}
    assert len(flags) > 45
    decided = (
        set(opt.OPTION_KEYS)
        | set(opt.PAYLOAD_FLAGS)
        | set(opt.EXTRA_PAYLOAD_FLAGS)
        | set(opt.SWITCHES)
        | set(opt.PROCESS_FLAGS)
        | set(opt.PROCESS_SWITCHES)
        | set(opt.REFUSED_FLAGS)
        | {"--cmdline", "--serial", "--console", "--api-socket", "--debug-console", "-v"}
        | {"--version"}
    )
    assert flags - decided == set()
    table = (REPO / "docs/vm.md").read_text().split("## Every cloud-hypervisor flag", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {flag for row in rows for flag in re.findall(r"`(-[-a-zA-Z]+)", row.split("|")[1])}
    assert flags - documented == set()


#: config.rs's parse functions (by the name of their argument) -> the flag they parse; the
#: ones not listed parse flags the wrapper refuses whole (fw_cfg, ivshmem, restore, input).
PARSERS = {
    "cpus": "--cpus",
    "platform": "--platform",
    "memory": "--memory",
    "rate_limit_group": "--rate-limit-group",
    "disk": "--disk",
    "net": "--net",
    "rng": "--rng",
    "rtc": "--rtc",
    "balloon": "--balloon",
    "vhost_user": "--generic-vhost-user",
    "fs": "--fs",
    "pmem": "--pmem",
    "console": "--console",
    "serial": "--serial",
    "debug_console_ops": "--debug-console",
    "device": "--device",
    "user_device": "--user-device",
    "vdpa": "--vdpa",
    "vsock": "--vsock",
    "numa": "--numa",
    "tpm": "--tpm",
    "landlock_rule": "--landlock-rules",
}


def test_every_v53_option_key_is_decided() -> None:
    """Each option key config.rs's parsers accept is translated or refused with its reason."""
    import re

    from credbridge.launchers import ch_options as opt

    config_rs = REPO.parent / "shared/vendor/cloud-hypervisor/src-v53.0/config.rs"
    if not config_rs.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{config_rs} is missing")
        pytest.skip(f"{config_rs} is missing (vendored in ../shared)")
    source = config_rs.read_text()
    common = {"OPTIONS": ["id", "pci_segment", "pci_device_id"]}
    common["OPTIONS_IOMMU"] = [*common["OPTIONS"], "iommu"]
    blocks = re.split(r"\n    pub fn parse\(", source)[1:]
    keys: dict[str, set[str]] = {}
    for block in blocks:
        argument, body = block.split(":", 1)
        body = body.split("\n    }\n", 1)[0]
        if argument == "disk" and "mmio32_aperture_weight" in body:
            argument = "pci_segment"  # PciSegmentConfig::parse(disk: &str)
        found = set(re.findall(r'\.add(?:_valueless)?\("([a-z_0-9]+)"\)', body))
        found |= set(re.findall(r'parser\.add\("([a-z_0-9]+)"\)', body))
        for which in re.findall(r"PciDeviceCommonConfig::(OPTIONS_IOMMU|OPTIONS)\)", body):
            found |= set(common[which])
        keys.setdefault(argument, set()).update(found)
    keys["platform"] |= set(re.findall(r'key: "([a-z_]+)"', source))
    keys["console"] |= {"off", "pty", "tty", "null", "file", "socket"}
    keys["serial"] = {"off", "pty", "tty", "null", "file", "socket"}
    zones = {"id", "size", "file", "shared", "hugepages", "hugepage_size", "host_numa_node"}
    assert zones <= keys["memory"]
    undecided = []
    for argument, flag in {**PARSERS, "pci_segment": "--pci-segment"}.items():
        known = set(opt.OPTION_KEYS.get(flag, {})) | {k for f, k in opt.REFUSED_KEYS if f == flag}
        if flag == "--memory":
            known |= set(opt.OPTION_KEYS["--memory-zone"])
        if flag in {"--console", "--serial", "--debug-console"}:
            known |= {*opt.CONSOLE_WORDS, "file", "socket", "iobase"}
            known |= set(opt.OPTION_KEYS["--console-pci"]) if flag == "--console" else set()
        if flag == "--platform":
            known.add("oem_strings")
        undecided += [f"{flag} {key}" for key in sorted(keys[argument] - known)]
    assert undecided == []
