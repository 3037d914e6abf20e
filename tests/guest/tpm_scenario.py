#!/usr/bin/python3
"""In-guest driver of tests/backends/test_tpm_guest.py: credstore values sealed to the guest's TPM2.

Runs as root inside the host guest (Debian's python3, standard library only) from the payload
in /run/cbhost, reports facts as ``CBHOST {json}`` lines and never judges them. The payload's
``mode`` says what to do:

* ``seal``: deliver three values with ``encrypt = "tpm2"``, ``"host+tpm2"`` and ``"auto"``,
  start a ``User=nobody`` unit for each and report what it received, the files' headers, any
  plaintext left where credbridge writes, and the ciphertexts (for the second guest);
* ``foreign``: a guest with another TPM: put the first guest's ciphertexts where the first
  guest had them, start the same units and report what systemd and systemd-creds say.

Both modes also exercise credbridge's own store sealed to the TPM2 (``[store] seal``): in
``seal`` a generated value is delivered to a ``User=nobody`` unit, rotated and delivered again,
and the store's files, their decryption and a scan of the raw root disk for the values are
reported; in ``foreign`` the first guest's sealed store file is put in the store and
``credbridge deliver`` of that target is reported with the store as it is afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import traceback
from pathlib import Path

HERE = Path("/run/cbhost")
CONFIG = "/etc/credbridge/credbridge.toml"
UNIT_DIR = Path("/etc/systemd/system")
CREDSTORE = Path("/etc/credstore.encrypted")
UNITS = ("tpm2.service", "both.service", "auto.service")
#: Sealed to the TPM2 bound to no PCR: delivered on its own (refused by credbridge on 252).
NO_PCR = "nopcr.service"
#: The target whose credential is generated into credbridge's sealed store.
GENERATED = "gen.service"
STORE_DIR = Path("/var/lib/credbridge") / GENERATED / "secret"
#: Where credbridge writes (the credstore, its store) or could leave a temporary file.
SCANNED = ("/etc/credstore.encrypted", "/run/credstore", "/var/lib/credbridge", "/tmp", "/var/tmp")

# The units' program: Base64 of each credential, then the uid it ran as (stdout is a file that
# systemd opens before it drops to User=nobody).
DUMPER = """#!/usr/bin/python3
import base64, os
directory = os.environ["CREDENTIALS_DIRECTORY"]
for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as file:
        print(name, base64.b64encode(file.read()).decode())
print("uid", os.getuid())
"""
UNIT = """[Service]
Type=oneshot
User=nobody
ExecStart=/usr/local/bin/cred-dumper
StandardOutput=file:/run/out-%n
"""


def emit(event: str, **data: object) -> None:
    print("CBHOST " + json.dumps({"event": event, **data}), flush=True)


def run(*argv: str, data: bytes | None = None) -> dict[str, object]:
    result = subprocess.run(argv, input=data, capture_output=True, timeout=300, check=False)
    return {
        "rc": result.returncode,
        "stdout": result.stdout.decode("utf-8", "replace"),
        "stderr": result.stderr.decode("utf-8", "replace"),
    }


def start(unit: str) -> dict[str, object]:
    outcome = run("systemctl", "start", unit)
    out = Path(f"/run/out-{unit}")
    outcome["output"] = out.read_text() if out.exists() else None
    outcome["journal"] = str(run("journalctl", "-u", unit, "-o", "cat", "--no-pager")["stdout"])[
        -1500:
    ]
    return outcome


def install_units() -> None:
    dumper = Path("/usr/local/bin/cred-dumper")
    dumper.write_text(DUMPER)
    dumper.chmod(0o755)
    for unit in (*UNITS, NO_PCR, GENERATED):
        (UNIT_DIR / unit).write_text(UNIT)


def facts() -> None:
    emit(
        "facts",
        systemd=run("systemctl", "--version")["stdout"].splitlines()[0],
        tpmrm0=os.path.exists("/dev/tpmrm0"),
        has_tpm2=run("systemd-creds", "has-tpm2"),
    )


def plaintext_left(values: list[bytes]) -> list[str]:
    needles = [v for v in values] + [base64.b64encode(v) for v in values]
    found = []
    for top in SCANNED:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                with open(path, "rb") as file:
                    data = file.read()
                if any(needle in data for needle in needles):
                    found.append(path)
    return found


def write_config() -> None:
    Path("/etc/credbridge").mkdir(parents=True, exist_ok=True)
    Path(CONFIG).write_bytes((HERE / "credbridge.toml").read_bytes())


def seal(values: dict[str, bytes]) -> None:
    write_config()
    source = Path("/root/values")
    source.mkdir(mode=0o700, exist_ok=True)
    for unit, value in values.items():
        path = source / unit
        path.write_bytes(value)
        path.chmod(0o600)
    emit("deliver", **run("credbridge", "-c", CONFIG, "deliver", *UNITS))
    nopcr = run("credbridge", "-c", CONFIG, "deliver", NO_PCR)
    emit("deliver-nopcr", **nopcr)
    started = [*UNITS, NO_PCR] if nopcr["rc"] == 0 else list(UNITS)
    for unit in started:
        emit("install", unit=unit, **run("credbridge", "-c", CONFIG, "unit", "--install", unit))
    run("systemctl", "daemon-reload")
    for unit in started:
        emit("start", unit=unit, **start(unit))
    # The key each file is sealed with: its first 16 bytes (the first 20 Base64 characters),
    # next to what systemd-creds itself writes for the host key.
    host = run("systemd-creds", "encrypt", "--name=probe", "--with-key=host", "-", "-", data=b"x")
    files = {unit: (CREDSTORE / unit / "secret").read_bytes() for unit in started}
    emit(
        "sealed",
        headers={unit: data[:20].decode("ascii", "replace") for unit, data in files.items()},
        host_header=str(host["stdout"])[:20],
        modes={unit: oct((CREDSTORE / unit / "secret").stat().st_mode & 0o7777) for unit in files},
        ciphertexts={unit: base64.b64encode(data).decode() for unit, data in files.items()},
        plaintext=plaintext_left(list(values.values())),
    )


def root_disk() -> str:
    """The block device mounted on ``/``."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mountpoint = line.split()[:2]
        if mountpoint == "/" and device.startswith("/dev/"):
            return device
    raise RuntimeError("no block device is mounted on /")


def disk_holds(needles: list[bytes]) -> list[bool]:
    """Whether each needle is anywhere on the raw root disk, once written out and with the
    page cache dropped (so the device itself is read)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    found = [False] * len(needles)
    overlap = max(len(needle) for needle in needles)
    tail = b""
    with open(root_disk(), "rb", buffering=0) as disk:
        while chunk := disk.read(8 << 20):
            window = tail + chunk
            for index, needle in enumerate(needles):
                found[index] = found[index] or needle in window
            tail = window[-overlap:]
    return found


def store_listing() -> dict[str, str]:
    """The sealed store's files of the generated credential: name -> Base64 of the content."""
    if not STORE_DIR.is_dir():
        return {}
    return {
        entry.name: base64.b64encode(entry.read_bytes()).decode() for entry in STORE_DIR.iterdir()
    }


def sealed_store() -> None:
    """A generated value kept sealed to the TPM2, delivered, rotated and delivered again."""
    emit("gen-deliver", **run("credbridge", "-c", CONFIG, "deliver", GENERATED))
    emit("gen-install", **run("credbridge", "-c", CONFIG, "unit", "--install", GENERATED))
    run("systemctl", "daemon-reload")
    emit("gen-start", **start(GENERATED))
    first = store_listing()
    current = STORE_DIR / "current.cred"
    first_value = run("systemd-creds", "decrypt", "--name=", str(current), "-")
    emit("gen-rotate", **run("credbridge", "-c", CONFIG, "rotate", GENERATED, "secret"))
    emit("gen-redeliver", **run("credbridge", "-c", CONFIG, "deliver", GENERATED))
    Path(f"/run/out-{GENERATED}").unlink(missing_ok=True)
    emit("gen-restart", **start(GENERATED))
    previous = run("systemd-creds", "decrypt", "--name=", str(STORE_DIR / "previous.cred"), "-")
    second_value = run("systemd-creds", "decrypt", "--name=", str(current), "-")
    values = [
        value
        for value in (str(first_value["stdout"]).encode(), str(second_value["stdout"]).encode())
        if value
    ]
    # A marker written to a file on the same disk: the scan must find it (it reads the disk).
    marker = base64.b64encode(os.urandom(24))
    Path("/root/disk-scan-marker").write_bytes(marker)
    needles = [marker, *values, *(base64.b64encode(value) for value in values)]
    emit(
        "gen-store",
        first=first,
        after_rotate=store_listing(),
        modes={e.name: oct(e.stat().st_mode & 0o7777) for e in STORE_DIR.iterdir()},
        decrypted_first=first_value,
        decrypted_previous=previous,
        decrypted_second=second_value,
        tpm2_header=str(
            run(
                "systemd-creds",
                "encrypt",
                "--name=",
                "--with-key=tpm2",
                "--tpm2-pcrs=7",
                "-",
                "-",
                data=b"x",
            )["stdout"]
        )[:20],
        plaintext=[
            path for path in plaintext_left(values) if not path.startswith("/run/credstore/")
        ],
        disk=root_disk(),
        on_disk=disk_holds(needles),
    )


def moved_store(sealed: bytes) -> None:
    """The first guest's sealed store file in a guest with another TPM."""
    STORE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for directory in (STORE_DIR, STORE_DIR.parent, STORE_DIR.parent.parent):
        directory.chmod(0o700)
    path = STORE_DIR / "current.cred"
    path.write_bytes(sealed)
    path.chmod(0o400)
    emit(
        "gen-foreign",
        deliver=run("credbridge", "-c", CONFIG, "deliver", GENERATED),
        store=store_listing(),
        delivered=os.path.exists(f"/run/credstore/{GENERATED}"),
    )


def foreign(ciphertexts: dict[str, bytes]) -> None:
    write_config()
    for unit, data in ciphertexts.items():
        directory = CREDSTORE / unit
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / "secret"
        path.write_bytes(data)
        path.chmod(0o400)
        dropin = UNIT_DIR / f"{unit}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "sealed.conf").write_text(f"[Service]\nLoadCredentialEncrypted=secret:{path}\n")
    run("systemctl", "daemon-reload")
    for unit in ciphertexts:
        path = str(CREDSTORE / unit / "secret")
        emit(
            "foreign",
            unit=unit,
            start=start(unit),
            decrypt=run("systemd-creds", "decrypt", "--name=secret", path, "-"),
        )


def main() -> None:
    plan = json.loads((HERE / "plan.json").read_text())
    facts()
    install_units()
    blobs = {unit: base64.b64decode(text) for unit, text in plan["data"].items()}
    if plan["mode"] == "seal":
        seal(blobs)
        sealed_store()
    else:
        foreign(blobs)
        moved_store(base64.b64decode(plan["store"]))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        emit("error", traceback=traceback.format_exc())
    print("CBHOST-DONE", flush=True)
    subprocess.run(["systemctl", "--no-block", "poweroff"], check=False)
