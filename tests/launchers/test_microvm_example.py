"""examples/microvm/: the hand-made microvm.nix + cloud-hypervisor flow, end to end.

1. ``credbridge unit microvm@test-vm.service`` (run from the example folder, unmodified config)
   prints the host drop-in with ``LoadCredential=host-api-key:/run/credstore/...``.
2. With the example's paths moved to tmpfs (a derived config; everything else unchanged):
   ``credbridge deliver microvm@test-vm.service`` generates the three secrets, persists them
   in the store and writes the credstore.
3. The unit is simulated as systemd would run it: ``$CREDENTIALS_DIRECTORY`` holds 0400 copies
   of the delivered files, and ``credbridge launch test-vm`` runs there with ``binary``
   pointing at the cloud-hypervisor API stand-in, which boots the real test guest.
4. In the guest, API_KEY / DB_PASSWORD / JWT_SECRET arrive byte-exact.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from guest.image import RELEASES, GuestImage, Release, missing_for_probe_guest, release_id
from support.ch_harness import (
    REPO,
    read_records,
    toml_value,
    write_standin,
)

EXAMPLE = REPO / "examples" / "microvm"
UNIT = "microvm@test-vm.service"
HOST_NAMES = ("host-api-key", "host-db-password", "host-jwt-secret")
GUEST_NAMES = {
    "API_KEY": "host-api-key",
    "DB_PASSWORD": "host-db-password",
    "JWT_SECRET": "host-jwt-secret",
}


def credbridge(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    full = dict(os.environ, CREDBRIDGE_LOAD_PLUGINS="")
    full.pop("CREDENTIALS_DIRECTORY", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", *args],
        capture_output=True,
        cwd=cwd,
        env=full,
        timeout=timeout,
        check=False,
    )


def dump_toml(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """Tables as [headers], everything else inline (enough for the example's shape)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    out = ""
    if prefix and (scalars or not tables):
        out += "[" + ".".join(json.dumps(p) for p in prefix) + "]\n"
    for key, value in scalars.items():
        out += f"{json.dumps(key)} = {toml_value(value)}\n"
    for key, value in tables.items():
        out += dump_toml(value, (*prefix, key))
    return out


def test_example_unit_dropin_from_the_example_folder() -> None:
    result = credbridge("unit", UNIT, cwd=EXAMPLE)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert "[Service]" in lines
    assert [line for line in lines if line.startswith("LoadCredential=")] == [
        f"LoadCredential={name}:/run/credstore/{UNIT}/{name}" for name in HOST_NAMES
    ]


def test_example_config_is_the_described_flow() -> None:
    data = tomllib.loads((EXAMPLE / "credbridge.toml").read_text())
    host = data["targets"][UNIT]["credentials"]
    for name in HOST_NAMES:
        short = name.removeprefix("host-")
        assert host[name] == f"generate:base64?bytes=32&id=test-vm/{short}"
    vm = data["targets"]["test-vm"]
    assert vm["kind"] == "vm"
    assert vm["sink"] == "oem-strings"
    assert vm["launcher"]["type"] == "cloud-hypervisor"
    assert vm["credentials"] == {k: f"credential:{v}" for k, v in GUEST_NAMES.items()}
    dropin = (EXAMPLE / f"{UNIT}.d" / "50-credbridge-launch.conf").read_text()
    assert "ExecStart=\n" in dropin
    assert "launch %i" in dropin
    assert "RuntimeDirectory=" in dropin


@pytest.mark.guest
@pytest.mark.skipif(missing_for_probe_guest() is not None, reason=missing_for_probe_guest() or "")
@pytest.mark.parametrize("release", RELEASES, ids=release_id)
def test_example_end_to_end(request: pytest.FixtureRequest, release: Release) -> None:
    from guest.parallel import probe_guest, side_by_side

    side_by_side(request, release, lambda r, tmp: example_end_to_end(probe_guest(r), tmp))


def example_end_to_end(image: GuestImage, tmpfs_dir: Path) -> None:
    from guest.qemu import kernel_cmdline, parse_probe_output, probe_cmdline

    # The example, with host paths moved into a private tmpfs dir (nothing else changes).
    data = tomllib.loads((EXAMPLE / "credbridge.toml").read_text())
    data["store"]["path"] = str(tmpfs_dir / "store")
    data["sinks"]["credstore"]["directory"] = str(tmpfs_dir / "credstore")
    launcher = data["targets"]["test-vm"]["launcher"]
    record = tmpfs_dir / "record.jsonl"
    launcher.update(
        binary=str(write_standin(tmpfs_dir, mode="boot", record=record)),
        kernel=str(image.kernel),
        initramfs=str(image.initramfs),
        cmdline=kernel_cmdline(probe_cmdline(list(GUEST_NAMES))),
        memory="512M",
        cpus=1,
        runtime_dir=str(tmpfs_dir / "run"),
    )
    config = tmpfs_dir / "credbridge.toml"
    config.write_text(dump_toml(data))

    # Host: generate + persist + deliver to the credstore.
    result = credbridge("-c", str(config), "deliver", UNIT)
    assert result.returncode == 0, result.stderr.decode()
    delivered: dict[str, bytes] = {}
    for name in HOST_NAMES:
        path = tmpfs_dir / "credstore" / UNIT / name
        assert (path.stat().st_mode & 0o777) == 0o400
        delivered[name] = path.read_bytes()
        # Like `openssl rand -base64 32`.
        assert len(base64.b64decode(delivered[name], validate=True)) == 32
        short = name.removeprefix("host-")
        assert (tmpfs_dir / "store" / "test-vm" / short / "current").read_bytes() == delivered[name]
    assert len(set(delivered.values())) == 3
    unit = credbridge("-c", str(config), "unit", UNIT)
    assert f"LoadCredential=host-api-key:{tmpfs_dir}/credstore/{UNIT}/host-api-key" in (
        unit.stdout.decode()
    )

    # The unit, as systemd runs it: LoadCredential= copies into $CREDENTIALS_DIRECTORY.
    creds = tmpfs_dir / "credentials" / UNIT
    creds.mkdir(parents=True, mode=0o700)
    for name, value in delivered.items():
        (creds / name).write_bytes(value)
        (creds / name).chmod(0o400)
    creds.chmod(0o500)
    result = credbridge(
        "-c", str(config), "launch", "test-vm",
        env={"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": str(tmpfs_dir / "rt")},
        timeout=900,
    )  # fmt: skip
    console = result.stdout.decode("utf-8", "replace")
    report = parse_probe_output(console)
    describe = f"rc={result.returncode}\n{result.stderr.decode()[-3000:]}\n{console[-5000:]}"
    assert result.returncode == 0, describe
    assert report.done, describe
    assert report.values == {g: delivered[h] for g, h in GUEST_NAMES.items()}, describe
    assert set(GUEST_NAMES) <= report.listed, describe
    calls = [(r["method"], r["path"], r["status"]) for r in read_records(record)]
    assert ("PUT", "/api/v1/vm.create", 204) in calls
    assert ("PUT", "/api/v1/vm.boot", 204) in calls
    for value in delivered.values():
        assert value not in result.stderr
    assert not (tmpfs_dir / "run").exists()
