"""A clan directory with vars, made the way clan-core's CLI makes one.

Everything here follows clan-core's sources (repository clan-lol/clan-core), read at:

- ``pkgs/clan-cli/clan_cli/secrets/sops.py`` @ 012154e257d2c0bda8303f93e78e0ea65d70c31b:
  ``sops_run`` encrypts with ``sops --config MANIFEST encrypt --in-place TMPFILE``, where the
  plaintext is an extension-less temporary file in ``/dev/shm`` (a sops *binary* file) and
  ``MANIFEST`` is ``{"creation_rules": [{"key_groups": [{"age": [...], "pgp": [...]}]}]}``
  (JSON, indent 2) with the recipients sorted; every ``SOPS_*`` variable but
  ``SOPS_GPG_EXEC``, ``SOPS_AGE_KEY`` and ``SOPS_AGE_KEY_FILE`` is removed from sops's
  environment; the result is copied next to the var and renamed to ``secret``. ``write_key``
  writes ``key.json`` as ``{"publickey": ..., "type": "age"}`` (indent 2).
- ``pkgs/clan-cli/clan_cli/secrets/secrets.py`` @ 62ccd0ed4b9ae40e8d803d0df012558acd877e58:
  ``encrypt_secret`` links the members beside the var (``machines/NAME``, ``users/NAME``,
  relative symlinks to ``sops/machines/NAME`` and ``sops/users/NAME``; ``allow_member``), adds
  the admin running clan as a user, and encrypts to every linked key
  (``collect_keys_for_path``).
- ``pkgs/clan-cli/clan_lib/vars/_types.py`` @ 1cef0e0978c516152557b20a15b5869c64788d4d:
  ``vars/per-machine/MACHINE/GENERATOR/FILE`` and ``vars/shared/GENERATOR/FILE``.
- ``pkgs/clan-cli/clan_lib/vars/secret_modules/sops.py`` @ 9522a9ccb1bf043f4bee1cf6226247a3250e321e:
  the machine's own age key is generated once (``age-keygen``), kept encrypted to the admins in
  ``sops/secrets/MACHINE-age.key/secret`` and its public key in ``sops/machines/MACHINE/key.json``;
  a var is encrypted to the machine only if it is deployed; ``populate_dir``/``upload`` write
  the decrypted machine key as ``key.txt`` into ``/var/lib/sops-nix`` on the machine.
- ``pkgs/clan-cli/clan_lib/vars/public_modules/in_repo.py`` @ e248897b00d421af41aa96fc1b767f8e7db2aa4c:
  a public var is ``.../FILE/value`` in clear.
- ``pkgs/clan-cli/clan_lib/vars/generator.py`` @ d48176e174fff055c68d827c0fbd77ca4c842995:
  the stored value is ``$out/FILE``'s bytes, unchanged.
- ``pkgs/clan-cli/clan_lib/vars/secret_modules/age.py`` @ 3e95ac64d8446e27130b9e0410e878f5a9dc4b85
  (the ``age`` secret store, ``clan.core.vars.settings.secretStore = "age"``): a secret var is
  ``secrets/clan-vars/REL_DIR/FILE/FILE.age``, written by ``age --armor -r R... -o FILE.age``
  with the value on stdin, to the machine's key when deployed (``secrets/age-keys/machines/
  MACHINE/pub``, the private half in ``key.age`` encrypted the same way to the user
  recipients), else to the user recipients; shared and undeployed vars get the sorted
  recipients in a ``FILE.age.recipients`` sidecar. ``populate_dir`` uploads the decrypted
  machine key as ``key.txt`` (``clan.core.vars.age.secretLocation``, ``/etc/secret-vars``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credbridge.backends import sops_cli

from support.age_sops import AgeKey, make_key

KEEP_SOPS_VARIABLES = {"SOPS_GPG_EXEC", "SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE"}


def run_sops(args: list[str], *, env: dict[str, str], stdin: bytes = b"") -> bytes:
    binary = sops_cli.locate_binary(None)
    result = subprocess.run(
        [binary.path, "--disable-version-check", *args],
        input=stdin,
        capture_output=True,
        env=env,
        pass_fds=binary.pass_fds,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@dataclass
class ClanFlake:
    """A clan directory: ``sops/`` (keys) and ``vars/`` (values), written like clan does."""

    root: Path
    keygen: str
    admin: AgeKey
    """The admin running clan (``SOPS_AGE_KEY_FILE``), a user ``admin`` of the clan."""
    keys: Path
    machines: dict[str, str] = field(default_factory=dict)
    """Machine name -> public key."""
    age_machines: dict[str, str] = field(default_factory=dict)
    """Machine name -> public key of its age-store key (``secrets/age-keys/machines``)."""

    @classmethod
    def create(cls, root: Path, keygen: str, keys: Path) -> ClanFlake:
        """A flake at ``root`` with its admin's key; the private keys go into ``keys`` (0700)."""
        keys.mkdir(mode=0o700, exist_ok=True)
        admin = make_key(keygen, keys, "admin")
        flake = cls(root, keygen, admin, keys)
        flake._write_key(root / "sops" / "users" / "admin", admin.recipient)
        return flake

    # ------------------------------------------------------------------ clan's steps

    def _write_key(self, folder: Path, public: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "key.json").open("x") as handle:
            json.dump({"publickey": public, "type": "age"}, handle, indent=2)

    def _allow(self, secret_dir: Path, kind: str, name: str) -> None:
        """``allow_member``: a relative symlink SECRET/KIND/NAME -> sops/KIND/NAME."""
        source = self.root / "sops" / kind / name
        assert source.is_dir(), source
        folder = secret_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(os.path.relpath(source, folder))

    def _recipients(self, secret_dir: Path) -> list[str]:
        """``collect_keys_for_path``: the keys of every member linked beside the secret."""
        keys = set()
        for kind in ("machines", "users"):
            folder = secret_dir / kind
            if folder.is_dir():
                for link in folder.iterdir():
                    data = json.loads((link.resolve() / "key.json").read_text())
                    entries = data if isinstance(data, list) else [data]
                    keys.update(e["publickey"] for e in entries)
        return sorted(keys)

    def _encrypt(self, secret_dir: Path, value: bytes) -> Path:
        """``encrypt_file``: manifest + ``sops encrypt --in-place`` on a /dev/shm temp file."""
        recipients = self._recipients(secret_dir)
        env = {
            name: v
            for name, v in os.environ.items()
            if not name.startswith("SOPS_") or name in KEEP_SOPS_VARIABLES
        }
        env["SOPS_AGE_KEY_FILE"] = str(self.admin.path)
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        with tempfile.NamedTemporaryFile("w", delete=False) as manifest:
            rules = {"creation_rules": [{"key_groups": [{"age": recipients, "pgp": []}]}]}
            json.dump(rules, manifest, indent=2)
        source = tempfile.NamedTemporaryFile(dir=shm, delete=False)  # noqa: SIM115
        try:
            with source:
                source.write(value)
            run_sops(["--config", manifest.name, "encrypt", "--in-place", source.name], env=env)
            with tempfile.NamedTemporaryFile(dir=secret_dir, delete=False) as dest:
                shutil.copyfile(source.name, dest.name)
                Path(dest.name).rename(secret_dir / "secret")
        finally:
            os.unlink(source.name)
            os.unlink(manifest.name)
        return secret_dir / "secret"

    def add_machine(self, name: str) -> AgeKey:
        """``ensure_machine_key``: a key pair, the private half kept encrypted to the admins.

        Returns the key as clan installs it on the machine (``/var/lib/sops-nix/key.txt``):
        decrypted from the repository with the admin's key, as ``populate_dir`` does.
        """
        generated = make_key(self.keygen, self.keys, f"generated-{name}")
        private = next(
            line for line in generated.path.read_text().splitlines() if not line.startswith("#")
        )
        generated.path.unlink()
        secret_dir = self.root / "sops" / "secrets" / f"{name}-age.key"
        secret_dir.mkdir(parents=True)
        self._allow(secret_dir, "users", "admin")
        self._encrypt(secret_dir, private.encode())
        self._write_key(self.root / "sops" / "machines" / name, generated.recipient)
        self.machines[name] = generated.recipient
        installed = self.keys / f"{name}-key.txt"
        installed.write_bytes(self.decrypt(secret_dir / "secret"))
        installed.chmod(0o600)
        return AgeKey(installed, generated.recipient)

    def set_var(
        self,
        generator: str,
        file: str,
        value: bytes,
        *,
        machine: str | None = None,
        shared_with: tuple[str, ...] = (),
        deploy: bool = True,
        placement: tuple[str, ...] | None = None,
    ) -> Path:
        """A secret var as the sops store's ``_set`` writes it; returns its ``secret`` file.

        ``placement`` is the directory under ``vars/`` of a placement that is neither a
        machine's nor ``shared`` (an export's); its members are ``shared_with``."""
        if machine is not None:
            folder = self.root / "vars" / "per-machine" / machine / generator / file
            members = (machine,) if deploy else ()
        else:
            folder = self.root.joinpath("vars", *(placement or ("shared",)), generator, file)
            members = shared_with if deploy else ()
        folder.mkdir(parents=True)
        for member in members:
            self._allow(folder, "machines", member)
        self._allow(folder, "users", "admin")
        return self._encrypt(folder, value)

    # ------------------------------------------------------------------ clan's age store

    def _age_encrypt(self, value: bytes, recipients: list[str], output: Path) -> None:
        """``_run_age_encrypt``: ``age --armor -r R... -o OUTPUT``, the value on stdin."""
        command = ["age", "--armor"]
        for recipient in recipients:
            command += ["-r", recipient]
        subprocess.run([*command, "-o", str(output)], input=value, check=True, capture_output=True)

    def add_age_machine(self, name: str) -> AgeKey:
        """``ensure_machine_key`` of the age store; returns the key as ``populate_dir``
        uploads it (``key.txt``), decrypted from the repository with the admin's key."""
        generated = subprocess.run([self.keygen], check=True, capture_output=True).stdout
        public = next(
            line.split(":", 1)[1].strip()
            for line in generated.decode().splitlines()
            if line.startswith("# public key:")
        )
        folder = self.root / "secrets" / "age-keys" / "machines" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pub").write_text(public)
        self._age_encrypt(generated, [self.admin.recipient], folder / "key.age")
        (folder / "key.age.recipients").write_text(self.admin.recipient + "\n")
        installed = self.keys / f"{name}-age-store-key.txt"
        installed.write_bytes(self.age_decrypt(folder / "key.age"))
        installed.chmod(0o600)
        self.age_machines[name] = public
        return AgeKey(installed, public)

    def set_age_var(
        self,
        generator: str,
        file: str,
        value: bytes,
        *,
        machine: str | None = None,
        shared_with: tuple[str, ...] = (),
        deploy: bool = True,
        placement: tuple[str, ...] | None = None,
    ) -> Path:
        """A secret var as the age store's ``_set`` writes it; returns its ``FILE.age``.

        ``placement`` is the placement's directory under ``secrets/clan-vars/`` when it is
        neither a machine's nor ``shared`` (an export's); its recipients are the machines of
        ``shared_with``."""
        if placement is None:
            placement = ("per-machine", machine) if machine is not None else ("shared",)
        members = (machine,) if machine is not None else shared_with
        if deploy:
            recipients = sorted(self.age_machines[m] for m in members)
        else:
            recipients = [self.admin.recipient]
        folder = self.root.joinpath("secrets", "clan-vars", *placement, generator, file)
        folder.mkdir(parents=True, exist_ok=True)
        secret = folder / f"{file}.age"
        self._age_encrypt(value, recipients, secret)
        if machine is None or not deploy:
            (folder / f"{file}.age.recipients").write_text("\n".join(recipients) + "\n")
        return secret

    def age_decrypt(self, secret: Path, key: Path | None = None) -> bytes:
        """What the age store's activation script writes to /run/secrets
        (``age --decrypt -i KEY -o DEST SRC``)."""
        return subprocess.run(
            ["age", "--decrypt", "-i", str(key or self.admin.path), str(secret)],
            check=True,
            capture_output=True,
        ).stdout

    def set_public_var(self, machine: str, generator: str, file: str, value: bytes) -> Path:
        folder = self.root / "vars" / "per-machine" / machine / generator / file
        folder.mkdir(parents=True)
        (folder / "value").write_bytes(value)
        return folder / "value"

    def decrypt(self, secret: Path, key: Path | None = None) -> bytes:
        """What sops-nix writes to /run/secrets (``format = "binary"``)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.keys)}
        env["SOPS_AGE_KEY_FILE"] = str(key or self.admin.path)
        return run_sops(
            ["decrypt", "--input-type", "binary", "--output-type", "binary", str(secret)], env=env
        )

    def decrypt_json(self, path: Path) -> Any:
        """A structured sops file (the sops store), decrypted with the admin's key."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.keys)}
        env["SOPS_AGE_KEY_FILE"] = str(self.admin.path)
        return json.loads(run_sops(["decrypt", "--output-type", "json", str(path)], env=env))
