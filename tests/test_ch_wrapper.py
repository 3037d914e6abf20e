"""``credbridge-cloud-hypervisor``: microvm.nix's cloud-hypervisor command lines, translated.

tests/fixtures/microvm-cloud-hypervisor-argv.json holds one argv per option combination of
microvm.nix's runner (derived from its source; the commits are cited in the file) with the
``VmConfig`` cloud-hypervisor builds from it, written out by hand. Every translation must equal
that VmConfig plus the target's credentials as OEM strings after microvm.nix's own, and must
validate against the vendored OpenAPI spec; every shape the wrapper cannot carry is refused
with one line naming the flag. Launches go through the API stand-in (tests/support/
ch_standin.py: a stand-in for cloud-hypervisor's API, not cloud-hypervisor); the guest boot is
in test_ch_wrapper_guest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
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
from support.ch_harness import SPEC_MISSING, SPEC_PATH, read_records, secret_forms, write_standin

REPO = Path(__file__).resolve().parent.parent
FIXTURES = json.loads((REPO / "tests/fixtures/microvm-cloud-hypervisor-argv.json").read_text())
CASES = {case["name"]: case for case in FIXTURES["cases"]}
TRANSLATED = sorted(name for name, case in CASES.items() if "expected" in case)
REFUSED = sorted(name for name, case in CASES.items() if "expected_error" in case)
SECRETS: dict[str, bytes] = {
    "API_KEY": b"k3y-Zq8mW2vXr7tPa9LdNe4s",
    "DB_PASSWORD": b"multi\nline\npassword-Hq2Lr8Vd\n",
    "BLOB": bytes(range(256)),
}
# Under CI=true a missing spec fails (the tests run and cannot load it), as the brief requires.
needs_spec = pytest.mark.skipif(
    not SPEC_PATH.is_file() and os.environ.get("CI") != "true", reason=SPEC_MISSING
)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(SPEC_MISSING)
        pytest.skip(SPEC_MISSING)
    from support.ch_standin import load_spec

    return load_spec(SPEC_PATH)


def write_vm_config(
    directory: Path, secrets: Mapping[str, bytes], *, sink: Any = "oem-strings"
) -> Path:
    """A JSON config (as the NixOS module writes one) with the VM target ``test-vm``."""
    secret_dir = directory / "secrets"
    secret_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    credentials = {}
    for name, value in secrets.items():
        (secret_dir / name).write_bytes(value)
        (secret_dir / name).chmod(0o400)
        credentials[name] = {"ref": f"file:{secret_dir / name}"}
    config = {
        "store": {"path": str(directory / "state")},
        "targets": {"test-vm": {"kind": "vm", "sink": sink, "credentials": credentials}},
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def with_cwd(value: Any, cwd: Path) -> Any:
    text = json.dumps(value).replace("{cwd}", str(cwd))
    return json.loads(text)


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


# --------------------------------------------------------------------------- the fixtures


def test_fixtures_cite_the_runner_source() -> None:
    source = FIXTURES["source"]
    assert source["repository"] == "https://github.com/microvm-nix/microvm.nix"
    commits = source["files"]["lib/runners/cloud-hypervisor.nix"]
    for case in FIXTURES["cases"]:
        assert case["runner"] in commits, case["name"]
        assert case["microvm"], case["name"]
        assert case["argv"][:2] == ["--cpus", case["argv"][1]]
    assert len(TRANSLATED) >= 6
    assert len(REFUSED) >= 8


@needs_spec
@pytest.mark.parametrize("name", TRANSLATED)
def test_runner_argv_translates_to_the_same_vm(
    name: str, spec: dict[str, Any], tmp_path: Path, tmpfs_dir: Path, monkeypatch: Any
) -> None:
    from support.ch_standin import schema_problems

    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    config = write_vm_config(tmp_path, SECRETS)
    session, launcher = open_wrapper(config, case["argv"])
    with session:
        launch = body_for(launcher, tmpfs_dir / "run", SECRETS)
    expected = with_cwd(case["expected"], tmp_path)
    strings = [*case["oem_strings"], *credential_strings(SECRETS)]
    expected.setdefault("platform", {})["oem_strings"] = strings
    assert launch.body == expected
    assert schema_problems(launch.body, "VmConfig", spec) == []
    # Without credentials: exactly microvm.nix's VM, its OEM strings untouched.
    session, launcher = open_wrapper(write_vm_config(tmp_path / "none", {}), case["argv"])
    with session:
        bare = body_for(launcher, tmpfs_dir / "run2", {}).body
    assert bare == with_cwd(case["expected"], tmp_path)
    assert schema_problems(bare, "VmConfig", spec) == []


@pytest.mark.parametrize("name", TRANSLATED)
def test_real_argv_holds_only_the_api_socket(
    name: str, tmp_path: Path, tmpfs_dir: Path, monkeypatch: Any
) -> None:
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmpfs_dir))
    session, launcher = open_wrapper(write_vm_config(tmp_path, SECRETS), case["argv"], "/ch")
    with session:
        launch = body_for(launcher, tmpfs_dir / "run", SECRETS)
    socket = with_cwd(case["api_socket"], tmp_path) or str(tmpfs_dir / "run" / "api.sock")
    assert str(launch.socket) == socket
    assert launch.argv == ["/ch", "--api-socket", f"path={socket}", *case["process_args"]]
    for form in secret_forms(SECRETS.values()):
        assert form not in "\0".join(launch.argv).encode()


@pytest.mark.parametrize("name", REFUSED)
def test_untranslatable_shapes_are_refused(name: str, tmp_path: Path, cli: Any) -> None:
    case = CASES[name]
    with pytest.raises(UntranslatableArgument) as info:
        parse_argv(case["argv"])
    assert case["expected_error"] in str(info.value)
    assert "\n" not in str(info.value)
    # The console script: one line, exit 3, nothing started.
    result = subprocess.run(
        [sys.executable, "-m", "credbridge.launchers.ch_wrapper", *case["argv"]],
        capture_output=True,
        env={**os.environ, "CREDBRIDGE_VM": "test-vm", "CREDBRIDGE_CLOUD_HYPERVISOR": "/bin/false"},
        check=False,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 3, result.stderr
    assert len(lines) == 1
    assert lines[0].startswith("credbridge-cloud-hypervisor: error: cloud-hypervisor argument ")
    assert case["expected_error"] in lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--memory", "size=1G"], "--memory: given twice"),
        (["--kernel"], "--kernel: needs a value"),
        (["stray"], "stray: is not translated"),
        (["--disk", "readonly=on"], "--disk: needs path="),
        (["--disk", "path=/a,readonly=maybe"], "readonly='maybe' is not on or off"),
        (["--balloon", "size=lots"], "size='lots' is not a size"),
        (["--vsock", "cid=3"], "--vsock: needs cid= and socket="),
        (["--fs", "tag=x"], "--fs: needs tag= and socket="),
        (["--watchdog=on"], "--watchdog: takes no value"),
        (["--platform", "oem_strings=[a,,b]"], "--platform: an empty OEM string"),
        (["--disk", "path=/a,image_type=iso"], "image_type='iso' is not one of raw"),
        (["--net", "tap=t0,vhost_user=on,socket=/s,bogus=1"], "option 'bogus' is not translated"),
    ],
)
def test_refusals_name_the_flag(extra: list[str], message: str) -> None:
    argv = list(CASES["defaults-store-disk"]["argv"])
    if extra[0] == "--platform":
        del argv[argv.index("--platform") : argv.index("--platform") + 2]
    argv += extra
    with pytest.raises(UntranslatableArgument, match=message.replace("[", r"\[")):
        parse_argv(argv)


def test_confidential_vm_with_oem_credentials_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    argv = list(CASES["defaults-store-disk"]["argv"])
    argv[argv.index("--platform") + 1] = "tdx=on"
    monkeypatch.chdir(tmp_path)
    session, launcher = open_wrapper(write_vm_config(tmp_path, {"API_KEY": b"x" * 12}), argv)
    with session, pytest.raises(ConfigError, match="confidential VM ignores SMBIOS credentials"):
        launcher.launch([Delivery("API_KEY", Secret(b"x" * 12))])


def test_launcher_table_sets_only_how_to_run(tmp_path: Path, tmpfs_dir: Path) -> None:
    """``virtiofsd``/``stop_timeout``/... come from the config; the VM's shape never does."""
    argv = CASES["defaults-store-disk"]["argv"]
    config = write_vm_config(tmp_path, {})
    data = json.loads(config.read_text())
    launcher_table = {"type": "cloud-hypervisor", "stop_timeout": 3, "runtime_dir": str(tmpfs_dir)}
    data["targets"]["test-vm"]["launcher"] = launcher_table
    config.write_text(json.dumps(data))
    session, launcher = open_wrapper(config, argv)
    with session:
        assert launcher.stop_timeout == 3
        assert launcher.vm.runtime_dir == tmpfs_dir
    data["targets"]["test-vm"]["launcher"]["kernel"] = "/boot/vmlinuz"
    config.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"targets.test-vm.launcher.kernel: the VM\'s shape"):
        open_wrapper(config, argv)


def test_plan_is_redacted(tmp_path: Path, tmpfs_dir: Path) -> None:
    case = CASES["notify-vsock-virtiofs-tap-volume"]
    config = write_vm_config(tmp_path, SECRETS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "credbridge.launchers.ch_wrapper",
            "--credbridge-plan",
            *case["argv"],
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
        case["oem_strings"][0],
        *(f"io.systemd.credential.binary:{n}=<redacted>" for n in SECRETS),
    ]
    assert plan["argv"] == [
        "/opt/ch/bin/cloud-hypervisor",
        "--api-socket",
        f"path={tmp_path}/test-vm.sock",
    ]


def test_environment_errors(tmp_path: Path) -> None:
    argv = CASES["defaults-store-disk"]["argv"]
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


def _scan_all_cmdlines(forms: list[bytes]) -> list[str]:
    """Every process on the machine: no secret form in any /proc/*/cmdline."""
    leaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        leaks += [f"pid {entry.name}" for form in forms if form in data]
    return leaks


@needs_spec
def test_launch_through_the_standin(
    tmp_path: Path, tmpfs_dir: Path, standin_run: dict[str, Any]
) -> None:
    """The console script, started like microvm-run execs cloud-hypervisor: the stand-in gets
    only --api-socket, a valid vm.create with microvm.nix's and the credentials' OEM strings,
    then vm.boot; SIGTERM stops both; no value in any process's argv meanwhile."""
    case = CASES["notify-vsock-virtiofs-tap-volume"]
    config = write_vm_config(tmp_path, SECRETS)
    env = {
        **os.environ,
        "CREDBRIDGE_VM": "test-vm",
        "CREDBRIDGE_CONFIG": str(config),
        "CREDBRIDGE_CLOUD_HYPERVISOR": str(standin_run["binary"]),
        "RUNTIME_DIRECTORY": str(tmpfs_dir),
    }
    wrapper = Path(sys.executable).parent / "credbridge-cloud-hypervisor"
    proc = subprocess.Popen(
        [str(wrapper), *case["argv"]], cwd=tmp_path, env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r["path"].endswith("vm.boot") for r in read_records(standin_run["record"])):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "no vm.boot within 60s"
            time.sleep(0.05)
        leaks = _scan_all_cmdlines(secret_forms(SECRETS.values()))
        assert (tmp_path / "test-vm.sock").exists()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert leaks == []
    assert proc.returncode == 0, err.decode()  # cloud-hypervisor ends cleanly on SIGTERM
    records = read_records(standin_run["record"])
    create = next(r for r in records if r["path"].endswith("vm.create"))
    assert create["status"] == 204, create
    assert create["oem_names"] == [
        "io.systemd.credential:vmm.notify_socket",
        *(f"io.systemd.credential.binary:{n}" for n in SECRETS),
    ]
    assert create["fs_tags"] == ["ro-store", "data"]
    assert create["memory_shared"] is True
    assert not (tmpfs_dir / "credbridge").exists()
    for form in secret_forms(SECRETS.values()):
        assert form not in err


def test_wrapper_is_installed_as_a_console_script() -> None:
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["credbridge-cloud-hypervisor"] == "credbridge.launchers.ch_wrapper:main"
