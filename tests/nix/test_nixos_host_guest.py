"""nix/module.nix's units under a real systemd: rendered, verified, installed, booted.

A realistic ``services.credbridge`` configuration (below, as an operator writes it) is
evaluated with the stubs of tests/nix/test_nixos_module.py (tests/nix/), and everything it
produces is written as NixOS writes it (tests/support/nixos_system.py): unit files, the
``overrides.conf`` drop-ins of microvm.nix's VM unit, ``.wants`` links for ``wantedBy``,
``/etc/credbridge/config.json`` through ``/etc/static``, ``/etc/tmpfiles.d/00-nixos.conf``,
the job scripts. ``systemd-analyze verify`` checks that tree on this machine first.

Then the same files go into the host guest (tests/guest/hostimage.py, the image of
tests/core/test_host_guest.py: Debian 12 and 13, systemd 252 and 257 as PID 1, booted side by
side, credbridge in a venv at
/opt/credbridge, which is where ``${cfg.package}`` points here); the wrapper package is built
in the guest by running its derivation's build command; the VM runner is what microvm.nix's
``lib/runner.nix`` builds for a cloud-hypervisor VM (its command line from the vendored runner,
tests/support/microvm_runner.py), with cloud-hypervisor's API stand-in in
recording mode as the "real" cloud-hypervisor. The guest reboots and the driver
(tests/guest/nixos_scenario.py) reports what came up at boot; then a rotation and
``systemctl restart credbridge-deliver.service`` exercise ``onChange``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.host_recipe import host_guest_missing, recipe  # noqa: E402
from guest.hostimage import CREDBRIDGE_VENV, ensure_host_guest  # noqa: E402
from guest.hostrun import HostRun, finished, run_host_guest  # noqa: E402
from guest.image import Release  # noqa: E402
from guest.parallel import outcome_of, per_release, release  # noqa: E402
from support.microvm_runner import runner_argv  # noqa: E402
from support.nixeval import REPO, evaluate, nix  # noqa: E402
from support.nixos_system import NixosSystem, render_system, verify_root  # noqa: E402

__all__ = ["nix", "release"]  # fixtures, imported so pytest finds them here

STORE = "/nix/store/" + "0" * 32
REAL_CLOUD_HYPERVISOR = f"{STORE}-cloud-hypervisor"
RUNNER = f"{STORE}-microvm-cloud-hypervisor-test-vm"
VM = "test-vm"
VM_UNIT = f"microvm@{VM}.service"
CONSUMERS = ["app.service", "sealed.service"]
DELIVER = "credbridge-deliver.service"
OEM_PREFIX = "io.systemd.credential.binary:"
#: microvm.nix's own OEM string for this VM (microvm.cloud-hypervisor.platformOEMStrings).
MICROVM_OEM = "io.systemd.credential:hostname=test-vm"

#: What the module takes from packages, mapped to the host guest: credbridge's venv, Debian's
#: coreutils and systemd for NixOS's default service PATH, bash as runtimeShell.
GUEST_PATHS = {
    "credbridge": CREDBRIDGE_VENV,
    "coreutils": "/usr",
    "findutils": "/usr",
    "gnugrep": "/usr",
    "gnused": "/usr",
    "systemd": "/usr",
    "runtimeShell": "/bin/bash",
    "cloud-hypervisor": REAL_CLOUD_HYPERVISOR,
    "microvm-cloud-hypervisor-test-vm": RUNNER,
}

HOST_CONFIG = """
{ pkgs, ... }:
{
  services.credbridge.enable = true;

  systemd.services.app = {
    description = "An app that reads its credentials";
    wantedBy = [ "multi-user.target" ];
    serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
    serviceConfig.DynamicUser = true;
  };
  systemd.services.sealed = {
    description = "An app whose credentials are encrypted at rest";
    wantedBy = [ "multi-user.target" ];
    serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
    serviceConfig.DynamicUser = true;
  };

  services.credbridge.units."app.service" = {
    credentials = {
      api-token = "generate:hex?bytes=24";
      db-password = "file:/var/lib/secrets/db-password";
      tls-key = { ref = "file:/var/lib/secrets/tls.key"; mode = "0440"; };
    };
    onChange = "restart";
  };
  services.credbridge.units."sealed.service" = {
    encrypted = true;
    credentials = {
      signing-key = "generate:base64?bytes=32";
      db-password = "target:app.service/db-password";
    };
    onChange = "restart";
  };

  microvm.vms.test-vm.config = { microvm.hypervisor = "cloud-hypervisor"; };
  services.credbridge.vms.test-vm = {
    credentials = {
      API_KEY = "generate:base64?bytes=32";
      DB_PASSWORD = "target:app.service/db-password";
    };
    onChange = "restart";
  };
}
"""
GUEST_CONFIG = '{ microvm.hypervisor = "cloud-hypervisor"; }'

#: The file: sources (binary, trailing newline kept: credentials are bytes).
SECRET_FILES = {
    "/var/lib/secrets/db-password": b"pa55\x00w\xffrd-" + os.urandom(12).hex().encode() + b"\n",
    "/var/lib/secrets/tls.key": b"-----BEGIN PRIVATE KEY-----\n"
    + base64.encodebytes(os.urandom(1200))
    + b"-----END PRIVATE KEY-----\n",
}
ROTATE = [("app.service", "api-token"), (VM_UNIT, "API_KEY")]
#: microvm.nix's helper units run a runner script only if the runner has it (their
#: ConditionPathExists=, which verify does not evaluate): this runner has none.
HELPERS = ("microvm-tap-interfaces@", "microvm-macvtap-interfaces@", "microvm-pci-devices@")
HELPERS += ("microvm-virtiofsd@",)
GENERATED = [
    ("app.service", "api-token"),
    ("sealed.service", "signing-key"),
    (VM_UNIT, "API_KEY"),
]


def shell_arg(word: str) -> str:
    """nixpkgs' lib.escapeShellArg: every word in single quotes."""
    return "'" + word.replace("'", "'\\''") + "'"


def runner_scripts(wrapper: str) -> dict[str, str]:
    """microvm.nix's runner for this VM (lib/runner.nix, lib/runners/cloud-hypervisor.nix):
    the argv the vendored runner gives for the defaults (vcpu 1, 512 MiB, store disk, socket
    test-vm.sock, no vsock) with ``platformOEMStrings = [ MICROVM_OEM ]``, which it renders as
    ``--platform oem_strings=[...]``; the cloud-hypervisor it execs is the VM's
    ``microvm.cloud-hypervisor.package`` -- the wrapper the module put there."""
    options = f'{{ microvm.cloud-hypervisor.platformOEMStrings = [ "{MICROVM_OEM}" ]; }}'
    with tempfile.TemporaryDirectory(prefix="credbridge-runner-") as workdir:
        argv = runner_argv(options, Path(workdir))
    command = " ".join(shell_arg(w) for w in [f"{wrapper}/bin/cloud-hypervisor", *argv])
    run = (
        "#!/bin/bash\n"
        "set -eou pipefail\n"
        "\n"
        "# workaround cloud-hypervisor sometimes\n"
        "# stumbling over a preexisting socket\n"
        "rm -f 'test-vm.sock'\n"
        "\n\n\n"
        f"exec  {command}  \n"
    )
    # The runner's shutdownCommand (curl -s --unix-socket test-vm.sock -X PUT
    # .../vm.power-button; waitpid $MAINPID) with python3 for curl and util-linux's waitpid,
    # which Debian 12 lacks.
    shutdown = """#!/usr/bin/python3
import os, socket, time
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("test-vm.sock")
    s.sendall(b"PUT /api/v1/vm.power-button HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Length: 0\\r\\n\\r\\n")
    s.recv(4096)
    s.close()
except OSError:
    pass
pid = os.environ["MAINPID"]
while os.path.exists(f"/proc/{pid}"):
    time.sleep(0.1)
"""
    return {"microvm-run": run, "microvm-shutdown": shutdown}


@pytest.fixture(scope="module")
def evaluated(nix: None) -> dict[str, Any]:
    result = evaluate(HOST_CONFIG, paths=GUEST_PATHS, guest=GUEST_CONFIG)
    assert result["assertions"] == []
    assert result["result"]["vms"][VM]["assertions"] == []
    return dict(result["result"])


@pytest.fixture(scope="module")
def system(evaluated: dict[str, Any]) -> NixosSystem:
    return render_system(evaluated)


def verified_units(system: NixosSystem) -> list[str]:
    """The units to verify: not templates (only instances), not the runner-less helpers."""
    return [u for u in system.units if "@." not in u and not u.startswith(HELPERS)]


def plan(evaluated: dict[str, Any], system: NixosSystem) -> dict[str, Any]:
    wrapper = evaluated["vms"][VM]["package"]
    return {
        "consumers": CONSUMERS,
        "vm_unit": VM_UNIT,
        "units": system.units,
        "verify": verified_units(system),
        "wrapper": {"path": wrapper["path"], "buildCommand": wrapper["buildCommand"]},
        "cloud_hypervisor": REAL_CLOUD_HYPERVISOR,
        "runner": {"path": RUNNER, "scripts": runner_scripts(wrapper["path"])},
        "activation": evaluated["activation"],
        "secrets": {path: base64.b64encode(data).decode() for path, data in SECRET_FILES.items()},
        "rotate": ROTATE,
        "get": GENERATED,
        "restart_timeout": 150,
    }


# --------------------------------------------------------------------------- on this machine


def test_rendered_system_passes_systemd_analyze_verify(
    evaluated: dict[str, Any], system: NixosSystem, tmp_path: Path
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    root = tmp_path / "root"
    system.write(root)
    # What the units run, where the guest has it: credbridge's entry point, coreutils' sleep,
    # the runner that install-microvm-test-vm links as `current` (and preStart as `booted`).
    programs = {
        f"{CREDBRIDGE_VENV}/bin/credbridge": Path(sys.executable).parent / "credbridge",
        "/usr/bin/sleep": Path("/usr/bin/sleep"),
        "/bin/bash": Path("/bin/bash"),
    }
    for program, source in programs.items():
        (root / program.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / program.lstrip("/"))
    for name, text in runner_scripts(evaluated["wrapper"]["path"]).items():
        script = root / RUNNER.lstrip("/") / "bin" / name
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        script.chmod(0o555)
    vm_dir = root / "var/lib/microvms" / VM
    vm_dir.mkdir(parents=True)
    for link in ("current", "booted"):
        (vm_dir / link).symlink_to(RUNNER)
    units = verified_units(system)
    assert {DELIVER, *CONSUMERS, VM_UNIT, "install-microvm-test-vm.service"} <= set(units)
    verify = verify_root(root, units)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    # Not vacuous: a unit naming a missing program, or an unknown key, fails the same check.
    (root / RUNNER.lstrip("/") / "bin" / "microvm-run").unlink()
    broken = verify_root(root, units)
    assert "current/bin/microvm-run is not executable" in broken.stderr


def test_rendered_text_is_nixos_text(evaluated: dict[str, Any], system: NixosSystem) -> None:
    """The unit text as NixOS's serviceToUnit writes it: [Unit] keys in attribute order,
    Environment= lines JSON-quoted, one line per list element, booleans as true/false."""
    deliver = system.unit_file(DELIVER)
    lines = deliver.splitlines()
    assert lines[:2] == ["[Unit]", "After=systemd-tmpfiles-setup.service"]
    assert lines[2] == f"Before=app.service {VM_UNIT} sealed.service"
    assert lines[3] == "Description=Deliver credentials with credbridge"
    assert lines[4].startswith("X-Restart-Triggers=/nix/store/")
    assert lines[5:7] == ["", "[Service]"]
    assert (
        lines[7] == 'Environment="PATH=/usr/bin:/usr/bin:/usr/bin:/usr/bin:/usr/bin:'
        '/usr/sbin:/usr/sbin:/usr/sbin:/usr/sbin:/usr/sbin"'
    )
    assert (
        f"ExecStart={CREDBRIDGE_VENV}/bin/credbridge -c /etc/credbridge/config.json deliver"
        in lines
    )
    assert "RemainAfterExit=true" in lines
    assert lines.count("ReadWritePaths=/run/credstore") == 1
    assert lines[-2:] == ["[Install]", "WantedBy=multi-user.target"]
    vm = system.unit_file(VM_UNIT)
    assert 'Environment="CREDBRIDGE_VM=test-vm"' in vm.splitlines()
    assert "PATH=" not in vm  # microvm.nix: path = mkForce [ ]
    assert "X-RestartIfChanged=\nX-RestartIfChanged=true\n" in vm
    assert system.symlinks[f"/etc/systemd/system/multi-user.target.wants/{DELIVER}"] == (
        f"../{DELIVER}"
    )
    assert system.wants["microvms.target"] == ["install-microvm-test-vm.service"]
    assert system.symlinks["/etc/credbridge/config.json"] == "/etc/static/credbridge/config.json"
    static = system.symlinks["/etc/static"]
    config = json.loads(system.files[f"{static}/credbridge/config.json"][0])
    assert set(config["targets"]) == {*CONSUMERS, VM_UNIT, VM}


# --------------------------------------------------------------------------- in the host guest

_SKIP = host_guest_missing()
# In CI nothing is skipped: a missing prerequisite fails the fixture with its reason.
_SKIPPED = _SKIP is not None and os.environ.get("CI") != "true"
in_guest = pytest.mark.skipif(_SKIPPED, reason=_SKIP or "")


@pytest.fixture(scope="module")
def runs(evaluated: dict[str, Any], system: NixosSystem) -> dict[Release, HostRun | Exception]:
    if _SKIP is not None:
        pytest.fail(_SKIP)
    files = {
        "driver": (REPO / "tests" / "guest" / "nixos_scenario.py").read_bytes(),
        "host_scenario.py": (REPO / "tests" / "guest" / "host_scenario.py").read_bytes(),
        "manifest.json": json.dumps(system.manifest()).encode(),
        "plan.json": json.dumps(plan(evaluated, system)).encode(),
    }
    return per_release(
        lambda release: run_host_guest(
            ensure_host_guest(recipe(), release=release), files, timeout=900
        )
    )


@pytest.fixture(scope="module")
def run(
    runs: dict[Release, HostRun | Exception],
    release: Release,
    tmp_path_factory: pytest.TempPathFactory,
) -> HostRun:
    result = outcome_of(runs, release, "host guest")
    # The whole console (every event, journals) for a person debugging a failure.
    keep = os.environ.get("CREDBRIDGE_KEEP_CONSOLE")
    console = (
        Path(f"{keep}.{release.test_id}")
        if keep
        else tmp_path_factory.mktemp("nixos-host-guest") / f"console-{release.test_id}"
    )
    console.write_text(result.console)
    print(f"host guest console: {console} (CREDBRIDGE_KEEP_CONSOLE=PATH keeps it)")
    finished(result)
    timeline = ", ".join(f"{r['event']} {r['uptime']:.0f}s" for r in result.records)
    print(
        f"NixOS units in the host guest {release.test_id}: {result.seconds:.0f}s in QEMU; {timeline}"
    )
    return result


def decoded(files: dict[str, Any]) -> dict[str, bytes]:
    return {name: base64.b64decode(info["value"]) for name, info in files.items()}


def ms(props: dict[str, str], key: str) -> int:
    value = int(props[key])
    assert value > 0, (key, props)
    return value


@pytest.mark.guest
@in_guest
def test_installed_units_verify_under_the_guests_systemd(run: HostRun) -> None:
    event = run.event("installed")
    assert event["build"]["rc"] == 0, event["build"]
    assert event["wrapper"] == ["ch-remote", "cloud-hypervisor"]
    assert "exec /opt/credbridge/bin/credbridge-cloud-hypervisor" in event["wrapper_script"]
    assert all(r["rc"] == 0 for r in event["activation"].values()), event["activation"]
    verify = run.event("boot")["verify"]
    assert verify["rc"] == 0, verify
    assert verify["stderr"].strip() == "", verify["stderr"]
    # Enabled the NixOS way: .wants links, no [Install] processing by systemctl enable.
    assert event["enabled"][DELIVER] == "enabled"
    assert event["enabled"]["microvms.target"] in {"static", "enabled"}


@pytest.mark.guest
@in_guest
def test_deliver_runs_before_every_consumer_at_boot(run: HostRun) -> None:
    boot = run.event("boot")
    deliver = boot["deliver"]["props"]
    assert (deliver["ActiveState"], deliver["Result"]) == ("active", "success"), boot["journal"]
    delivered = ms(deliver, "ExecMainExitTimestampMonotonic")
    assert ms(deliver, "ActiveEnterTimestampMonotonic") >= delivered
    for unit in [*CONSUMERS, VM_UNIT]:
        props = boot["units"][unit]["props"]
        assert props["ActiveState"] == "active", (unit, boot["journal"])
        # Started once in this boot (no restart: the credentials were there at the start).
        assert boot["units"][unit]["starts"] == 1, (unit, boot["journal"])
        assert props["NRestarts"] == "0", unit
        assert DELIVER in props["After"].split(), unit
        assert DELIVER in props["Wants"].split(), unit
        # The consumer began starting (credentials set up) only after delivery finished.
        assert ms(props, "InactiveExitTimestampMonotonic") >= delivered, (unit, boot["journal"])
        assert ms(props, "ExecMainStartTimestampMonotonic") > delivered, unit
    vm = boot["units"][VM_UNIT]["props"]
    assert vm["DropInPaths"] == f"/etc/systemd/system/{VM_UNIT}.d/overrides.conf"
    assert vm["FragmentPath"] == "/etc/systemd/system/microvm@.service"
    assert boot["failed"].strip() == ""


@pytest.mark.guest
@in_guest
def test_consumers_get_every_credential_byte_exact(run: HostRun) -> None:
    boot = run.event("boot")
    generated = {key: base64.b64decode(v) for key, v in boot["get"].items()}
    files = {Path(p).name: data for p, data in SECRET_FILES.items()}
    expected = {
        "app.service": {
            "api-token": generated["app.service/api-token"],
            "db-password": files["db-password"],
            "tls-key": files["tls.key"],
        },
        "sealed.service": {
            "signing-key": generated["sealed.service/signing-key"],
            "db-password": files["db-password"],
        },
        VM_UNIT: {
            "API_KEY": generated[f"{VM_UNIT}/API_KEY"],
            "DB_PASSWORD": files["db-password"],
        },
    }
    assert len(expected["app.service"]["api-token"]) == 48  # hex of 24 bytes
    assert len(base64.b64decode(expected[VM_UNIT]["API_KEY"], validate=True)) == 32
    for unit, values in expected.items():
        facts = boot["units"][unit]
        assert decoded(facts["credentials"]) == values, unit
        assert facts["environ"] == {"CREDENTIALS_DIRECTORY": f"/run/credentials/{unit}"}, unit
    # Plain units read /run/credstore; the encrypted one only ciphertext at rest.
    assert decoded(boot["credstore"]["app.service"]) == expected["app.service"]
    assert {f["mode"] for f in boot["credstore"]["app.service"].values()} == {"0400", "0440"}
    assert boot["credstore"]["app.service"]["tls-key"]["mode"] == "0440"
    sealed = decoded(boot["encrypted"]["sealed.service"])
    assert sorted(sealed) == ["db-password", "signing-key"]
    for name, value in expected["sealed.service"].items():
        assert value not in sealed[name]
    assert boot["credstore"]["sealed.service"] == {}


@pytest.mark.guest
@in_guest
def test_vm_unit_hands_its_credentials_to_the_vm_as_oem_strings(run: HostRun) -> None:
    boot = run.event("boot")
    vm = boot["vm"]
    assert vm["creates"] == 1 and vm["booted"] == 1
    oem = [base64.b64decode(s).decode() for s in vm["create"]["oem_strings"]]
    # microvm.nix's own string first, then credbridge's, in the unit's credentials' bytes.
    assert oem[0] == MICROVM_OEM
    credentials = decoded(boot["units"][VM_UNIT]["credentials"])
    got = {}
    for text in oem[1:]:
        head, _, value = text.partition("=")
        assert head.startswith(OEM_PREFIX)
        got[head.removeprefix(OEM_PREFIX)] = base64.b64decode(value, validate=True)
    assert got == credentials
    assert ["PUT", "/api/v1/vm.create", 204] in vm["calls"]
    # The unit's main process is credbridge's wrapper (the runner exec'd the wrapper package's
    # cloud-hypervisor), running as microvm; the stand-in is its child with no VM flags.
    main = boot["units"][VM_UNIT]["main"]
    assert "credbridge-cloud-hypervisor" in main["cmdline"]
    assert "--cpus boot=1" in main["cmdline"]
    assert main["uid"] != 0
    standin = vm["standin"]
    assert standin["ppid"] == main["pid"] and standin["uid"] == main["uid"]
    assert "--api-socket path=/var/lib/microvms/test-vm/test-vm.sock" in standin["cmdline"]
    assert "--cpus" not in standin["cmdline"]


@pytest.mark.guest
@in_guest
def test_no_value_in_any_process_file_or_the_journal(run: HostRun) -> None:
    for kind in ("boot", "restart"):
        scan = run.event(kind)["scan"]
        assert scan["needles"] >= 16
        assert scan["proc_files"] > 50
        assert scan["journal_bytes"] > 1000
        assert scan["proc_leaks"] == [], kind
        assert scan["journal_leaks"] == 0, kind
        assert scan["file_leaks"] == [], kind


@pytest.mark.guest
@in_guest
def test_rotation_and_the_deliver_unit_restart_exactly_the_changed_units(run: HostRun) -> None:
    event = run.event("restart")
    for rotation in event["rotations"]:
        assert rotation["rc"] == 0, rotation
    # `systemctl restart credbridge-deliver` returns: credbridge queued the restarts
    # (--no-block) instead of waiting for jobs that systemd holds until it has finished.
    assert event["restart"]["rc"] == 0, event["restart"] | {"journal": event["journal"]}
    assert event["settled"], event["jobs"] + event["journal"]
    queued = re.findall(r"credbridge\[\d+\]: unit\s+(\S+)\s+restart\s+(\S+)", event["journal"])
    assert sorted(queued) == [("app.service", "queued"), (VM_UNIT, "queued")], event["journal"]
    before, after = event["before"], event["after"]
    deliver = after["deliver"]["props"]
    assert (deliver["ActiveState"], deliver["Result"]) == ("active", "success")
    changed = {"app.service", VM_UNIT}
    delivered = ms(deliver, "ActiveEnterTimestampMonotonic")
    for unit in [*CONSUMERS, VM_UNIT]:
        old, new = before["units"][unit], after["units"][unit]
        restarted = unit in changed
        assert (old["props"]["InvocationID"] != new["props"]["InvocationID"]) is restarted, unit
        assert new["starts"] == old["starts"] + restarted, unit
        assert new["props"]["ActiveState"] == "active", unit
        if restarted:  # started again only once the new delivery had finished
            assert ms(new["props"], "InactiveExitTimestampMonotonic") >= delivered, unit
    # The restarted units hold the new values; the VM got a new vm.create with its new key.
    old_app = decoded(before["units"]["app.service"]["credentials"])
    new_app = decoded(after["units"]["app.service"]["credentials"])
    assert new_app["api-token"] != old_app["api-token"]
    assert {k: v for k, v in new_app.items() if k != "api-token"} == {
        k: v for k, v in old_app.items() if k != "api-token"
    }
    assert base64.b64decode(event["get"]["app.service/api-token"]) == new_app["api-token"]
    new_vm = decoded(after["units"][VM_UNIT]["credentials"])
    assert new_vm["API_KEY"] == base64.b64decode(event["get"][f"{VM_UNIT}/API_KEY"])
    assert new_vm["API_KEY"] != decoded(before["units"][VM_UNIT]["credentials"])["API_KEY"]
    assert after["vm"]["creates"] == 2
    oem = [base64.b64decode(s).decode() for s in after["vm"]["create"]["oem_strings"]]
    assert f"{OEM_PREFIX}API_KEY={base64.b64encode(new_vm['API_KEY']).decode()}" in oem
    # The old VM was shut down the microvm.nix way (microvm-shutdown: power button).
    assert ["PUT", "/api/v1/vm.power-button", 204] in after["vm"]["calls"]
