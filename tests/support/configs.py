"""Config files several test modules write the same way."""

from __future__ import annotations

from pathlib import Path


def app_service_config(tmp_path: Path, credstore: Path, credential: str) -> Path:
    """``tmp_path/credbridge.toml``: the store in ``tmp_path/store``, the credstore sink in
    ``credstore``, and ``app.service`` with a generated ``api-key`` and ``credential`` (one
    more ``NAME = "REFERENCE"`` line)."""
    path = tmp_path / "credbridge.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n'
        f'[sinks.credstore]\ndirectory = "{credstore}"\n'
        '[targets."app.service".credentials]\n'
        'api-key = "generate:base64?bytes=32"\n' + credential + "\n"
    )
    return path
