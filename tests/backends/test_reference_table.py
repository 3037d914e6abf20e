"""Every row of docs/references.md "What you would type elsewhere" (Vault/OpenBao and AWS),
run: the left column with the reference tool, the right column through credbridge.

``vault`` commands run as ``bao`` against a real OpenBao dev server; ``aws`` commands as the
botocore call the AWS CLI makes, against a moto server; ECS ``valueFrom`` ARNs and CloudFormation
``{{resolve:...}}`` forms as the AWS API call their documentation describes. ``| jq -r PATH``
is applied to the JSON the command printed. Each server is this module's own, seeded with the
names the table uses.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from credbridge.core import BadReference, Secret, SourceError, parse_reference
from support.aws_setup import clean_aws_env
from support.aws_setup import resolve as aws_resolve
from support.moto import MotoServer
from support.openbao import DevServer, bao_binary
from support.reference_table import CODE, references, table_rows
from support.sessions import resolve_text as vault_resolve
from support.vault_setup import token_file, vault_config

__all__ = ["clean_aws_env"]  # the autouse fixture, imported so pytest applies it here

def jq(document: Any, path: str) -> bytes:
    """``jq -r .a.b``: a string raw, anything else as JSON (compact, as credbridge delivers)."""
    for key in path.strip(".").split("."):
        document = document[key]
    if isinstance(document, str):
        return document.encode()
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def outcome_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode()
    return value


# --------------------------------------------------------------------------- Vault / OpenBao

VAULT_ROWS = table_rows("Vault and OpenBao")


@pytest.fixture(scope="module")
def seeded_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer().start()
    work = tmp_path_factory.mktemp("bao-seed")
    try:
        versions = [
            {"password": "doc-pw-1", "user": "app", "port": 5432, "db": {"host": "db-1.internal"}},
            {"password": "doc-pw-2", "user": "app", "port": 5432, "db": {"host": "db-2.internal"}},
        ]
        for number, document in enumerate(versions):
            path = work / f"v{number}.json"
            path.write_text(json.dumps(document))
            server.bao("kv", "put", "secret/app", f"@{path}")
        server.bao("kv", "put", "secret/app/api", "token=doc-token")
        server.bao("secrets", "enable", "-path=kv1", "-version=1", "kv")
        server.bao("kv", "put", "kv1/app", "password=doc-kv1")
        server.bao("secrets", "enable", "-path=team/kv", "-version=2", "kv")
        server.bao("kv", "put", "-mount=team/kv", "app", "password=doc-team")
        server.bao("namespace", "create", "team1")
        server.bao("secrets", "enable", "-namespace=team1", "-path=secret", "-version=2", "kv")
        server.bao("kv", "put", "-namespace=team1", "secret/app", "password=doc-ns")
        yield server
    finally:
        server.stop()


def bao_prints(server: DevServer, command: str) -> bytes:
    """What the ``vault`` command of a row prints, run as ``bao`` (with ``| jq -r`` applied)."""
    command, _, jq_part = command.partition(" | jq -r ")
    argv = shlex.split(command)
    assert argv[0] == "vault", command
    printed = subprocess.run(
        [bao_binary(), *argv[1:]], env=server.env(), capture_output=True, check=True, timeout=60
    ).stdout
    return jq(json.loads(printed), jq_part) if jq_part else printed


def vault_expected(server: DevServer, left: str) -> bytes | None:
    """The value the row's left column names; None for a form credbridge refuses."""
    code = CODE.findall(left)[0]
    if code.startswith("vault "):
        return bao_prints(server, code)
    if code.startswith("vault:"):
        return None
    # A template's or the CSI driver's KV v2 API path and key: what `vault read` gives.
    api_path = re.search(r"secret/data/app", code)
    key = re.search(r"\.Data\.data\.(\w+)|secretKey: \"(\w+)\"", left)
    assert api_path and key, left
    read = bao_prints(server, "vault read -format=json secret/data/app")
    return jq(json.loads(read), f".data.data.{key.group(1) or key.group(2)}")


def test_the_vault_table_has_its_rows() -> None:
    assert len(VAULT_ROWS) >= 12
    assert all(references(right) for _, right in VAULT_ROWS)


@pytest.mark.vault
@pytest.mark.parametrize(("left", "right"), VAULT_ROWS, ids=[r[0][:60] for r in VAULT_ROWS])
def test_vault_row(seeded_bao: DevServer, tmp_path: Path, left: str, right: str) -> None:
    expected = vault_expected(seeded_bao, left)
    if expected is None:  # a URL: refused, with the reference of the right column as the hint
        with pytest.raises(BadReference) as info:
            parse_reference(CODE.findall(left)[0])
        assert f"write {references(right)[0]}" in info.value.problem
        return
    config = vault_config(
        seeded_bao.address, auth={"token_file": token_file(tmp_path, seeded_bao.token)}
    )
    refs = references(right)
    got = vault_resolve(config, *refs)
    for ref in refs:
        assert outcome_bytes(got[ref]) == expected, (left, ref)


# --------------------------------------------------------------------------- AWS

AWS_ROWS = table_rows("AWS Secrets Manager and Parameter Store")
FIRST_VERSION = "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"
_FLAGS = {
    "--secret-id": "SecretId",
    "--version-stage": "VersionStage",
    "--version-id": "VersionId",
    "--name": "Name",
}


@pytest.fixture(scope="module")
def seeded_moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        sm, ssm = server.client("secretsmanager"), server.client("ssm")
        sm.create_secret(
            Name="prod/db",
            SecretString=json.dumps({"password": "doc-sm-1", "user": "app"}),
            ClientRequestToken=FIRST_VERSION,
        )
        sm.put_secret_value(
            SecretId="prod/db", SecretString=json.dumps({"password": "doc-sm-2", "user": "app"})
        )
        name = "/app/prod/db-password"
        ssm.put_parameter(Name=name, Value="doc-ssm-1", Type="SecureString")
        ssm.put_parameter(Name=name, Value="doc-ssm-2", Type="SecureString", Overwrite=True)
        ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["stable"])
        ssm.put_parameter(Name="toplevel", Value="doc-top", Type="SecureString")
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_env(seeded_moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for name, value in seeded_moto.env().items():
        monkeypatch.setenv(name, value)
    return seeded_moto


def aws_cli_prints(server: MotoServer, command: str) -> bytes:
    """The value an ``aws ... --query Q --output text`` command prints (without the newline
    ``--output text`` adds), through the botocore call the CLI makes."""
    command, _, jq_part = command.partition(" | jq -r ")
    argv = shlex.split(command)
    assert argv[0] == "aws", command
    service, operation, flags = argv[1], argv[2], argv[3:]
    arguments: dict[str, Any] = {}
    query = ""
    while flags:
        flag = flags.pop(0)
        if flag == "--with-decryption":
            arguments["WithDecryption"] = True
        elif flag == "--query":
            query = flags.pop(0)
        elif flag == "--output":
            assert flags.pop(0) == "text"
        else:
            arguments[_FLAGS[flag]] = flags.pop(0)
    answer = getattr(server.client(service), operation.replace("-", "_"))(**arguments)
    value = jq(answer, query)
    return jq(json.loads(value), jq_part) if jq_part else value


def pasted_means(server: MotoServer, pasted: str) -> bytes:
    """What AWS documents for an ECS ``valueFrom`` or a CloudFormation dynamic reference."""
    sm, ssm = server.client("secretsmanager"), server.client("ssm")

    def secret(secret_id: str, key: str, stage: str, version_id: str) -> bytes:
        call = {"SecretId": secret_id}
        if stage:
            call["VersionStage"] = stage
        if version_id:
            call["VersionId"] = version_id
        value = sm.get_secret_value(**call)["SecretString"]
        return jq(json.loads(value), key) if key else value.encode()

    def parameter(name: str) -> bytes:
        return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"].encode()

    cloudformation = re.fullmatch(r"\{\{resolve:([a-z-]+):(.*)\}\}", pasted)
    if cloudformation:
        service, body = cloudformation.groups()
        if service in {"ssm", "ssm-secure"}:
            return parameter(body)
        secret_id, *rest = body.split(":")
        _secret_string, key, stage, version_id = [*rest, "", "", "", ""][:4]
        return secret(secret_id, key, stage, version_id)
    if ":secretsmanager:" in pasted:
        head, _, tail = pasted.partition(":secret:")
        name, *rest = tail.split(":")
        key, stage, version_id = [*rest, "", "", ""][:3]
        return secret(f"{head}:secret:{name}", key, stage, version_id)
    return parameter(pasted)


def aws_expected(server: MotoServer, left: str) -> tuple[bytes, str | None]:
    """The value of the row's left column, and the pasted form (when it is one)."""
    code = CODE.findall(left)[0]
    if code.startswith("aws "):
        return aws_cli_prints(server, code), None
    value_from = re.fullmatch(r'"valueFrom": "(.*)"', code)
    pasted = value_from.group(1) if value_from else code
    return pasted_means(server, pasted), pasted


def test_the_aws_table_has_its_rows() -> None:
    assert len(AWS_ROWS) >= 18
    assert all(references(right) for _, right in AWS_ROWS)


@pytest.mark.aws
@pytest.mark.parametrize(("left", "right"), AWS_ROWS, ids=[r[0][:70] for r in AWS_ROWS])
def test_aws_row(moto_env: MotoServer, left: str, right: str) -> None:
    expected, pasted = aws_expected(moto_env, left)
    refs = references(right)
    if pasted is not None:
        refs.append(pasted)  # credbridge takes the pasted form as it is, too
    got = aws_resolve({}, *refs)
    for ref, value in zip(refs, got, strict=True):
        assert not isinstance(value, SourceError), (ref, value)
        assert not isinstance(value, Secret)
        assert value == expected, (left, ref)
