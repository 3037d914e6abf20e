#!/usr/bin/python3
"""In-guest driver of tests/nix/test_nixos_host_guest.py: nix/module.nix's units under real systemd.

Runs inside the host guest (Debian's python3, standard library only) as root, on every boot,
from the payload in /run/cbhost; reports facts as ``CBHOST {json}`` lines and never judges
them (the assertions live in the test). The helpers (``emit``, ``show``, ``read_dir``,
``scan``, ...) are tests/guest/host_scenario.py's, shipped in the same payload.

First boot (what ``nixos-rebuild boot`` leaves on disk): the files the evaluated module and
its stubs produce (``manifest.json``: unit files, drop-ins, ``.wants`` links, /etc/static,
store scripts), the wrapper package built by running its derivation's build command, the VM
runner microvm.nix would build, the activation scripts; ``systemd-analyze verify``; reboot.
Second boot: what came up by itself (order, credentials, the VM's vm.create), then a rotation
and ``systemctl restart credbridge-deliver.service``: the units whose values changed restart.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path("/run/cbhost")
sys.path.insert(0, str(HERE))

from host_scenario import (  # noqa: E402
    b64,
    drive,
    emit,
    forms,
    fstype,
    mode_of,
    process,
    read_dir,
    reboot_into_second_boot,
    records,
    run,
    show,
    standin_facts,
    wait_for,
)

STATE = Path("/var/lib/cbhost-nixos")
CAPTURE = Path("/run/ch-standin")
CONFIG = "/etc/credbridge/config.json"
DELIVER = "credbridge-deliver.service"
PLAN = json.loads((HERE / "plan.json").read_text())
CONSUMERS: list[str] = PLAN["consumers"]
VM_UNIT: str = PLAN["vm_unit"]
TIMESTAMPS = (
    "InactiveExitTimestampMonotonic",
    "ExecMainStartTimestampMonotonic",
    "ExecMainExitTimestampMonotonic",
    "ActiveEnterTimestampMonotonic",
)


def command(
    *argv: str, timeout: float = 300, env: dict[str, str] | None = None
) -> dict[str, object]:
    """Like host_scenario.run, but a timeout is a fact to report, not a crash."""
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"argv": list(argv), "rc": None, "timed_out": timeout, "stdout": "", "stderr": ""}
    return {
        "argv": list(argv),
        "rc": result.returncode,
        "stdout": result.stdout.decode("utf-8", "replace"),
        "stderr": result.stderr.decode("utf-8", "replace"),
    }


def credbridge(*args: str) -> dict[str, object]:
    return run("/usr/bin/credbridge", "-c", CONFIG, *args)


def install_manifest() -> None:
    manifest = json.loads((HERE / "manifest.json").read_text())
    for item in manifest["files"]:
        path = Path(item["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(item["data"]))
        path.chmod(item["mode"])
    for item in manifest["symlinks"]:
        path = Path(item["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(item["target"])


def write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def build_wrapper() -> dict[str, object]:
    """The real cloud-hypervisor package (the stand-in), then the wrapper derivation's own
    build command run with bash, as Nix's builder would, into its output path."""
    real = Path(PLAN["cloud_hypervisor"]) / "bin"
    real.mkdir(parents=True, exist_ok=True)
    (real / "cloud-hypervisor").symlink_to("/usr/local/bin/cloud-hypervisor")
    ch_remote = real / "ch-remote"
    ch_remote.write_text("#!/bin/sh\necho 'ch-remote: not in this test' >&2\nexit 1\n")
    ch_remote.chmod(0o555)
    out = PLAN["wrapper"]["path"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return command(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        PLAN["wrapper"]["buildCommand"],
        env={"out": out, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def install_runner() -> None:
    bin_dir = Path(PLAN["runner"]["path"]) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in PLAN["runner"]["scripts"].items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o555)


# --------------------------------------------------------------------------- first boot


def first_boot() -> None:
    emit(
        "facts",
        systemd=str(run("systemctl", "--version")["stdout"]).splitlines()[0],
        credbridge=str(run("/usr/bin/credbridge", "--version")["stdout"]).strip(),
        run=fstype("/run"),
    )
    # The shared host-guest image carries another test's VM directory; on NixOS,
    # install-microvm-NAME.service makes it (with `current` a link to the runner).
    run("rm", "-rf", "/var/lib/microvms")
    install_manifest()
    for path, data in PLAN["secrets"].items():
        write_secret(Path(path), base64.b64decode(data))
    build = build_wrapper()
    install_runner()
    activation = {
        name: command("/bin/sh", "-e", "-c", text)
        for name, text in sorted(PLAN["activation"].items())
    }
    reload = run("systemctl", "daemon-reload")
    emit(
        "installed",
        build=build,
        wrapper=sorted(p.name for p in (Path(PLAN["wrapper"]["path"]) / "bin").iterdir()),
        wrapper_script=(Path(PLAN["wrapper"]["path"]) / "bin" / "cloud-hypervisor").read_text(),
        activation=activation,
        reload=reload,
        config=mode_of(Path(CONFIG)) | {"resolved": os.path.realpath(CONFIG)},
        enabled={
            unit: str(run("systemctl", "is-enabled", unit)["stdout"]).strip()
            for unit in PLAN["units"]
            if "@." not in unit
        },
    )
    reboot_into_second_boot(STATE)


# --------------------------------------------------------------------------- second boot


def booted() -> int:
    return sum(
        1 for r in records() if r.get("path") == "/api/v1/vm.boot" and r.get("status") == 204
    )


def creates() -> list[Path]:
    return sorted(CAPTURE.glob("vm.create-*.json"), key=lambda p: p.stat().st_mtime)


def vm_create(path: Path) -> dict[str, object]:
    body = json.loads(path.read_bytes())
    strings = body.get("platform", {}).get("oem_strings", [])
    return {"oem_strings": [b64(s.encode()) for s in strings], "body_keys": sorted(body)}


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode("utf-8", "replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs if key == "CREDENTIALS_DIRECTORY"}


def unit_facts(unit: str) -> dict[str, object]:
    props = show(
        unit,
        "ActiveState",
        "SubState",
        "Result",
        "InvocationID",
        "NRestarts",
        "MainPID",
        "After",
        "Wants",
        "WantedBy",
        "FragmentPath",
        "DropInPaths",
        *TIMESTAMPS,
    )
    pid = int(props.get("MainPID", "0") or 0)
    return {
        "props": props,
        "starts": starts(unit),
        "main": process(pid) if pid else None,
        "environ": environ_of(pid) if pid else {},
        "credentials": read_dir(Path("/run/credentials") / unit),
    }


def state() -> dict[str, object]:
    """Every unit's facts, the delivered files and the VM's last vm.create."""
    latest = creates()
    standin = int(latest[-1].name.split("-")[1].split(".")[0]) if latest else 0
    return {
        "deliver": unit_facts(DELIVER),
        "units": {unit: unit_facts(unit) for unit in [*CONSUMERS, VM_UNIT]},
        "credstore": {
            unit: read_dir(Path("/run/credstore") / unit) for unit in [*CONSUMERS, VM_UNIT]
        },
        "encrypted": {
            unit: read_dir(Path("/etc/credstore.encrypted") / unit) for unit in CONSUMERS
        },
        "vm": {
            "creates": len(latest),
            "booted": booted(),
            "create": vm_create(latest[-1]) if latest else None,
            "standin": process(standin) if standin else None,
            "standin_facts": standin_facts(standin) if standin else {},
            "calls": [(r.get("method"), r.get("path"), r.get("status")) for r in records()],
        },
    }


def values_of(facts: dict[str, object]) -> list[bytes]:
    """Every delivered value, for the leak scan (plaintext: credentials directories)."""
    found: list[bytes] = []
    units = facts["units"]
    assert isinstance(units, dict)
    for unit in units.values():
        for item in unit["credentials"].values():
            found.append(base64.b64decode(item["value"]))
    return found


def scan(values: list[bytes]) -> dict[str, object]:
    """host_scenario.scan, plus every file under /run/credbridge* and /tmp (no spill)."""
    from host_scenario import scan as scan_proc_and_journal

    result = scan_proc_and_journal(values)
    needles = forms(values)
    spilled = []
    for top in ("/tmp", "/var/tmp", "/var/log", "/etc/credbridge"):
        for root, _dirs, files in os.walk(top):
            for name in files:
                path = Path(root) / name
                try:
                    data = path.read_bytes() if not path.is_symlink() else b""
                except OSError:
                    continue
                if any(n in data for n in needles):
                    spilled.append(str(path))
    result["file_leaks"] = spilled
    return result


#: systemd's "unit started" journal message (a start job that finished).
STARTED = "MESSAGE_ID=39f53479d3a045ac8e11786248231fbf"


def journal(*units: str, after: str = "") -> str:
    argv = ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"]
    if after:
        argv.append(f"--after-cursor={after}")
    for unit in units:
        argv += ["-u", unit]
    return str(run(*argv)["stdout"])[-6000:]


def cursor() -> str:
    out = str(run("journalctl", "-n", "0", "--show-cursor", "--no-pager")["stdout"])
    return out.strip().rpartition("-- cursor: ")[2]


def starts(unit: str) -> int:
    """How often systemd started ``unit`` in this boot (its journal's "Started" messages)."""
    out = run("journalctl", "-b", "-o", "cat", "--no-pager", f"UNIT={unit}", STARTED)
    return len([line for line in str(out["stdout"]).splitlines() if line.strip()])


def second_boot() -> None:
    wait_for(lambda: booted() >= 1, "the VM's vm.boot", 240)
    wait_for(
        lambda: all(
            show(u, "ActiveState")["ActiveState"] == "active" for u in [*CONSUMERS, VM_UNIT]
        ),
        "the consumers",
        120,
    )
    facts = state()
    # After install-microvm-test-vm linked `current` and preStart `booted`, as on NixOS.
    verify = command("systemd-analyze", "verify", "--man=no", *PLAN["verify"], timeout=120)
    emit(
        "boot",
        **facts,
        verify=verify,
        get=_raw_gets(),
        order=str(run("systemd-analyze", "critical-chain", "--no-pager", VM_UNIT)["stdout"]),
        journal=journal(DELIVER, *CONSUMERS, VM_UNIT),
        failed=str(run("systemctl", "--failed", "--no-legend", "--plain")["stdout"]),
        scan=scan(values_of(facts)),
    )

    # A change behind an unchanged config, then the module's wiring: the deliver unit runs
    # again (as `systemctl restart` or a switch would run it) and acts on `on_change`.
    before = state()
    mark = cursor()
    rotations = [credbridge("rotate", unit, name) for unit, name in PLAN["rotate"]]
    restart = command("systemctl", "restart", DELIVER, timeout=PLAN["restart_timeout"])
    settled = True
    try:
        wait_for(lambda: booted() >= 2, "the VM's second vm.boot", 120)
        wait_for(
            lambda: all(
                show(u, "ActiveState")["ActiveState"] == "active" for u in [*CONSUMERS, VM_UNIT]
            ),
            "the consumers after the restart",
            120,
        )
    except TimeoutError:
        settled = False
    after = state()
    old_values = values_of(before)
    emit(
        "restart",
        rotations=rotations,
        restart=restart,
        settled=settled,
        before=before,
        after=after,
        get=_raw_gets(),
        jobs=str(run("systemctl", "list-jobs", "--no-legend", "--plain")["stdout"]),
        journal=journal(DELIVER, *CONSUMERS, VM_UNIT, after=mark),
        scan=scan(old_values + values_of(after)),
    )


def _raw_gets() -> dict[str, str]:
    """Values as credbridge resolves them (root, the store), Base64."""
    out = {}
    for unit, name in PLAN["get"]:
        result = subprocess.run(
            ["/usr/bin/credbridge", "-c", CONFIG, "get", f"target:{unit}/{name}"],
            capture_output=True,
            check=False,
        )
        out[f"{unit}/{name}"] = b64(result.stdout) if result.returncode == 0 else ""
    return out


def main() -> int:
    return drive(STATE, first_boot, second_boot)


if __name__ == "__main__":
    sys.exit(main())
