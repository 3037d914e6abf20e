#!/usr/bin/python3
"""In-guest driver of tests/backends/test_host_credentials.py: what systemd 252 does with credstore
drop-ins credbridge writes for an optional credential and at systemd's size limits.

Runs as root inside the host guest (Debian's python3, standard library only) from the payload
in /run/cbhost, reports facts as ``CBHOST {json}`` lines and never judges them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import traceback
from pathlib import Path

HERE = Path("/run/cbhost")
CONFIG = "/etc/credbridge/credbridge.toml"
UNIT_DIR = Path("/etc/systemd/system")
MiB = 1 << 20
UNITS = ("opt-missing.service", "opt-present.service", "limit-exact.service")

# The units' program: lists $CREDENTIALS_DIRECTORY into /run/out-UNIT, one line per credential:
# name, size, Base64 of its first 64 bytes.
LISTER_PROGRAM = """#!/usr/bin/python3
import base64, os, sys
directory = os.environ["CREDENTIALS_DIRECTORY"]
lines = []
for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as file:
        data = file.read()
    lines.append(f"{name} {len(data)} {base64.b64encode(data[:64]).decode()}")
with open("/run/out-" + sys.argv[1], "w") as out:
    out.write("\\n".join(lines))
"""
LISTER = "[Service]\nType=oneshot\nExecStart=/usr/local/bin/cred-lister %n\n"


def emit(event: str, **data: object) -> None:
    print("CBHOST " + json.dumps({"event": event, **data}), flush=True)


def run(*argv: str) -> dict[str, object]:
    result = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    return {
        "rc": result.returncode,
        "stdout": result.stdout.decode("utf-8", "replace"),
        "stderr": result.stderr.decode("utf-8", "replace"),
    }


def start(unit: str) -> dict[str, object]:
    outcome = run("systemctl", "start", unit)
    out = Path(f"/run/out-{unit}")
    outcome["listing"] = out.read_text().splitlines() if out.exists() else None
    outcome["result"] = run("systemctl", "show", unit, "--property=Result")["stdout"]
    outcome["journal"] = str(run("journalctl", "-u", unit, "-o", "cat", "--no-pager")["stdout"])[
        -800:
    ]
    return outcome


def main() -> None:
    Path("/etc/credbridge").mkdir(parents=True, exist_ok=True)
    Path(CONFIG).write_bytes((HERE / "credbridge.toml").read_bytes())
    values = Path("/root/values")
    values.mkdir(mode=0o700, exist_ok=True)
    (values / "present").write_bytes(b"present-value")
    (values / "maybe").write_bytes(b"maybe-is-here")
    # "k" + (1 MiB - 1) bytes: exactly systemd's per-unit total; one byte more is refused.
    (values / "exact").write_bytes(b"e" * (MiB - 1))
    (values / "over").write_bytes(b"o" * MiB)
    lister = Path("/usr/local/bin/cred-lister")
    lister.write_text(LISTER_PROGRAM)
    lister.chmod(0o755)
    emit("version", systemd=run("systemctl", "--version")["stdout"].splitlines()[0])
    for unit in (*UNITS, "limit-over.service", "raw-over.service"):
        (UNIT_DIR / unit).write_text(LISTER)
    emit("deliver", **run("credbridge", "-c", CONFIG, "deliver", *UNITS))
    emit("deliver-over", **run("credbridge", "-c", CONFIG, "deliver", "limit-over.service"))
    for unit in UNITS:
        emit("install", unit=unit, **run("credbridge", "-c", CONFIG, "unit", "--install", unit))
    emit("dropin", text=(UNIT_DIR / "opt-missing.service.d" / "credbridge.conf").read_text())
    # What systemd itself does with the refused size: the same file, loaded by hand.
    raw = UNIT_DIR / "raw-over.service.d"
    raw.mkdir(exist_ok=True)
    (raw / "load.conf").write_text(f"[Service]\nLoadCredential=k:{values / 'over'}\n")
    run("systemctl", "daemon-reload")
    for unit in (*UNITS, "raw-over.service"):
        emit("start", unit=unit, **start(unit))
    placeholder = Path("/run/credstore/opt-missing.service/maybe")
    emit(
        "placeholder",
        is_dir=placeholder.is_dir(),
        entries=sorted(p.name for p in placeholder.iterdir()),
    )
    emit(
        "values",
        present=base64.b64encode(
            Path("/run/credstore/opt-present.service/maybe").read_bytes()
        ).decode(),
    )


if __name__ == "__main__":
    try:
        main()
    except Exception:
        emit("error", traceback=traceback.format_exc())
    print("CBHOST-DONE", flush=True)
    subprocess.run(["systemctl", "--no-block", "poweroff"], check=False)
