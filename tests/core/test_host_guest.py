"""credbridge's host side under a real systemd (PID 1 of a Debian guest, QEMU TCG).

Everything below runs on both releases (test ids ``systemd252``: Debian 12; ``systemd257``:
Debian 13), the two guests side by side (tests/guest/parallel.py). Per release, one QEMU run, two boots of the *host guest* (tests/guest/hostimage.py: persistent ext4 root,
credbridge installed in a venv from a wheel of this checkout). The in-guest driver
(tests/guest/host_scenario.py) does what an operator does and reports facts; every test
below checks one part of them:

* ``credbridge -c /etc/credbridge/microvm.toml deliver microvm@test-vm.service`` writes
  /run/credstore (tmpfs); ``unit --install`` writes the LoadCredential= drop-in;
  examples/microvm's launch drop-in is installed as shipped on a microvm@.service template
  shaped like microvm.nix's (User=microvm, Group=kvm, Restart=always);
* ``systemctl start`` runs ``credbridge launch test-vm`` as microvm with the real
  $CREDENTIALS_DIRECTORY; it drives the cloud-hypervisor API stand-in (recording mode: it
  keeps the exact vm.create body, boots nothing) -- binary ``cloud-hypervisor`` on PATH,
  so the example config is used unmodified;
* ``systemctl stop`` (SIGTERM forwarded, inactive, runtime dir gone); ``systemctl kill``
  of credbridge leaves no stand-in behind (PDEATHSIG);
* ``encrypt = true``: LoadCredentialEncrypted= with the host key;
* ``rotate`` + ``deliver --restart``: the VM unit restarts with the new value, an unchanged
  unit keeps its InvocationID;
* the shipped examples/systemd/credbridge-deliver.service, enabled, after a reboot: the VM
  unit comes up at boot with its credentials, the same values as before (persistent store);
* then, in the same boot, ``credbridge agent`` as the shipped
  examples/systemd/credbridge-agent.service (``Type=notify``, ``WatchdogSec=10s`` by a drop-in,
  its own config): READY once the consumer's credential is delivered, the consumer unit
  restarted with the new value when its ``file:`` source changes, a running VM's virtiofs
  share (a real ``credbridge launch`` with the stand-ins) updated in place while a reader
  holds the old file open, the shipped guest credbridge-refresh.service restarting its units
  on the new generation, the watchdog satisfied, ``systemctl stop`` (SIGTERM) clean.

No value in any /proc/*/cmdline or environ of the guest, nor in ``journalctl -o export``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from guest.host_recipe import host_guest_missing, recipe  # noqa: E402
from guest.hostimage import ensure_host_guest  # noqa: E402
from guest.hostrun import HostRun, finished, run_host_guest  # noqa: E402
from guest.image import Release  # noqa: E402
from guest.parallel import outcome_of, per_release, release  # noqa: E402
from support.ch_harness import REPO  # noqa: E402

__all__ = ["release"]  # the fixture, imported so pytest finds it here

EXAMPLE = REPO / "examples" / "microvm"
VM_UNIT = "microvm@test-vm.service"
HOST_NAMES = ("host-api-key", "host-db-password", "host-jwt-secret")
GUEST_NAMES = {
    "API_KEY": "host-api-key",
    "DB_PASSWORD": "host-db-password",
    "JWT_SECRET": "host-jwt-secret",
}
OEM_PREFIX = "io.systemd.credential.binary:"

# --------------------------------------------------------------------------- the image

#: microvm.nix's host unit (nixos-modules/host/default.nix), as systemd sees it.
MICROVM_TEMPLATE = """[Unit]
Description=MicroVM '%i'
After=network.target
ConditionPathExists=/var/lib/microvms/%i/current/bin/microvm-run

[Service]
Type=simple
WorkingDirectory=/var/lib/microvms/%i
ExecStart=/var/lib/microvms/%i/current/bin/microvm-run
ExecStop=/var/lib/microvms/%i/booted/bin/microvm-shutdown
TimeoutSec=150
Restart=always
RestartSec=5s
User=microvm
Group=kvm
SyslogIdentifier=microvm@%i
LimitNOFILE=1048576
LimitMEMLOCK=infinity
NotifyAccess=all

[Install]
WantedBy=microvms.target
"""

MICROVMS_TARGET = """[Unit]
Description=All MicroVMs

[Install]
WantedBy=multi-user.target
"""

APP_UNIT = """[Unit]
Description=An app whose credentials credbridge delivers encrypted (host key)

[Service]
ExecStart=/bin/sleep infinity
DynamicUser=yes

[Install]
WantedBy=multi-user.target
"""

#: The example, unmodified, plus a second unit target with encrypted credentials.
APP_TARGET = """
# ---------------------------------------------------------------- added by the host-guest test
[targets."app.service"]
sink = { type = "credstore", encrypt = true, with_key = "host", directory = "/etc/credstore.encrypted" }

[targets."app.service".credentials]
api-token = "generate:hex?bytes=24"
vm-db-password = "target:microvm@test-vm.service/host-db-password"
"""

DELIVER_CONFIG_DROPIN = """[Service]
Environment=CREDBRIDGE_CONFIG=/etc/credbridge/microvm.toml
"""


AGENT_CONFIG = """
[store]
path = "/var/lib/cbagent/store"

[sources.file]
refresh = "5s"

[agent]
retry_min = "1s"
retry_max = "5s"

[targets."consumer.service"]
on_change = "restart"

[targets."consumer.service".credentials]
token = "file:/etc/cbagent/token"

[targets.live-vm]
kind = "vm"
sink = "virtiofs"
# A virtiofs VM is updated in place: the agent restarts it never, whatever on_change says.
on_change = "restart"

[targets.live-vm.launcher]
type = "cloud-hypervisor"
kernel = "/var/lib/microvms/test-vm/current/kernel"
runtime_dir = "/run/cbagent-vm"
virtiofsd = "/usr/local/bin/virtiofsd-standin"

[targets.live-vm.credentials]
token = "target:consumer.service/token"
"""

AGENT_DROPIN = """[Unit]
Before=consumer.service

[Service]
Environment=CREDBRIDGE_CONFIG=/etc/credbridge/agent.toml
WatchdogSec=10s
"""

CONSUMER_UNIT = """[Unit]
Description=Reads its credential at start; the agent restarts it when the value changes

[Service]
ExecStartPre=/bin/mkdir -p -m 0700 /run/cbagent-seen
ExecStart=/bin/sh -c 'cat "$$CREDENTIALS_DIRECTORY/token" > /run/cbagent-seen/.token && mv /run/cbagent-seen/.token /run/cbagent-seen/token && exec sleep infinity'
"""

LIVE_VM_UNIT = """[Unit]
Description=A VM whose credentials come through virtiofs (cloud-hypervisor stand-in)

[Service]
ExecStart=/usr/bin/credbridge -c /etc/credbridge/agent.toml launch live-vm
KillMode=mixed
"""

VIRTIOFSD_STANDIN = """#!/usr/bin/python3
# A stand-in for virtiofsd (credbridge's test host guest runs no VM, nothing connects): it
# serves its vhost-user socket until it is stopped.
import signal, socket, sys, time
args = sys.argv[1:]
if "--help" in args:
    print("virtiofsd stand-in: --socket-path=PATH --shared-dir=DIR --readonly --cache=never")
    sys.exit(0)
path = next(a.split("=", 1)[1] for a in args if a.startswith("--socket-path="))
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
"""

#: The shipped guest unit, pointed at the host side of the share (no VM boots here).
REFRESH_DROPIN = """[Service]
Environment=UNITS=refresh-target.service
Environment=SHARE=/run/cbagent-vm/virtiofs/credbridge
"""

REFRESH_TARGET = """[Service]
ExecStart=/bin/sleep infinity
"""


def payload() -> dict[str, bytes]:
    example = (EXAMPLE / "credbridge.toml").read_bytes()
    return {
        "driver": (REPO / "tests" / "guest" / "host_scenario.py").read_bytes(),
        "microvm.toml": example + APP_TARGET.encode(),
        "microvm@.service": MICROVM_TEMPLATE.encode(),
        "microvms.target": MICROVMS_TARGET.encode(),
        "app.service": APP_UNIT.encode(),
        "50-credbridge-launch.conf": (
            EXAMPLE / f"{VM_UNIT}.d" / "50-credbridge-launch.conf"
        ).read_bytes(),
        "credbridge-deliver.service": (
            REPO / "examples" / "systemd" / "credbridge-deliver.service"
        ).read_bytes(),
        "deliver-config.conf": DELIVER_CONFIG_DROPIN.encode(),
        "agent.toml": AGENT_CONFIG.encode(),
        "credbridge-agent.service": (
            REPO / "examples" / "systemd" / "credbridge-agent.service"
        ).read_bytes(),
        "agent-dropin.conf": AGENT_DROPIN.encode(),
        "consumer.service": CONSUMER_UNIT.encode(),
        "live-vm.service": LIVE_VM_UNIT.encode(),
        "virtiofsd-standin": VIRTIOFSD_STANDIN.encode(),
        "credbridge-refresh.service": (
            REPO / "examples" / "guest" / "credbridge-refresh.service"
        ).read_bytes(),
        "refresh-dropin.conf": REFRESH_DROPIN.encode(),
        "refresh-target.service": REFRESH_TARGET.encode(),
    }


_SKIP = host_guest_missing()
# In CI nothing is skipped: a missing prerequisite fails the fixture with its reason.
_SKIPPED = _SKIP is not None and os.environ.get("CI") != "true"
pytestmark = [pytest.mark.guest, pytest.mark.skipif(_SKIPPED, reason=_SKIP or "")]


def boot(release: Release) -> HostRun:
    return run_host_guest(ensure_host_guest(recipe(), release=release), payload(), timeout=1200)


@pytest.fixture(scope="module")
def runs() -> dict[Release, HostRun | Exception]:
    if _SKIP is not None:
        pytest.fail(_SKIP)
    return per_release(boot)


@pytest.fixture(scope="module")
def run(runs: dict[Release, HostRun | Exception], release: Release) -> HostRun:
    result = finished(outcome_of(runs, release, "host guest"))
    timeline = ", ".join(f"{r['event']} {r['uptime']:.0f}s" for r in result.records)
    print(
        f"host guest {release.test_id}: {result.seconds:.0f}s in QEMU; guest uptime at each step: {timeline}"
    )
    return result


def decoded(files: dict[str, Any]) -> dict[str, bytes]:
    return {name: base64.b64decode(info["value"]) for name, info in files.items()}


def ok(result: dict[str, Any]) -> None:
    assert result["rc"] == 0, json.dumps(result, indent=1)


# --------------------------------------------------------------------------- tests


def test_the_guest_is_a_real_host(run: HostRun, release: Release) -> None:
    facts = run.event("facts")
    assert facts["root"] == "ext2/ext3"  # stat -f's name for ext4
    assert facts["run"] == "tmpfs"
    assert facts["systemd"].startswith(f"systemd {release.systemd} ")
    assert facts["python"].startswith(f"{release.python}.")
    assert facts["credbridge"].startswith("credbridge, version")


def test_deliver_writes_the_tmpfs_credstore(run: HostRun) -> None:
    event = run.event("deliver")
    ok(event["result"])
    assert event["fstype"] == "tmpfs"
    assert event["directory"]["mode"] == "0700"
    files = event["files"]
    assert sorted(files) == sorted(HOST_NAMES)
    assert {f["mode"] for f in files.values()} == {"0400"}
    values = decoded(files)
    for value in values.values():  # like `openssl rand -base64 32`
        assert len(base64.b64decode(value, validate=True)) == 32
    assert len(set(values.values())) == 3


def test_unit_install_writes_the_loadcredential_dropin(run: HostRun) -> None:
    event = run.event("unit-install")
    ok(event["result"])
    lines = event["dropin"].splitlines()
    assert [line for line in lines if line.startswith("LoadCredential")] == [
        f"LoadCredential={name}:/run/credstore/{VM_UNIT}/{name}" for name in HOST_NAMES
    ]


def test_the_vm_unit_launches_through_the_real_credentials_directory(run: HostRun) -> None:
    event = run.event("start")
    ok(event["reload"])
    ok(event["result"])
    vm = event["vm"]
    delivered = decoded(run.event("deliver")["files"])
    assert vm["props"]["ActiveState"] == "active"
    assert (vm["props"]["User"], vm["props"]["Group"]) == ("microvm", "kvm")
    # credbridge and the stand-in it started run as microvm, not root.
    assert vm["main"]["uid"] == vm["standin"]["uid"] != 0
    assert vm["standin"]["ppid"] == vm["main"]["pid"]
    assert "launch test-vm" in vm["main"]["cmdline"]
    # systemd copied the credstore files into $CREDENTIALS_DIRECTORY ...
    assert decoded(vm["credentials"]) == delivered
    # ... and vm.create carried exactly the three OEM strings with those bytes.
    oem = {name: base64.b64decode(value) for name, value in vm["oem"].items()}
    assert oem == {guest: delivered[host] for guest, host in GUEST_NAMES.items()}
    assert ["PUT", "/api/v1/vm.create", 204] in vm["calls"]
    assert ["PUT", "/api/v1/vm.boot", 204] in vm["calls"]
    # RuntimeDirectory= holds the API socket, private to the unit's user.
    assert vm["runtime"]["mode"] == "0700"
    assert vm["runtime"]["uid"] == vm["main"]["uid"]
    assert vm["runtime_credbridge"]["mode"] == "0700"
    assert vm["socket"]["is_socket"] is True
    assert vm["socket"]["uid"] == vm["main"]["uid"]
    # The stand-in was started to die with credbridge (PR_SET_PDEATHSIG = SIGKILL).
    assert vm["standin_facts"]["start"]["pdeathsig"] == 9


def test_stop_forwards_sigterm_and_ends_inactive(run: HostRun) -> None:
    event = run.event("stop")
    ok(event["result"])
    props = event["props"]
    assert props["ActiveState"] == "inactive", event["journal"]
    assert props["Result"] == "success", event["journal"]
    assert props["ExecMainStatus"] == "0"
    # SIGTERM reached the VMM through credbridge; it shut down cleanly.
    assert event["standin_facts"]["exit"] == {"signals": [15], "exit": 0}
    assert event["standin"]["alive"] is False
    assert event["orphans"] == []
    assert event["runtime_exists"] is False


def test_killing_credbridge_leaves_no_orphan_vmm(run: HostRun) -> None:
    event = run.event("kill")
    ok(event["result"])
    assert event["main"]["alive"] is False
    assert event["standin"]["alive"] is False
    assert event["orphans"] == []
    assert event["standin_facts"]["start"]["pdeathsig"] == 9
    assert "exit" not in event["standin_facts"]  # SIGKILLed, not shut down


def test_encrypted_credstore_reaches_the_unit_decrypted(run: HostRun) -> None:
    event = run.event("encrypted")
    for step in ("deliver", "unit", "start"):
        ok(event[step])
    names = ["api-token", "vm-db-password"]
    lines = [line for line in event["dropin"].splitlines() if line.startswith("LoadCredential")]
    assert lines == [
        f"LoadCredentialEncrypted={n}:/etc/credstore.encrypted/app.service/{n}" for n in names
    ]
    token = base64.b64decode(event["token"])
    db_password = base64.b64decode(event["db_password"]["value"])
    assert len(token) == 48
    # On disk only ciphertext ...
    stored = decoded(event["files"])
    assert sorted(stored) == names
    assert token not in stored["api-token"]
    assert db_password not in stored["vm-db-password"]
    assert {f["mode"] for f in event["files"].values()} == {"0400"}
    # ... and the unit got the plaintext, through systemd's host key.
    assert decoded(event["credentials"]) == {"api-token": token, "vm-db-password": db_password}
    assert event["props"]["ActiveState"] == "active"
    assert event["host_key"]["mode"] == "0400"
    # Delivering again changes nothing (compared through systemd-creds decrypt).
    again = json.loads(event["again"]["stdout"])
    assert {e["change"] for e in again["entries"]} == {"keep"}
    assert again["units"] == []


def test_rotate_and_deliver_restart_restart_exactly_the_changed_unit(run: HostRun) -> None:
    event = run.event("restart")
    ok(event["rotate"])
    assert event["rotate"]["stdout"].splitlines() == [VM_UNIT]
    ok(event["dry"])
    dry = json.loads(event["dry"]["stdout"])
    assert [(u["unit"], u["action"], u["status"]) for u in dry["units"]] == [
        (VM_UNIT, "restart", "planned")
    ]
    ok(event["deliver"])
    report = json.loads(event["deliver"]["stdout"])
    assert [(u["unit"], u["action"], u["status"]) for u in report["units"]] == [
        (VM_UNIT, "restart", "done")
    ]
    assert sorted(u for u in report["units"][0]["targets"]) == sorted([VM_UNIT, "test-vm"])
    changes = {(e["target"], e["credential"]): e["change"] for e in report["entries"]}
    assert changes[(VM_UNIT, "host-api-key")] == "change"
    assert changes[(VM_UNIT, "host-db-password")] == "keep"
    assert changes[("app.service", "vm-db-password")] == "keep"
    # The VM unit restarted (new invocation), the unchanged app.service did not.
    assert event["after"][VM_UNIT] != event["before"][VM_UNIT]
    assert event["after"]["app.service"] == event["before"]["app.service"]
    old, new = decoded(event["old"]), decoded(event["new"])
    assert new["host-api-key"] != old["host-api-key"]
    assert new["host-db-password"] == old["host-db-password"]
    # The restarted VM got the new value.
    oem = {name: base64.b64decode(value) for name, value in event["vm"]["oem"].items()}
    assert oem == {guest: new[host] for guest, host in GUEST_NAMES.items()}
    assert decoded(event["vm"]["credentials"]) == new


def test_no_value_in_any_process_or_the_journal(run: HostRun) -> None:
    for kind in ("start", "restart", "boot2"):
        scan = run.event(kind)["scan"]
        assert scan["needles"] >= 6  # three values or more, raw and Base64
        assert scan["proc_files"] > 50
        assert scan["journal_bytes"] > 1000
        assert scan["proc_leaks"] == [], kind
        assert scan["journal_leaks"] == 0, kind


def test_the_deliver_unit_brings_the_vm_up_at_boot(run: HostRun) -> None:
    enable = run.event("enable")
    ok(enable["result"])
    deliver_unit = enable["deliver"]
    assert deliver_unit["Type"] == "oneshot"
    assert "microvm@test-vm.service" in deliver_unit["Before"].split()
    # Local sources only: the shipped unit does not wait for the network.
    assert "network-online.target" not in deliver_unit["After"].split()
    assert "network-online.target" not in deliver_unit["Wants"].split()
    assert run.events("reboot")

    boot = run.event("boot2")
    assert boot["deliver"]["ActiveState"] == "active"
    assert boot["deliver"]["Result"] == "success"
    delivered_at = int(boot["deliver"]["ExecMainExitTimestampMonotonic"])
    started_at = int(boot["vm_start"]["ExecMainStartTimestampMonotonic"])
    assert 0 < delivered_at < started_at
    assert boot["vm_start"]["NRestarts"] == "0"  # started once, with its credentials there
    # The same values as before the reboot: generated once, kept in the persistent store.
    before = decoded(enable["values"])
    assert decoded(boot["values"]) == before
    vm = boot["vm"]
    assert vm["props"]["ActiveState"] == "active"
    assert decoded(vm["credentials"]) == before
    oem = {name: base64.b64decode(value) for name, value in vm["oem"].items()}
    assert oem == {guest: before[host] for guest, host in GUEST_NAMES.items()}
    assert vm["creates"] == 1  # /run/ch-standin is new: this VM started at this boot
    assert boot["app"]["ActiveState"] == "active"
    assert decoded(boot["app_credentials"]) == decoded(enable["app"])


def test_the_agent_unit_keeps_a_consumer_and_a_running_vm_fresh(run: HostRun) -> None:
    event = run.event("agent")
    journal = event["journal"]
    for step in ("unit", "vm", "start", "consumer"):
        ok(event[step])
    one, two = (base64.b64decode(v) for v in event["values"])
    # Type=notify: `systemctl start` returned after READY=1, i.e. after the first delivery.
    ready = event["ready"]
    assert ready["props"]["Type"] == "notify"
    assert ready["props"]["ActiveState"] == "active", journal
    assert "fresh" in ready["props"]["StatusText"]
    assert ready["delivered"] is True
    state = ready["status"]["state"]
    assert state["ready"] is True and state["running"] is True
    assert state["targets"]["consumer.service"]["status"] == "ok"
    assert state["targets"]["live-vm"]["kind"] == "vm"
    assert state["targets"]["live-vm"]["channel"] == "live"
    assert base64.b64decode(event["launched"]) == one
    assert base64.b64decode(event["first"]["seen"]) == one

    # The value changed at the source: the consumer was restarted and read the new one ...
    changed = event["changed"]
    assert base64.b64decode(changed["seen"]) == two
    assert changed["InvocationID"] != event["first"]["InvocationID"]
    assert changed["ActiveState"] == "active"
    # ... the running VM's share holds it, and a reader that held the file open read the
    # whole old value (the new file was renamed over it) ...
    assert decoded(changed["share"]) == {"token": two, ".credbridge-generation": b"1\n"}
    assert changed["share"]["token"]["mode"] == "0400"
    assert base64.b64decode(changed["held"]) == one
    assert changed["generation"] == "1\n"
    # ... the VM was not restarted, and the guest's refresh unit restarted its unit.
    assert changed["vm"]["ActiveState"] == "active" and changed["vm"]["NRestarts"] == "0"
    ok(changed["refresh"])
    assert changed["refreshed"]["ActiveState"] == "active"
    assert changed["refreshed"]["InvocationID"] != event["first"]["refresh_target"]
    status = changed["status"]["state"]["targets"]
    assert status["live-vm"]["credentials"]["token"]["delivered_at"] is not None

    # WATCHDOG=1 pings kept it alive over more than two 10 s periods.
    alive = event["alive"]
    assert alive["ActiveState"] == "active"
    assert alive["MainPID"] == ready["props"]["MainPID"]
    assert alive["NRestarts"] == "0"
    assert alive["WatchdogUSec"] == "10s"
    assert int(alive["WatchdogTimestampMonotonic"]) > int(
        event["watchdog_before"]["WatchdogTimestampMonotonic"]
    )

    # SIGTERM: it finished and exited 0.
    ok(event["stop"])
    stopped = event["stopped"]
    assert stopped["ActiveState"] == "inactive", journal
    assert stopped["Result"] == "success", journal
    assert stopped["ExecMainStatus"] == "0"
    assert event["after_stop"]["state"]["running"] is False
    scan = event["scan"]
    assert scan["proc_leaks"] == [] and scan["journal_leaks"] == 0
