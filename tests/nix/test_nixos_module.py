"""nix/module.nix (services.credbridge), nix/package.nix and flake.nix, evaluated for real.

Debian's nix-instantiate (Nix 2.8) evaluates the module with ``lib.evalModules`` from the
vendored nixpkgs lib (../shared/vendor/nixpkgs-lib) and stub modules declaring the NixOS and
microvm.nix options it sets or reads (tests/nix/). Nothing is built: the checks are on the
evaluated configuration, the JSON config it writes (loaded by credbridge itself), the unit
files rendered from it (``systemd-analyze verify``), and the wrapper package's build script
(run with bash against real directories standing for store paths).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from credbridge.core.config import load_config
from credbridge.core.engine import Session
from support.ch_harness import SPEC_PATH, read_records, write_standin
from support.nixeval import (
    NIXPKGS_LIB,
    REPO,
    NixError,
    evaluate,
    instantiate,
    nix_ready,
    written_config,
)
from support.nixos_system import render_system, verify_root

__all__ = ["nix_ready"]  # the autouse fixture, imported so pytest applies it here

APP = {"systemd.services.app.serviceConfig.ExecStart": "/bin/true"}
BASE: dict[str, Any] = {"services.credbridge.enable": True, **APP}


def nix_config(settings: dict[str, Any]) -> str:
    """Dotted option paths -> one Nix attribute set (values via JSON, which Nix reads)."""
    from support.nixeval import to_nix

    parts = []
    for path, value in settings.items():
        keys = ".".join(f'"{k}"' if not k.replace("-", "").isalnum() else k for k in _split(path))
        parts.append(f"{keys} = {to_nix(value)};")
    return "{ " + " ".join(parts) + " }"


def _split(path: str) -> list[str]:
    """``a."b.c".d`` -> ["a", "b.c", "d"]."""
    out, current, quoted = [], "", False
    for char in path:
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            out.append(current)
            current = ""
        else:
            current += char
    out.append(current)
    return out


def ok(settings: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result = evaluate(nix_config({**BASE, **settings}), **kwargs)
    assert result["assertions"] == [], result["assertions"]
    return dict(result["result"])


def failures(settings: dict[str, Any], **kwargs: Any) -> list[str]:
    result = evaluate(nix_config({**BASE, **settings}), **kwargs)
    return list(result["assertions"])


UNIT_AND_VM = {
    'services.credbridge.units."app.service".credentials': {
        "db-password": "vault:secret/app#password",
        "api-token": {"ref": "file:/var/lib/secrets/app-token", "mode": "0440", "group": "app"},
        "feature": {"ref": "env:APP_FEATURE", "optional": True},
    },
    "microvm.vms.test-vm.config": {},
    "services.credbridge.vms.test-vm.credentials": {
        "API_KEY": "generate:base64?bytes=32",
        "DB_PASSWORD": "vault:secret/vm#db",
    },
}


# --------------------------------------------------------------------------- the config


def test_written_config_is_loaded_by_credbridge(tmp_path: Path) -> None:
    result = ok(UNIT_AND_VM)
    config = load_config(written_config(result, tmp_path))
    with Session(config) as session:
        session.validate()
    assert set(config.targets) == {"app.service", "microvm@test-vm.service", "test-vm"}
    app = config.targets["app.service"]
    assert [c.name for c in app.credentials] == ["api-token", "db-password", "feature"]
    token = app.credential("api-token")
    assert token is not None
    assert (token.mode, token.group, token.optional) == (0o440, "app", False)
    vm = config.targets["test-vm"]
    assert (vm.kind, vm.sink, vm.launcher) == ("vm", "oem-strings", "cloud-hypervisor")
    assert {c.name: c.text for c in vm.credentials} == {
        "API_KEY": "credential:API_KEY",
        "DB_PASSWORD": "credential:DB_PASSWORD",
    }
    host = config.targets["microvm@test-vm.service"]
    assert {c.name: c.text for c in host.credentials} == {
        "API_KEY": "generate:base64?bytes=32",
        "DB_PASSWORD": "vault:secret/vm#db",
    }
    assert config.store_settings == {"path": "/var/lib/credbridge"}
    assert config.sinks == {"credstore": {"directory": "/run/credstore"}}


@pytest.mark.parametrize("encrypted", [False, True])
def test_unit_lines_equal_what_credbridge_unit_prints(encrypted: bool, tmp_path: Path) -> None:
    settings = dict(UNIT_AND_VM)
    settings['services.credbridge.units."app.service".encrypted'] = encrypted
    result = ok(settings)
    config = load_config(written_config(result, tmp_path))
    for service, target in (("app", "app.service"), ("microvm@test-vm", "microvm@test-vm.service")):
        with Session(config) as session:
            _, dropin = session.unit_dropin(target)
        expected = sorted(line for line in dropin.splitlines() if "Credential" in line)
        got = sorted(
            f"{key}={value}"
            for key, values in result["services"][service]["serviceConfig"].items()
            if "Credential" in key
            for value in values
        )
        assert got == expected
    lines = result["services"]["app"]["serviceConfig"]
    assert ("LoadCredentialEncrypted" in lines) is encrypted
    deliver = result["services"]["credbridge-deliver"]["serviceConfig"]
    assert ("/var/lib/systemd" in deliver["ReadWritePaths"]) is encrypted
    assert ("d /etc/credstore.encrypted 0700 root root -" in result["tmpfiles"]) is encrypted


def test_deliver_unit_shape() -> None:
    result = ok(UNIT_AND_VM)
    deliver = result["services"]["credbridge-deliver"]
    assert deliver["serviceConfig"]["Type"] == "oneshot"
    assert deliver["serviceConfig"]["RemainAfterExit"] is True
    assert deliver["serviceConfig"]["ExecStart"].endswith(
        "-credbridge/bin/credbridge -c /etc/credbridge/config.json deliver"
    )
    assert deliver["wantedBy"] == ["multi-user.target"]
    assert sorted(deliver["before"]) == ["app.service", "microvm@test-vm.service"]
    assert deliver["after"] == ["systemd-tmpfiles-setup.service", "network-online.target"]
    assert deliver["wants"] == ["network-online.target"]
    assert deliver["requiredBy"] == []  # a re-delivery must not restart the consumers
    for consumer in ("app", "microvm@test-vm"):
        service = result["services"][consumer]
        assert service["wants"] == ["credbridge-deliver.service"]
        assert service["after"] == ["credbridge-deliver.service"]
    assert result["tmpfiles"] == ["d /run/credstore 0700 root root -"]


def test_agent_unit_shape() -> None:
    assert "credbridge-agent" not in ok(UNIT_AND_VM)["services"]
    result = ok({**UNIT_AND_VM, "services.credbridge.agent.enable": True})
    agent = result["services"]["credbridge-agent"]
    config = agent["serviceConfig"]
    assert config["Type"] == "notify"
    assert config["ExecStart"].endswith(
        "-credbridge/bin/credbridge -c /etc/credbridge/config.json agent"
    )
    assert config["ExecReload"].endswith("/bin/kill -HUP $MAINPID")
    assert config["WatchdogSec"] == "10min"
    assert agent["after"] == ["credbridge-deliver.service", "network-online.target"]
    assert agent["wantedBy"] == ["multi-user.target"]
    deliver = result["services"]["credbridge-deliver"]["restartTriggers"]
    assert agent["reloadTriggers"] == deliver  # a new config reloads the agent (SIGHUP)


def test_no_deliver_unit_without_unit_targets(tmp_path: Path) -> None:
    result = ok({"services.credbridge.settings.sources.vault.address": "https://v:8200"})
    assert "credbridge-deliver" not in result["services"]
    assert json.loads(result["etc"]["credbridge/config.json"])["targets"] == {}
    extra = ok({'services.credbridge.settings.targets."app.service".credentials.x': "generate:hex"})
    assert extra["services"]["credbridge-deliver"]["before"] == []


def test_network_online_only_for_networked_schemes() -> None:
    local = ok({'services.credbridge.units."app.service".credentials.x': "generate:hex"})
    deliver = local["services"]["credbridge-deliver"]
    assert deliver["after"] == ["systemd-tmpfiles-setup.service"]
    assert deliver["wants"] == []
    plugin = ok(
        {
            'services.credbridge.units."app.service".credentials.x': "myvault:secret/x",
            "services.credbridge.schemes.myvault.networked": True,
        }
    )
    assert "network-online.target" in plugin["services"]["credbridge-deliver"]["after"]


@pytest.mark.parametrize(
    "pasted",
    [
        "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db:password::",
        "arn:aws:ssm:eu-west-1:111122223333:parameter/app/db",
        "{{resolve:secretsmanager:prod/db:SecretString:password}}",
        "{{resolve:ssm-secure:/app/db:2}}",
    ],
)
def test_pasted_aws_forms_are_aws_references(pasted: str) -> None:
    """What credbridge reads as aws-sm:/aws-ssm: passes evaluation, and waits for the network."""
    result = ok({'services.credbridge.units."app.service".credentials.x': pasted})
    assert "network-online.target" in result["services"]["credbridge-deliver"]["after"]


def test_restart_trigger_follows_the_config() -> None:
    one = ok({'services.credbridge.units."app.service".credentials.x': "generate:hex"})
    two = ok({'services.credbridge.units."app.service".credentials.x': "generate:base64"})
    triggers = [r["services"]["credbridge-deliver"]["restartTriggers"] for r in (one, two)]
    assert triggers[0] != triggers[1]
    assert all(len(t) == 1 and len(t[0]) == 64 for t in triggers)


def test_on_change_is_written_per_target() -> None:
    result = ok(
        {
            **UNIT_AND_VM,
            'services.credbridge.units."app.service".onChange': "reload-or-restart",
            "services.credbridge.vms.test-vm.onChange": "restart",
        }
    )
    data = json.loads(result["etc"]["credbridge/config.json"])
    assert data["targets"]["app.service"]["on_change"] == "reload-or-restart"
    assert data["targets"]["microvm@test-vm.service"]["on_change"] == "restart"
    assert "on_change" not in data["targets"]["test-vm"]
    plain = json.loads(ok(UNIT_AND_VM)["etc"]["credbridge/config.json"])
    assert all("on_change" not in t for t in plain["targets"].values())


def test_settings_merge_with_the_typed_options(tmp_path: Path) -> None:
    result = ok(
        {
            **UNIT_AND_VM,
            "services.credbridge.settings.sources.vault": {
                "address": "https://vault.example:8200",
                "auth": {"token_file": "/run/keys/vault-token"},
            },
            'services.credbridge.settings.targets."worker.service".credentials': {
                "db-password": "target:app.service/db-password"
            },
            "services.credbridge.settings.store.path": "/srv/credbridge",
            "services.credbridge.credstoreDirectory": "/run/creds",
        }
    )
    config = load_config(written_config(result, tmp_path))
    with Session(config) as session:
        session.validate()
    assert config.sources["vault"]["address"] == "https://vault.example:8200"
    assert "worker.service" in config.targets and "app.service" in config.targets
    assert config.store_settings == {"path": "/srv/credbridge"}
    assert result["services"]["app"]["serviceConfig"]["LoadCredential"][0].startswith(
        "api-token:/run/creds/app.service/"
    )


def test_virtiofs_vm_gets_virtiofsd_from_the_config(tmp_path: Path) -> None:
    result = ok({**UNIT_AND_VM, "services.credbridge.vms.test-vm.sink": "virtiofs"})
    data = json.loads(result["etc"]["credbridge/config.json"])
    assert data["targets"]["test-vm"]["sink"] == "virtiofs"
    assert data["targets"]["test-vm"]["launcher"] == {
        "type": "cloud-hypervisor",
        "virtiofsd": "/nix/store/00000000000000000000000000000000-virtiofsd/bin/virtiofsd",
    }
    with Session(load_config(written_config(result, tmp_path))) as session:
        session.validate()


def test_vm_unit_is_a_dropin_for_microvm_template() -> None:
    result = ok(UNIT_AND_VM, guest=nix_config({"microvm.hypervisor": "cloud-hypervisor"}))
    unit = result["services"]["microvm@test-vm"]
    assert unit["overrideStrategy"] == "asDropin"
    assert unit["environment"] == {
        "CREDBRIDGE_VM": "test-vm",
        "CREDBRIDGE_CONFIG": "/etc/credbridge/config.json",
    }
    assert unit["serviceConfig"]["RuntimeDirectory"] == "credbridge-microvm-test-vm"
    assert unit["serviceConfig"]["RuntimeDirectoryMode"] == "0700"
    assert "ExecStart" not in unit["serviceConfig"]  # microvm.nix's microvm-run stays
    guest = result["vms"]["test-vm"]
    assert guest["assertions"] == []
    assert guest["package"]["name"] == "credbridge-cloud-hypervisor-48.0"
    assert guest["package"]["version"] == "48.0"  # the runner reads it (argument syntax)
    assert result["wrapper"] == guest["package"]


def test_guest_module_refuses_other_hypervisors() -> None:
    result = ok(UNIT_AND_VM, guest=nix_config({"microvm.hypervisor": "qemu"}))
    assert result["vms"]["test-vm"]["assertions"] == [
        "services.credbridge.vms.test-vm: the VM's microvm.hypervisor is qemu; credbridge's "
        "wrapper serves cloud-hypervisor only"
    ]


def test_flake_vm_with_wrap_runner_off_is_left_alone() -> None:
    result = ok(
        {
            "microvm.vms.flaky.flake": "git+file:///srv/vms",
            "services.credbridge.vms.flaky.credentials.A": "generate:hex",
            "services.credbridge.vms.flaky.wrapRunner": False,
        }
    )
    assert result["vms"]["flaky"]["package"] is None
    assert "microvm@flaky" in result["services"]
    assert "ghost" not in result["vms"]


def test_template_instance_unit_is_known() -> None:
    result = ok(
        {
            'systemd.services."getty@".serviceConfig.ExecStart': "/bin/true",
            'services.credbridge.units."getty@tty1.service".credentials.x': "generate:hex",
        }
    )
    assert result["services"]["getty@tty1"]["serviceConfig"]["LoadCredential"] == [
        "x:/run/credstore/getty@tty1.service/x"
    ]


def test_builtin_schemes_are_the_plugins_schemes() -> None:
    """The module's list of built-in schemes must follow the plugins (a new source = a line)."""
    from credbridge.core.plugins import get_plugin_manager

    result = evaluate(
        "{ services.credbridge.enable = true; }",
        with_microvm=False,
    )
    assert result["assertions"] == []
    module = (REPO / "nix" / "module.nix").read_text()
    block = module[
        module.index("builtinSchemes = {") : module.index("};", module.index("builtinSchemes"))
    ]
    lines = [line.strip() for line in block.splitlines()[1:]]
    declared = {
        line.split(".")[0].strip('"') for line in lines if line and not line.startswith("#")
    }
    assert declared == set(get_plugin_manager().sources())


# --------------------------------------------------------------------------- evaluation errors

ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-scheme": (
        {'services.credbridge.units."app.service".credentials.x': "vualt:secret/x"},
        'services.credbridge.units."app.service".credentials."x": reference \'vualt:secret/x\' '
        "unknown scheme 'vualt' (known: aws-sm, aws-ssm, aws-sts, clan-vars, credential, env, file, generate, sops, "
        "stored, vault, target;",
    ),
    "no-scheme": (
        {'services.credbridge.units."app.service".credentials.x': "/etc/secret"},
        "missing 'SCHEME:' prefix",
    ),
    "empty-path": (
        {'services.credbridge.units."app.service".credentials.x': "file:?x=1"},
        "has an empty path",
    ),
    "url": (
        {'services.credbridge.units."app.service".credentials.x': "vault://secret/app#password"},
        "is URL syntax ('vault://'), which references do not use",
    ),
    "empty-selector": (
        {'services.credbridge.units."app.service".credentials.x': "vault:secret/x#"},
        "has an empty selector",
    ),
    "spaces": (
        {'services.credbridge.units."app.service".credentials.x': " file:/x"},
        "must be one line without surrounding spaces",
    ),
    "target-link": (
        {'services.credbridge.units."app.service".credentials.x': "target:other.service/y"},
        "names no credential of this configuration (other.service/y)",
    ),
    "target-shape": (
        {'services.credbridge.units."app.service".credentials.x': "target:nothing"},
        "a target: reference is target:TARGET/CREDENTIAL",
    ),
    "credential-name": (
        {'services.credbridge.units."app.service".credentials."a/b"': "generate:hex"},
        'credentials."a/b": invalid credential name',
    ),
    "world-readable": (
        {
            'services.credbridge.units."app.service".credentials.x': {
                "ref": "generate:hex",
                "mode": "0444",
            }
        },
        'credentials."x".mode: 0444 is not allowed',
    ),
    "unknown-unit": (
        {'services.credbridge.units."ap.service".credentials.x': "generate:hex"},
        'services.credbridge.units."ap.service": no such unit in this configuration',
    ),
    "not-a-service": (
        {'services.credbridge.units."app.socket".credentials.x': "generate:hex"},
        'services.credbridge.units."app.socket": a service unit name (NAME.service) is needed',
    ),
    "unknown-vm": (
        {"services.credbridge.vms.ghost.credentials.A": "generate:hex"},
        "services.credbridge.vms.ghost: no such MicroVM (microvm.vms.ghost is not declared)",
    ),
    "flake-vm": (
        {
            "microvm.vms.flaky.flake": "git+file:///srv/vms",
            "services.credbridge.vms.flaky.credentials.A": "generate:hex",
        },
        "services.credbridge.vms.flaky: microvm.vms.flaky has no `config` (a flake VM)",
    ),
    "vm-and-unit": (
        {
            "microvm.vms.test-vm.config": {},
            "services.credbridge.vms.test-vm.credentials.A": "generate:hex",
            'services.credbridge.units."microvm@test-vm.service".credentials.B': "generate:hex",
            'systemd.services."microvm@test-vm".serviceConfig.Nice': 1,
        },
        "services.credbridge.vms.test-vm: its unit microvm@test-vm.service is also in "
        "services.credbridge.units",
    ),
    "optional-vm-credential": (
        {
            "microvm.vms.test-vm.config": {},
            "services.credbridge.vms.test-vm.credentials.A": {"ref": "env:A", "optional": True},
        },
        "services.credbridge.vms.test-vm: optional VM credentials are not supported",
    ),
    "inline-token": (
        {"services.credbridge.settings.sources.vault.auth.token": "hvs.CAESIJ"},
        "services.credbridge.settings.sources.vault.auth.token: an inline secret would be "
        "copied into the world-readable Nix store",
    ),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_evaluation_errors(name: str) -> None:
    settings, message = ERRORS[name]
    problems = failures(settings)
    assert any(message in p for p in problems), problems
    for problem in problems:
        assert "hvs.CAESIJ" not in problem  # an error never quotes the secret


def test_vms_need_microvm_host_module() -> None:
    problems = failures(
        {"services.credbridge.vms.test-vm.credentials.A": "generate:hex"}, with_microvm=False
    )
    assert (
        "services.credbridge.vms.test-vm: needs microvm.nix's host module "
        "(microvm.nixosModules.host)"
    ) in problems


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"services.credbridge.vms.test-vm.sink": "fw-cfg"}, "is not of type `one of"),
        (
            {'services.credbridge.units."app.service".onChange': "bounce"},
            'services.credbridge.units."app.service".onChange',
        ),
        ({'services.credbridge.units."app.service".credentials.x': 42}, "is not of type"),
    ],
)
def test_type_errors_name_the_option(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(NixError) as info:
        evaluate(nix_config({**BASE, "microvm.vms.test-vm.config": {}, **settings}))
    assert message in str(info.value)


def test_disabled_module_adds_nothing() -> None:
    result = evaluate(
        nix_config({**APP, 'services.credbridge.units."ap.service".credentials.x': "bad"})
    )
    assert result["assertions"] == []
    services = set(result["result"]["services"])
    assert not any("credbridge" in name for name in services)
    assert services == {"app", "microvm@"} | {
        f"microvm-{helper}@" for helper in ("tap-interfaces", "macvtap-interfaces", "pci-devices")
    } | {"microvm-virtiofsd@"}
    assert result["result"]["etc"] == {}


# --------------------------------------------------------------------------- unit files


def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The module's units written as NixOS writes them (tests/support/nixos_system.py; the
    full NixOS-to-systemd path, booted, is tests/nix/test_nixos_host_guest.py)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # Without the optional credential: its `SetCredential=NAME:` (an empty default, as
    # `credbridge unit` writes it) is "Invalid syntax" to Debian's systemd 252; newer systemd
    # accepts an empty value (docs/nixos.md).
    settings = json.loads(json.dumps(UNIT_AND_VM))
    del settings['services.credbridge.units."app.service".credentials']["feature"]
    paths = {"credbridge": "/opt/credbridge", "coreutils": "/usr", "runtimeShell": "/bin/sh"}
    system = render_system(ok(settings, paths=paths))
    root = tmp_path / "root"
    system.write(root)
    (root / "opt/credbridge/bin").mkdir(parents=True)
    shutil.copy(Path(sys.executable).parent / "credbridge", root / "opt/credbridge/bin")
    (root / "bin").mkdir()
    shutil.copy("/bin/true", root / "bin/true")  # app.service's ExecStart
    for script in ("current/bin/microvm-run", "booted/bin/microvm-shutdown"):
        path = root / "var/lib/microvms/test-vm" / script
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    names = ["app.service", "credbridge-deliver.service", "microvm@test-vm.service"]
    verify = verify_root(root, names)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    dropin = system.unit_file("microvm@test-vm.service")
    assert "LoadCredential=API_KEY:/run/credstore/microvm@test-vm.service/API_KEY" in dropin
    assert 'Environment="CREDBRIDGE_VM=test-vm"' in dropin
    # Not vacuous: a broken drop-in fails the same check.
    (root / "etc/systemd/system/microvm@test-vm.service.d/broken.conf").write_text(
        "[Service]\nLoadCredentialz=x:/y\n"
    )
    broken = verify_root(root, names)
    assert "Unknown key 'LoadCredentialz'" in broken.stderr


# --------------------------------------------------------------------------- wrapper package


def test_wrapper_package_build_script_runs_credbridge(tmp_path: Path, tmpfs_dir: Path) -> None:
    """The wrapper package's build command, run with bash against directories standing for
    the store paths: its bin/cloud-hypervisor starts credbridge-cloud-hypervisor, which starts
    the "real" cloud-hypervisor (the API stand-in) with the VM's credentials in vm.create."""
    if not SPEC_PATH.is_file() and os.environ.get("CI") != "true":
        pytest.skip("the vendored cloud-hypervisor spec is missing")
    from support.ch_harness import SECRETS, write_vm_config
    from support.microvm_runner import runner_argv

    credbridge = tmp_path / "credbridge"
    (credbridge / "bin").mkdir(parents=True)
    (credbridge / "bin" / "credbridge-cloud-hypervisor").symlink_to(
        Path(sys.executable).parent / "credbridge-cloud-hypervisor"
    )
    real = tmp_path / "cloud-hypervisor"
    (real / "bin").mkdir(parents=True)
    record = tmpfs_dir / "record.jsonl"
    shutil.copy(write_standin(tmpfs_dir, record=record), real / "bin" / "cloud-hypervisor")
    (real / "bin" / "ch-remote").write_text("#!/bin/sh\n")
    (real / "bin" / "ch-remote").chmod(0o755)
    result = ok(
        UNIT_AND_VM,
        paths={"credbridge": str(credbridge), "cloud-hypervisor": str(real)},
    )
    out = tmp_path / "out"
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", result["wrapper"]["buildCommand"]],
        env={"out": str(out), "PATH": os.environ["PATH"]},
        check=True,
    )
    assert os.readlink(out / "bin" / "ch-remote") == str(real / "bin" / "ch-remote")
    assert (out / "bin" / "cloud-hypervisor").stat().st_mode & 0o777 == 0o555
    workdir = tmp_path / "vm"
    workdir.mkdir()
    env = {
        **os.environ,
        "CREDBRIDGE_VM": "test-vm",
        "CREDBRIDGE_CONFIG": str(write_vm_config(tmp_path, SECRETS)),
        "RUNTIME_DIRECTORY": str(tmpfs_dir),
    }
    env.pop("CREDBRIDGE_CLOUD_HYPERVISOR", None)
    proc = subprocess.Popen(
        [str(out / "bin" / "cloud-hypervisor"), *runner_argv("{ }", workdir)],
        cwd=workdir,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r["path"].endswith("vm.boot") for r in read_records(record)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.terminate()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    create = next(r for r in read_records(record) if r["path"].endswith("vm.create"))
    assert create["status"] == 204
    assert create["oem_names"] == [f"io.systemd.credential.binary:{n}" for n in SECRETS]


# --------------------------------------------------------------------------- package and flake


def test_package_nix_matches_pyproject() -> None:
    import tomllib

    import credbridge.core

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = instantiate(REPO / "tests/nix/eval-package.nix", {"libPath": str(NIXPKGS_LIB)})
    assert result["version"] == credbridge.core.__version__
    assert result["pname"] == pyproject["name"]
    assert result["pyproject"] is True
    assert result["build-system"] == ["setuptools"]

    def names(requirements: list[str]) -> list[str]:
        import re

        return [re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in requirements]

    extras = pyproject["optional-dependencies"]
    assert result["dependencies"][:3] == names(pyproject["dependencies"])
    assert result["optional-dependencies"]["vault"] == names(extras["vault"])
    assert result["optional-dependencies"]["aws"] == names(extras["aws"])
    assert set(result["optional-dependencies"]) == set(extras) - {"all", "test"}
    # sops, and age for clan's age store (clan-vars:)
    assert [p.rsplit("-", 1)[1] for p in result["makeWrapperArgs"][-1].split(":")] == [
        "sops/bin",
        "age/bin",
    ]
    assert result["mainProgram"] == "credbridge"
    assert result["license"] == pyproject["license"]
    assert "credbridge.launchers.ch_wrapper" in result["pythonImportsCheck"]
    assert set(pyproject["scripts"]) == {"credbridge", "credbridge-cloud-hypervisor"}
    minimal = instantiate(
        REPO / "tests/nix/eval-package.nix", {"libPath": str(NIXPKGS_LIB), "extras": "[ ]"}
    )
    assert minimal["dependencies"] == names(pyproject["dependencies"])
    assert minimal["makeWrapperArgs"] == []
    with pytest.raises(NixError, match="unknown extras bogus"):
        instantiate(
            REPO / "tests/nix/eval-package.nix",
            {"libPath": str(NIXPKGS_LIB), "extras": '[ "bogus" ]'},
        )


def test_flake_outputs(tmp_path: Path) -> None:
    stub = tmp_path / "nixpkgs"
    stub.mkdir()
    (stub / "default.nix").write_text(
        "{ system ? null, overlays ? [ ] }:\n"
        f"import {REPO}/tests/nix/stub-pkgs.nix {{ lib = import {NIXPKGS_LIB}; inherit overlays; }}\n"
    )
    result = instantiate(
        REPO / "tests/nix/eval-flake.nix",
        {"libPath": str(NIXPKGS_LIB), "stubNixpkgs": str(stub)},
    )
    assert result["outputNames"] == ["nixosModules", "overlays", "packages"]
    assert result["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert result["packages"] == {
        "default": "credbridge-0.1.0",
        "credbridge": "credbridge-0.1.0",
        "cloud-hypervisor-wrapper": "credbridge-cloud-hypervisor-48.0",
    }
    assert result["modules"] == {"default": True, "credbridge": True}
    assert result["overlay"] == ["credbridge", "credbridge-cloud-hypervisor"]
    assert result["wrapperRunsCredbridge"] is True


@pytest.mark.parametrize(
    "path", ["nix/module.nix", "nix/package.nix", "nix/cloud-hypervisor-wrapper.nix", "flake.nix"]
)
def test_nix_files_parse(path: str) -> None:
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(REPO / path)],
        capture_output=True,
        env={**os.environ, "HOME": "/nonexistent", "NIX_STATE_DIR": "/nonexistent"},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
