"""``aws-sm:`` and ``aws-ssm:`` compared with what the AWS API returns for the same input.

The reference client is botocore against a moto server (what ``aws secretsmanager
get-secret-value`` and ``aws ssm get-parameter`` call): every value credbridge returns must be
the ``SecretString``/``SecretBinary``/``Value`` the API gives for the same name, version and
stage, or the JSON field of it a selector names (a string as its bytes, anything else as compact
JSON). The references include the forms other AWS tools print: ECS/Batch ``valueFrom`` ARNs and
CloudFormation ``{{resolve:...}}`` dynamic references.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import run_cli, secret_value
from credbridge.core import BadReference, InvalidValue, NotFound, Session, parse_reference
from credbridge.core.errors import ExitCode
from support.aws_setup import aws, clean_aws_env, config_file, resolve, sources
from support.httpproxy import HttpProxy, Reply
from support.moto import MotoServer, moto
from support.servers import unique

pytestmark = pytest.mark.aws

__all__ = ["aws", "clean_aws_env", "moto"]  # fixtures, imported so pytest finds them here

ODD_DOCUMENT: dict[str, Any] = {
    "dotted.key": "dot-value-51c2",
    "a/b": "slash-value-51c2",
    "with space": "space value 51c2",
    "ünïcødé-ключ": "ünïcødé-значение-51c2",
    "": "empty-key-value-51c2",
    "~tilde": "tilde-value-51c2",
    "multi": "line one 51c2\nline two\n\n",
    "number": 5432,
    "float": 0.5,
    "yes": True,
    "no": False,
    "nothing": None,
    "list": [1, "two", None],
    "empty-string": "",
}


def as_delivered(value: Any) -> bytes:
    """A selected JSON value as docs/references.md promises it."""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def field(key: str) -> str:
    """``#`` and a JSON pointer to one top-level key, percent-encoded as a user writes it."""
    return "#" + quote("/" + key.replace("~", "~0").replace("/", "~1"), safe="/~")


def register(document: dict[str, Any]) -> None:
    for value in document.values():
        if isinstance(value, str) and "51c2" in value:
            secret_value(value)


# --------------------------------------------------------------------------- Secrets Manager


def test_every_json_field_is_what_get_secret_value_returns(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    name = unique("odd")
    register(ODD_DOCUMENT)
    sm.create_secret(Name=name, SecretString=json.dumps(ODD_DOCUMENT))
    answer = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])
    refs = {key: f"aws-sm:{name}{field(key)}" for key in answer}
    got = resolve(sources(), *refs.values())
    for (key, _ref), value in zip(refs.items(), got, strict=True):
        assert value == as_delivered(answer[key]), key


def test_versions_stages_and_binary_are_what_the_api_returns(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    name = unique("ver")
    first = sm.create_secret(Name=name, SecretString=secret_value("first line\nsecond 51c2\n"))
    sm.put_secret_value(SecretId=name, SecretString=secret_value("rotated-ünï-51c2"))
    binary = unique("bin")
    sm.create_secret(Name=binary, SecretBinary=b"\x00\xff\n\r raw 51c2")
    jsonbin = unique("jsonbin")
    sm.create_secret(Name=jsonbin, SecretBinary=b'{"a": "from-binary-51c2", "n": 7}')
    secret_value("from-binary-51c2")
    refs_and_calls: list[tuple[str, dict[str, str], str | None]] = [
        (f"aws-sm:{name}", {"SecretId": name}, None),
        (
            f"aws-sm:{name}?version-stage=AWSPREVIOUS",
            {"SecretId": name, "VersionStage": "AWSPREVIOUS"},
            None,
        ),
        (
            f"aws-sm:{name}?version-id={first['VersionId']}",
            {"SecretId": name, "VersionId": first["VersionId"]},
            None,
        ),
        (f"aws-sm:{binary}", {"SecretId": binary}, None),
        # A selector parses the value as JSON, a SecretBinary's bytes as any raw value's.
        (f"aws-sm:{jsonbin}#a", {"SecretId": jsonbin}, "a"),
        (f"aws-sm:{jsonbin}#n", {"SecretId": jsonbin}, "n"),
    ]
    got = resolve(sources(), *(ref for ref, _, _ in refs_and_calls))
    for (ref, call, key), value in zip(refs_and_calls, got, strict=True):
        answer = sm.get_secret_value(**call)
        raw = (
            answer["SecretString"].encode() if "SecretString" in answer else answer["SecretBinary"]
        )
        expected = raw if key is None else as_delivered(json.loads(raw)[key])
        assert value == expected, ref
    not_json = resolve(sources(), f"aws-sm:{binary}#a")[0]
    assert isinstance(not_json, InvalidValue)
    assert "needs a JSON value" in not_json.problem


def test_ecs_and_cloudformation_forms_read_what_the_api_returns(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    name = unique("pasted")
    created = sm.create_secret(
        Name=name, SecretString=json.dumps({"username": "u-51c2", "password": "p1-51c2"})
    )
    rotated = sm.put_secret_value(
        SecretId=name, SecretString=json.dumps({"username": "u-51c2", "password": "p2-51c2"})
    )
    for value in ("u-51c2", "p1-51c2", "p2-51c2"):
        secret_value(value)
    arn = created["ARN"]

    def key_of(key: str, **call: str) -> bytes:
        return as_delivered(
            json.loads(sm.get_secret_value(SecretId=arn, **call)["SecretString"])[key]
        )

    cases = [
        # ECS/Batch valueFrom: ARN:JSON_KEY:VERSION_STAGE:VERSION_ID, trailing parts optional.
        (f"{arn}:password::", key_of("password")),
        (f"{arn}:password:AWSPREVIOUS:", key_of("password", VersionStage="AWSPREVIOUS")),
        (
            f"{arn}:username::{created['VersionId']}",
            key_of("username", VersionId=created["VersionId"]),
        ),
        (f"aws-sm:{arn}:password:AWSCURRENT:", key_of("password", VersionStage="AWSCURRENT")),
        (f"{arn}", sm.get_secret_value(SecretId=arn)["SecretString"].encode()),
        # CloudFormation: secret-id:SecretString:json-key:version-stage:version-id.
        (f"{{{{resolve:secretsmanager:{name}:SecretString:password}}}}", key_of("password")),
        (
            f"{{{{resolve:secretsmanager:{name}:SecretString:password:AWSPREVIOUS}}}}",
            key_of("password", VersionStage="AWSPREVIOUS"),
        ),
        (
            f"{{{{resolve:secretsmanager:{arn}:SecretString:password::{rotated['VersionId']}}}}}",
            key_of("password", VersionId=rotated["VersionId"]),
        ),
        (
            f"{{{{resolve:secretsmanager:{name}}}}}",
            sm.get_secret_value(SecretId=name)["SecretString"].encode(),
        ),
    ]
    got = resolve(sources(), *(ref for ref, _ in cases))
    for (ref, expected), value in zip(cases, got, strict=True):
        assert value == expected, ref


@pytest.mark.parametrize(
    ("pasted", "canonical"),
    [
        (
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db-AbCdEf:password:AWSPREVIOUS:",
            "aws-sm:arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db-AbCdEf"
            "?version-stage=AWSPREVIOUS#password",
        ),
        (
            "aws-sm:arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db:/k::"
            "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE",
            "aws-sm:arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db"
            "?version-id=EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE#/~1k",
        ),
        (
            "{{resolve:secretsmanager:prod/db:SecretString:password:AWSPENDING}}",
            "aws-sm:prod/db?version-stage=AWSPENDING#password",
        ),
        ("{{resolve:secretsmanager:prod/db::password}}", "aws-sm:prod/db#password"),
        ("{{resolve:ssm:/app/db:3}}", "aws-ssm:/app/db:3"),
        ("{{resolve:ssm-secure:/app/db-password:2}}", "aws-ssm:/app/db-password:2"),
        (
            "arn:aws:ssm:eu-west-1:111122223333:parameter/app/shared",
            "aws-ssm:arn:aws:ssm:eu-west-1:111122223333:parameter/app/shared",
        ),
    ],
)
def test_pasted_forms_parse_to_the_credbridge_reference(pasted: str, canonical: str) -> None:
    reference = parse_reference(pasted)
    assert str(reference) == canonical
    assert parse_reference(canonical) == reference
    assert reference.text == pasted


@pytest.mark.parametrize(
    ("pasted", "problem"),
    [
        ("{{resolve:secretsmanager:x:SecretBinary:k}}", "reads only 'SecretString'"),
        ("{{resolve:secretsmanager:x:SecretString:k:S:V:extra}}", "expected {{resolve:"),
        ("{{resolve:ssm:}}", "names no secret"),
        ("aws-sm:arn:aws:secretsmanager:r:1:secret:x:k:s:v:extra", "expected arn:"),
        ("aws-sm:arn:aws:secretsmanager:r:1:secret:x:k::#k", "given both"),
        ("aws-sm:arn:aws:secretsmanager:r:1:secret:x::S:?version-stage=T", "given both"),
    ],
)
def test_malformed_pasted_forms_name_the_problem(pasted: str, problem: str) -> None:
    with pytest.raises(BadReference) as info:
        parse_reference(pasted)
    assert problem in info.value.problem


# --------------------------------------------------------------------------- Parameter Store


def test_top_level_names_with_or_without_slash_are_one_parameter(aws: MotoServer) -> None:
    ssm = aws.client("ssm")
    top = unique("toplevel")
    slashed = unique("noslash")
    ssm.put_parameter(Name=top, Value=secret_value("top-51c2"), Type="SecureString")
    ssm.put_parameter(Name=f"/{slashed}", Value=secret_value("slashed-51c2"), Type="SecureString")
    names = [top, f"/{top}", slashed, f"/{slashed}"]
    expected = [
        ssm.get_parameter(Name=n, WithDecryption=True)["Parameter"]["Value"].encode() for n in names
    ]
    assert expected == [b"top-51c2", b"top-51c2", b"slashed-51c2", b"slashed-51c2"]
    # Together in one GetParameters call, and each alone in its own run.
    assert resolve(sources(), *(f"aws-ssm:{n}" for n in names)) == expected
    for name, value in zip(names, expected, strict=True):
        assert resolve(sources(), f"aws-ssm:{name}") == [value]


def test_parameter_values_are_what_get_parameter_returns(aws: MotoServer) -> None:
    ssm = aws.client("ssm")
    base = f"/{unique('values')}"
    values = {
        "multi": "line one 51c2\nline two\n",
        "unicode": "ünïcødé-значение-51c2",
        "json": json.dumps(ODD_DOCUMENT),
        "list": "a,b,c 51c2",
    }
    register(ODD_DOCUMENT)
    for key, value in values.items():
        secret_value(value)
        kind = "StringList" if key == "list" else "SecureString"
        ssm.put_parameter(Name=f"{base}/{key}", Value=value, Type=kind)
    ssm.put_parameter(Name=f"{base}/multi", Value="v2 51c2", Type="SecureString", Overwrite=True)
    ssm.label_parameter_version(Name=f"{base}/multi", ParameterVersion=1, Labels=["stable"])
    names = [
        f"{base}/multi",
        f"{base}/multi:1",
        f"{base}/multi:stable",
        f"{base}/unicode",
        f"{base}/list",
    ]
    expected = [
        ssm.get_parameter(Name=n, WithDecryption=True)["Parameter"]["Value"].encode() for n in names
    ]
    assert resolve(sources(), *(f"aws-ssm:{n}" for n in names)) == expected
    document = json.loads(
        ssm.get_parameter(Name=f"{base}/json", WithDecryption=True)["Parameter"]["Value"]
    )
    refs = [f"aws-ssm:{base}/json{field(key)}" for key in document]
    got = resolve(sources(), *refs)
    assert got == [as_delivered(value) for value in document.values()]
    cloudformation = [
        f"{{{{resolve:ssm-secure:{base}/multi:1}}}}",
        f"{{{{resolve:ssm:{base}/list}}}}",
    ]
    assert resolve(sources(), *cloudformation) == [expected[1], expected[4]]


def test_secrets_manager_secrets_through_the_reference_path(aws: MotoServer) -> None:
    sm = aws.client("secretsmanager")
    ssm = aws.client("ssm")
    name = f"{unique('prod')}/db"
    first = sm.create_secret(Name=name, SecretString=json.dumps({"password": "ref-1-51c2"}))
    sm.put_secret_value(SecretId=name, SecretString=json.dumps({"password": "ref-2-51c2"}))
    other = unique("other")
    sm.create_secret(Name=other, SecretString=secret_value("other-51c2"))
    secret_value("ref-1-51c2")
    secret_value("ref-2-51c2")
    plain = f"/{unique('plain')}"
    ssm.put_parameter(Name=plain, Value=secret_value("plain-51c2"), Type="SecureString")
    reference = f"/aws/reference/secretsmanager/{name}"
    names = [
        reference,
        f"{reference}:AWSPREVIOUS",
        f"{reference}:{first['VersionId']}",
        f"/aws/reference/secretsmanager/{other}",
        plain,
    ]
    # The reference client: GetParameter through Parameter Store, and the secret itself.
    through_ssm = [
        ssm.get_parameter(Name=n, WithDecryption=True)["Parameter"]["Value"].encode() for n in names
    ]
    direct = [
        sm.get_secret_value(SecretId=name)["SecretString"].encode(),
        sm.get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")["SecretString"].encode(),
        sm.get_secret_value(SecretId=name, VersionId=first["VersionId"])["SecretString"].encode(),
        sm.get_secret_value(SecretId=other)["SecretString"].encode(),
        b"plain-51c2",
    ]
    assert through_ssm == direct
    assert resolve(sources(), *(f"aws-ssm:{n}" for n in names)) == direct
    selected = resolve(sources(), f"aws-ssm:{reference}#password")
    assert selected == [json.loads(direct[0])["password"].encode()]
    missing = resolve(sources(), f"aws-ssm:/aws/reference/secretsmanager/{unique('none')}")[0]
    assert isinstance(missing, NotFound)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("aws-ssm:/aws/reference/secretsmanager/x?version=2", "no parameter versions"),
        ("aws-ssm:/aws/reference/secretsmanager/", "SECRET_NAME"),
        ("aws-ssm:/aws/reference/secretsmanager/a b", "SECRET_NAME"),
    ],
)
def test_the_reference_path_is_checked_before_any_call(ref: str, message: str) -> None:
    with Session() as session, pytest.raises(BadReference) as failure:
        session.check_reference(parse_reference(ref))
    assert message in failure.value.problem


def test_pasted_forms_pass_the_scheme_checks() -> None:
    with Session() as session:
        for pasted in (
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db-AbCdEf:password::",
            "{{resolve:secretsmanager:prod/db:SecretString:password:AWSPREVIOUS}}",
            "{{resolve:ssm:/app/db:3}}",
            "aws-ssm:/aws/reference/secretsmanager/prod/db+x@y:AWSPREVIOUS",
        ):
            session.check_reference(parse_reference(pasted))


def test_an_answer_without_a_value_is_an_error_not_an_empty_value(moto: MotoServer) -> None:
    """moto fails (500) on a SecretBinary read through the reference path, and AWS does not
    document that answer: a parameter answered without a Value is refused, never delivered
    as an empty value. The answer is injected by a proxy in front of moto."""
    name = "/aws/reference/secretsmanager/binary"

    def rule(request: Any) -> Reply | None:
        if request.operation == "GetParameters":
            body = {"Parameters": [{"Name": name, "Type": "SecureString"}], "InvalidParameters": []}
            return Reply(
                200, json.dumps(body).encode(), {"Content-Type": "application/x-amz-json-1.1"}
            )
        return None

    with HttpProxy(moto.port, rule) as proxy, pytest.MonkeyPatch.context() as patch:
        for key, value in moto.env().items():
            patch.setenv(key, value)
        outcome = resolve(sources(endpoint_url=proxy.url, max_attempts=1), f"aws-ssm:{name}")[0]
    assert isinstance(outcome, InvalidValue)
    assert outcome.problem == f"parameter {name} came back without a value"


def test_pasted_forms_on_the_command_line(moto: MotoServer, tmp_path: Path) -> None:
    sm = moto.client("secretsmanager")
    name = unique("cli")
    arn = sm.create_secret(Name=name, SecretString=json.dumps({"password": "cli-pw-51c2"}))["ARN"]
    secret_value("cli-pw-51c2")
    config = config_file(tmp_path, sources())
    expected = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])["password"].encode()
    for pasted in (
        f"{arn}:password::",
        f"{{{{resolve:secretsmanager:{name}:SecretString:password}}}}",
    ):
        result = run_cli("-c", str(config), "get", pasted, env=moto.env())
        assert (result.returncode, result.stdout) == (0, expected), result.stderr
    missing = run_cli("-c", str(config), "get", f"{arn}:nokey::", env=moto.env())
    assert missing.returncode == ExitCode.NOT_FOUND
    # Messages name the reference in its credbridge form.
    assert (
        missing.stderr
        == (f"credbridge: error: aws-sm:{arn}#nokey: no field 'nokey' in the secret\n").encode()
    )
    refused = run_cli(
        "-c",
        str(config),
        "get",
        f"{{{{resolve:secretsmanager:{name}:SecretBinary:k}}}}",
        env=moto.env(),
    )
    assert refused.returncode == ExitCode.REFERENCE
    assert refused.stderr.count(b"\n") == 1
