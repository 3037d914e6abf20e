"""AWS set-up shared by the tests of ``aws-sm:``, ``aws-ssm:`` and ``aws-sts:``: an environment
without the developer's AWS setup, the variables a user sets to point the SDKs at moto, and
configs for both AWS sources.

``clean_aws_env`` is an autouse fixture: a test module that imports it (and names it in its
``__all__``) runs every test without the developer's AWS environment; ``aws`` needs it there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import Request, Secret, Session, parse_config, parse_reference

from support.moto import MotoServer


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing of the developer's AWS setup (env, ~/.aws, instance metadata) is used."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # the other clean_*_env fixtures make it too
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The environment a user sets to point the SDKs at moto."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


def resolve(config: Mapping[str, Any] | None, *refs: str, session: Session | None = None) -> Any:
    """Resolve through a real Session; values as bytes, failures as the SourceError."""
    requests = [Request(parse_reference(r)) for r in refs]
    own = session is None
    session = session or Session(parse_config(dict(config or {})))
    try:
        for request in requests:
            session.check_reference(request.reference)
        outcomes = session.resolve(requests)
    finally:
        if own:
            session.close()
    out = []
    for request in requests:
        value = outcomes[request]
        out.append(value.reveal() if isinstance(value, Secret) else value)
    return out


def sources(**table: Any) -> dict[str, Any]:
    """The same settings for both AWS sources (tests keep retries short)."""
    table = {"max_attempts": 2, "connect_timeout": 2, "read_timeout": 10, **table}
    return {"sources": {"aws-sm": dict(table), "aws-ssm": dict(table)}}


def toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for the configs below (strings, numbers, nested tables)."""
    lines, tables = [], []
    for key, value in data.items():
        name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
        if isinstance(value, Mapping):
            tables.append(toml(value, name))
        else:
            lines.append(f"{json.dumps(key)} = {json.dumps(value)}")
    head = [f"[{prefix}]"] if prefix and lines else []
    return "\n".join([*head, *lines, *tables]) + "\n"


def config_file(tmp_path: Path, data: Mapping[str, Any]) -> Path:
    path = tmp_path / "credbridge.toml"
    path.write_text(toml(data))
    return path


def aws_config(url: str, concurrency: int) -> dict[str, Any]:
    table = {"endpoint_url": url, "max_attempts": 1, "connect_timeout": 2, "read_timeout": 10}
    return {"credbridge": {"concurrency": concurrency}, "sources": {"aws-sm": table}}
