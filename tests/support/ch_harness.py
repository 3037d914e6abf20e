"""Helpers for the cloud-hypervisor launcher tests: stand-in wrapper, configs, /proc scans."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from support.proc import process_tree

REPO = Path(__file__).resolve().parent.parent.parent
SPEC_PATH = REPO.parent / "shared" / "vendor/cloud-hypervisor/openapi.yaml"
STANDIN = REPO / "tests" / "support" / "ch_standin.py"
SECRETS: dict[str, bytes] = {
    "API_KEY": b"k3y-Zq8mW2vXr7tPa9LdNe4s",
    "DB_PASSWORD": b"multi\nline\npassword-Hq2Lr8Vd\n",
    "BLOB": bytes(range(256)),
}
"""The VM credentials of the wrapper tests: text, a multi-line value and every byte."""
SPEC_MISSING = (
    f"the vendored cloud-hypervisor OpenAPI spec is not at {SPEC_PATH} "
    "(it lives outside the repository, in ../shared/vendor/cloud-hypervisor/)"
)


def require_spec() -> None:
    """Skip a test that checks bodies against the spec when it is absent; fail under CI=true."""
    import pytest

    if SPEC_PATH.is_file():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{SPEC_MISSING}; CI=true needs it")
    pytest.skip(SPEC_MISSING)


def write_standin(
    directory: Path,
    *,
    mode: str = "noboot",
    exit_code: int | None = None,
    record: Path | None = None,
    echo: str | None = None,
) -> Path:
    """An executable that runs the stand-in exactly as the launcher runs cloud-hypervisor.

    With the vendored spec present, the stand-in checks every request against it; without
    it, it still serves the same endpoints (only the schema checks are left out).
    """
    extra = [f"--standin-mode={mode}"]
    if SPEC_PATH.is_file():
        extra.append(f"--standin-spec={SPEC_PATH}")
    if exit_code is not None:
        extra.append(f"--standin-exit={exit_code}")
    if record is not None:
        extra.append(f"--standin-record={record}")
    if echo is not None:
        extra.append(f"--standin-echo={echo}")
    wrapper = directory / "cloud-hypervisor-standin"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# A stand-in for cloud-hypervisor's API, not cloud-hypervisor.\n"
        f'exec {sys.executable} {STANDIN} {" ".join(extra)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(type(value))


def write_config(
    directory: Path,
    launcher: Mapping[str, Any],
    secrets: Mapping[str, bytes],
    *,
    sink: str | Mapping[str, Any] = "oem-strings",
    name: str = "test-vm",
) -> Path:
    """A config with one VM target whose credentials are ``file:`` references to ``secrets``."""
    secret_dir = directory / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    creds = []
    for cred, value in secrets.items():
        path = secret_dir / cred
        path.write_bytes(value)
        path.chmod(0o400)
        creds.append(f'{cred} = "file:secrets/{cred}"')
    sink_line = f"sink = {toml_value(sink)}"
    launcher_lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in launcher.items())
    text = textwrap.dedent(
        f"""\
        [store]
        path = "state"

        [targets.{name}]
        kind = "vm"
        {sink_line}

        [targets.{name}.launcher]
        type = "cloud-hypervisor"
        """
    )
    text += launcher_lines + f"\n\n[targets.{name}.credentials]\n" + "\n".join(creds) + "\n"
    config = directory / "credbridge.toml"
    config.write_text(text)
    return config


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- /proc


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def secret_forms(values: Iterable[bytes]) -> list[bytes]:
    """A value, its Base64 (as sent in OEM strings), and its text lines if long enough."""
    forms: list[bytes] = []
    for value in values:
        forms += [value, base64.b64encode(value)]
        forms += [line for line in value.splitlines() if len(line) >= 8]
    return [f for f in forms if len(f) >= 8]


def scan_tree(root: int, values: Iterable[bytes]) -> tuple[list[int], list[str]]:
    """Look for secrets in argv and environment of ``root`` and its descendants."""
    forms = secret_forms(values)
    pids = process_tree(root)
    leaks = []
    for pid in pids:
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue
            for form in forms:
                if form in data:
                    leaks.append(f"pid {pid} ({process_name(pid)}) {what} holds a secret form")
    return pids, leaks


def check_runtime_modes(directory: Path) -> list[str]:
    """Every directory 0700, every regular file 0400 (the lock file aside)."""
    problems = []
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode != 0o700:
                problems.append(f"dir {root}/{name} is {mode:04o}")
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if not stat.S_ISREG(info.st_mode) or name == ".credbridge.lock":
                continue
            if stat.S_IMODE(info.st_mode) != 0o400:
                problems.append(f"file {root}/{name} is {stat.S_IMODE(info.st_mode):04o}")
    mode = stat.S_IMODE(os.lstat(directory).st_mode)
    if mode != 0o700:
        problems.append(f"runtime dir {directory} is {mode:04o}")
    return problems


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


def scan_all_cmdlines(forms: list[bytes]) -> list[str]:
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
