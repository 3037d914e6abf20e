#!/usr/bin/python3
"""In-guest driver of tests/core/test_host_guest.py: credbridge's host side under a real systemd.

Runs inside the host guest (Debian's python3, standard library only) as root, on every boot,
from the payload in /run/cbhost. It does what an operator does, reports facts as
``CBHOST {json}`` lines on the serial console and never judges them: the assertions live in
the test. Values are reported Base64-encoded so the test can compare them byte for byte; the
console is not the journal (which the driver scans for values itself).

First boot: deliver, ``unit --install``, the shipped launch drop-in, the microvm@ template,
start/stop/kill the VM unit, the encrypted credstore, rotate + ``deliver --restart``, then
enable the shipped ``credbridge-deliver.service`` and reboot. Second boot: what came up by
itself, then ``credbridge agent`` as the shipped ``Type=notify`` unit (a second config,
/etc/credbridge/agent.toml): a consumer unit restarted when its value changes at the source,
a running VM's virtiofs share updated in place while a reader holds a file open, the
watchdog, SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path("/run/cbhost")
STATE = Path("/var/lib/cbhost-test")
CONFIG = "/etc/credbridge/microvm.toml"
VM_UNIT = "microvm@test-vm.service"
APP_UNIT = "app.service"
DELIVER_UNIT = "credbridge-deliver.service"
UNIT_DIR = Path("/etc/systemd/system")
CAPTURE = Path("/run/ch-standin")
RECORD = CAPTURE / "record.jsonl"
CREDSTORE = Path("/run/credstore") / VM_UNIT
RUNTIME = Path("/run/credbridge-microvm-test-vm")
ENCRYPTED = Path("/etc/credstore.encrypted") / APP_UNIT
OEM_PREFIX = "io.systemd.credential.binary:"
AGENT_CONFIG = "/etc/credbridge/agent.toml"
AGENT_UNIT = "credbridge-agent.service"
CONSUMER_UNIT = "consumer.service"
LIVE_VM_UNIT = "live-vm.service"
AGENT_TOKEN = Path("/etc/cbagent/token")
SEEN = Path("/run/cbagent-seen/token")
SHARE = Path("/run/cbagent-vm/virtiofs/credbridge")
REFRESH_UNIT = "credbridge-refresh.service"


def emit(event: str, **data: object) -> None:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    print("CBHOST " + json.dumps({"event": event, "uptime": uptime, **data}), flush=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(*argv: str, timeout: float = 300, env: dict[str, str] | None = None) -> dict[str, object]:
    result = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, check=False)
    return {
        "argv": list(argv),
        "rc": result.returncode,
        "stdout": result.stdout.decode("utf-8", "replace"),
        "stderr": result.stderr.decode("utf-8", "replace"),
    }


#: What an operator's shell has: this driver runs in cbhost-driver.service, whose
#: $INVOCATION_ID would make credbridge queue restarts as it does inside a service.
OPERATOR_ENV = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}


def credbridge(*args: str) -> dict[str, object]:
    return run("/usr/bin/credbridge", "-c", CONFIG, *args, env=OPERATOR_ENV)


def show(unit: str, *props: str) -> dict[str, str]:
    out = run("systemctl", "show", unit, *(f"--property={p}" for p in props))
    values = {}
    for line in str(out["stdout"]).splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def install(name: str, destination: Path, mode: int = 0o644) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / name, destination)
    destination.chmod(mode)


def wait_for(check: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.25)


def fstype(path: str) -> str:
    return str(run("stat", "-f", "-c", "%T", path)["stdout"]).strip()


def mode_of(path: Path) -> dict[str, object]:
    info = path.lstat()
    return {"mode": f"{info.st_mode & 0o7777:04o}", "uid": info.st_uid, "gid": info.st_gid}


def read_dir(directory: Path) -> dict[str, dict[str, object]]:
    """Every file of a directory: its mode, owner and value."""
    if not directory.is_dir():
        return {}
    return {
        path.name: {**mode_of(path), "value": b64(path.read_bytes())}
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def records() -> list[dict[str, object]]:
    if not RECORD.exists():
        return []
    return [json.loads(line) for line in RECORD.read_text().splitlines() if line.strip()]


def creates() -> list[Path]:
    return sorted(CAPTURE.glob("vm.create-*.json"), key=lambda p: p.stat().st_mtime)


def booted_count() -> int:
    return sum(
        1 for r in records() if r.get("path") == "/api/v1/vm.boot" and r.get("status") == 204
    )


def wait_vm_started(count: int) -> None:
    """Until the VM unit is active and the stand-in answered the ``count``-th vm.boot."""
    wait_for(
        lambda: booted_count() >= count and show(VM_UNIT, "ActiveState")["ActiveState"] == "active",
        f"vm.boot #{count}",
    )


def oem_values(path: Path) -> dict[str, str]:
    """The OEM strings of a captured vm.create body, decoded: NAME -> Base64 of the value."""
    body = json.loads(path.read_bytes())
    out = {}
    for text in body.get("platform", {}).get("oem_strings", []):
        head, _, encoded = text.partition("=")
        out[head.removeprefix(OEM_PREFIX)] = b64(base64.b64decode(encoded, validate=True))
    return out


def standin_facts(pid: int) -> dict[str, object]:
    facts: dict[str, object] = {}
    for suffix in ("", ".exit"):
        path = CAPTURE / f"standin-{pid}{suffix}.json"
        if path.exists():
            facts[suffix.lstrip(".") or "start"] = json.loads(path.read_bytes())
    return facts


def pid_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def process(pid: int) -> dict[str, object]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return {"pid": pid, "alive": False}
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return {
        "pid": pid,
        "alive": fields.get("State", "").split()[0:1] != ["Z"],
        "uid": int(fields.get("Uid", "-1").split()[0]),
        "ppid": int(fields.get("PPid", "0")),
        "cmdline": cmdline.decode("utf-8", "replace")[:300],
    }


def processes_matching(text: str) -> list[dict[str, object]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            info = process(int(entry.name))
            if info.get("alive") and text in str(info.get("cmdline", "")):
                found.append(info)
    return found


def forms(values: list[bytes]) -> list[bytes]:
    """A value as it could leak: raw, Base64 (the OEM string form) and long enough lines."""
    out = []
    for value in values:
        out += [value, base64.b64encode(value)]
        out += [line for line in value.splitlines() if len(line) >= 8]
    return [f for f in out if len(f) >= 8]


def scan(values: list[bytes]) -> dict[str, object]:
    """Look for the values in every process's argv and environment and in the journal."""
    needles = forms(values)
    leaks = []
    scanned = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = (entry / part).read_bytes()
            except OSError:
                continue
            scanned += 1
            if any(n in data for n in needles):
                leaks.append(
                    f"/proc/{entry.name}/{part} ({process(int(entry.name)).get('cmdline')})"
                )
    journal = subprocess.run(
        ["journalctl", "-o", "export", "--no-pager"], capture_output=True, check=False
    ).stdout
    journal_leaks = sum(1 for n in needles if n in journal)
    return {
        "proc_leaks": leaks,
        "proc_files": scanned,
        "journal_bytes": len(journal),
        "journal_leaks": journal_leaks,
        "needles": len(needles),
    }


def vm_facts() -> dict[str, object]:
    props = show(
        VM_UNIT, "ActiveState", "SubState", "MainPID", "InvocationID", "User", "Group", "Result"
    )
    latest = creates()[-1]
    pid = pid_of(latest)
    socket = RUNTIME / "credbridge" / "api.sock"
    return {
        "props": props,
        "main": process(int(props.get("MainPID", "0") or 0)),
        "standin": process(pid),
        "standin_facts": standin_facts(pid),
        "runtime": mode_of(RUNTIME) if RUNTIME.exists() else None,
        "runtime_credbridge": mode_of(RUNTIME / "credbridge") if RUNTIME.exists() else None,
        "socket": {**mode_of(socket), "is_socket": socket.is_socket()} if socket.exists() else None,
        "credentials": read_dir(Path("/run/credentials") / VM_UNIT),
        "oem": oem_values(latest),
        "creates": len(creates()),
        "calls": [(r.get("method"), r.get("path"), r.get("status")) for r in records()],
    }


def all_values() -> list[bytes]:
    values = [base64.b64decode(str(f["value"])) for f in read_dir(CREDSTORE).values()]
    values += [
        base64.b64decode(str(f["value"]))
        for f in read_dir(Path("/run/credentials") / APP_UNIT).values()
    ]
    return values


# --------------------------------------------------------------------------- first boot


def first_boot() -> None:
    emit(
        "facts",
        root=fstype("/"),
        run=fstype("/run"),
        systemd=str(run("systemctl", "--version")["stdout"]).splitlines()[0],
        python=sys.version.split()[0],
        credbridge=str(run("/usr/bin/credbridge", "--version")["stdout"]).strip(),
    )
    install("microvm.toml", Path(CONFIG))

    result = credbridge("deliver", VM_UNIT)
    emit(
        "deliver",
        result=result,
        fstype=fstype("/run/credstore"),
        base=mode_of(CREDSTORE.parent),
        directory=mode_of(CREDSTORE),
        files=read_dir(CREDSTORE),
    )

    result = credbridge("unit", "--install", VM_UNIT)
    dropin = UNIT_DIR / f"{VM_UNIT}.d" / "credbridge.conf"
    emit("unit-install", result=result, dropin=dropin.read_text() if dropin.exists() else None)

    install("microvm@.service", UNIT_DIR / "microvm@.service")
    install("microvms.target", UNIT_DIR / "microvms.target")
    install("50-credbridge-launch.conf", UNIT_DIR / f"{VM_UNIT}.d" / "50-credbridge-launch.conf")
    reload = run("systemctl", "daemon-reload")
    start = run("systemctl", "start", VM_UNIT)
    wait_vm_started(1)
    emit("start", reload=reload, result=start, vm=vm_facts(), scan=scan(all_values()))

    standin = pid_of(creates()[-1])
    stop = run("systemctl", "stop", VM_UNIT)
    emit(
        "stop",
        result=stop,
        props=show(VM_UNIT, "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus"),
        runtime_exists=RUNTIME.exists(),
        standin=process(standin),
        standin_facts=standin_facts(standin),
        orphans=processes_matching("ch_standin.py"),
        journal=str(run("journalctl", "-o", "cat", "-u", VM_UNIT, "--no-pager")["stdout"])[-3000:],
    )

    start = run("systemctl", "start", VM_UNIT)
    wait_vm_started(2)
    main = int(show(VM_UNIT, "MainPID")["MainPID"])
    standin = pid_of(creates()[-1])
    kill = run("systemctl", "kill", "--kill-who=main", "--signal=KILL", VM_UNIT)
    wait_for(lambda: not process(main).get("alive"), "credbridge to die", 30)
    time.sleep(1)
    emit(
        "kill",
        result=kill,
        main=process(main),
        standin=process(standin),
        standin_facts=standin_facts(standin),
        orphans=processes_matching("ch_standin.py"),
        props=show(VM_UNIT, "ActiveState", "SubState", "Result"),
    )
    run("systemctl", "stop", VM_UNIT)
    run("systemctl", "reset-failed", VM_UNIT)

    deliver = credbridge("deliver", APP_UNIT)
    unit = credbridge("unit", "--install", APP_UNIT)
    dropin = UNIT_DIR / f"{APP_UNIT}.d" / "credbridge.conf"
    install("app.service", UNIT_DIR / APP_UNIT)
    run("systemctl", "daemon-reload")
    start = run("systemctl", "start", APP_UNIT)
    again = credbridge("deliver", "--dry-run", "--json", APP_UNIT)
    emit(
        "encrypted",
        deliver=deliver,
        unit=unit,
        dropin=dropin.read_text() if dropin.exists() else None,
        start=start,
        props=show(APP_UNIT, "ActiveState", "InvocationID"),
        files=read_dir(ENCRYPTED),
        directory=mode_of(ENCRYPTED),
        credentials=read_dir(Path("/run/credentials") / APP_UNIT),
        token=b64(_raw_get("api-token")),
        db_password=read_dir(CREDSTORE).get("host-db-password"),
        again=again,
        host_key=mode_of(Path("/var/lib/systemd/credential.secret")),
    )

    run("systemctl", "start", VM_UNIT)
    wait_vm_started(3)
    before = {u: show(u, "InvocationID")["InvocationID"] for u in (VM_UNIT, APP_UNIT)}
    old = read_dir(CREDSTORE)
    rotate = credbridge("rotate", VM_UNIT, "host-api-key")
    dry = credbridge("deliver", "--restart", "--dry-run", "--json")
    deliver = credbridge("deliver", "--restart", "--json")
    wait_vm_started(4)
    after = {u: show(u, "InvocationID")["InvocationID"] for u in (VM_UNIT, APP_UNIT)}
    emit(
        "restart",
        rotate=rotate,
        dry=dry,
        deliver=deliver,
        before=before,
        after=after,
        old=old,
        new=read_dir(CREDSTORE),
        vm=vm_facts(),
        scan=scan(all_values() + [base64.b64decode(str(f["value"])) for f in old.values()]),
    )

    install(DELIVER_UNIT, UNIT_DIR / DELIVER_UNIT)
    install("deliver-config.conf", UNIT_DIR / f"{DELIVER_UNIT}.d" / "50-config.conf")
    run("systemctl", "daemon-reload")
    enable = run("systemctl", "enable", DELIVER_UNIT, "microvms.target", VM_UNIT, APP_UNIT)
    emit(
        "enable",
        result=enable,
        deliver=show(DELIVER_UNIT, "After", "Before", "Wants", "Type", "RemainAfterExit"),
        values=read_dir(CREDSTORE),
        app=read_dir(Path("/run/credentials") / APP_UNIT),
    )
    reboot_into_second_boot(STATE)


def _raw_get(name: str) -> bytes:
    result = subprocess.run(
        ["/usr/bin/credbridge", "-c", CONFIG, "get", f"target:{APP_UNIT}/{name}"],
        capture_output=True,
        check=False,
    )
    return result.stdout


# --------------------------------------------------------------------------- after the reboot


def second_boot() -> None:
    wait_vm_started(1)
    wait_for(lambda: show(APP_UNIT, "ActiveState")["ActiveState"] == "active", APP_UNIT, 60)
    emit(
        "boot2",
        deliver=show(
            DELIVER_UNIT,
            "ActiveState",
            "SubState",
            "Result",
            "ExecMainStatus",
            "ExecMainExitTimestampMonotonic",
        ),
        vm_start=show(VM_UNIT, "ExecMainStartTimestampMonotonic", "ActiveState", "NRestarts"),
        app=show(APP_UNIT, "ActiveState"),
        values=read_dir(CREDSTORE),
        app_credentials=read_dir(Path("/run/credentials") / APP_UNIT),
        vm=vm_facts(),
        scan=scan(all_values()),
        journal=str(run("journalctl", "-o", "cat", "-u", DELIVER_UNIT, "--no-pager")["stdout"])[
            -2000:
        ],
    )


# --------------------------------------------------------------------------- the agent


def replace_token(value: bytes) -> None:
    """A rotation at the source: the new file renamed over the old one."""
    temp = AGENT_TOKEN.with_name(".token.new")
    temp.write_bytes(value)
    temp.chmod(0o600)
    temp.rename(AGENT_TOKEN)


def agent_status() -> dict[str, object]:
    result = run("/usr/bin/credbridge", "-c", AGENT_CONFIG, "status", "--json", env=OPERATOR_ENV)
    try:
        return {"rc": result["rc"], "state": json.loads(str(result["stdout"]))}
    except ValueError:
        return {"rc": result["rc"], "stderr": result["stderr"]}


def agent_phase() -> None:
    """The shipped agent unit keeps a consumer unit and a running VM's share fresh."""
    one, two = os.urandom(24).hex().encode(), os.urandom(24).hex().encode()
    AGENT_TOKEN.parent.mkdir(mode=0o700, exist_ok=True)
    replace_token(one)
    install("agent.toml", Path(AGENT_CONFIG))
    install(AGENT_UNIT, UNIT_DIR / AGENT_UNIT)
    install("agent-dropin.conf", UNIT_DIR / f"{AGENT_UNIT}.d" / "50-test.conf")
    install("consumer.service", UNIT_DIR / CONSUMER_UNIT)
    install("live-vm.service", UNIT_DIR / LIVE_VM_UNIT)
    install("virtiofsd-standin", Path("/usr/local/bin/virtiofsd-standin"), 0o755)
    install(REFRESH_UNIT, UNIT_DIR / REFRESH_UNIT)
    install("refresh-dropin.conf", UNIT_DIR / f"{REFRESH_UNIT}.d" / "50-test.conf")
    install("refresh-target.service", UNIT_DIR / "refresh-target.service")
    unit = run(
        "/usr/bin/credbridge",
        "-c",
        AGENT_CONFIG,
        "unit",
        "--install",
        CONSUMER_UNIT,
        env=OPERATOR_ENV,
    )
    run("systemctl", "daemon-reload")
    vm = run("systemctl", "start", LIVE_VM_UNIT)
    wait_for(lambda: (SHARE / "token").exists(), "the VM's share", 60)
    launched = (SHARE / "token").read_bytes()

    # Type=notify: `systemctl start` returns once the agent sent READY=1.
    start = run("systemctl", "start", AGENT_UNIT)
    ready = {
        "props": show(AGENT_UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "Type"),
        "delivered": (CREDSTORE.parent / CONSUMER_UNIT / "token").exists(),
        "status": agent_status(),
    }
    consumer = run("systemctl", "start", CONSUMER_UNIT, "refresh-target.service")
    wait_for(lambda: SEEN.exists() and SEEN.read_bytes(), "the consumer's value", 60)
    first = {
        "seen": b64(SEEN.read_bytes()),
        **show(CONSUMER_UNIT, "InvocationID"),
        "refresh_target": show("refresh-target.service", "InvocationID")["InvocationID"],
    }
    watchdog_before = show(AGENT_UNIT, "WatchdogTimestampMonotonic")

    # The value changes at the source while the VM runs and a reader holds its file open.
    with (SHARE / "token").open("rb") as reader:
        replace_token(two)
        wait_for(
            lambda: (
                show(CONSUMER_UNIT, "InvocationID")["InvocationID"] != first["InvocationID"]
                and SEEN.exists()
                and SEEN.read_bytes() == two
            ),
            "the consumer restarted with the new value",
            120,
        )
        wait_for(lambda: (SHARE / "token").read_bytes() == two, "the share updated", 60)
        held = reader.read()
    generation = (SHARE / ".credbridge-generation").read_bytes()
    refresh = run("systemctl", "start", REFRESH_UNIT)
    # Several watchdog periods with nothing to do but ping: the agent stays up.
    time.sleep(22)
    alive = show(
        AGENT_UNIT,
        "ActiveState",
        "MainPID",
        "NRestarts",
        "WatchdogUSec",
        "WatchdogTimestampMonotonic",
        "StatusText",
    )
    changed = {
        "seen": b64(SEEN.read_bytes()),
        **show(CONSUMER_UNIT, "InvocationID", "ActiveState"),
        "share": read_dir(SHARE),
        "held": b64(held),
        "generation": generation.decode(),
        "refresh": refresh,
        "refreshed": show("refresh-target.service", "ActiveState", "InvocationID"),
        "vm": show(LIVE_VM_UNIT, "ActiveState", "NRestarts", "MainPID"),
        "status": agent_status(),
    }
    stop = run("systemctl", "stop", AGENT_UNIT)
    stopped = show(AGENT_UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    journal = str(run("journalctl", "-o", "cat", "-u", AGENT_UNIT, "--no-pager")["stdout"])
    emit(
        "agent",
        values=[b64(one), b64(two)],
        unit=unit,
        vm=vm,
        launched=b64(launched),
        start=start,
        ready=ready,
        consumer=consumer,
        first=first,
        watchdog_before=watchdog_before,
        alive=alive,
        changed=changed,
        stop=stop,
        stopped=stopped,
        after_stop=agent_status(),
        journal=journal[-4000:],
        scan=scan([one, two]),
    )
    run("systemctl", "stop", LIVE_VM_UNIT, CONSUMER_UNIT)


def reboot_into_second_boot(state: Path) -> None:
    """Mark ``state/phase`` (the next boot is the second) and reboot; never returns."""
    state.mkdir(mode=0o700, exist_ok=True)
    (state / "phase").write_text("after-reboot\n")
    os.sync()
    emit("reboot")
    subprocess.run(["systemctl", "--no-block", "reboot"], check=False)
    time.sleep(600)


def drive(state: Path, first: Callable[[], None], second: Callable[[], None]) -> int:
    """One boot of a driver: ``second`` once ``first`` has left ``state/phase``, else
    ``first``; an exception is reported as an ``error`` event; then done, and power off."""
    try:
        if (state / "phase").exists():
            second()
        else:
            first()
    except Exception:
        emit("error", detail=traceback.format_exc()[-3000:])
    print("CBHOST-DONE", flush=True)
    subprocess.run(["systemctl", "--no-block", "poweroff"], check=False)
    return 0


def second_boot_and_agent() -> None:
    second_boot()
    agent_phase()


def main() -> int:
    return drive(STATE, first_boot, second_boot_and_agent)


if __name__ == "__main__":
    sys.exit(main())
