"""hvac and requests are imported only when a ``vault:`` reference is resolved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("hvac", "requests", "urllib3")

# Runs the real CLI in-process in a child, then reports which heavy modules got imported.
PROBE = """
import json, sys
from credbridge.core.cli import cli
try:
    cli(sys.argv[1:], prog_name="credbridge", standalone_mode=False)
except SystemExit:
    pass
except Exception as error:
    print("error:", type(error).__name__, file=sys.stderr)
print(json.dumps({m: m in sys.modules for m in %r}))
""" % (HEAVY,)


def probe(*args: str, cwd: Path) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    result: dict[str, bool] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


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
