"""Every documented limit at its exact boundary: the last value accepted, the first refused.

systemd's (src/shared/creds-util.h, the same from 250 to 258): ``CREDENTIAL_SIZE_MAX`` 1 MiB
per credential, ``CREDENTIALS_TOTAL_SIZE_MAX`` 1 MiB per unit where each credential counts
its name's length plus its size. tests/backends/test_host_credentials.py checks the unit side of both
under the real systemd 252. The SMBIOS budget (``max_bytes``), fw_cfg's 56-byte item names
(28 characters after credbridge's prefix) and virtiofs' 36-byte tag are the channels' own.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends.fw_cfg import fw_cfg_channel
from credbridge.core.errors import ConfigError, DeliveryError
from support.vm_sinks import deliveries, vm_sink

MiB = 1 << 20


def runtime(base: Path, name: str) -> Path:
    path = base / name
    path.mkdir(mode=0o700)
    return path


# --------------------------------------------------------------------------- VM channels


def test_a_vm_credential_of_exactly_1_mib_is_accepted_and_one_byte_more_refused(
    tmpfs_dir: Path,
) -> None:
    sink = vm_sink("virtiofs")
    channel = sink.prepare(deliveries(big=b"v" * MiB), runtime(tmpfs_dir, "ok"))
    (share,) = channel.virtiofs
    assert (share.directory / "big").stat().st_size == MiB
    with pytest.raises(DeliveryError) as error:
        sink.prepare(deliveries(big=b"v" * (MiB + 1)), runtime(tmpfs_dir, "bad"))
    assert str(error.value) == (
        "credential 'big': 1048577 bytes is over systemd's limit of 1048576 bytes (1 MiB) "
        "per credential"
    )


def test_fw_cfg_total_of_exactly_1_mib_is_accepted_and_one_byte_more_refused(
    tmpfs_dir: Path,
) -> None:
    half = MiB // 2
    fw_cfg_channel(deliveries(a=b"a" * half, b=b"b" * half), runtime(tmpfs_dir, "ok"))
    with pytest.raises(DeliveryError) as error:
        fw_cfg_channel(deliveries(a=b"a" * half, b=b"b" * (half + 1)), runtime(tmpfs_dir, "no"))
    assert "credential 'b'" in str(error.value)
    assert "1048577" in str(error.value)


def oem_string_bytes(name: str, value: bytes) -> int:
    """What one credential takes of the SMBIOS budget: the string and its NUL."""
    return len(f"io.systemd.credential.binary:{name}=".encode() + base64.b64encode(value)) + 1


def test_oem_strings_of_exactly_max_bytes_are_accepted_and_one_byte_more_refused(
    tmpfs_dir: Path,
) -> None:
    values = {"first": b"\x00" * 3000, "second": b"\xff" * 1000}
    exact = sum(oem_string_bytes(name, value) for name, value in values.items())
    channel = vm_sink("oem-strings", {"max_bytes": exact}).prepare(deliveries(**values), tmpfs_dir)
    assert sum(len(s) + 1 for s in channel.oem_strings) == exact
    with pytest.raises(DeliveryError) as error:
        vm_sink("oem-strings", {"max_bytes": exact - 1}).prepare(deliveries(**values), tmpfs_dir)
    assert str(error.value).startswith(
        f"credential 'second': the OEM strings would reach {exact} bytes, over the SMBIOS "
        f"budget of {exact - 1} bytes"
    )


def test_the_default_smbios_budget_is_48_kib(tmpfs_dir: Path) -> None:
    sink = vm_sink("oem-strings")
    first = b"\x01" * 30000
    # base64 grows in steps of 4: pad the second name until the rest is a whole number of them
    name = next(
        "l" * n
        for n in range(1, 5)
        if (48 * 1024 - oem_string_bytes("first", first) - oem_string_bytes("l" * n, b"")) % 4 == 0
    )
    room = 48 * 1024 - oem_string_bytes("first", first) - oem_string_bytes(name, b"")
    last = b"\x02" * (room // 4 * 3)
    assert oem_string_bytes("first", first) + oem_string_bytes(name, last) == 48 * 1024
    sink.prepare(deliveries(**{"first": first, name: last}), tmpfs_dir)
    with pytest.raises(DeliveryError, match="over the SMBIOS budget of 49152 bytes"):
        sink.prepare(deliveries(**{"first": first, name: last + b"\x02"}), tmpfs_dir)


@pytest.mark.parametrize("budget", [1, 65535])
def test_max_bytes_from_1_to_65535_is_accepted(budget: int) -> None:
    assert vm_sink("oem-strings", {"max_bytes": budget}).max_bytes == budget  # type: ignore[attr-defined]


@pytest.mark.parametrize("budget", [0, 65536, True, -1, "1000"])
def test_max_bytes_outside_1_to_65535_is_refused(budget: object) -> None:
    with pytest.raises(ConfigError) as error:
        vm_sink("oem-strings", {"max_bytes": budget})
    assert str(error.value).endswith(
        "targets.vm.sink.max_bytes: must be an integer from 1 to 65535"
    )


def test_fw_cfg_names_of_28_characters_are_accepted_and_29_refused(tmpfs_dir: Path) -> None:
    sink = vm_sink("fw-cfg")
    channel = sink.prepare(deliveries(**{"n" * 28: b"v"}), runtime(tmpfs_dir, "ok"))
    assert [item.name for item in channel.fw_cfg] == ["opt/io.systemd.credentials/" + "n" * 28]
    with pytest.raises(DeliveryError) as error:
        sink.prepare(deliveries(**{"n" * 29: b"v"}), runtime(tmpfs_dir, "bad"))
    assert "longer than 28 characters" in str(error.value)


def test_virtiofs_tags_of_36_bytes_are_accepted_and_37_refused(tmpfs_dir: Path) -> None:
    sink = vm_sink("virtiofs", {"tag": "t" * 36})
    (share,) = sink.prepare(deliveries(a=b"v"), runtime(tmpfs_dir, "rt")).virtiofs
    assert share.tag == "t" * 36
    with pytest.raises(ConfigError) as error:
        vm_sink("virtiofs", {"tag": "t" * 37})
    assert "targets.vm.sink.tag" in str(error.value)


# --------------------------------------------------------------------------- credstore


def credstore_config(tmp_path: Path, credstore: Path, files: dict[str, bytes]) -> Path:
    lines = [
        f'[store]\npath = "{tmp_path / "store"}"',
        f'[sinks.credstore]\ndirectory = "{credstore}"',
        '[targets."app.service".credentials]',
    ]
    for name, data in files.items():
        path = tmp_path / f"value-{name}"
        path.write_bytes(data)
        lines.append(f'{name} = "file:{path}"')
    config = tmp_path / "credbridge.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_credstore_unit_total_of_exactly_1_mib_is_delivered(
    tmp_path: Path, tmpfs_dir: Path, cli: Any
) -> None:
    # systemd counts the name: "k" (1 byte) + 1 MiB - 1 bytes is exactly the per-unit limit.
    config = credstore_config(tmp_path, tmpfs_dir, {"k": b"v" * (MiB - 1)})
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 0, result.stderr
    assert (tmpfs_dir / "app.service" / "k").stat().st_size == MiB - 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"k": b"v" * MiB},
            "app.service: its 1 credentials take 1048577 bytes (names included), over "
            "systemd's limit of 1048576 bytes (1 MiB) per unit; the largest is 'k' "
            "(1048576 bytes)",
        ),
        (
            {"big": b"v" * (MiB + 1)},
            "app.service: credential 'big': 1048577 bytes is over systemd's limit of 1048576 "
            "bytes (1 MiB) per credential",
        ),
        (
            # Each fits; together (with their names) they are one byte over.
            {"a": b"a" * (MiB // 2 - 1), "bb": b"b" * (MiB // 2 - 1)},
            "app.service: its 2 credentials take 1048577 bytes (names included), over "
            "systemd's limit of 1048576 bytes (1 MiB) per unit; the largest is 'bb' "
            "(524287 bytes)",
        ),
    ],
    ids=["total-one-byte-over", "credential-one-byte-over", "two-credentials-over"],
)
def test_credstore_refuses_what_systemd_would_refuse_before_writing(
    tmp_path: Path, tmpfs_dir: Path, cli: Any, files: dict[str, bytes], message: str
) -> None:
    credstore = tmpfs_dir / "credstore"
    config = credstore_config(tmp_path, credstore, files)
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 9, result.stderr
    assert result.stderr.decode().splitlines() == [f"credbridge: error: {message}"]
    # Nothing written: no target directory, no staging directory.
    assert sorted(os.listdir(credstore)) == [".credbridge.lock"]
    dry = cli("-c", str(config), "deliver", "--dry-run")
    assert dry.returncode == 9
    assert dry.stderr.decode().splitlines() == [f"credbridge: error: {message}"]


@pytest.mark.parametrize(
    ("kind", "size"),
    [("bytes?bytes=65536", 65536), ("hex?bytes=32768", 65536), ("base64?bytes=49152", 65536)],
    ids=["bytes", "hex", "base64"],
)
def test_generated_values_over_the_unit_limit_are_refused_before_they_exist(
    tmp_path: Path, tmpfs_dir: Path, cli: Any, kind: str, size: int
) -> None:
    """20 generated credentials of 64 KiB: over systemd's 1 MiB per unit. check refuses them
    as deliver does, and deliver refuses them before generating (and persisting) any: the
    store stays empty, so later runs are not handed 1.3 MB of values nobody can use."""
    store = tmp_path / "store"
    names = [f"c{index:02}" for index in range(20)]
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f'[store]\npath = "{store}"\n[sinks.credstore]\ndirectory = "{tmpfs_dir}"\n'
        '[targets."app.service".credentials]\n'
        + "".join(f'{name} = "generate:{kind}"\n' for name in names)
    )
    total = sum(len(name) + size for name in names)
    message = (
        f"app.service: its 20 credentials take {total} bytes (names included), over systemd's "
        "limit of 1048576 bytes (1 MiB) per unit; the largest is 'c19' (65536 bytes)"
    )
    check = cli("-c", str(config), "check")
    assert check.returncode == 9, check.stdout.decode()
    assert check.stdout.decode().splitlines()[-1] == f"FAIL\tapp.service\tsink credstore\t{message}"
    result = cli("-c", str(config), "deliver")
    assert result.returncode == 9, result.stderr
    assert result.stderr.decode().splitlines() == [f"credbridge: error: {message}"]
    assert list(store.rglob("current")) == []  # the file store keeps a value as KEY/current
    assert not (tmpfs_dir / "app.service").exists()
