"""docs/nixos.md's option reference is generated from nix/module.nix and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.nixeval import NIXPKGS_LIB, REPO, nix_ready

__all__ = ["nix_ready"]  # the autouse fixture, imported so pytest applies it here

SCRIPT = REPO / "nix" / "options_doc.py"
PAGE = REPO / "docs" / "nixos.md"


def check(page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--lib", str(NIXPKGS_LIB), "--check", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_option_reference_matches_the_module() -> None:
    result = check(PAGE)
    assert result.returncode == 0, result.stderr


def test_drift_is_detected(tmp_path: Path) -> None:
    page = tmp_path / "nixos.md"
    text = PAGE.read_text()
    assert "### `services.credbridge.vms.<name>.sink`" in text
    page.write_text(text.replace("### `services.credbridge.vms.<name>.sink`", "### `old.name`"))
    result = check(page)
    assert result.returncode == 1
    assert "run: python3 nix/options_doc.py --write" in result.stderr


def test_every_option_is_documented() -> None:
    """Each option the module declares has a heading (names from the module's own file)."""
    text = PAGE.read_text()
    module = (REPO / "nix" / "module.nix").read_text()
    for option in ("enable", "package", "settings", "units", "vms", "schemes"):
        assert f"    {option} = " in module or f"    {option} = lib." in module
        assert f"### `services.credbridge.{option}`" in text


def test_migration_section_is_reserved() -> None:
    assert "## Migrating from clan vars" in PAGE.read_text()
