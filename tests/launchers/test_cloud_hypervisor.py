"""The cloud-hypervisor launcher against the vendored OpenAPI spec and the API stand-in.

cloud-hypervisor cannot run here (no KVM), so: (1) every ``vm.create`` body the launcher builds
is validated against ``components/schemas/VmConfig`` of the vendored spec, plus a strict check
that it carries no key the spec does not declare; (2) ``credbridge launch`` runs against
``tests/support/ch_standin.py`` -- a stand-in for cloud-hypervisor's API, not cloud-hypervisor
-- started exactly like the real binary, which validates every request again. Guest boots are
in test_cloud_hypervisor_guest.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import ConfigError, Delivery, LaunchError, Secret
from credbridge.core.config import load_config
from credbridge.core.engine import Session
from credbridge.launchers.ch_vmconfig import build_vm_config, redact_argv
from credbridge.launchers.cloud_hypervisor import CloudHypervisorLauncher
from support.canary import Canary
from support.ch_harness import (
    SPEC_PATH,
    check_runtime_modes,
    cmdline,
    process_tree,
    read_records,
    require_spec,
    scan_tree,
    write_config,
    write_standin,
)

SECRETS: dict[str, bytes] = {
    "API_KEY": b"k3y-Zq8mW2vXr7tPa9LdNe4s",
    "DB_PASSWORD": b"multi\nline\npassword-Hq2Lr8Vd\n",
    "BLOB": bytes(range(256)),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    require_spec()
    from support.ch_standin import load_spec

    return load_spec(SPEC_PATH)


def problems(body: Any, spec: Mapping[str, Any]) -> list[str]:
    from support.ch_standin import schema_problems

    return schema_problems(body, "VmConfig", dict(spec))


def open_launcher(config_path: Path, name: str = "test-vm") -> CloudHypervisorLauncher:
    session = Session(load_config(config_path))
    session.validate()
    launcher = session.launcher(session.config.target(name))
    assert isinstance(launcher, CloudHypervisorLauncher)
    return launcher


def body_for(
    launcher: CloudHypervisorLauncher, runtime: Path, secrets: Mapping[str, bytes] = SECRETS
) -> dict[str, Any]:
    """The vm.create body of a real prepare() (values included)."""
    deliveries = [Delivery(n, Secret(v)) for n, v in secrets.items()]
    runtime.mkdir(mode=0o700, exist_ok=True)
    channel = launcher.sink.prepare(deliveries, runtime)
    try:
        sockets = [runtime / f"fs-{s.tag}.sock" for s in channel.virtiofs]
        spec = launcher.build(channel, runtime, sockets, redact=False)
    finally:
        launcher.sink.cleanup(channel)
    assert spec.body is not None
    return spec.body


# --------------------------------------------------------------------------- conformance

KERNEL = {"kernel": "/var/lib/microvms/test-vm/vmlinux", "runtime_dir": "/dev/shm/cb-ch-conf"}
CONFIGS: dict[str, dict[str, Any]] = {
    "kernel+initramfs": {
        **KERNEL,
        "initramfs": "/var/lib/microvms/test-vm/initrd",
        "cmdline": "console=ttyS0 root=/dev/vda",
        "memory": "1G",
        "cpus": 2,
    },
    "firmware": {"firmware": "/usr/share/cloud-hypervisor/CLOUDHV.fd", "memory": "512M"},
    "disks": {
        **KERNEL,
        "disks": [
            {"path": "/var/lib/microvms/test-vm/root.img", "readonly": False, "direct": True},
            {"path": "/var/lib/microvms/test-vm/store.img", "readonly": True, "serial": "store"},
            "/var/lib/microvms/test-vm/data.img",
        ],
    },
    "net": {
        **KERNEL,
        "net": [
            {"tap": "vm-test", "mac": "02:00:00:00:00:01", "num_queues": 2},
            {"vhost_user": True, "vhost_socket": "/run/vhost-net.sock", "mtu": 1500},
        ],
    },
    "serial-file-console-pty": {**KERNEL, "serial": "file:/tmp/serial.log", "console": "pty"},
    "serial-socket-console-tty": {**KERNEL, "serial": "socket:/run/ser.sock", "console": "tty"},
    "serial-null-console-null": {**KERNEL, "serial": "null", "console": "null"},
    "serial-off": {**KERNEL, "serial": "off"},
    "platform": {**KERNEL, "platform": {"system_serial_number": "vm-1", "num_pci_segments": 1}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vm_create_body_conforms(
    name: str, spec: dict[str, Any], tmp_path: Path, tmpfs_dir: Path
) -> None:
    config = write_config(tmp_path, CONFIGS[name], {})
    launcher = open_launcher(config)
    body = body_for(launcher, tmpfs_dir / "run")
    assert problems(body, spec) == []
    strings = body["platform"]["oem_strings"]
    assert [s.partition("=")[0] for s in strings] == [
        f"io.systemd.credential.binary:{n}" for n in SECRETS
    ]
    assert body["memory"]["shared"] is False


def test_virtiofs_body_has_fs_and_shared_memory(
    spec: dict[str, Any], tmp_path: Path, tmpfs_dir: Path
) -> None:
    config = write_config(
        tmp_path, {**KERNEL, "memory": "256M"}, {}, sink={"type": "virtiofs", "tag": "creds"}
    )
    body = body_for(open_launcher(config), tmpfs_dir / "run")
    assert problems(body, spec) == []
    assert body["memory"] == {"size": 256 << 20, "shared": True}
    assert body["fs"] == [
        {
            "tag": "creds",
            "socket": str(tmpfs_dir / "run" / "fs-creds.sock"),
            "num_queues": 1,
            "queue_size": 1024,
        }
    ]
    assert "platform" not in body


def test_validator_can_fail(spec: dict[str, Any]) -> None:
    """The conformance check is not vacuous: wrong types and undeclared keys are reported."""
    good = build_vm_config(
        _vm_spec({**KERNEL}), ["io.systemd.credential.binary:A=QQ=="], platform=None
    )
    assert problems(good, spec) == []
    assert problems({**good, "memory": {"size": "1G"}}, spec)
    assert problems({**good, "payload": {"kernel": "/k", "credentials": "x"}}, spec)
    assert problems({"cpus": {"boot_vcpus": 1}}, spec)


def _vm_spec(settings: dict[str, Any]) -> Any:
    from credbridge.core.config import Config
    from credbridge.core.settings import declare, read_settings
    from credbridge.launchers.hooks import VM_SETTINGS
    from credbridge.launchers.vmspec import vm_spec

    declared = declare(VM_SETTINGS) or {}
    values = read_settings(declared, settings, what="t", file=None, where="l", base=Path("/"))
    return vm_spec("t", values, Config(None, Path("/"), {}), "l")


def test_dry_run_plan_redacts_and_conforms(
    spec: dict[str, Any], tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    config = write_config(tmp_path, {**KERNEL, "runtime_dir": str(tmpfs_dir / "run")}, SECRETS)
    result = cli("-c", str(config), "launch", "test-vm", "--dry-run")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout
    for form in _forms():
        assert form not in out
    plan = json.loads(out)
    create = plan["requests"][1]
    assert create["endpoint"] == "/api/v1/vm.create"
    assert problems(create["body"], spec) == []
    assert create["body"]["platform"]["oem_strings"] == [
        f"io.systemd.credential.binary:{n}=<redacted>" for n in SECRETS
    ]
    assert plan["argv"] == [
        "cloud-hypervisor",
        "--api-socket",
        f"path={tmpfs_dir / 'run' / 'api.sock'}",
    ]
    assert not (tmpfs_dir / "run").exists()
    # The plan above was made from the real values (so its redaction means something): a
    # value over systemd's limit fails the dry run, naming it.
    (tmp_path / "big").mkdir()
    big = write_config(
        tmp_path / "big",
        {**KERNEL, "runtime_dir": str(tmpfs_dir / "run")},
        {**SECRETS, "HUGE": b"h" * ((1 << 20) + 1)},
    )
    refused = cli("-c", str(big), "launch", "test-vm", "--dry-run")
    assert refused.returncode == 9, refused.stderr
    assert "credential 'HUGE': 1048577 bytes is over systemd's limit" in refused.stderr.decode()


def _forms() -> list[bytes]:
    from support.ch_harness import secret_forms

    return secret_forms(SECRETS.values())


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "settings",
    [{"verbose": True}, {"verbose": 2}, {"extra_args": ["-v"]}, {"extra_args": ["-vvv"]}],
)
def test_verbose_refused_with_secrets(settings: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(tmp_path, {**KERNEL, **settings}, {"API_KEY": b"abcdefgh12345"})
    launcher = open_launcher(config)
    with pytest.raises(ConfigError, match="refusing to run cloud-hypervisor with -v"):
        launcher.plan({"API_KEY": Secret(b"abcdefgh12345")})
    with pytest.raises(ConfigError, match="refusing to run cloud-hypervisor with -v"):
        launcher.launch([Delivery("API_KEY", Secret(b"abcdefgh12345"))])


def test_verbose_allowed_without_secrets(tmp_path: Path) -> None:
    config = write_config(tmp_path, {**KERNEL, "verbose": 1}, {})
    plan = open_launcher(config).plan({})
    assert "-v" in plan["argv"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"extra_args": ["--api-socket", "path=/x"]}, "owns --api-socket"),
        ({"extra_args": ["--platform", "oem_strings=[x]"]}, "platform"),
        ({"platform": {"oem_strings": ["x"]}}, "OEM strings come from"),
        ({"oem_strings_on_cmdline": "yes"}, "true or false"),
        ({"bogus": 1}, "unknown setting 'bogus'"),
    ],
)
def test_bad_settings(settings: dict[str, Any], message: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, {**KERNEL, **settings}, {})
    with pytest.raises(ConfigError, match=message):
        open_launcher(config)


def test_fw_cfg_sink_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, KERNEL, {}, sink="fw-cfg")
    with pytest.raises(ConfigError, match="no fw_cfg items") as info:
        open_launcher(config)
    assert "targets.test-vm.sink" in str(info.value)


# --------------------------------------------------------------------------- CLI opt-in


def test_cmdline_opt_in_binary_only_and_warns(
    tmp_path: Path, tmpfs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(
        tmp_path, {**KERNEL, "oem_strings_on_cmdline": True, "cmdline": "console=ttyS0"}, {}
    )
    launcher = open_launcher(config)
    deliveries = [Delivery(n, Secret(v)) for n, v in SECRETS.items()]
    channel = launcher.sink.prepare(deliveries, tmpfs_dir)
    launcher._check_channel(channel)
    spec = launcher.build(channel, tmpfs_dir, [], redact=False)
    assert spec.body is None
    platform = spec.argv[spec.argv.index("--platform") + 1]
    assert spec.argv.count("--platform") == 1
    inner = platform.removeprefix("oem_strings=[").removesuffix("]")
    strings = inner.split(",")
    assert len(strings) == len(SECRETS)
    for text in strings:
        assert text.startswith("io.systemd.credential.binary:")
        assert not any(c in text for c in ' "[],\n')
    redacted = redact_argv(spec.argv)
    assert all(form.decode("latin-1") not in " ".join(redacted) for form in _forms())
    # A non-binary string would be split or ignored by cloud-hypervisor's --platform parser.
    for bad in (
        b"io.systemd.credential:API_KEY=a,b",
        b"io.systemd.credential.binary:API_KEY=QQ==\n",
    ):
        channel.oem_strings[0] = Secret(bad)
        with pytest.raises(LaunchError, match="API_KEY: OEM string is not in the binary form"):
            launcher._check_channel(channel)


def test_cmdline_opt_in_refuses_unsafe_option_values(tmp_path: Path, tmpfs_dir: Path) -> None:
    settings = {**KERNEL, "oem_strings_on_cmdline": True, "disks": ["/var/lib/a,b.img"]}
    launcher = open_launcher(write_config(tmp_path, settings, {}))
    channel = launcher.sink.prepare([Delivery("A", Secret(b"x"))], tmpfs_dir)
    with pytest.raises(
        ConfigError, match="cannot be put on cloud-hypervisor's command line"
    ) as info:
        launcher.build(channel, tmpfs_dir, [], redact=False)
    assert "targets.test-vm.launcher.disks[0].path" in str(info.value)


# --------------------------------------------------------------------------- stand-in runs


@pytest.fixture
def standin_dir(tmpfs_dir: Path) -> Path:
    """Where the stand-in runs; it needs no spec (only the schema checks do)."""
    return tmpfs_dir


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["CREDBRIDGE_LOAD_PLUGINS"] = ""
    return env


def _launch(config: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "credbridge.core.cli",
            "-c",
            str(config),
            "launch",
            "test-vm",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``predicate()`` holds; fail if credbridge exits first (no time limit here:
    pytest-timeout bounds the test)."""
    while not predicate():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"credbridge exited {proc.returncode} before {what}: {err.decode()}")
        time.sleep(0.05)


@pytest.fixture
def run_dir(standin_dir: Path) -> Path:
    return standin_dir / "run"


def _config(standin_dir: Path, run_dir: Path, record: Path, **kw: Any) -> Path:
    exit_code = kw.pop("exit_code", None)
    sink = kw.pop("sink", "oem-strings")
    secrets = kw.pop("secrets", SECRETS)
    echo = kw.pop("echo", None)
    binary = write_standin(standin_dir, exit_code=exit_code, record=record, echo=echo)
    settings = {**KERNEL, "binary": str(binary), "runtime_dir": str(run_dir), **kw}
    return write_config(standin_dir, settings, secrets, sink=sink)


def test_launch_creates_and_boots_through_api(standin_dir: Path, run_dir: Path) -> None:
    record = standin_dir / "record.jsonl"
    config = _config(standin_dir, run_dir, record, exit_code=0)
    proc = _launch(config)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    calls = [(r["method"], r["path"], r["status"]) for r in read_records(record)]
    assert calls[-2:] == [("PUT", "/api/v1/vm.create", 204), ("PUT", "/api/v1/vm.boot", 204)]
    assert all(c == ("GET", "/api/v1/vmm.ping", 200) for c in calls[:-2])
    create = read_records(record)[-2]
    assert create["oem_names"] == [f"io.systemd.credential.binary:{n}" for n in SECRETS]
    assert "problem" not in create
    for form in _forms():
        assert form not in out + err
    assert not run_dir.exists()


def test_exit_status_is_the_hypervisors(standin_dir: Path, run_dir: Path) -> None:
    record = standin_dir / "record.jsonl"
    proc = _launch(_config(standin_dir, run_dir, record, exit_code=7))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 7, err.decode()
    assert not run_dir.exists()


def test_api_error_names_endpoint_and_status_never_values(
    standin_dir: Path, run_dir: Path, spec: dict[str, Any]
) -> None:
    record = standin_dir / "record.jsonl"
    # A key the spec does not declare: the stand-in answers 400, as cloud-hypervisor would.
    config = _config(standin_dir, run_dir, record, net=[{"tap": "t0", "bogus": 1}])
    proc = _launch(config)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 10, err.decode()
    lines = err.decode().strip().splitlines()
    # The answer quotes no value, so it is shown (the withheld case is the test below).
    assert lines[-1] == (
        "credbridge: error: cloud-hypervisor API PUT /api/v1/vm.create failed: HTTP 400: "
        "invalid VmConfig: .net[0].bogus: not declared by VmConfig"
    )
    for form in _forms():
        assert form not in out + err
    assert read_records(record)[-1]["path"] == "/api/v1/vmm.shutdown"
    assert not run_dir.exists()


def _echoed_parts(values: Iterator[bytes] | Any) -> list[bytes]:
    """What the stand-in's echo quotes for each value: mid-Base64 and mid-value fragments."""
    import base64

    parts = []
    for value in values:
        payload = base64.b64encode(value)
        middle_b64, middle_raw = max(0, len(payload) // 2 - 6), max(0, len(value) // 2 - 5)
        parts.append(payload[middle_b64 : middle_b64 + 12])
        raw = value[middle_raw : middle_raw + 10]
        parts.append(repr(raw.decode("utf-8", "backslashreplace")).encode())
        parts.append(raw)
    return parts


@pytest.mark.parametrize("endpoint", ["create", "boot"])
def test_api_error_quoting_part_of_a_secret_is_withheld(
    endpoint: str, standin_dir: Path, run_dir: Path
) -> None:
    """The hypervisor's error answer quotes 12 Base64 characters and 10 value bytes: withheld,
    also on vm.boot, after the launcher dropped its copies of the values."""
    record = standin_dir / "record.jsonl"
    proc = _launch(_config(standin_dir, run_dir, record, echo=endpoint))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 10, err.decode()
    failed = [r for r in read_records(record) if r.get("problem") == "echo requested"]
    assert [r["path"] for r in failed] == [f"/api/v1/vm.{endpoint}"]  # the echo was sent
    line = err.decode().strip().splitlines()[-1]
    status = 400 if endpoint == "create" else 500
    assert line == (
        f"credbridge: error: cloud-hypervisor API PUT /api/v1/vm.{endpoint} failed: "
        f"HTTP {status}: <server message withheld: it quotes secret material>"
    )
    for part in [*_echoed_parts(SECRETS.values()), *_forms()]:
        assert part not in out + err
    assert not run_dir.exists()


@pytest.mark.parametrize("sink", ["oem-strings", "virtiofs"])
def test_no_secret_in_any_child_and_signal_cleans_up(
    sink: str, standin_dir: Path, run_dir: Path
) -> None:
    """While the VM runs: no value or its Base64 in argv/environ of any process credbridge
    started; runtime files 0400 in 0700 dirs. SIGTERM: forwarded, status returned, all gone."""
    record = standin_dir / "record.jsonl"
    config = _config(standin_dir, run_dir, record, sink=sink)
    proc = _launch(config)
    try:

        def booted() -> bool:
            return any(r["path"] == "/api/v1/vm.boot" for r in read_records(record))

        _wait_for(booted, proc, "vm.boot")
        pids, leaks = scan_tree(proc.pid, SECRETS.values())
        assert leaks == []
        names = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in pids]
        assert len(pids) >= 2, names  # credbridge + the stand-in (+ virtiofsd)
        if sink == "virtiofs":
            assert any(b"virtiofsd" in n for n in names), names
            create = next(r for r in read_records(record) if r["path"] == "/api/v1/vm.create")
            assert create["memory_shared"] is True
            assert create["fs_tags"] == ["credbridge"]
            files = sorted(p.name for p in run_dir.rglob("*") if p.is_file())
            assert set(SECRETS) <= set(files)
        assert check_runtime_modes(run_dir) == []
        assert (run_dir / "api.sock").is_socket()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # cloud-hypervisor (and the stand-in) shut down cleanly on SIGTERM: status 0, passed on.
    assert proc.returncode == 0, err.decode()
    assert not run_dir.exists()
    alive = [p for p in pids[1:] if Path(f"/proc/{p}").exists() and not _zombie(p)]
    assert alive == []
    for form in _forms():
        assert form not in out + err


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_cmdline_mode_through_standin(standin_dir: Path, run_dir: Path) -> None:
    record = standin_dir / "record.jsonl"
    config = _config(standin_dir, run_dir, record, oem_strings_on_cmdline=True)
    proc = _launch(config)
    try:
        _wait_for(lambda: bool(read_records(record)), proc, "the stand-in started")
        pids = process_tree(proc.pid)
        argv = b"".join(cmdline(p) for p in pids[1:])
        # Explicit opt-in: the Base64 form is on the command line -- and only that form.
        assert b"io.systemd.credential.binary:API_KEY=" in argv
        for value in SECRETS.values():
            assert value not in argv
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = read_records(record)[0]
    assert first["method"] == "CLI"
    assert first["problem"] == ""
    assert first["oem_names"] == [f"io.systemd.credential.binary:{n}" for n in SECRETS]
    assert not any(r["path"] == "/api/v1/vm.create" for r in read_records(record))
    assert "every local user can read them" in err.decode()
    assert not run_dir.exists()


def test_hypervisor_missing_is_a_launch_error(standin_dir: Path, run_dir: Path, cli: Any) -> None:
    config = write_config(
        standin_dir,
        {**KERNEL, "binary": str(standin_dir / "nope"), "runtime_dir": str(run_dir)},
        SECRETS,
    )
    result = cli("-c", str(config), "launch", "test-vm")
    assert result.returncode == 10
    assert "cannot start" in result.stderr.decode()
    assert not run_dir.exists()


@pytest.mark.parametrize("on_cmdline", [False, True])
def test_log_lines_never_carry_values(
    on_cmdline: bool,
    standin_dir: Path,
    run_dir: Path,
    caplog: pytest.LogCaptureFixture,
    canary: Canary,
) -> None:
    """Not even at debug level, not even in the CLI opt-in mode (where argv holds Base64)."""
    if on_cmdline:  # the documented opt-in puts the OEM strings on cloud-hypervisor's argv
        canary.tolerate("argv of a child of credbridge")
    record = standin_dir / "record.jsonl"
    config = _config(standin_dir, run_dir, record, exit_code=0, oem_strings_on_cmdline=on_cmdline)
    launcher = open_launcher(config)
    caplog.set_level(logging.DEBUG)
    status = launcher.launch([Delivery(n, Secret(v)) for n, v in SECRETS.items()])
    assert status == 0
    text = caplog.text.encode()
    assert "with credentials: API_KEY, DB_PASSWORD, BLOB" in caplog.text
    assert "starting" in caplog.text
    for form in _forms():
        assert form not in text
    if on_cmdline:
        assert "every local user can read them" in caplog.text


@pytest.fixture(autouse=True)
def _no_stray_runtime() -> Iterator[None]:
    yield
    leftover = Path("/dev/shm/cb-ch-conf")
    assert not leftover.exists()


def test_process_scan_can_fail() -> None:
    """Negative control: the /proc scan finds a value in a child's argv and environment."""
    value = SECRETS["DB_PASSWORD"]
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", value.decode()],
        stdin=subprocess.PIPE,
        env={"LEAK": base64_text(SECRETS["BLOB"])},
    )
    try:
        _, leaks = scan_tree(os.getpid(), SECRETS.values())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert any(f"pid {child.pid} " in leak and "cmdline" in leak for leak in leaks)
    assert any(f"pid {child.pid} " in leak and "environ" in leak for leak in leaks)


def base64_text(value: bytes) -> str:
    import base64

    return base64.b64encode(value).decode()
