"""hvac and requests are imported only when a ``vault:`` reference is resolved."""

from __future__ import annotations

import os
from pathlib import Path

from support.imports import cli_imports

HEAVY = ("hvac", "requests", "urllib3")


def probe(*args: str, cwd: Path) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    return cli_imports(args, env=env, cwd=cwd).which(HEAVY)


def test_plugins_and_generate_only_delivery_do_not_import_hvac(
    tmp_path: Path, tmpfs_dir: Path
) -> None:
    config = tmp_path / "credbridge.toml"
    config.write_text(
        f"""
[store]
path = "{tmp_path / "store"}"

[sinks.credstore]
directory = "{tmpfs_dir}"

[sources.vault]
address = "http://127.0.0.1:1"

[targets.app]
credentials = {{ key = "generate:base64", pw = "generate:password?length=20" }}
"""
    )
    assert probe("plugins", cwd=tmp_path) == dict.fromkeys(HEAVY, False)
    assert probe("-c", str(config), "deliver", cwd=tmp_path) == dict.fromkeys(HEAVY, False)
    assert sorted(p.name for p in (tmpfs_dir / "app").iterdir()) == ["key", "pw"]
    assert probe("-c", str(config), "check", cwd=tmp_path) == dict.fromkeys(HEAVY, False)


def test_resolving_a_vault_reference_does_import_hvac(tmp_path: Path) -> None:
    """The control: the probe above can see hvac when it is imported."""
    config = tmp_path / "credbridge.toml"
    config.write_text('[sources.vault]\naddress = "http://127.0.0.1:1"\nretries = 0\n')
    assert probe("-c", str(config), "get", "vault:secret/a/b#c", cwd=tmp_path) == dict.fromkeys(
        HEAVY, True
    )
