#!/usr/bin/python3
"""In-guest driver of tests/test_tpm_guest.py: credstore values sealed to the guest's TPM2.

Runs as root inside the host guest (Debian's python3, standard library only) from the payload
in /run/cbhost, reports facts as ``CBHOST {json}`` lines and never judges them. The payload's
``mode`` says what to do:

* ``seal``: deliver three values with ``encrypt = "tpm2"``, ``"host+tpm2"`` and ``"auto"``,
  start a ``User=nobody`` unit for each and report what it received, the files' headers, any
  plaintext left where credbridge writes, and the ciphertexts (for the second guest);
* ``foreign``: a guest with another TPM: put the first guest's ciphertexts where the first
  guest had them, start the same units and report what systemd and systemd-creds say.
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
    for unit in (*UNITS, NO_PCR):
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


def seal(values: dict[str, bytes]) -> None:
    Path("/etc/credbridge").mkdir(parents=True, exist_ok=True)
    Path(CONFIG).write_bytes((HERE / "credbridge.toml").read_bytes())
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


def foreign(ciphertexts: dict[str, bytes]) -> None:
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
    else:
        foreign(blobs)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        emit("error", traceback=traceback.format_exc())
    print("CBHOST-DONE", flush=True)
    subprocess.run(["systemctl", "--no-block", "poweroff"], check=False)
